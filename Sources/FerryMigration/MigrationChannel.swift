import Crypto
import Foundation
import Logging
import Synchronization

/// A framed, authenticated, typed channel between the two hosts of a migration.
///
/// Blocking: every call returns when its frames are written or read, or throws; the
/// orchestration runs it on its own threads. One thread may send while another receives
/// (each direction has its own lock); two threads sending (or receiving) take turns, a
/// whole message (or a whole file, for the file helpers) at a time.
///
/// After the handshake every frame is tagged with the session key, so that any change,
/// replay, reordering or loss is detected (`.integrityFailed`). After any receive error
/// other than a timeout between frames, receiving throws that error again: the stream
/// cannot be trusted to be in step. The same holds for a send that failed in the
/// transport. Close the channel (`close()`) to end the connection.
public final class MigrationChannel: @unchecked Sendable {
    /// Timeouts and sizes.
    public struct Configuration: Sendable {
        /// How long a read may wait for the peer's next bytes, or a write for the peer to
        /// accept more, before failing with `.timedOut`. Per wait, not per file: a long
        /// transfer is fine while bytes keep moving. Override per call with `receive(timeout:)`.
        public var timeout: Duration
        /// The same, for the handshake (a peer that does not answer is usually not one).
        public var handshakeTimeout: Duration
        /// Bytes per `data` frame sent by the file helpers; at most `MigrationProtocol.maxChunkSize`.
        public var chunkSize: Int
        /// Receives debug events (handshake done, members sent and received) with
        /// `ferry.peer` and `ferry.phase` metadata.
        public var logger: Logger
        /// The version sent in `hello`; differs from `MigrationProtocol.version` only in tests.
        var advertisedVersion = MigrationProtocol.version

        public init(
            timeout: Duration = .seconds(30),
            handshakeTimeout: Duration = .seconds(10),
            chunkSize: Int = MigrationProtocol.maxChunkSize,
            logger: Logger = Logger(label: "ferry.migration")
        ) {
            self.timeout = timeout
            self.handshakeTimeout = handshakeTimeout
            self.chunkSize = max(1, min(chunkSize, MigrationProtocol.maxChunkSize))
            self.logger = logger
        }
    }

    /// The byte stream underneath.
    public let transport: any MigrationTransport
    /// The settings given at creation.
    public let configuration: Configuration
    let logger: Logger

    private let sendLock = NSLock()
    private let receiveLock = NSLock()
    // Guarded by sendLock.
    private var sender: FrameAuthenticator?
    private var sendBuffer: [UInt8] = []
    private var sendFailure: MigrationError?
    var chunkBuffer: [UInt8] = []
    // Guarded by receiveLock.
    private var receiver: FrameAuthenticator?
    private var receiveBuffer: [UInt8] = []
    /// While the handshake runs: when it must be over, whatever the peer sends (a peer
    /// trickling one byte at a time would otherwise reset each read's timeout).
    private var handshakeDeadline: ContinuousClock.Instant?
    /// Whether the peer has sent anything since the handshake began: until it has, a
    /// read times out as "sent nothing", after that as "did not finish the handshake".
    private var handshakeHeard = false
    private var receiveFailure: MigrationError?
    // Set once by the handshake, under both locks.
    private var sessionRole: MigrationRole?
    // The same, readable without waiting for a lock (0: no session yet).
    private let publishedRole = Atomic<UInt8>(0)

    /// A channel over `transport`; call `handshake(role:token:)` before anything else.
    public init(transport: any MigrationTransport, configuration: Configuration = Configuration()) {
        self.transport = transport
        self.configuration = configuration
        var logger = configuration.logger
        logger[metadataKey: "ferry.peer"] = "\(transport.peerName)"
        self.logger = logger
    }

    /// The peer, for messages.
    public var peerName: String { transport.peerName }

    /// This side's role, once the handshake has succeeded.
    public var role: MigrationRole? {
        MigrationRole(rawValue: publishedRole.load(ordering: .acquiring))
    }

    /// Ends the connection. Calls in progress in other threads fail with `.connectionClosed`.
    public func close() {
        transport.close()
    }

    // MARK: Handshake

    /// Proves to the peer that this side holds `token`, checks that the peer does too,
    /// and derives the session key. The token itself never crosses the wire.
    ///
    /// Each side sends `hello(version, role, nonce)` and reads the peer's; then sends
    /// `proof` = HMAC-SHA256(token, "ferry-migrate-v1" || role || own nonce || peer nonce)
    /// and checks the peer's. The session key is HKDF-SHA256(token, salt: source nonce ||
    /// destination nonce, info: "ferry-migrate-v1 session"). On any failure the peer is
    /// sent `refused(reason)` where that helps, and the transport is closed.
    ///
    /// - Throws: `.authenticationFailed`, `.versionMismatch`, `.refused`,
    ///   `.protocolViolation`, `.invalidArgument` (token shorter than
    ///   `MigrationProtocol.minimumTokenLength`), and the transport's errors.
    public func handshake(role: MigrationRole, token: [UInt8]) throws(MigrationError) {
        try sendLock.locked { () throws(MigrationError) in
            try receiveLock.locked { () throws(MigrationError) in
                guard sessionRole == nil, sender == nil else {
                    throw MigrationError(.protocolViolation(unexpected: nil), "the migration handshake with \(peerName) was already done", peer: peerName)
                }
                guard token.count >= MigrationProtocol.minimumTokenLength else {
                    throw MigrationError(
                        .invalidArgument,
                        "cannot migrate: the token has \(token.count) bytes; at least \(MigrationProtocol.minimumTokenLength) are needed (for example: head -c 32 /dev/urandom > token)",
                        peer: peerName)
                }
                var logger = self.logger
                logger[metadataKey: "ferry.phase"] = "handshake"
                do throws(MigrationError) {
                    let keys = try unlockedHandshake(role: role, token: token)
                    self.sender?.startSession(key: role == .source ? keys.sourceToDestination : keys.destinationToSource)
                    self.receiver?.startSession(key: role == .source ? keys.destinationToSource : keys.sourceToDestination)
                    sessionRole = role
                    publishedRole.store(role.rawValue, ordering: .releasing)
                    logger.debug("migration handshake done", metadata: ["ferry.role": "\(role)"])
                } catch {
                    sender = nil
                    receiver = nil
                    transport.close()
                    throw error
                }
            }
        }
    }

    /// Tells a peer that has just connected that this side will not migrate with it
    /// (busy, shutting down), instead of a handshake, then closes. The peer's handshake
    /// fails with `.refused(reason)`.
    ///
    /// The peer's hello is read first (waiting at most the handshake timeout): closing a
    /// TCP socket with unread data sends a reset, which could destroy the refusal before
    /// the peer reads it.
    public func refuse(reason: String) {
        sendLock.locked {
            receiveLock.locked {
                guard sessionRole == nil else { return }
                // Handshake frames carry no direction yet, so the role here does not matter.
                if sender == nil { sender = FrameAuthenticator(direction: .destination) }
                if receiver == nil { receiver = FrameAuthenticator(direction: .source) }
                _ = try? unlockedReceive(timeout: configuration.handshakeTimeout)
                try? unlockedSend(.refused(reason: reason), timeout: configuration.handshakeTimeout)
            }
        }
        transport.close()
    }

    /// The session's two keys, one per direction.
    struct SessionKeys {
        var sourceToDestination: SymmetricKey
        var destinationToSource: SymmetricKey
    }

    private func unlockedHandshake(role: MigrationRole, token: [UInt8]) throws(MigrationError) -> SessionKeys {
        let timeout = configuration.handshakeTimeout
        handshakeDeadline = ContinuousClock.now + timeout
        handshakeHeard = false
        defer { handshakeDeadline = nil }
        let version = configuration.advertisedVersion
        sender = FrameAuthenticator(direction: role)
        receiver = FrameAuthenticator(direction: role.peer)
        var generator = SystemRandomNumberGenerator()
        let nonce = (0..<MigrationProtocol.nonceSize).map { _ in UInt8.random(in: 0...255, using: &generator) }

        do throws(MigrationError) {
            try unlockedSend(.hello(version: version, role: role, nonce: nonce), timeout: timeout)
        } catch {
            // A peer that refuses and closes at once may have left its reason behind.
            if error.code == .connectionClosed, case let .refused(reason)? = try? unlockedReceive(timeout: timeout) {
                throw MigrationError(.refused(reason: reason), "cannot migrate: \(peerName) refused the session: \(reason)", peer: peerName)
            }
            throw error
        }
        let hello = try unlockedReceive(timeout: timeout)
        guard case let .hello(peerVersion, peerRole, peerNonce) = hello else {
            throw handshakeFailure(unexpected: hello, expected: "hello")
        }
        guard peerVersion == version else {
            refuseQuietly("version mismatch: this host speaks migration protocol version \(version), the peer version \(peerVersion)")
            throw MigrationError(
                .versionMismatch,
                "cannot migrate: \(peerName) speaks migration protocol version \(peerVersion), this host speaks version \(version) (version mismatch)",
                peer: peerName)
        }
        guard peerRole == role.peer else {
            refuseQuietly("both sides are the \(role)")
            throw MigrationError(.protocolViolation(unexpected: .hello), "cannot migrate: \(peerName) is also a migration \(role)", peer: peerName)
        }
        // Our own hello sent back to us would carry our nonce: never accept a reflection.
        guard peerNonce != nonce else {
            refuseQuietly("authentication failed")
            throw MigrationError(.authenticationFailed, "cannot migrate: \(peerName) echoed this host's nonce (authentication failed)", peer: peerName)
        }

        let proof = Self.proof(token: token, role: role, ownNonce: nonce, peerNonce: peerNonce)
        try unlockedSend(.proof(hmac: proof), timeout: timeout)
        let answer = try unlockedReceive(timeout: timeout)
        guard case let .proof(peerProof) = answer else {
            if case let .refused(reason) = answer, reason == Self.authenticationFailedReason {
                throw MigrationError(.authenticationFailed, "cannot migrate: \(peerName) refused the token (authentication failed)", peer: peerName)
            }
            throw handshakeFailure(unexpected: answer, expected: "proof")
        }
        let expected = Self.proof(token: token, role: peerRole, ownNonce: peerNonce, peerNonce: nonce)
        let valid = expected.withUnsafeBytes { a in peerProof.withUnsafeBytes { b in constantTimeEqual(a, b) } }
        guard valid else {
            refuseQuietly(Self.authenticationFailedReason)
            throw MigrationError(
                .authenticationFailed,
                "cannot migrate: \(peerName) did not prove it holds the same token (authentication failed)",
                peer: peerName)
        }
        let salt = role == .source ? nonce + peerNonce : peerNonce + nonce
        func key(_ direction: String) -> SymmetricKey {
            HKDF<SHA256>.deriveKey(
                inputKeyMaterial: SymmetricKey(data: token), salt: salt,
                info: Array("\(MigrationProtocol.label) session \(direction)".utf8), outputByteCount: 32)
        }
        return SessionKeys(sourceToDestination: key("source to destination"), destinationToSource: key("destination to source"))
    }

    static let authenticationFailedReason = "authentication failed"

    /// HMAC-SHA256(token, "ferry-migrate-v1" || role || own nonce || peer nonce).
    static func proof(token: [UInt8], role: MigrationRole, ownNonce: [UInt8], peerNonce: [UInt8]) -> [UInt8] {
        let data = Array(MigrationProtocol.label.utf8) + [role.rawValue] + ownNonce + peerNonce
        return Array(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: token)))
    }

    private func refuseQuietly(_ reason: String) {
        // The peer may already have given up; the local error is what matters.
        try? unlockedSend(.refused(reason: reason), timeout: configuration.handshakeTimeout)
    }

    private func handshakeFailure(unexpected message: MigrationMessage, expected: String) -> MigrationError {
        if case let .refused(reason) = message {
            return MigrationError(.refused(reason: reason), "cannot migrate: \(peerName) refused the session: \(reason)", peer: peerName)
        }
        refuseQuietly("expected \(expected), got \(message.kind)")
        return MigrationError(
            .protocolViolation(unexpected: message.kind),
            "cannot migrate: \(peerName) sent \(message.kind) during the handshake, where \(expected) was expected",
            peer: peerName)
    }

    // MARK: Messages

    /// Sends one message.
    ///
    /// - Throws: `.protocolViolation` before the handshake or for handshake messages,
    ///   `.frameTooLarge` for a message over `MigrationProtocol.maxFrameSize` (nothing is
    ///   sent), and the transport's errors.
    public func send(_ message: MigrationMessage) throws(MigrationError) {
        guard !message.kind.isHandshake else {
            throw MigrationError(.protocolViolation(unexpected: message.kind), "\(message.kind) is sent by the handshake only", peer: peerName)
        }
        try sendLock.locked { () throws(MigrationError) in
            try checkSession(sending: true)
            try unlockedSend(message, timeout: configuration.timeout)
        }
    }

    /// Receives the next message, waiting at most `timeout` (default: the configuration's)
    /// for each part of it.
    ///
    /// - Throws: `.integrityFailed`, `.frameTooLarge`, `.connectionClosed`, `.timedOut`,
    ///   `.protocolViolation` (before the handshake, a handshake message, a malformed one).
    public func receive(timeout: Duration? = nil) throws(MigrationError) -> MigrationMessage {
        try receiveLock.locked { () throws(MigrationError) in
            try checkSession(sending: false)
            return try unlockedSessionReceive(timeout: timeout ?? configuration.timeout)
        }
    }

    /// Receives the next message and checks that it is one of `kinds`. An `abort` or
    /// `error` from the peer (unless expected) becomes `.peerAborted(reason)`; anything
    /// else becomes `.protocolViolation`.
    public func receive(expecting kinds: MigrationMessage.Kind..., timeout: Duration? = nil) throws(MigrationError) -> MigrationMessage {
        let message = try receive(timeout: timeout)
        guard kinds.contains(message.kind) else { throw unexpected(message, expected: kinds.map(\.description).joined(separator: " or ")) }
        return message
    }

    func unexpected(_ message: MigrationMessage, expected: String) -> MigrationError {
        switch message {
        case let .abort(reason):
            return MigrationError(.peerAborted(reason: reason), "cannot migrate: \(peerName) aborted: \(reason)", peer: peerName)
        case let .error(text):
            return MigrationError(.peerAborted(reason: text), "cannot migrate: \(peerName) failed: \(text)", peer: peerName)
        default:
            return MigrationError(
                .protocolViolation(unexpected: message.kind),
                "cannot migrate: \(peerName) sent \(message.kind) where \(expected) was expected",
                peer: peerName)
        }
    }

    // MARK: Frames (callers hold the lock of their direction)

    /// Runs `body` with the send lock held, after checking that the session is usable.
    func withSendLock<T>(_ body: () throws(MigrationError) -> T) throws(MigrationError) -> T {
        try sendLock.locked { () throws(MigrationError) -> T in
            try checkSession(sending: true)
            return try body()
        }
    }

    /// Runs `body` with the receive lock held, after checking that the session is usable.
    func withReceiveLock<T>(_ body: () throws(MigrationError) -> T) throws(MigrationError) -> T {
        try receiveLock.locked { () throws(MigrationError) -> T in
            try checkSession(sending: false)
            return try body()
        }
    }

    /// The sizes of the channel's buffers, for tests that check memory stays bounded.
    func bufferSizes() -> [Int] {
        sendLock.locked { [sendBuffer.capacity, chunkBuffer.count] } + receiveLock.locked { [receiveBuffer.count] }
    }

    /// Records `error` as the receive side's failure (the stream is now out of step) and
    /// returns it; called with the receive lock held.
    func failReceive(_ error: MigrationError) -> MigrationError {
        receiveFailure = error
        return error
    }

    private func checkSession(sending: Bool) throws(MigrationError) {
        guard sessionRole != nil else {
            throw MigrationError(.protocolViolation(unexpected: nil), "the migration channel to \(peerName) is used before its handshake", peer: peerName)
        }
        if let failure = sending ? sendFailure : receiveFailure { throw failure }
    }

    func unlockedSend(_ message: MigrationMessage, timeout: Duration) throws(MigrationError) {
        let payload = try message.encodePayload()
        try payload.withBytes { raw throws(MigrationError) in
            try unlockedSendFrame(kind: message.kind.rawValue, payload: raw, timeout: timeout)
        }
    }

    /// Frames, tags and writes one message. A transport failure spoils the send side.
    func unlockedSendFrame(kind: UInt16, payload: UnsafeRawBufferPointer, timeout: Duration) throws(MigrationError) {
        guard var sender else {
            throw MigrationError(.protocolViolation(unexpected: nil), "the migration channel to \(peerName) is not open", peer: peerName)
        }
        let frameSize = MigrationProtocol.headerSize + payload.count + sender.tagSize
        guard frameSize <= MigrationProtocol.maxFrameSize else {
            let name = MigrationMessage.Kind(rawValue: kind)?.description ?? "0x\(String(kind, radix: 16))"
            throw MigrationError(
                .frameTooLarge,
                "cannot send a \(name) message of \(describe(bytes: Int64(payload.count))) to \(peerName): frames are limited to \(describe(bytes: Int64(MigrationProtocol.maxFrameSize)))",
                peer: peerName)
        }
        sendBuffer.removeAll(keepingCapacity: true)
        // Exactly one frame: appending would grow the buffer by doubling.
        if sendBuffer.capacity < frameSize { sendBuffer.reserveCapacity(frameSize) }
        sender.appendFrame(kind: kind, payload: payload, to: &sendBuffer)
        self.sender = sender
        do {
            try sendBuffer.withBytes { raw throws(MigrationError) in
                try transport.write(all: raw, timeout: timeout)
            }
        } catch {
            let failure = MigrationError(error.code, "cannot migrate: \(error.message)", peer: peerName, cause: error.cause, hint: error.hint)
            if sessionRole != nil { sendFailure = failure }
            throw failure
        }
    }

    /// Receives a message after the handshake, where handshake messages are violations.
    func unlockedSessionReceive(timeout: Duration) throws(MigrationError) -> MigrationMessage {
        try sessionMessage(try unlockedReceive(timeout: timeout))
    }

    func unlockedReceive(timeout: Duration) throws(MigrationError) -> MigrationMessage {
        try unlockedReceiveFrame(timeout: timeout) { kind, payload throws(MigrationError) in try decode(kind: kind, payload: payload) }
    }

    /// Decodes a frame's payload; a malformed one is the peer's fault and says so.
    func decode(kind: UInt16, payload: UnsafeRawBufferPointer) throws(MigrationError) -> MigrationMessage {
        do throws(MigrationError) {
            return try MigrationMessage.decode(kind: kind, payload: payload)
        } catch {
            throw MigrationError(error.code, "cannot migrate: \(peerName) sent a \(error.message)", peer: peerName, cause: error.cause, hint: error.hint)
        }
    }

    /// `message`, unless it is a handshake message, which is a violation after the handshake.
    func sessionMessage(_ message: MigrationMessage) throws(MigrationError) -> MigrationMessage {
        if message.kind.isHandshake {
            throw MigrationError(
                .protocolViolation(unexpected: message.kind), "cannot migrate: \(peerName) sent \(message.kind) after the handshake", peer: peerName)
        }
        return message
    }

    /// Reads one frame, checks its size before reading its payload and its tag before
    /// looking at its content, and hands type and payload to `body`. Any failure except
    /// a timeout before the frame's first byte spoils the receive side.
    func unlockedReceiveFrame<T>(timeout: Duration, _ body: (UInt16, UnsafeRawBufferPointer) throws(MigrationError) -> T) throws(MigrationError) -> T {
        guard receiver != nil else {
            throw MigrationError(.protocolViolation(unexpected: nil), "the migration channel to \(peerName) is not open", peer: peerName)
        }
        var started = false
        do {
            return try readFrame(timeout: timeout, started: &started, body)
        } catch {
            if sessionRole != nil, started || error.code != .timedOut { receiveFailure = error }
            throw error
        }
    }

    private func readFrame<T>(timeout: Duration, started: inout Bool, _ body: (UInt16, UnsafeRawBufferPointer) throws(MigrationError) -> T)
        throws(MigrationError) -> T
    {
        let header = MigrationProtocol.headerSize
        let authenticated = sessionRole != nil
        let limit = authenticated ? MigrationProtocol.maxFrameSize : MigrationProtocol.maxHandshakeFrameSize
        if receiveBuffer.count < header { receiveBuffer = [UInt8](repeating: 0, count: authenticated ? 64 * 1024 : limit) }
        try readExactly(header, at: 0, timeout: timeout, started: &started)
        let (length, kind) = receiveBuffer.withUnsafeBytes { raw in
            (Int(raw.bigEndian(UInt32.self, at: 0)), raw.bigEndian(UInt16.self, at: 4))
        }
        let frameSize = 4 + length
        guard frameSize <= limit else {
            let stage = authenticated ? "" : " before the handshake was done"
            throw MigrationError(
                .frameTooLarge,
                "cannot migrate: \(peerName) announced a frame of \(describe(bytes: Int64(frameSize)))\(stage), more than the \(describe(bytes: Int64(limit))) limit (is it a Ferry migration peer?)",
                peer: peerName)
        }
        guard var receiver else { throw MigrationError(.protocolViolation(unexpected: nil), "the migration channel is not open") }
        let tagSize = receiver.tagSize
        guard length >= 2 + tagSize else {
            throw MigrationError(
                .protocolViolation(unexpected: nil), "cannot migrate: \(peerName) sent a frame of \(frameSize) bytes, too short to hold a tag", peer: peerName)
        }
        if receiveBuffer.count < frameSize {
            receiveBuffer += [UInt8](repeating: 0, count: frameSize - receiveBuffer.count)
        }
        try readExactly(frameSize - header, at: header, timeout: timeout, started: &started)
        let payloadEnd = frameSize - tagSize
        let sequence = receiver.sequence
        // In the session this also decrypts the payload in place.
        let valid = receiveBuffer.withUnsafeMutableBytes { raw in
            receiver.open(
                kind: kind,
                payload: UnsafeMutableRawBufferPointer(rebasing: raw[header..<payloadEnd]),
                received: UnsafeRawBufferPointer(rebasing: raw[payloadEnd..<frameSize]))
        }
        guard valid else {
            let stage = sessionRole == nil ? "handshake frame" : "frame"
            throw MigrationError(
                .integrityFailed,
                "cannot migrate: \(stage) \(sequence) from \(peerName) failed its integrity check (tampered, replayed, reordered or dropped)",
                peer: peerName)
        }
        self.receiver = receiver
        return try receiveBuffer.withBytes { raw throws(MigrationError) in
            try body(kind, UnsafeRawBufferPointer(rebasing: raw[header..<payloadEnd]))
        }
    }

    /// The handshake's deadline passed while the peer was part-way through it. Built only
    /// then: readExactly is on the page channel's hot path.
    private func handshakeUnfinished() -> MigrationError {
        MigrationError(
            .timedOut, "cannot migrate: \(peerName) did not finish the handshake within \(describe(configuration.handshakeTimeout))", peer: peerName)
    }

    private func readExactly(_ count: Int, at offset: Int, timeout: Duration, started: inout Bool) throws(MigrationError) {
        var done = 0
        while done < count {
            var readTimeout = timeout
            if let deadline = handshakeDeadline, handshakeHeard {
                let left = deadline - ContinuousClock.now
                guard left > .zero else { throw handshakeUnfinished() }
                readTimeout = min(timeout, left)
            }
            let n: Int
            do {
                n = try receiveBuffer.withMutableBytes { [readTimeout] raw throws(MigrationError) in
                    try transport.read(
                        into: UnsafeMutableRawBufferPointer(rebasing: raw[(offset + done)..<(offset + count)]), timeout: readTimeout)
                }
            } catch {
                if error.code == .timedOut, readTimeout < timeout { throw handshakeUnfinished() }
                throw MigrationError(error.code, "cannot migrate: \(error.message)", peer: peerName, cause: error.cause, hint: error.hint)
            }
            if handshakeDeadline != nil { handshakeHeard = true }
            if n == 0 {
                let message =
                    started
                    ? "cannot migrate: \(peerName) closed the connection in the middle of a frame"
                    : "cannot migrate: \(peerName) closed the connection"
                throw MigrationError(.connectionClosed, message, peer: peerName)
            }
            started = true
            done += n
        }
    }
}

extension NSLock {
    /// Runs `body` with the lock held, keeping `body`'s typed error.
    func locked<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}
