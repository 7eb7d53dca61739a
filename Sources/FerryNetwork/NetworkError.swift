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

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}
