import FerrySystem
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A pod: network, ipc and uts namespaces that containers share (podman's pod). No
/// process holds them: each is pinned by a bind mount of its nsfs file under the pod's
/// directory, as `ip netns add` pins a network namespace, so they outlive every container
/// of the pod and go only with `pod rm`.
public struct PodRecord: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var created: Date
    /// What the pod's uts namespace is called (`--hostname`, default the pod's name).
    public var hostname: String
    /// The pod's address, MAC and published ports on a bridge network; nil: only lo.
    /// Held here as a container's is in its record: the record is the allocation.
    public var endpoint: ContainerNetwork?

    public init(id: String, name: String, created: Date, hostname: String, endpoint: ContainerNetwork?) {
        self.id = id
        self.name = name
        self.created = created
        self.hostname = hostname
        self.endpoint = endpoint
    }
}

/// `pods/<name>/pod.json` and the pinned namespaces `pods/<name>/ns/{net,ipc,uts}`.
public struct PodStore: Sendable {
    public let root: StateRoot

    /// The nsfs files of a pod, by OCI namespace type.
    public static let namespaceFiles = [("network", "net"), ("ipc", "ipc"), ("uts", "uts")]

    public init(root: StateRoot) {
        self.root = root
    }

    public var directory: String { "\(root.path)/pods" }
    public func podDirectory(_ name: String) -> String { "\(directory)/\(name)" }
    public func namespaceDirectory(_ name: String) -> String { "\(podDirectory(name))/ns" }
    private func recordPath(_ name: String) -> String { "\(podDirectory(name))/pod.json" }

    /// The path of the pod's pinned namespace of OCI `type`.
    public func namespacePath(_ name: String, type: String) -> String {
        let file = Self.namespaceFiles.first { $0.0 == type }?.1 ?? type
        return "\(namespaceDirectory(name))/\(file)"
    }

    /// Runs `body` holding the pod lock: creation, membership checks and removal.
    public func withLock<T>(_ body: () throws -> T) throws -> T {
        try FileLock.holding("\(root.locksDirectory)/pods.lock", body)
    }

    public func exists(_ name: String) -> Bool { Files.exists(recordPath(name)) }

    public func load(_ name: String) throws(StoreError) -> PodRecord {
        try Names.validate(name, kind: "pod")
        guard let bytes = try? Files.read(recordPath(name)) else {
            throw StoreError(.notFound, "no such pod: \(name)")
        }
        do {
            return try JSONDecoder.ferry.decode(PodRecord.self, from: Data(bytes))
        } catch {
            throw StoreError(.corrupt, "pod '\(name)' record is unreadable", cause: error)
        }
    }

    public func list() -> [PodRecord] {
        let names = (try? Files.listDirectory(directory)) ?? []
        return names.compactMap { try? load($0) }.sorted { $0.name < $1.name }
    }

    /// Makes the pod's directory and the empty files its namespaces are mounted on.
    public func prepare(_ name: String) throws {
        do {
            try Files.createDirectory(directory, mode: 0o700)
            try Files.createDirectory(podDirectory(name), mode: 0o700)
            try Files.createDirectory(namespaceDirectory(name), mode: 0o700)
            for (type, _) in Self.namespaceFiles {
                let path = namespacePath(name, type: type)
                if !Files.exists(path) { try Files.writeAtomically([], to: path) }
            }
        } catch {
            throw StoreError(.io, "cannot create pod '\(name)'", cause: error)
        }
    }

    /// Writes the record (temp file and rename).
    public func save(_ record: PodRecord) throws {
        do {
            try Files.writeAtomically(Array(try JSONEncoder.ferry.encode(record)), to: recordPath(record.name))
        } catch {
            throw StoreError(.io, "cannot write pod '\(record.name)'", cause: error)
        }
    }

    /// Removes the pod's directory; its namespaces must be unmounted first.
    public func remove(_ name: String) throws {
        do {
            try Files.removeTree(podDirectory(name))
        } catch {
            throw StoreError(.io, "cannot remove pod '\(name)'", cause: error)
        }
    }
}
