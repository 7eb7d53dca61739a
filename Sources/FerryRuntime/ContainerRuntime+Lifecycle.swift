import FerryStore
import FerrySystem
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The lifecycle verbs podman users expect beyond run/stop/rm: start, restart, pause,
/// unpause, wait and rename.
extension ContainerRuntime {
    /// Starts a created or exited container again, detached, from its rootfs as it was
    /// left (the upper layer is kept). A running one is left as it is, as `podman start`
    /// does; a checkpointed one is refused: `ferry restore` brings it back where it was.
    /// Returns the record as it is afterwards.
    @discardableResult
    public func start(_ nameOrID: String) throws -> ContainerRecord {
        let record = try loadSettled(nameOrID)
        switch record.status {
        case .running, .starting:
            return record
        case .checkpointed:
            throw RuntimeError(.invalidState, "cannot start container '\(record.name)': it is checkpointed; restore it with: ferry restore \(record.name)")
        case .checkpointing:
            throw RuntimeError(.invalidState, "cannot start container '\(record.name)': it is being checkpointed")
        case .restoring:
            throw RuntimeError(.invalidState, "cannot start container '\(record.name)': it is being restored")
        case .created, .exited:
            try startDetached(id: record.id, removeOnFailure: false)
            return try load(record.id)
        }
    }

    /// Stops a running container (SIGTERM, SIGKILL after `timeout`), then starts it again.
    @discardableResult
    public func restart(_ nameOrID: String, timeout: Double) throws -> ContainerRecord {
        let record = try loadSettled(nameOrID)
        if case .running(let state) = record.status, state.paused == true {
            throw RuntimeError(.invalidState, "cannot restart container '\(record.name)': it is paused; unpause it first")
        }
        try stop(record.id, timeout: timeout)
        return try start(record.id)
    }

    /// Freezes every process of a running container with its cgroup's freezer; the
    /// container stays `running`, marked paused, until `unpause`.
    public func pause(_ nameOrID: String) throws {
        let id = try containers.resolve(nameOrID)
        try containers.withLock(id) {
            var record = try refresh(try containers.load(id: id))
            guard case .running(let state) = record.status else {
                throw RuntimeError(.invalidState, "cannot pause container '\(record.name)': it is \(record.status.name), not running")
            }
            if state.paused == true {
                throw RuntimeError(.invalidState, "cannot pause container '\(record.name)': it is paused already")
            }
            do {
                try cgroup(for: id).freeze()
            } catch {
                throw RuntimeError(.cgroupFailed, "cannot pause container '\(record.name)'", cause: error)
            }
            record.status = try record.status.after(.paused, container: record.name)
            try containers.save(record)
        }
    }

    /// Thaws a paused container.
    public func unpause(_ nameOrID: String) throws {
        let id = try containers.resolve(nameOrID)
        try containers.withLock(id) {
            var record = try refresh(try containers.load(id: id))
            guard case .running(let state) = record.status, state.paused == true else {
                throw RuntimeError(.invalidState, "cannot unpause container '\(record.name)': it is not paused")
            }
            do {
                try cgroup(for: id).thaw()
            } catch {
                throw RuntimeError(.cgroupFailed, "cannot unpause container '\(record.name)'", cause: error)
            }
            record.status = try record.status.after(.unpaused, container: record.name)
            try containers.save(record)
        }
    }

    /// Waits until a running container exits and returns its exit code; at once for an
    /// exited one. A created or checkpointed container has nothing to wait for (it does
    /// not run until started or restored), so that is an error rather than a wait that
    /// never ends. `timeout` nil waits as long as the container runs.
    public func wait(_ nameOrID: String, timeout: Double? = nil) throws -> Int32 {
        let id = try containers.resolve(nameOrID)
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        while true {
            let record = try refresh(try containers.load(id: id))
            switch record.status {
            case .exited(let state):
                return state.exitCode
            case .created, .checkpointed:
                throw RuntimeError(.invalidState, "container '\(record.name)' is \(record.status.name): it does not run, nothing to wait for")
            case .running, .checkpointing, .starting, .restoring:
                if let deadline, Date() >= deadline {
                    throw RuntimeError(.invalidState, "container '\(record.name)' still runs after \(timeout ?? 0) s")
                }
                usleep(50_000)
            }
        }
    }

    /// Renames a container: its id, state and processes stay the same.
    @discardableResult
    public func rename(_ nameOrID: String, to newName: String) throws -> ContainerRecord {
        try containers.rename(nameOrID, to: newName)
    }
}
