import FerrySystem
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The containers of one state root.
///
/// Layout: `containers/<id>/` holds `state.json`, `config.json` (OCI runtime spec),
/// `upper/` and `work/` (overlay), `rootfs/` (mount point), `container.log` and `lock`;
/// `names/<name>` is a symlink to the id. Creating the symlink is the atomic claim of a
/// name; the names lock serializes claims with their checks.
public struct ContainerStore: Sendable {
    public let root: StateRoot

    public init(root: StateRoot) {
        self.root = root
    }

    public func directory(_ id: String) -> String { "\(root.containersDirectory)/\(id)" }
    public func statePath(_ id: String) -> String { "\(directory(id))/state.json" }
    public func configPath(_ id: String) -> String { "\(directory(id))/config.json" }
    public func rootfsPath(_ id: String) -> String { "\(directory(id))/rootfs" }
    public func upperPath(_ id: String) -> String { "\(directory(id))/upper" }
    public func workPath(_ id: String) -> String { "\(directory(id))/work" }
    public func logPath(_ id: String) -> String { "\(directory(id))/container.log" }
    /// When each chunk of the log was written (see FerryRuntime's `LogIndex`).
    public func logTimesPath(_ id: String) -> String { "\(directory(id))/container.log.times" }
    /// The lease of a checkpoint in progress (see `OperationLease`).
    public func operationPath(_ id: String) -> String { "\(directory(id))/operation" }
    /// CRIU's images of the container's last checkpoint.
    public func checkpointImagesPath(_ id: String) -> String { "\(directory(id))/\(Self.checkpointImagesName)" }
    /// What Ferry records beside the images for a restore (FerryCheckpoint's CheckpointMetadata).
    public func checkpointMetadataPath(_ id: String) -> String { "\(directory(id))/\(Self.checkpointMetadataName)" }

    public static let checkpointImagesName = "checkpoint"
    public static let checkpointMetadataName = "checkpoint.json"

    /// A new random 64-hex id, as podman and runc use.
    public static func newID() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    /// Runs `body` holding the lock that serializes name claims and removals.
    public func withNamesLock<T>(_ body: () throws -> T) throws -> T {
        try FileLock.holding("\(root.locksDirectory)/names.lock", body)
    }

    /// Runs `body` holding a container's own lock: every state change of one container
    /// happens under it, so concurrent CLI calls see each other's changes whole.
    public func withLock<T>(_ id: String, _ body: () throws -> T) throws -> T {
        try FileLock.holding("\(directory(id))/lock", body)
    }

    /// Creates the container's directory, state and name. Fails if the name is taken.
    public func create(_ record: ContainerRecord, config: Data) throws {
        try Names.validate(record.name, kind: "container")
        try withNamesLock { try claim(record, config: config) }
    }

    private func claim(_ record: ContainerRecord, config: Data) throws {
        let link = "\(root.namesDirectory)/\(record.name)"
        if Files.exists(link) {
            throw StoreError(.alreadyExists, "the container name '\(record.name)' is already in use (remove it with: ferry rm \(record.name))")
        }
        let dir = directory(record.id)
        do {
            try Files.createDirectory(dir, mode: 0o700)
            for sub in [upperPath(record.id), workPath(record.id), rootfsPath(record.id)] {
                try Files.createDirectory(sub, mode: 0o755)
            }
            try Files.writeAtomically(Array(config), to: configPath(record.id), mode: 0o600)
            try save(record)
            if symlink(record.id, link) != 0 {
                throw StoreError(.io, "cannot claim name '\(record.name)': symlink \(link): \(String(cString: strerror(errno)))")
            }
        } catch let error as StoreError {
            try? Files.removeTree(dir)
            throw error
        } catch {
            try? Files.removeTree(dir)
            throw StoreError(.io, "cannot create container '\(record.name)'", cause: error)
        }
    }

    /// Writes the record atomically.
    public func save(_ record: ContainerRecord) throws(StoreError) {
        do {
            let data = try JSONEncoder.ferry.encode(record)
            try Files.writeAtomically(Array(data), to: statePath(record.id), mode: 0o600)
        } catch {
            throw StoreError(.io, "cannot save state of container '\(record.name)'", cause: error)
        }
    }

    public func load(id: String) throws(StoreError) -> ContainerRecord {
        let path = statePath(id)
        let bytes: [UInt8]
        do {
            bytes = try Files.read(path)
        } catch {
            throw StoreError(.notFound, "no such container: \(id)")
        }
        do {
            return try JSONDecoder.ferry.decode(ContainerRecord.self, from: Data(bytes))
        } catch {
            throw StoreError(.corrupt, "state of container \(id.prefix(12)) is unreadable (\(path))", cause: error)
        }
    }

    public func loadConfig(id: String) throws(StoreError) -> Data {
        do {
            return Data(try Files.read(configPath(id)))
        } catch {
            throw StoreError(.notFound, "no config for container \(id.prefix(12))", cause: error)
        }
    }

    /// Finds a container by name, full id, or unique id prefix.
    public func resolve(_ nameOrID: String) throws(StoreError) -> String {
        if !nameOrID.isEmpty, !nameOrID.contains("/"), nameOrID != ".", nameOrID != ".." {
            let link = "\(root.namesDirectory)/\(nameOrID)"
            var buffer = [CChar](repeating: 0, count: 256)
            let n = readlink(link, &buffer, buffer.count - 1)
            if n > 0 {
                return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            let ids = (try? Files.listDirectory(root.containersDirectory)) ?? []
            if ids.contains(nameOrID) { return nameOrID }
            let matches = ids.filter { $0.hasPrefix(nameOrID) }
            if nameOrID.count >= 3, matches.count == 1 { return matches[0] }
            if matches.count > 1 {
                throw StoreError(.invalidArgument, "'\(nameOrID)' matches several containers: give more of the id")
            }
        }
        throw StoreError(.notFound, "no such container: \(nameOrID)")
    }

    /// Removes the directories of imports whose process died before committing them:
    /// no state.json, and an "import" lease nobody holds (see `OperationLease`).
    public func removeAbandonedImports() {
        for id in (try? Files.listDirectory(root.containersDirectory)) ?? [] where !Files.exists(statePath(id)) {
            if OperationLease.abandonedKind(at: operationPath(id)) == "import" { try? Files.removeTree(directory(id)) }
        }
    }

    public func list() -> [ContainerRecord] {
        let ids = (try? Files.listDirectory(root.containersDirectory)) ?? []
        // Oldest first. `created` is stored to the second, so containers created within
        // one second are ordered by their config.json, written once when each was made
        // (nanosecond mtime): `ps -l` must find the latest.
        func made(_ id: String) -> Date {
            let attributes = try? FileManager.default.attributesOfItem(atPath: configPath(id))
            return attributes?[.modificationDate] as? Date ?? .distantPast
        }
        return ids.compactMap { try? load(id: $0) }.map { ($0, made($0.id)) }
            .sorted { ($0.0.created, $0.1) < ($1.0.created, $1.1) }
            .map(\.0)
    }

    /// Gives a container a new name. The new name is claimed first (symlink fails if it
    /// is taken), then the record saved, then the old name dropped: a crash in between
    /// leaves both names pointing at the container, never neither.
    public func rename(_ nameOrID: String, to newName: String) throws -> ContainerRecord {
        try Names.validate(newName, kind: "container")
        return try withNamesLock {
            let id = try resolve(nameOrID)
            return try withLock(id) {
                var record = try load(id: id)
                let oldName = record.name
                if oldName == newName { return record }
                let link = "\(root.namesDirectory)/\(newName)"
                if symlink(id, link) != 0 {
                    if errno == EEXIST {
                        throw StoreError(.alreadyExists, "cannot rename container '\(oldName)': the name '\(newName)' is already in use")
                    }
                    throw StoreError(.io, "cannot rename container '\(oldName)': symlink \(link): \(String(cString: strerror(errno)))")
                }
                record.name = newName
                do {
                    try save(record)
                } catch {
                    _ = unlink(link)
                    throw error
                }
                _ = unlink("\(root.namesDirectory)/\(oldName)")
                return record
            }
        }
    }

    /// Removes the name and the whole directory. The caller has already unmounted the
    /// rootfs and ended the processes.
    public func remove(_ record: ContainerRecord) throws {
        try withNamesLock { try unclaim(record) }
    }

    private func unclaim(_ record: ContainerRecord) throws {
        let link = "\(root.namesDirectory)/\(record.name)"
        var buffer = [CChar](repeating: 0, count: 256)
        let n = readlink(link, &buffer, buffer.count - 1)
        if n > 0, String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == record.id {
            _ = unlink(link)
        }
        do {
            try Files.removeTree(directory(record.id))
        } catch {
            throw StoreError(.io, "cannot remove container '\(record.name)'", cause: error)
        }
    }
}
