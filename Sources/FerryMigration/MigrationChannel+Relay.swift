import Foundation
import Synchronization

/// What a relay carried.
public struct RelaySummary: Sendable, Equatable {
    /// Bytes read from the local stream and sent to the peer.
    public var sent: Int64
    /// Bytes received from the peer and written to the local stream.
    public var received: Int64
}

extension MigrationChannel {
    /// Carries a local byte stream over this channel in both directions, until both
    /// directions have ended: what `local` delivers goes to the peer as `data` frames and
    /// its end of stream as `done`; the peer's `data` is written to `local`, and its
    /// `done` ends `local`'s writing side. The peer runs the same relay at its end.
    ///
    /// This is how CRIU's page-server connection (post-copy), which has no
    /// authentication of its own, crosses between hosts: every byte is tagged with the
    /// session key, as everything else on the channel.
    ///
    /// An end of stream is passed on (as `done`, or by ending `local`'s writing side) only
    /// when `mayEnd` says so: to a peer such as CRIU's page server a plain end means
    /// success, which a failure elsewhere must never look like.
    ///
    /// - Parameters:
    ///   - idleTimeout: how long either side may stay silent.
    ///   - mayEnd: whether an end of stream in either direction is a proper end;
    ///     when false, the relay fails instead.
    ///   - onFailure: runs on failure, before `local` is closed (to tell it, in its own
    ///     terms, that this was not a proper end).
    /// - Throws: the first failure of either direction (the other is then stopped by
    ///   closing `local` and the channel).
    public func relay(
        _ local: any MigrationTransport, idleTimeout: Duration, mayEnd: @escaping @Sendable () -> Bool = { true },
        onFailure: @escaping @Sendable (any MigrationTransport) -> Void = { _ in }
    ) throws(MigrationError) -> RelaySummary {
        let outbound = RelayOutcome()
        let failed = Atomic<Bool>(false)
        let fail: @Sendable () -> Void = { [self] in
            guard !failed.exchange(true, ordering: .relaxed) else { return }
            onFailure(local)
            local.close()
            close()
        }
        let thread = Thread { [self] in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MigrationProtocol.maxChunkSize, alignment: 16)
            defer { buffer.deallocate() }
            var total: Int64 = 0
            do throws(MigrationError) {
                while true {
                    let count = try local.read(into: buffer, timeout: nil)
                    if count == 0 { break }
                    try withSendLock { () throws(MigrationError) in
                        try unlockedSendFrame(
                            kind: MigrationMessage.Kind.data.rawValue, payload: UnsafeRawBufferPointer(rebasing: buffer[..<count]), timeout: idleTimeout)
                    }
                    total += Int64(count)
                }
                guard mayEnd() else {
                    throw MigrationError(.connectionClosed, "the local stream ended before its transfer was complete", peer: peerName)
                }
                try send(.done)
                outbound.finish(.success(total))
            } catch {
                outbound.finish(.failure(error))
                try? send(.abort(reason: error.message))
                fail()
            }
        }
        thread.start()

        var received: Int64 = 0
        var inbound: MigrationError?
        do throws(MigrationError) {
            loop: while true {
                let ended = try withReceiveLock { () throws(MigrationError) -> Bool in
                    try unlockedReceiveFrame(timeout: idleTimeout) { (kind, payload) throws(MigrationError) -> Bool in
                        switch MigrationMessage.Kind(rawValue: kind) {
                        case .data:
                            try local.write(all: payload, timeout: idleTimeout)
                            received += Int64(payload.count)
                            return false
                        case .done:
                            return true
                        default:
                            let message = try MigrationMessage.decode(kind: kind, payload: payload)
                            throw unexpected(message, expected: "data or done")
                        }
                    }
                }
                if ended { break loop }
            }
            guard mayEnd() else {
                throw MigrationError(.connectionClosed, "\(peerName) ended the stream before its transfer was complete", peer: peerName)
            }
            (local as? TCPTransport)?.finishWriting()
        } catch {
            inbound = error
            fail()
        }
        let sent = outbound.wait()
        if let inbound { throw inbound }
        switch sent {
        case .success(let total): return RelaySummary(sent: total, received: received)
        case .failure(let error): throw error
        }
    }
}

/// The outbound half's result, waited for once.
private final class RelayOutcome: @unchecked Sendable {
    private let condition = NSCondition()
    private var result: Result<Int64, MigrationError>?

    func finish(_ result: Result<Int64, MigrationError>) {
        condition.lock()
        self.result = result
        condition.broadcast()
        condition.unlock()
    }

    func wait() -> Result<Int64, MigrationError> {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let result { return result }
            condition.wait()
        }
    }
}
