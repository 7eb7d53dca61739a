import FerrySystem

/// A fresh directory under /tmp for one test, removed by `cleanup()`.
public struct TempDir: Sendable {
    public let path: String

    public init(_ label: String = "ferry-test") throws {
        path = try Files.makeTemporaryDirectory(prefix: "/tmp/\(label)-")
    }

    public func sub(_ name: String) -> String { "\(path)/\(name)" }

    public func cleanup() { try? Files.removeUntrustedTree(path) }
}
