import FerrySystem

/// Errors of the coordinator: "cannot checkpoint container 'web': criu dump failed: ...".
public struct CheckpointError: CodedError {
    public enum Code: Sendable, Equatable {
        case invalidState
        case dumpFailed
        case exportFailed
        case restoreFailed
        case incompatible
        case invalidArchive
        case conflict
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
