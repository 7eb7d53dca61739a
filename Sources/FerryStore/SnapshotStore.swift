import Crypto
import FerrySystem
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// One member of a snapshot (an export member: a CRIU image, the rootfs diff, a volume
/// tar...), kept as the list of its content-addressed chunks.
public struct SnapshotMember: Codable, Sendable, Equatable {
    public var name: String
    public var size: Int64
    public var chunks: [String]

    public init(name: String, size: Int64, chunks: [String]) {
        self.name = name
        self.size = size
        self.chunks = chunks
    }
}

/// `snapshots/<container id>/<tag>.json`: what one snapshot holds.
public struct SnapshotManifest: Codable, Sendable {
    public var tag: String
    public var containerID: String
    public var containerName: String
    public var created: Date
    public var frozenMilliseconds: Double
    public var members: [SnapshotMember]

    public init(tag: String, containerID: String, containerName: String, created: Date, frozenMilliseconds: Double, members: [SnapshotMember]) {
        self.tag = tag
        self.containerID = containerID
        self.containerName = containerName
        self.created = created
        self.frozenMilliseconds = frozenMilliseconds
        self.members = members
    }

    public var size: Int64 { members.reduce(0) { $0 + $1.size } }
}

/// A snapshot with the space it takes: `own` counts chunks no other snapshot uses.
public struct SnapshotUsage: Sendable {
    public var manifest: SnapshotManifest
    public var ownBytes: Int64
    public var sharedBytes: Int64
}

/// Snapshots of long-running containers. Successive snapshots must not cost a full copy
/// each, and this kernel has no memory dirty tracking for CRIU's incremental dumps, so
/// every member is cut into fixed 1 MiB chunks stored once by sha256 under `blobs/`:
/// unchanged memory pages, rootfs files and volume data are shared between snapshots.
public struct SnapshotStore: Sendable {
    public static let chunkSize = 1 << 20

    public let root: StateRoot

    public init(root: StateRoot) {
        self.root = root
    }

    var snapshotsDirectory: String { "\(root.path)/snapshots" }
    var blobsDirectory: String { "\(root.path)/blobs/sha256" }

    func directory(_ containerID: String) -> String { "\(snapshotsDirectory)/\(containerID)" }
    func manifestPath(_ containerID: String, _ tag: String) -> String { "\(directory(containerID))/\(tag).json" }
    public func chunkPath(_ hex: String) -> String { "\(blobsDirectory)/\(hex.prefix(2))/\(hex)" }

    /// Runs `body` holding the lock that serializes manifest changes and garbage collection.
    public func withLock<T>(_ body: () throws -> T) throws -> T {
        try FileLock.holding("\(root.locksDirectory)/snapshots.lock", body)
    }

    public static func validateTag(_ tag: String) throws(StoreError) {
        try Names.validate(tag, kind: "snapshot tag")
    }

    // MARK: Chunks

    /// Cuts `file` into chunks and stores the new ones. Returns the member.
    public func ingest(name: String, file: String) throws -> SnapshotMember {
        let fd = try OwnedFD.open(file, O_RDONLY)
        var chunks: [String] = []
        var size: Int64 = 0
        while true {
            let chunk = try readChunk(fd)
            if chunk.isEmpty { break }
            chunks.append(try store(chunk))
            size += Int64(chunk.count)
        }
        return SnapshotMember(name: name, size: size, chunks: chunks)
    }

    public func ingest(name: String, bytes: [UInt8]) throws -> SnapshotMember {
        var chunks: [String] = []
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + Self.chunkSize, bytes.count)
            chunks.append(try store(Array(bytes[offset..<end])))
            offset = end
        }
        return SnapshotMember(name: name, size: Int64(bytes.count), chunks: chunks)
    }

    private func readChunk(_ fd: borrowing OwnedFD) throws -> [UInt8] {
        var chunk: [UInt8] = []
        chunk.reserveCapacity(Self.chunkSize)
        while chunk.count < Self.chunkSize {
            let part = try fd.read(upTo: Self.chunkSize - chunk.count)
            if part.isEmpty { break }
            chunk += part
        }
        return chunk
    }

    /// Stores one chunk unless it is already there; written to a temporary name and
    /// renamed, so a chunk file is always whole. Durability comes from one sync at the
    /// end of the snapshot, before its manifest is written.
    private func store(_ chunk: [UInt8]) throws -> String {
        let hex = SHA256.hash(data: chunk).map { String(format: "%02x", $0) }.joined()
        let path = chunkPath(hex)
        if Files.exists(path) { return hex }
        try Files.createDirectory(Files.parent(of: path), mode: 0o700)
        let temporary = "\(path).tmp-\(getpid())"
        let fd = try OwnedFD.open(temporary, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        try fd.writeAll(chunk)
        if rename(temporary, path) != 0 {
            _ = unlink(temporary)
            throw StoreError(.io, "cannot store snapshot chunk \(hex.prefix(12)): \(String(cString: strerror(errno)))")
        }
        return hex
    }

    /// Writes a member's content back, chunk by chunk, to `file`.
    public func materialize(_ member: SnapshotMember, to file: String) throws {
        let out = try OwnedFD.open(file, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        for hex in member.chunks {
            try out.writeAll(try Files.read(chunkPath(hex)))
        }
    }

    public func read(_ member: SnapshotMember) throws -> [UInt8] {
        try member.chunks.reduce(into: [UInt8]()) { $0 += try Files.read(chunkPath($1)) }
    }

    // MARK: Manifests

    /// Saves a manifest (after syncing its chunks): the snapshot exists from then on.
    public func save(_ manifest: SnapshotManifest) throws {
        try SnapshotStore.validateTag(manifest.tag)
        try withLock {
            if Files.exists(manifestPath(manifest.containerID, manifest.tag)) {
                throw StoreError(.alreadyExists, "snapshot '\(manifest.tag)' of container '\(manifest.containerName)' already exists")
            }
            sync()
            try Files.createDirectory(directory(manifest.containerID), mode: 0o700)
            try Files.writeAtomically(Array(try JSONEncoder.ferry.encode(manifest)), to: manifestPath(manifest.containerID, manifest.tag), mode: 0o600)
        }
    }

    /// A container's snapshots, oldest first.
    public func list(_ containerID: String) -> [SnapshotManifest] {
        let names = (try? Files.listDirectory(directory(containerID))) ?? []
        return names.filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }
            .compactMap { try? load(containerID, String($0.dropLast(5))) }
            .sorted { $0.created < $1.created }
    }

    public func load(_ containerID: String, _ tag: String) throws -> SnapshotManifest {
        try SnapshotStore.validateTag(tag)
        guard let bytes = try? Files.read(manifestPath(containerID, tag)) else {
            throw StoreError(.notFound, "no snapshot '\(tag)'")
        }
        return try JSONDecoder.ferry.decode(SnapshotManifest.self, from: Data(bytes))
    }

    /// Removes snapshots, then every chunk no remaining snapshot uses.
    public func remove(_ containerID: String, tags: [String]) throws {
        try withLock {
            for tag in tags {
                try SnapshotStore.validateTag(tag)
                _ = unlink(manifestPath(containerID, tag))
            }
            if list(containerID).isEmpty { try? Files.removeTree(directory(containerID)) }
            try collectGarbage()
        }
    }

    /// Deletes chunks no manifest references (also the leftovers of a failed snapshot).
    /// Called under the lock.
    func collectGarbage() throws {
        var referenced = Set<String>()
        for container in (try? Files.listDirectory(snapshotsDirectory)) ?? [] {
            for manifest in list(container) { referenced.formUnion(manifest.members.flatMap(\.chunks)) }
        }
        for prefix in (try? Files.listDirectory(blobsDirectory)) ?? [] {
            for name in (try? Files.listDirectory("\(blobsDirectory)/\(prefix)")) ?? [] where !referenced.contains(name) {
                _ = unlink("\(blobsDirectory)/\(prefix)/\(name)")
            }
            _ = rmdir("\(blobsDirectory)/\(prefix)")  // only when empty
        }
    }

    /// Removes a failed snapshot's chunks that nothing else uses.
    public func discardUnreferenced() {
        try? withLock { try collectGarbage() }
    }

    /// Each snapshot with its own and shared bytes.
    public func usage(_ containerID: String) -> [SnapshotUsage] {
        let manifests = list(containerID)
        var users: [String: Int] = [:]
        for container in (try? Files.listDirectory(snapshotsDirectory)) ?? [] {
            for manifest in list(container) {
                for hex in Set(manifest.members.flatMap(\.chunks)) { users[hex, default: 0] += 1 }
            }
        }
        return manifests.map { manifest in
            var own: Int64 = 0
            var shared: Int64 = 0
            for hex in Set(manifest.members.flatMap(\.chunks)) {
                let size = (try? Files.status(chunkPath(hex), followSymlinks: false).size) ?? 0
                if users[hex, default: 0] > 1 { shared += size } else { own += size }
            }
            return SnapshotUsage(manifest: manifest, ownBytes: own, sharedBytes: shared)
        }
    }
}
