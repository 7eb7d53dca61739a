import Crypto
import Foundation

/// Seals and opens the frames of one direction of a channel.
///
/// In the session, every frame's payload is encrypted and authenticated with AES-256-GCM
/// under this direction's key (each direction has its own, derived from the handshake):
/// the payload travels as its ciphertext (same length) followed by the 16-byte tag. The
/// nonce is direction || 0 || type || sequence (direction: the sender's role byte;
/// sequence: this direction's frames from 0, u64 big endian), so the type is
/// authenticated too. A frame tampered with, replayed, reordered or missing makes the
/// receiver's expected nonce or content differ, so it fails to open. The nonce never
/// repeats under one key (one key per direction, and a session's sequence numbers do
/// not wrap). AES-GCM rather than ChaCha20-Poly1305: with AES and carry-less multiply
/// instructions it is several times faster, and a migration seals every byte of a
/// container's memory.
///
/// Handshake frames are clear, tagged with HMAC-SHA256 (32 bytes) under a fixed public key,
/// with direction 0: the tag is then only a checksum, the proofs are what authenticates,
/// and a peer of another protocol version can still read the `hello` that tells it so.
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

    /// Switches to this direction's session key; the next frame has sequence number 0.
    mutating func startSession(key: SymmetricKey) {
        self.key = key
        sequence = 0
        inSession = true
    }

    /// The length of this direction's tags now.
    var tagSize: Int { inSession ? MigrationProtocol.sessionTagSize : MigrationProtocol.tagSize }

    /// The HMAC of a handshake frame.
    private func handshakeTag(kind: UInt16, payload: UnsafeRawBufferPointer) -> [UInt8] {
        var header: [UInt8] = [0]
        header.appendBigEndian(sequence)
        header.appendBigEndian(kind)
        var mac = HMAC<SHA256>(key: key)
        mac.update(data: header)
        mac.update(data: payload)
        return Array(mac.finalize())
    }

    /// The AES-GCM nonce of the next frame of type `kind` in this direction.
    private func nonce(kind: UInt16) throws -> AES.GCM.Nonce {
        var nonce: [UInt8] = [direction.rawValue, 0]
        nonce.appendBigEndian(kind)
        nonce.appendBigEndian(sequence)
        return try AES.GCM.Nonce(data: nonce)
    }

    /// Moves on to the next frame.
    mutating func advance() {
        sequence &+= 1
    }

    /// Appends a whole frame (length, type, sealed payload, tag) to `buffer` and advances.
    mutating func appendFrame(kind: UInt16, payload: UnsafeRawBufferPointer, to buffer: inout [UInt8]) {
        buffer.appendBigEndian(UInt32(2 + payload.count + tagSize))
        buffer.appendBigEndian(kind)
        guard inSession else {
            buffer.append(contentsOf: payload)
            buffer.append(contentsOf: handshakeTag(kind: kind, payload: payload))
            advance()
            return
        }
        do {
            let sealed = try AES.GCM.seal(payload, using: key, nonce: try nonce(kind: kind))
            buffer.append(contentsOf: sealed.ciphertext)
            buffer.append(contentsOf: sealed.tag)
        } catch {
            // Only a key of the wrong size can fail, and session keys are derived at 32
            // bytes; zeros in place of the frame never open at the peer.
            buffer.append(contentsOf: [UInt8](repeating: 0, count: payload.count + tagSize))
        }
        advance()
    }

    /// Checks a received frame and, in the session, decrypts its payload in place.
    /// Advances only when it opens, so a failure leaves nothing half-consumed (and the
    /// payload as it was).
    mutating func open(kind: UInt16, payload: UnsafeMutableRawBufferPointer, received: UnsafeRawBufferPointer) -> Bool {
        guard received.count == tagSize else { return false }
        guard inSession else {
            let valid = handshakeTag(kind: kind, payload: UnsafeRawBufferPointer(payload)).withUnsafeBytes { constantTimeEqual($0, received) }
            if valid { advance() }
            return valid
        }
        do {
            let box = try AES.GCM.SealedBox(nonce: try nonce(kind: kind), ciphertext: UnsafeRawBufferPointer(payload), tag: received)
            let plaintext = try AES.GCM.open(box, using: key)
            guard plaintext.count == payload.count else { return false }
            plaintext.withUnsafeBytes { payload.copyMemory(from: $0) }
        } catch {
            return false
        }
        advance()
        return true
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
