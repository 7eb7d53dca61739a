import Foundation

/// An in-memory transport for tests: two connected ends, each with a bounded buffer, and
/// faults that can be injected into what one end writes.
///
/// Faults act on whole frames, so they are described in frames: the end that writes
/// parses the length prefix of what it writes while a fault is pending.
public final class MemoryTransport: MigrationTransport, @unchecked Sendable {
    /// A fault applied to one frame this end writes. `frame` counts the frames written
    /// from the moment of `inject(_:)`, the next one being 0; inject between frames.
    public enum Fault: Sendable, Equatable {
        /// XOR the byte at `offset` from the frame's start (0...3 is the length, 4...5 the
        /// type) with 0xFF.
        case flipByte(frame: Int, offset: Int)
        /// Never deliver the frame.
        case drop(frame: Int)
        /// Deliver the frame twice (a replay).
        case duplicate(frame: Int)
        /// Deliver the frame after the one that follows it (a reordering).
        case swapWithNext(frame: Int)
        /// Deliver the first half of the frame, then end the stream as a crash would.
        case closeMidFrame(frame: Int)
    }

    /// This end's peer name, used in errors.
    public let peerName: String
    private let inbound: Pipe
    private let outbound: Pipe

    private init(peerName: String, inbound: Pipe, outbound: Pipe) {
        self.peerName = peerName
        self.inbound = inbound
        self.outbound = outbound
    }

    /// Two connected ends. Each direction buffers up to `capacity` bytes, after which a
    /// writer waits, like a socket. With `capturing`, every byte delivered is also kept
    /// (see `capturedOutput`).
    public static func pair(capacity: Int = 8 * 1024 * 1024, capturing: Bool = false) -> (MemoryTransport, MemoryTransport) {
        let forward = Pipe(capacity: capacity, capturing: capturing)
        let backward = Pipe(capacity: capacity, capturing: capturing)
        return (
            MemoryTransport(peerName: "memory peer B", inbound: backward, outbound: forward),
            MemoryTransport(peerName: "memory peer A", inbound: forward, outbound: backward)
        )
    }

    /// Every byte this end wrote that was delivered to the peer, faults applied (empty
    /// unless the pair was made with `capturing`).
    public var capturedOutput: [UInt8] { outbound.captured }

    /// Applies `fault` to a frame this end writes.
    public func inject(_ fault: Fault) {
        outbound.inject(fault)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?) throws(MigrationError) -> Int {
        try inbound.read(into: buffer, timeout: timeout, peer: peerName)
    }

    public func write(all buffer: UnsafeRawBufferPointer, timeout: Duration?) throws(MigrationError) {
        try outbound.write(buffer, timeout: timeout, peer: peerName)
    }

    public func close() {
        outbound.closeWriter()
        inbound.closeReader()
    }
}

extension MemoryTransport {
    /// One direction: a bounded byte queue guarded by a condition variable.
    fileprivate final class Pipe: @unchecked Sendable {
        private let condition = NSCondition()
        private let capacity: Int
        // Guarded by `condition`.
        private var buffer: [UInt8] = []
        private var head = 0
        private var writerClosed = false
        private var readerClosed = false
        private var capturing: Bool
        private var capture: [UInt8] = []
        private var faults: [(fault: Fault, frame: Int)] = []
        private var framesSeen = 0
        private var partial: [UInt8] = []
        private var held: [UInt8]?

        init(capacity: Int, capturing: Bool) {
            self.capacity = max(capacity, 1)
            self.capturing = capturing
        }

        var captured: [UInt8] {
            condition.lock()
            defer { condition.unlock() }
            return capture
        }

        func inject(_ fault: Fault) {
            condition.lock()
            defer { condition.unlock() }
            if faults.isEmpty {
                framesSeen = 0
            }
            let index: Int
            switch fault {
            case let .flipByte(frame, _), let .drop(frame), let .duplicate(frame), let .swapWithNext(frame), let .closeMidFrame(frame):
                index = frame
            }
            faults.append((fault, framesSeen + index))
        }

        func closeWriter() {
            condition.lock()
            writerClosed = true
            condition.broadcast()
            condition.unlock()
        }

        func closeReader() {
            condition.lock()
            readerClosed = true
            condition.broadcast()
            condition.unlock()
        }

        private var available: Int { buffer.count - head }

        func read(into destination: UnsafeMutableRawBufferPointer, timeout: Duration?, peer: String) throws(MigrationError) -> Int {
            let deadline = timeout.map { Date().addingTimeInterval($0.seconds) }
            condition.lock()
            defer { condition.unlock() }
            while available == 0 {
                if readerClosed {
                    throw MigrationError(.connectionClosed, "the connection to \(peer) was closed locally", peer: peer)
                }
                if writerClosed { return 0 }
                if let deadline {
                    if !condition.wait(until: deadline), available == 0, !writerClosed, !readerClosed {
                        throw MigrationError(.timedOut, "\(peer) sent nothing for \(describe(timeout ?? .zero))", peer: peer)
                    }
                } else {
                    condition.wait()
                }
            }
            let count = min(destination.count, available)
            buffer.withUnsafeBytes { source in
                destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[head..<(head + count)]))
            }
            head += count
            if head == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                head = 0
            } else if head > capacity {
                buffer.removeSubrange(0..<head)
                head = 0
            }
            condition.broadcast()
            return count
        }

        func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?, peer: String) throws(MigrationError) {
            let deadline = timeout.map { Date().addingTimeInterval($0.seconds) }
            condition.lock()
            defer { condition.unlock() }
            if faults.isEmpty && held == nil {
                try deliver(bytes, deadline: deadline, timeout: timeout, peer: peer)
                return
            }
            // A fault is pending: collect whole frames and decide what each becomes.
            partial.append(contentsOf: bytes)
            while partial.count >= 4 {
                let length = partial.withUnsafeBytes { Int($0.bigEndian(UInt32.self, at: 0)) }
                guard partial.count >= 4 + length else { break }
                let frame = Array(partial[0..<(4 + length)])
                partial.removeSubrange(0..<(4 + length))
                try process(frame, deadline: deadline, timeout: timeout, peer: peer)
                if faults.isEmpty && held == nil {
                    let rest = partial
                    partial = []
                    try rest.withBytes { raw throws(MigrationError) in
                        try deliver(raw, deadline: deadline, timeout: timeout, peer: peer)
                    }
                    return
                }
            }
        }

        private func process(_ original: [UInt8], deadline: Date?, timeout: Duration?, peer: String) throws(MigrationError) {
            let index = framesSeen
            framesSeen += 1
            var frame = original
            var copies = 1
            var swap = false
            var cut = false
            for (fault, at) in faults where at == index {
                switch fault {
                case let .flipByte(_, offset) where offset < frame.count: frame[offset] ^= 0xFF
                case .flipByte: break
                case .drop: copies = 0
                case .duplicate: copies = 2
                case .swapWithNext: swap = true
                case .closeMidFrame: cut = true
                }
            }
            faults.removeAll { $0.frame <= index }
            if cut {
                try deliverArray(Array(frame[0..<(frame.count / 2)]), deadline: deadline, timeout: timeout, peer: peer)
                writerClosed = true
                condition.broadcast()
                return
            }
            if swap {
                held = frame
                return
            }
            for _ in 0..<copies {
                try deliverArray(frame, deadline: deadline, timeout: timeout, peer: peer)
            }
            if let previous = held {
                held = nil
                try deliverArray(previous, deadline: deadline, timeout: timeout, peer: peer)
            }
        }

        private func deliverArray(_ bytes: [UInt8], deadline: Date?, timeout: Duration?, peer: String) throws(MigrationError) {
            try bytes.withBytes { raw throws(MigrationError) in
                try deliver(raw, deadline: deadline, timeout: timeout, peer: peer)
            }
        }

        /// Appends to the queue as space allows; called with the lock held.
        private func deliver(_ bytes: UnsafeRawBufferPointer, deadline: Date?, timeout: Duration?, peer: String) throws(MigrationError) {
            var offset = 0
            while offset < bytes.count {
                if writerClosed {
                    throw MigrationError(.connectionClosed, "the connection to \(peer) was closed locally", peer: peer)
                }
                if readerClosed {
                    throw MigrationError(.connectionClosed, "\(peer) closed the connection", peer: peer)
                }
                let room = capacity - available
                if room <= 0 {
                    if let deadline {
                        if !condition.wait(until: deadline), capacity - available <= 0 {
                            throw MigrationError(.timedOut, "\(peer) accepted nothing for \(describe(timeout ?? .zero))", peer: peer)
                        }
                    } else {
                        condition.wait()
                    }
                    continue
                }
                let count = min(room, bytes.count - offset)
                let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
                buffer.append(contentsOf: slice)
                if capturing { capture.append(contentsOf: slice) }
                offset += count
                condition.broadcast()
            }
        }
    }
}
