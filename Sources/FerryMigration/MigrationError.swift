import FerrySystem
import SystemPackage

/// The one error type of the migration channel and its transports.
///
/// The message is a whole sentence that names the peer when it is known:
/// "cannot migrate: 127.0.0.1:7070 refused the token (authentication failed)".
public struct MigrationError: CodedError, Equatable {
    /// What went wrong, for callers that react differently (retry, report, clean up).
    public enum Code: Sendable, Equatable {
        /// The peer does not hold the same token (or refused ours).
        case authenticationFailed
        /// The peers speak different protocol versions; the message names both.
        case versionMismatch
        /// A frame's tag did not verify: tampered, replayed, reordered or dropped frames,
        /// or a file whose sha256 differs from the one its sender announced.
        case integrityFailed
        /// A frame larger than `MigrationProtocol.maxFrameSize`, announced by the peer or
        /// about to be sent.
        case frameTooLarge
        /// The peer sent (or accepted) nothing for longer than the timeout.
        case timedOut
        /// The connection ended (in the middle of a frame, or where a message was due).
        case connectionClosed
        /// A message that is not valid here: `unexpected` is what arrived, when it is known.
        case protocolViolation(unexpected: MigrationMessage.Kind?)
        /// The peer refused the session during the handshake, for `reason`.
        case refused(reason: String)
        /// The peer sent `abort` or `error` where another message was expected.
        case peerAborted(reason: String)
        /// A bad argument from the caller: an address that is not an IP literal, a token
        /// that is too short.
        case invalidArgument
        /// A system call failed (socket, file).
        case io(Errno?)
    }

    /// What kind of failure this is.
    public let code: Code
    /// This layer's sentence; the cause's line follows it.
    public let message: String
    /// The peer's address ("127.0.0.1:7070", "[::1]:7070"), or a transport's name.
    public let peer: String?
    public let cause: (any Error)?
    public let hint: String?

    public init(_ code: Code, _ message: String, peer: String? = nil, cause: (any Error)? = nil, hint: String? = nil) {
        self.code = code
        self.message = message
        self.peer = peer
        self.cause = cause
        self.hint = hint
    }

    /// Two migration errors are equal when they say the same thing about the same peer
    /// (their causes' lines are part of what they say).
    public static func == (lhs: MigrationError, rhs: MigrationError) -> Bool {
        lhs.code == rhs.code && lhs.peer == rhs.peer && lhs.description == rhs.description
    }
}

/// "1.5 s", "300 ms": for timeouts in messages.
func describe(_ duration: Duration) -> String {
    let (seconds, attoseconds) = duration.components
    let milliseconds = seconds * 1000 + attoseconds / 1_000_000_000_000_000
    if milliseconds < 1000 { return "\(milliseconds) ms" }
    if milliseconds % 1000 == 0 { return "\(milliseconds / 1000) s" }
    return "\(Double(milliseconds) / 1000) s"
}

/// "4 MiB", "1.2 GiB", "812 bytes": for sizes in messages.
func describe(bytes: Int64) -> String {
    let units: [(Int64, String)] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
    for (size, unit) in units where bytes >= size {
        let tenths = Int64((Double(bytes) / Double(size) * 10).rounded())
        return tenths % 10 == 0 ? "\(tenths / 10) \(unit)" : "\(tenths / 10).\(tenths % 10) \(unit)"
    }
    return "\(bytes) bytes"
}
