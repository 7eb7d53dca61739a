import FerryStore
import FerrySystem
import Foundation

/// What Ferry records next to CRIU's images so that a restore can rebuild what `run`
/// built: kept as `checkpoint.json` in the container's directory, and carried in an
/// export as part of `ferry.json`.
public struct CheckpointMetadata: Codable, Sendable {
    /// The targets of the init's fds 0, 1, 2 at dump time ("pipe:[1234]"): the restore
    /// hands new pipes in their place (CRIU's inherit-fd).
    public var stdio: [String]
    public var network: NetworkMode
    public var checkpointedAt: Date
    public var frozenMilliseconds: Double
    public var tcpEstablished: Bool
    public var fileLocks: Bool
    /// The images hold no anonymous memory: it comes from a page server during the
    /// restore (post-copy migration). Absent in ordinary checkpoints.
    public var lazyPages: Bool?

    public static let fileName = ContainerStore.checkpointMetadataName
    public static let imagesDirectory = ContainerStore.checkpointImagesName

    public static func load(from directory: String) throws -> CheckpointMetadata {
        let path = "\(directory)/\(fileName)"
        guard let bytes = try? Files.read(path) else {
            throw CheckpointError(.invalidState, "no checkpoint found (\(path) is missing)")
        }
        return try JSONDecoder.ferry.decode(CheckpointMetadata.self, from: Data(bytes))
    }

    public func save(in directory: String) throws {
        try Files.writeAtomically(Array(try JSONEncoder.ferry.encode(self)), to: "\(directory)/\(Self.fileName)", mode: 0o600)
    }
}

/// The key CRIU records for the host's network namespace when a container shares it.
let hostNetworkKey = "extRootNetNS"

/// The key CRIU records for a container's own network namespace. It holds nothing but
/// lo, so rather than dumping it (ip, iptables-save, nft: the bulk of a small container's
/// frozen time) Ferry marks it external and restores into a fresh one.
let containerNetworkKey = "ferryNetNS"
