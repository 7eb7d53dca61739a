import FerrySystem

/// Errors of the host's network setup: links, addresses, routes and nftables rules.
public struct NetworkError: CodedError {
    public enum Code: Sendable, Equatable {
        /// A netlink request failed (the errno says why).
        case netlink
        /// libnftables refused the table (its message is quoted).
        case nftables
        case invalidArgument
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
