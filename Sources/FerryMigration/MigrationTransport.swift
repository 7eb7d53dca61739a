/// A reliable, ordered byte stream between two hosts: what `MigrationChannel` frames,
/// authenticates and types its messages on.
///
/// Implementations: `TCPTransport` (sockets) and `MemoryTransport` (tests, with fault
/// injection). Reads and writes may be called from two threads at once (one reading,
/// one writing); `close()` from any thread wakes both.
public protocol MigrationTransport: AnyObject, Sendable {
    /// The peer, for messages: "127.0.0.1:7070", "[::1]:7070", "memory peer".
    var peerName: String { get }

    /// Reads at least one byte into `buffer`, waiting at most `timeout` (nil: forever) for
    /// the first to arrive. Returns the byte count, or 0 at the end of the stream.
    /// Throws `.timedOut`, `.connectionClosed` (reset, closed locally) or `.io`.
    func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?) throws(MigrationError) -> Int

    /// Writes all of `buffer`, failing with `.timedOut` when the peer accepts nothing for
    /// `timeout` (nil: forever), `.connectionClosed` when it has gone, or `.io`.
    func write(all buffer: UnsafeRawBufferPointer, timeout: Duration?) throws(MigrationError)

    /// Ends the connection both ways; reads and writes in progress fail or see the end.
    /// Idempotent.
    func close()
}
