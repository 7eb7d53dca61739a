import FerrySystem

/// Errors of the runtime: each names the container and the operation, and keeps the
/// underlying cause for the message.
public struct RuntimeError: CodedError {
    public enum Code: Sendable, Equatable {
        case invalidArgument
        case notFound
        case invalidState
        case spawnFailed
        case mountFailed
        case cgroupFailed
        case supervisorFailed
        case permissionDenied
        case execFailed
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}
