import Crypto
import FerrySystem
import Foundation

/// The state root (`--root`, FERRY_ROOT, default /var/lib/ferry): everything Ferry keeps
/// for one "host". Two roots on one machine behave as two hosts: every name, cgroup and
/// mount point Ferry makes is derived from the root, so they never collide.
public struct StateRoot: Sendable {
    public static let defaultPath = "/var/lib/ferry"

    /// Absolute, symlink-free path of the root directory.
    public let path: String

    /// Opens (creating if needed) the state root at `path`.
    ///
    /// The path ends up inside overlayfs mount options, where ',' and ':' are separators,
    /// so such roots are refused up front instead of failing obscurely at `run`.
    public init(path: String) throws(StoreError) {
        guard !path.isEmpty else { throw StoreError(.invalidArgument, "the state root path is empty") }
        do {
            try Files.createDirectory(path, mode: 0o711)
            self.path = try Files.realPath(path)
        } catch {
            throw StoreError(.io, "cannot open state root '\(path)'", cause: error)
        }
        if self.path.contains(",") || self.path.contains(":") {
            throw StoreError(.invalidArgument, "state root '\(self.path)' must not contain ',' or ':' (they separate overlayfs options)")
        }
        for directory in [containersDirectory, namesDirectory, volumesDirectory, locksDirectory] {
            do {
                try Files.createDirectory(directory, mode: 0o700)
            } catch {
                throw StoreError(.io, "cannot create '\(directory)'", cause: error)
            }
        }
    }

    public var containersDirectory: String { "\(path)/containers" }
    public var namesDirectory: String { "\(path)/names" }
    public var volumesDirectory: String { "\(path)/volumes" }
    public var locksDirectory: String { "\(path)/locks" }
    /// CRIU's logs of failed restores whose container was removed with its directory.
    public var logsDirectory: String { "\(path)/logs" }

    /// Name of this root's cgroup subtree, e.g. "ferry-1a2b3c4d5e6f": unique per root path.
    public var cgroupParent: String {
        let digest = SHA256.hash(data: Array(path.utf8))
        let hex = digest.map { String(format: "%02x", $0) }.joined()
        return "ferry-\(hex.prefix(12))"
    }
}

/// Validation of user-chosen names (containers, volumes): they become single path
/// components under the state root, so '/' and '..' can never get in.
public enum Names {
    public static func validate(_ name: String, kind: String) throws(StoreError) {
        let allowedFirst = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        let allowed = allowedFirst.union("_.-")
        guard let first = name.first, allowedFirst.contains(first), name.count <= 128,
            name.allSatisfy({ allowed.contains($0) })
        else {
            throw StoreError(
                .invalidArgument,
                "invalid \(kind) name '\(name)': use letters, digits, '_', '.' or '-', starting with a letter or digit (at most 128)"
            )
        }
    }
}
