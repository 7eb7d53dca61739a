/// The constants of the migration wire protocol (docs/migration-protocol.md).
///
/// FerryMigration owns the wire: framing, the authenticated handshake, the typed messages
/// and the transports (TCP, in-memory). It imports FerrySystem, Crypto and Logging only;
/// it knows nothing of containers, CRIU or the runtime, whose orchestration lives above it.
public enum MigrationProtocol {
    /// The protocol version sent in `hello`. Peers with different versions refuse each other.
    /// Version 3 encrypts every session frame (version 2 only authenticated them), and
    /// the page channel's `done` from the destination also means the container runs
    /// there (version 2 sent it once the memory was in, before the thaw).
    public static let version: UInt16 = 3

    /// The largest frame, counting every byte from the length field to the end of the tag.
    /// A peer announcing more is refused before any of its payload is read.
    public static let maxFrameSize = 4 * 1024 * 1024
    /// The largest frame a peer may send before it has proved it holds the token: the
    /// handshake's frames (hello, proof, refused) are under 300 bytes, and nobody
    /// unauthenticated gets a 4 MiB buffer.
    public static let maxHandshakeFrameSize = 4096

    /// The largest `data` chunk the file helpers send.
    public static let maxChunkSize = 1024 * 1024

    /// The port `ferry migrate` listens on when none is given.
    public static let defaultPort: UInt16 = 7070

    /// The shortest token accepted. The handshake shows an observer a nonce pair and an
    /// HMAC of them under the token, so a short token could be guessed offline.
    public static let minimumTokenLength = 16

    /// Bytes before the payload: the u32 length and the u16 type.
    static let headerSize = 6
    /// The HMAC-SHA256 tag after a handshake frame's payload; the largest tag.
    static let tagSize = 32
    /// The AES-GCM tag after a session frame's sealed payload (see `FrameAuthenticator`).
    static let sessionTagSize = 16
    /// Size of the nonces in `hello`.
    static let nonceSize = 32
    /// The label every proof and key derivation starts with.
    static let label = "ferry-migrate-v1"
    /// The largest payload a frame can carry.
    static var maxPayloadSize: Int { maxFrameSize - headerSize - tagSize }
}

/// Which end of a migration a peer is. Also the direction byte in frame tags: a frame's
/// tag covers the role of the side that sent it, so a frame cannot be reflected back.
public enum MigrationRole: UInt8, Sendable, Codable, CustomStringConvertible {
    /// The host the container runs on now.
    case source = 1
    /// The host the container moves to.
    case destination = 2

    /// The other end.
    public var peer: MigrationRole { self == .source ? .destination : .source }

    public var description: String { self == .source ? "source" : "destination" }
}

/// How the container's memory moves.
public enum MigrationMode: String, Sendable, Codable, CaseIterable {
    /// Freeze, dump everything, copy, restore: downtime covers the whole copy.
    case stopCopy
    /// Post-copy: restore with CRIU's lazy-pages; pages follow on demand from the source's
    /// page server.
    case lazy
    /// Iterative pre-dumps while the container runs, then a short final stop-copy.
    case preCopy
}
