import Crypto
import Foundation

/// Computes and checks the tag that ends every frame, for one direction of a channel.
///
/// tag = HMAC-SHA256(key, direction || sequence || type || payload), where direction is
/// the sender's role byte and sequence counts this direction's frames from 0 (u64, big
/// endian). A frame tampered with, replayed, reordered or missing makes the receiver's
/// expected sequence or content differ, so its tag fails.
///
/// During the handshake the key is a fixed public constant and the direction byte is 0
/// (roles are not settled yet): the tag is then only a checksum, and the proofs are what
/// authenticates. After it, the key is the session key derived from the token and both
/// nonces, and sequence numbers start again from 0.
struct FrameAuthenticator {
    private(set) var key: SymmetricKey
    let direction: MigrationRole
    private(set) var sequence: UInt64 = 0
    private var inSession = false

    /// The public key of handshake frames.
    static var handshakeKey: SymmetricKey { SymmetricKey(data: Array("\(MigrationProtocol.label) handshake".utf8)) }

    init(direction: MigrationRole) {
        self.key = Self.handshakeKey
        self.direction = direction
    }

    /// Switches to the session key; the next frame has sequence number 0.
    mutating func startSession(key: SymmetricKey) {
        self.key = key
        sequence = 0
        inSession = true
    }

    /// The tag of the next frame in this direction.
    func tag(kind: UInt16, payload: UnsafeRawBufferPointer) -> HashedAuthenticationCode<SHA256> {
        var header: [UInt8] = [inSession ? direction.rawValue : 0]
        header.appendBigEndian(sequence)
        header.appendBigEndian(kind)
        var mac = HMAC<SHA256>(key: key)
        mac.update(data: header)
        mac.update(data: payload)
        return mac.finalize()
    }

    /// Moves on to the next frame.
    mutating func advance() {
        sequence &+= 1
    }

    /// Appends a whole frame (length, type, payload, tag) to `buffer` and advances.
    mutating func appendFrame(kind: UInt16, payload: UnsafeRawBufferPointer, to buffer: inout [UInt8]) {
        let tag = tag(kind: kind, payload: payload)
        buffer.appendBigEndian(UInt32(2 + payload.count + MigrationProtocol.tagSize))
        buffer.appendBigEndian(kind)
        buffer.append(contentsOf: payload)
        tag.withUnsafeBytes { buffer.append(contentsOf: $0) }
        advance()
    }

    /// Checks `received` against the tag this frame should have; advances only when it
    /// matches, so a failure leaves nothing half-consumed.
    mutating func verify(kind: UInt16, payload: UnsafeRawBufferPointer, received: UnsafeRawBufferPointer) -> Bool {
        let expected = tag(kind: kind, payload: payload)
        let valid = expected.withUnsafeBytes { constantTimeEqual($0, received) }
        if valid { advance() }
        return valid
    }
}

/// Compares two byte strings in time that depends only on their lengths, so that a
/// forger learns nothing from how long a rejection takes.
func constantTimeEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for i in 0..<a.count { difference |= a[i] ^ b[i] }
    return difference == 0
}
