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
        /// The container's command (or an exec'd one) does not exist: exec said ENOENT.
        /// `ferry` exits 127 for it, as a shell and podman do.
        case commandNotFound
        /// The command exists but cannot be executed (EACCES, ENOEXEC...): exit 126.
        case commandNotInvocable
    }

    public let code: Code
    public let message: String
    public let cause: (any Error)?
    public let hint: String?

    /// `message` is this layer's sentence; `cause`'s line follows it after a colon.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil, hint: String? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
        self.hint = hint
    }
}
