import Foundation
import Testing

@testable import FerryMigration

@Suite("Integrity, disconnects and timeouts", .timeLimit(.minutes(1)))
struct IntegrityTests {
    static let first = MigrationMessage.progress(MigrationProgress(phase: "transfer", bytesDone: 1))
    static let second = MigrationMessage.progress(MigrationProgress(phase: "transfer", bytesDone: 2))

    /// Sends `first` and `second` from the source with `fault` applied; returns the
    /// destination's receive results.
    func deliver(with fault: MemoryTransport.Fault) async throws -> (Session, [Result<MigrationMessage, any Error>]) {
        let session = try await establishedSession()
        session.sourceTransport.inject(fault)
        try session.source.send(Self.first)
        try session.source.send(Self.second)
        var results: [Result<MigrationMessage, any Error>] = []
        for _ in 0..<2 {
            results.append(Result { try session.destination.receive(timeout: .seconds(2)) })
        }
        return (session, results)
    }

    @Test("a flipped byte in the type, the payload or the tag fails integrity", arguments: [4, 5, 6, 20, -1])
    func tampered(offset: Int) async throws {
        try await onThread("tampered") {
            let frameSize = 6 + (try Self.first.encodePayload().count) + MigrationProtocol.sessionTagSize
            let (_, results) = try await deliver(with: .flipByte(frame: 0, offset: offset < 0 ? frameSize - 1 : offset))
            let error = try #require(results[0].migrationError)
            #expect(error.code == .integrityFailed)
            #expect(error.description == "cannot migrate: frame 0 from memory peer A failed its integrity check (tampered, replayed, reordered or dropped)")
            // Nothing after a failure is believed.
            #expect(results[1].migrationError == error)
        }
    }

    @Test("a replayed frame fails integrity")
    func replayed() async throws {
        try await onThread("replayed") {
            let (_, results) = try await deliver(with: .duplicate(frame: 0))
            #expect(try results[0].get() == Self.first)
            #expect(results[1].migrationError?.code == .integrityFailed)
        }
    }

    @Test("a dropped frame fails integrity")
    func dropped() async throws {
        try await onThread("dropped") {
            let (_, results) = try await deliver(with: .drop(frame: 0))
            #expect(results[0].migrationError?.code == .integrityFailed)
        }
    }

    @Test("reordered frames fail integrity")
    func reordered() async throws {
        try await onThread("reordered") {
            let (_, results) = try await deliver(with: .swapWithNext(frame: 0))
            #expect(results[0].migrationError?.code == .integrityFailed)
        }
    }

    @Test("a frame replayed from another session fails integrity")
    func crossSession() async throws {
        try await onThread("crossSession") {
            let (old, new) = (try await establishedSession(capturing: true), try await establishedSession())
            try old.source.send(.commit)
            _ = try old.destination.receive()
            // The old session's first session frame, after its two handshake frames.
            let bytes = old.sourceTransport.capturedOutput
            var offset = 0
            for _ in 0..<2 {
                offset += 4 + bytes.withUnsafeBytes { Int($0.bigEndian(UInt32.self, at: offset)) }
            }
            try Array(bytes[offset...]).withUnsafeBytes { try new.sourceTransport.write(all: $0, timeout: .seconds(1)) }
            expectMigrationError({ $0 == .integrityFailed }) { _ = try new.destination.receive() }
        }
    }

    @Test("a tampered handshake frame fails the handshake")
    func tamperedHello() async throws {
        try await onThread("tamperedHello") {
            let (a, b) = MemoryTransport.pair()
            a.inject(.flipByte(frame: 0, offset: 10))
            let source = MigrationChannel(transport: a, configuration: fastConfiguration())
            let destination = MigrationChannel(transport: b, configuration: fastConfiguration())
            let (_, d) = await bothSides(
                { try source.handshake(role: .source, token: testToken) },
                { try destination.handshake(role: .destination, token: testToken) })
            #expect(d.migrationError?.code == .integrityFailed)
        }
    }

    @Test("a peer that dies in the middle of a frame: connectionClosed")
    func closedMidFrame() async throws {
        try await onThread("closedMidFrame") {
            let (_, results) = try await deliver(with: .closeMidFrame(frame: 1))
            #expect(try results[0].get() == Self.first)
            let error = try #require(results[1].migrationError)
            #expect(error.code == .connectionClosed)
            #expect(error.description == "cannot migrate: memory peer A closed the connection in the middle of a frame")
        }
    }

    @Test("a peer that closes between frames: connectionClosed")
    func closedBetweenFrames() async throws {
        try await onThread("closedBetweenFrames") {
            let session = try await establishedSession()
            session.source.close()
            let error = expectMigrationError({ $0 == .connectionClosed }) { _ = try session.destination.receive() }
            #expect(error?.description == "cannot migrate: memory peer A closed the connection")
            expectMigrationError({ $0 == .connectionClosed }) { try session.source.send(.done) }
        }
    }

    @Test("a silent peer times out within the timeout, and the channel survives")
    func silentPeer() async throws {
        try await onThread("silentPeer") {
            let session = try await establishedSession()
            let started = ContinuousClock.now
            let error = expectMigrationError({ $0 == .timedOut }) { _ = try session.destination.receive(timeout: .milliseconds(300)) }
            let elapsed = ContinuousClock.now - started
            #expect(elapsed >= .milliseconds(290))
            #expect(elapsed < .seconds(5))
            #expect(error?.description == "cannot migrate: memory peer A sent nothing for 300 ms")
            // Nothing was read, so the stream is still in step.
            try session.source.send(.commit)
            #expect(try session.destination.receive() == .commit)
        }
    }

    @Test("a peer that stops reading times a sender out")
    func stalledReader() async throws {
        try await onThread("stalledReader") {
            let (a, b) = MemoryTransport.pair(capacity: 64 * 1024)
            let source = MigrationChannel(transport: a, configuration: fastConfiguration(timeout: .milliseconds(200)))
            let destination = MigrationChannel(transport: b, configuration: fastConfiguration())
            let (s, d) = await bothSides(
                { try source.handshake(role: .source, token: testToken) },
                { try destination.handshake(role: .destination, token: testToken) })
            try s.get()
            try d.get()
            expectMigrationError({ $0 == .timedOut }) {
                try source.send(.data([UInt8](repeating: 0, count: 1 << 20)))
            }
        }
    }

    @Test("sending and receiving run at the same time from two threads")
    func fullDuplex() async throws {
        try await onThread("fullDuplex") {
            let session = try await establishedSession()
            let count = 200
            let (sent, received) = await bothSides(
                {
                    for i in 0..<count { try session.source.send(.progress(MigrationProgress(phase: "p", bytesDone: Int64(i)))) }
                    var last: Int64 = -1
                    for _ in 0..<count {
                        guard case let .progress(p) = try session.source.receive() else { throw MigrationError(.io(nil), "?") }
                        last = p.bytesDone
                    }
                    return last
                },
                {
                    for i in 0..<count { try session.destination.send(.progress(MigrationProgress(phase: "q", bytesDone: Int64(i)))) }
                    var last: Int64 = -1
                    for _ in 0..<count {
                        guard case let .progress(p) = try session.destination.receive() else { throw MigrationError(.io(nil), "?") }
                        last = p.bytesDone
                    }
                    return last
                })
            #expect(try sent.get() == Int64(count - 1))
            #expect(try received.get() == Int64(count - 1))
        }
    }
}
