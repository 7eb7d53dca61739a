import FerrySystem
import Foundation

/// A named volume: a directory under the state root that outlives containers.
public struct VolumeRecord: Codable, Sendable {
    public var name: String
    public var created: Date
    /// The host directory mounted into containers.
    public var mountpoint: String

    public init(name: String, created: Date, mountpoint: String) {
        self.name = name
        self.created = created
        self.mountpoint = mountpoint
    }
}

/// Layout: `volumes/<name>/volume.json` and `volumes/<name>/_data/`.
public struct VolumeStore: Sendable {
    public let root: StateRoot

    public init(root: StateRoot) {
        self.root = root
    }

    private func directory(_ name: String) -> String { "\(root.volumesDirectory)/\(name)" }
    public func dataPath(_ name: String) -> String { "\(directory(name))/_data" }

    private func withLock<T>(_ body: () throws -> T) throws -> T {
        try FileLock.holding("\(root.locksDirectory)/volumes.lock", body)
    }

    @discardableResult
    public func create(_ name: String) throws -> VolumeRecord {
        try Names.validate(name, kind: "volume")
        return try withLock { try make(name) }
    }

    private func make(_ name: String) throws -> VolumeRecord {
        if Files.exists(directory(name)) {
            throw StoreError(.alreadyExists, "volume '\(name)' already exists")
        }
        let record = VolumeRecord(name: name, created: Date(), mountpoint: dataPath(name))
        do {
            try Files.createDirectory(dataPath(name), mode: 0o755)
            let data = try JSONEncoder.ferry.encode(record)
            try Files.writeAtomically(Array(data), to: "\(directory(name))/volume.json")
        } catch {
            try? Files.removeTree(directory(name))
            throw StoreError(.io, "cannot create volume '\(name)'", cause: error)
        }
        return record
    }

    /// The volume, created on first use (as `podman run -v NAME:/path` does).
    public func ensure(_ name: String) throws -> VolumeRecord {
        if let existing = try? inspect(name) { return existing }
        do {
            return try create(name)
        } catch let error as StoreError where error.code == .alreadyExists {
            return try inspect(name)
        }
    }

    public func inspect(_ name: String) throws(StoreError) -> VolumeRecord {
        try Names.validate(name, kind: "volume")
        let path = "\(directory(name))/volume.json"
        guard let bytes = try? Files.read(path) else {
            throw StoreError(.notFound, "no such volume: \(name)")
        }
        do {
            return try JSONDecoder.ferry.decode(VolumeRecord.self, from: Data(bytes))
        } catch {
            throw StoreError(.corrupt, "volume '\(name)' metadata is unreadable", cause: error)
        }
    }

    public func list() -> [VolumeRecord] {
        let names = (try? Files.listDirectory(root.volumesDirectory)) ?? []
        return names.compactMap { try? inspect($0) }
    }

    /// Removes a volume and its data. `usedBy` names containers that still reference it.
    public func remove(_ name: String, usedBy: [String]) throws {
        _ = try inspect(name)
        if !usedBy.isEmpty {
            throw StoreError(.inUse, "volume '\(name)' is in use by container(s) \(usedBy.joined(separator: ", ")): remove them first")
        }
        try withLock {
            do {
                try Files.removeTree(directory(name))
            } catch {
                throw StoreError(.io, "cannot remove volume '\(name)'", cause: error)
            }
        }
    }
}
