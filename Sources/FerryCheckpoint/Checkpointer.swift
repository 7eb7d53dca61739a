import FerryArchive
import FerryCRIU
import FerryRuntime
import FerryStore
import FerrySystem
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// What `ferry checkpoint` asks for.
public struct CheckpointOptions: Sendable {
    /// Thaw and keep running after the dump instead of ending in `checkpointed`.
    public var leaveRunning = false
    public var tcpEstablished = false
    public var fileLocks = false
    /// Also pack an export archive at this path.
    public var exportPath: String?
    public var compression: ExportCompression = .zstd
    /// Encrypt the export with this key (docs/archive-format.md, "Encrypted archives").
    public var key: ArchiveKey?
    /// Leave named volumes out of the export.
    public var ignoreVolumes = false
    /// podman's `--keep`: should the dump fail, keep what CRIU wrote into the images
    /// directory (dump.log and stats-dump are always kept) for a look at why.
    public var keep = false
    /// With `leaveRunning`: stay frozen after the dump (a migration's source, until the
    /// destination has the container).
    var keepFrozen = false
    /// A post-copy migration's source: see `LazyDump`.
    var lazy: LazyDump?
    /// Receives the instant the cgroup froze (a migration's downtime starts there, not
    /// when the checkpoint began: removing an earlier checkpoint's images comes first).
    var freezeMark: FreezeMark?
    /// Where the dump and the export report how far they are.
    public var progress: ProgressSink = .none

    public init() {}
}

/// The instant a dump froze its container, recorded from the dump's thread.
final class FreezeMark: @unchecked Sendable {
    private let lock = NSLock()
    private var instant: ContinuousClock.Instant?

    func record(_ value: ContinuousClock.Instant) {
        lock.withLock { instant = value }
    }

    /// The freeze, or `fallback` when the dump failed before it.
    func value(or fallback: ContinuousClock.Instant) -> ContinuousClock.Instant {
        lock.withLock { instant ?? fallback }
    }
}

/// How a post-copy dump hands over to the migration: CRIU writes every image but
/// anonymous memory, Ferry sends them while the tree stays frozen, and CRIU then serves
/// the memory from a page server until the destination has all of it.
struct LazyDump: Sendable {
    /// Where CRIU's page server listens, on 127.0.0.1.
    var port: UInt16
    /// Runs at CRIU's "post-dump" notification (images written and
    /// checkpoint.json saved, the tree frozen and intact) and says whether CRIU should
    /// go on and serve pages; false fails the dump and resumes the tree.
    var imagesWritten: @Sendable (ContainerRecord) -> Bool
    /// Whether the tree may run here again should the dump fail from now on: false once
    /// the destination runs the container, so that a failure never leaves two copies.
    var mayResume: @Sendable () -> Bool
}

/// What a checkpoint measured.
public struct CheckpointResult: Sendable {
    public var record: ContainerRecord
    /// From Ferry's freeze of the cgroup to its thaw: the container's downtime.
    public var frozen: Duration
    /// The whole dump, CRIU's part included.
    public var dumpDuration: Duration
    public var imagesDirectory: String
    public var statistics: DumpStatistics?
    public var export: ExportResult?
}

/// The freeze coordinator: freezes the container's cgroup itself, drives CRIU through
/// libcriu while it is frozen, then thaws. Freezing in Ferry rather than only in CRIU is
/// what measures the frozen time, and what will let one freeze point cover a group of
/// containers.
///
/// If anything fails, the container is thawed and keeps running, its state is put back,
/// and the partial images are removed; the error quotes CRIU's log.
public struct Checkpointer: Sendable {
    let runtime: ContainerRuntime
    let logger: Logger

    public init(runtime: ContainerRuntime, logger: Logger) {
        self.runtime = runtime
        self.logger = logger
    }

    /// Dumps a running container into `<state>/containers/<id>/checkpoint/`.
    /// `whileFrozen` runs after the dump, before the thaw (to capture the rootfs at the
    /// same instant as memory when the container keeps running).
    public func checkpoint(_ nameOrID: String, options: CheckpointOptions) throws -> CheckpointResult {
        try Interruption.guarding {
            try Self.refusePodMember(try runtime.load(nameOrID), verb: "checkpoint")
            // Streamed only when the dump stops the container anyway: feeding CRIU's
            // pipes (tee, hash, compress, write) runs at about a quarter of CRIU's own
            // rate into the page cache, and CRIU dumps memory while the tree is frozen,
            // so with --leave-running the frozen time would grow 3-4x (BENCHMARKS.md).
            if let path = options.exportPath, !options.leaveRunning, options.compression != .gzip, options.lazy == nil,
                !options.keepFrozen
            {
                return try streamedCheckpoint(nameOrID, to: path, options: options)
            }
            let exporter = Exporter(runtime: runtime, logger: logger)
            var captured: Exporter.Captured?
            options.progress.report("checkpointing")
            var result = try dump(nameOrID, options: options) { record in
                // With --leave-running the rootfs and volumes must be captured at the
                // same frozen instant as memory; otherwise nothing can change them now.
                if options.exportPath != nil, options.leaveRunning {
                    captured = try exporter.capture(record, ignoreVolumes: options.ignoreVolumes)
                }
            }
            // CRIU writes its statistics into the work directory, the container's own.
            let statsPath = "\(runtime.containers.directory(result.record.id))/stats-dump"
            result.statistics = try? DumpStatistics(statsDump: Files.read(statsPath))
            guard let path = options.exportPath else { return result }
            do {
                let metadata = try CheckpointMetadata.load(from: runtime.containers.directory(result.record.id))
                options.progress.report("capturing the rootfs")
                let parts = try captured ?? exporter.capture(result.record, ignoreVolumes: options.ignoreVolumes)
                result.export = try exporter.export(
                    result.record, metadata: metadata, captured: parts, to: path, compression: options.compression, key: options.key,
                    progress: options.progress)
                return result
            } catch {
                // Nothing is lost: a container the dump stopped is brought back here.
                if !options.leaveRunning { _ = try? restore(result.record.id) }
                throw CheckpointError(.exportFailed, "cannot export container '\(result.record.name)' to \(path)", cause: error)
            }
        }
    }

    /// `checkpoint --export` in one pass: CRIU streams its images into Ferry
    /// (`criu dump --stream`), which writes them into the images directory and the
    /// archive as they arrive (`ImageStreamTee`); the rest of the export follows the
    /// dump. gzip, `--leave-running` (its frozen time) and migrations, which stream
    /// elsewhere, go the two-pass way.
    func streamedCheckpoint(_ nameOrID: String, to path: String, options: CheckpointOptions) throws -> CheckpointResult {
        let exporter = Exporter(runtime: runtime, logger: logger)
        let record = try runtime.load(nameOrID)
        let writer: StreamedExportWriter
        do {
            writer = try StreamedExportWriter(path: path, compression: options.compression, key: options.key)
            // ferry.json lists every image: room for the fixed fields and about a dozen
            // images per process (measured: ~40 bytes each), with a wide margin.
            let processes = (try? runtime.cgroup(for: record.id).pids().count) ?? 1
            try writer.reserve(name: ExportMetadata.memberName, capacity: (64 << 10) + processes * (2 << 10))
        } catch {
            throw CheckpointError(.exportFailed, "cannot export container '\(record.name)' to \(path)", cause: error)
        }
        var tee: ImageStreamTee?
        var result: CheckpointResult
        do {
            result = try dump(
                nameOrID, options: options,
                stream: { images in
                    let created = try ImageStreamTee(writer: writer, imagesDirectory: images)
                    tee = created
                    return created
                },
                whileFrozen: { _ in try tee?.complete() })
        } catch {
            writer.abandon()
            throw error
        }
        let statsPath = "\(runtime.containers.directory(result.record.id))/stats-dump"
        result.statistics = try? DumpStatistics(statsDump: Files.read(statsPath))
        do {
            let metadata = try CheckpointMetadata.load(from: runtime.containers.directory(result.record.id))
            // The dump ended the tree: nothing can change the rootfs and volumes now.
            let parts = try exporter.capture(result.record, ignoreVolumes: options.ignoreVolumes)
            result.export = try exporter.finishStreamed(result.record, metadata: metadata, captured: parts, writer: writer)
            return result
        } catch {
            writer.abandon()
            // Nothing is lost: the container the dump stopped is brought back here.
            _ = try? restore(result.record.id)
            throw CheckpointError(.exportFailed, "cannot export container '\(result.record.name)' to \(path)", cause: error)
        }
    }

    /// With `stream`, CRIU streams its images to the receiver it makes for the images
    /// directory instead of writing them there itself.
    func dump(
        _ nameOrID: String, options: CheckpointOptions, stream: ((String) throws -> ImageStreamTee)? = nil,
        whileFrozen: (ContainerRecord) throws -> Void
    ) throws -> CheckpointResult {
        var record = try runtime.load(nameOrID)
        try Self.refusePodMember(record, verb: "checkpoint")
        guard case .running(let state) = record.status else {
            throw CheckpointError(.invalidState, "cannot checkpoint container '\(record.name)': it is \(record.status.name), not running")
        }
        let store = runtime.containers
        let directory = store.directory(record.id)
        let images = "\(directory)/\(CheckpointMetadata.imagesDirectory)"
        let cgroup = try runtime.cgroup(for: record.id)
        let stdio = (0...2).map { descriptorTarget(pid: state.pid, fd: $0) }

        // The lease outlives neither this process nor its CRIU: should both die before
        // the state below is settled, the next command finds it free and settles it
        // (ContainerRuntime.refresh). A migration's source is never settled that way:
        // the destination may run the container by then.
        let recoverable = options.lazy == nil && !options.keepFrozen
        let lease = try store.withLock(record.id) { () throws -> OperationLease in
            var current = try store.load(id: record.id)
            let next: ContainerStatus
            do throws(StoreError) {
                next = try current.status.after(.checkpointBegan(pid: state.pid), container: record.name)
            } catch {
                throw CheckpointError(.invalidState, error.message)
            }
            let lease = try OperationLease(path: store.operationPath(record.id), kind: recoverable ? "checkpoint" : "migration")
            current.status = next
            try store.save(current)
            return lease
        }
        defer { lease.release() }
        var log = logger
        log[metadataKey: "ferry.container"] = "\(record.name)"
        let network = record.network
        @Sendable func metadata(frozen: Duration, lazyPages: Bool) -> CheckpointMetadata {
            CheckpointMetadata(
                stdio: stdio, network: network, checkpointedAt: Date(), frozenMilliseconds: frozen.milliseconds,
                tcpEstablished: options.tcpEstablished, fileLocks: options.fileLocks, lazyPages: lazyPages ? true : nil
            )
        }

        let clock = ContinuousClock()
        let start = clock.now
        var frozenAt: ContinuousClock.Instant?
        do {
            try Files.removeTree(images)
            // Written now as well as after the dump: if this process dies once CRIU has
            // written the images, they can still be restored.
            try metadata(frozen: .zero, lazyPages: options.lazy != nil).save(in: directory)
            try Files.createDirectory(images, mode: 0o700)
            var request = DumpRequest(pid: state.pid, imagesDirectory: images)
            request.workDirectory = directory
            request.leaveRunning = options.leaveRunning
            request.leaseDescriptor = lease.descriptor
            request.tcpEstablished = options.tcpEstablished
            request.fileLocks = options.fileLocks
            request.freezeCgroup = cgroup.freezerPath
            request.externalMounts = record.volumes.map { (mountPoint: $0.destination, key: $0.destination) }
            request.cgroupDumpControllers = CgroupLayout.managedHierarchies(ofTask: state.pid)
            if let inode = namespaceInode(pid: state.pid, type: "net") {
                request.externals.append("net[\(inode)]:\(record.network == .host ? hostNetworkKey : containerNetworkKey)")
            }
            log.debug("freezing", metadata: ["ferry.phase": "freeze"])
            try cgroup.freeze()
            let frozenInstant = clock.now
            frozenAt = frozenInstant
            options.freezeMark?.record(frozenInstant)
            if let lazy = options.lazy {
                request.lazyPagesPort = lazy.port
                request.notify = { [record] action in
                    guard action == "post-dump" else { return true }
                    let saved = Result {
                        try metadata(frozen: clock.now - frozenInstant, lazyPages: true).save(in: directory)
                    }
                    guard case .success = saved else { return false }
                    return lazy.imagesWritten(record)
                }
            }
            log.debug("dumping", metadata: ["ferry.phase": "dump"])
            if let stream {
                try CRIUSession().streamedDump(request, to: try stream(images))
            } else {
                try CRIUSession().dump(request)
            }
            try whileFrozen(record)
        } catch {
            if options.lazy?.mayResume() == false {
                // The destination runs the container: this copy must never run again.
                throw CheckpointError(
                    .dumpFailed, "cannot serve the memory of container '\(record.name)' to the destination", cause: error, hint: "this copy stays frozen")
            }
            if options.lazy != nil, options.tcpEstablished {
                // Before the tasks run again: CRIU resumed them with their connections
                // still locked (see CRIULockedConnection).
                releaseLockedConnections(imagesDirectory: images, cgroup: cgroup, log: log)
            }
            // Put everything back: thawed, running, no partial images (unless asked to
            // keep them: the next checkpoint removes them first).
            try? cgroup.thaw()
            if !options.keep { try? Files.removeTree(images) }
            try? store.withLock(record.id) {
                var current = try store.load(id: record.id)
                let event: LifecycleEvent =
                    Processes.isAlive(state.pid, startTime: state.pidStartTime) ? .checkpointResumed : .checkpointLost(at: Date())
                current.status = try current.status.after(event, container: record.name)
                try store.save(current)
            }
            var hint: String?
            if "\(error)".contains("Can't get rlimit") {
                // prlimit(2) on a task of another user needs CAP_SYS_RESOURCE, which
                // some hosts' root lacks (a --user container then cannot be dumped).
                hint = "CRIU needs CAP_SYS_RESOURCE to read the limits of a process of another user, and this host's root lacks it"
            }
            if options.keep {
                let kept = "--keep: the partial images are in \(images)"
                hint = hint.map { "\($0); \(kept)" } ?? kept
            }
            throw CheckpointError(.dumpFailed, "cannot checkpoint container '\(record.name)'", cause: error, hint: hint)
        }
        // After a dump without --leave-running CRIU has ended the tree; thawing lets the
        // kernel finish reaping it.
        if !options.keepFrozen { try? cgroup.thaw() }
        let thawedAt = clock.now
        let frozen = frozenAt.map { thawedAt - $0 } ?? .zero

        let metadata = metadata(frozen: frozen, lazyPages: options.lazy != nil)
        try metadata.save(in: directory)

        let ended: LifecycleEvent =
            options.leaveRunning
            ? .checkpointResumed
            : .checkpointDone(CheckpointState(checkpointedAt: metadata.checkpointedAt, imagesDirectory: CheckpointMetadata.imagesDirectory))
        record = try store.withLock(record.id) {
            // Re-read: the record may have changed during the dump (a rename).
            var current = try store.load(id: record.id)
            current.status = try current.status.after(ended, container: record.name)
            try store.save(current)
            return current
        }
        if !options.leaveRunning {
            // The old supervisor unmounts the rootfs and removes the cgroup once it has
            // reaped the tree; a restore must not race with that.
            let deadline = Date().addingTimeInterval(10)
            while Processes.isAlive(state.supervisorPid, startTime: nil), Date() < deadline { usleep(10_000) }
        }
        return CheckpointResult(record: record, frozen: frozen, dumpDuration: clock.now - start, imagesDirectory: images, statistics: nil, export: nil)
    }

    /// Restores a checkpointed container in place: a new supervisor restores the images
    /// as its child. On failure the container stays checkpointed. With
    /// `requireTCPEstablished` (podman's `restore --tcp-established`), a checkpoint taken
    /// without its TCP connections is refused rather than restored without them.
    public func restore(_ nameOrID: String, requireTCPEstablished: Bool = false) throws -> ContainerRecord {
        let record = try runtime.load(nameOrID)
        guard case .checkpointed = record.status else {
            throw CheckpointError(.invalidState, "cannot restore container '\(record.name)': it is \(record.status.name), not checkpointed")
        }
        if requireTCPEstablished, try !CheckpointMetadata.load(from: runtime.containers.directory(record.id)).tcpEstablished {
            throw CheckpointError(
                .incompatible, "cannot restore container '\(record.name)' with --tcp-established: its checkpoint was taken without --tcp-established")
        }
        try runtime.startDetached(id: record.id, removeOnFailure: false, restore: true)
        return try runtime.load(record.id)
    }

    /// Undoes what a failed lazy `--tcp-established` dump leaves on the tree it resumed:
    /// sockets in repair mode and the drop rules of their connections. What cannot be
    /// undone is logged; the dump's own error is what the user is told.
    func releaseLockedConnections(imagesDirectory: String, cgroup: ContainerCgroup, log: Logger) {
        guard let bytes = try? Files.read("\(imagesDirectory)/files.img") else { return }
        do {
            let connections = try CRIULockedConnection.locked(inFilesImage: bytes)
            guard !connections.isEmpty else { return }
            let problems = CRIUConnectionLock.release(connections, heldBy: (try? cgroup.pids()) ?? [])
            log.info("released the TCP connections the failed dump had locked", metadata: ["ferry.connections": "\(connections.count)"])
            for problem in problems { log.warning("cannot release a locked TCP connection: \(problem)") }
        } catch {
            log.warning("cannot read the dumped TCP connections to release them: \(error)")
        }
    }

    /// Removes a container as `ContainerRuntime.remove` does; for a checkpointed one, first
    /// the drop rules CRIU left for its locked connections, which no restore will lift now.
    public func remove(_ nameOrID: String, force: Bool) throws {
        if let record = try? runtime.load(nameOrID), case .checkpointed = record.status {
            let images = "\(runtime.containers.directory(record.id))/\(CheckpointMetadata.imagesDirectory)"
            forgetLockedConnections(imagesDirectory: images, log: logger)
        }
        try runtime.remove(nameOrID, force: force)
    }

    /// A container of a pod is refused alone: its network, ipc and uts namespaces belong
    /// to the pod and other containers share them, so CRIU could neither dump them with
    /// it nor restore it without them.
    static func refusePodMember(_ record: ContainerRecord, verb: String) throws(CheckpointError) {
        guard let pod = record.pod else { return }
        throw CheckpointError(
            .invalidState, "cannot \(verb) container '\(record.name)': its namespaces belong to pod '\(pod)' (pod checkpoint is not supported yet)")
    }

    /// Deletes, in this process's network namespace, the drop rules CRIU left for the
    /// connections dumped into `imagesDirectory` once their tree has ended for good (moved
    /// to another host, or removed): nothing will restore them here.
    func forgetLockedConnections(imagesDirectory: String, log: Logger) {
        guard let bytes = try? Files.read("\(imagesDirectory)/files.img") else { return }
        do {
            let connections = try CRIULockedConnection.locked(inFilesImage: bytes)
            guard !connections.isEmpty else { return }
            for problem in CRIUConnectionLock.removeRules(connections) { log.warning("cannot remove a dumped TCP connection's drop rule: \(problem)") }
        } catch {
            log.warning("cannot read the dumped TCP connections to remove their drop rules: \(error)")
        }
    }

    /// "pipe:[1234]", "/dev/null"...: what /proc/PID/fd/N points to.
    func descriptorTarget(pid: Int32, fd: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(pid)/fd/\(fd)", &buffer, buffer.count - 1)
        guard n > 0 else { return "" }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func namespaceInode(pid: Int32, type: String) -> UInt64? {
        var st = stat()
        guard stat("/proc/\(pid)/ns/\(type)", &st) == 0 else { return nil }
        return UInt64(st.st_ino)
    }
}
