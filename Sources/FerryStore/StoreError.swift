import FerrySystem

/// Errors of the state store. The message names the object and what failed, so the CLI
/// can print it as one line.
public struct StoreError: CodedError {
    public enum Code: Sendable, Equatable {
        case notFound
        case alreadyExists
        case invalidArgument
        case inUse
        case corrupt
        case io
        case importFailed
        case invalidReference
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
