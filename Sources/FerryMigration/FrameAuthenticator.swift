import Crypto
import Foundation

/// Computes and checks the tag that ends every frame, for one direction of a channel.
///
/// In the session, tag = GMAC (AES-256-GCM with no plaintext) under the session key, with
/// the payload as the authenticated data and the nonce direction || type || sequence
/// (direction: the sender's role byte; sequence: this direction's frames from 0, u64 big
/// endian); 16 bytes. A frame tampered with, replayed, reordered or missing makes the
/// receiver's expected nonce or content differ, so its tag fails. GMAC rather than HMAC
/// because it runs several times faster on CPUs with AES and carry-less multiply
/// instructions, and a migration tags every byte of a container's memory; the nonce
/// never repeats under one key (each direction has its own byte, and a session's
/// sequence numbers do not wrap).
///
/// Handshake frames are tagged with HMAC-SHA256 (32 bytes) under a fixed public key, with
/// direction 0: the tag is then only a checksum, the proofs are what authenticates, and a
/// peer of another protocol version can still read the `hello` that tells it so.
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

    /// The length of this direction's tags now.
    var tagSize: Int { inSession ? MigrationProtocol.sessionTagSize : MigrationProtocol.tagSize }

    /// The tag of the next frame in this direction.
    func tag(kind: UInt16, payload: UnsafeRawBufferPointer) -> [UInt8] {
        guard inSession else {
            var header: [UInt8] = [0]
            header.appendBigEndian(sequence)
            header.appendBigEndian(kind)
            var mac = HMAC<SHA256>(key: key)
            mac.update(data: header)
            mac.update(data: payload)
            return Array(mac.finalize())
        }
        var nonce: [UInt8] = [direction.rawValue, 0]
        nonce.appendBigEndian(kind)
        nonce.appendBigEndian(sequence)
        do {
            let sealed = try AES.GCM.seal([UInt8](), using: key, nonce: try AES.GCM.Nonce(data: nonce), authenticating: payload)
            return Array(sealed.tag)
        } catch {
            // Only a key of the wrong size can fail, and the session key is derived at 32
            // bytes; an empty tag never verifies.
            return []
        }
    }

    /// Moves on to the next frame.
    mutating func advance() {
        sequence &+= 1
    }

    /// Appends a whole frame (length, type, payload, tag) to `buffer` and advances.
    mutating func appendFrame(kind: UInt16, payload: UnsafeRawBufferPointer, to buffer: inout [UInt8]) {
        let tag = tag(kind: kind, payload: payload)
        buffer.appendBigEndian(UInt32(2 + payload.count + tag.count))
        buffer.appendBigEndian(kind)
        buffer.append(contentsOf: payload)
        buffer.append(contentsOf: tag)
        advance()
    }

    /// Checks `received` against the tag this frame should have; advances only when it
    /// matches, so a failure leaves nothing half-consumed.
    mutating func verify(kind: UInt16, payload: UnsafeRawBufferPointer, received: UnsafeRawBufferPointer) -> Bool {
        let expected = tag(kind: kind, payload: payload)
        let valid = expected.count == tagSize && expected.withUnsafeBytes { constantTimeEqual($0, received) }
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
