import Foundation
import Testing

@testable import FerryMigration

@Suite("Handshake over the memory transport", .timeLimit(.minutes(1)))
struct HandshakeTests {
    @Test("the same token on both sides: handshake succeeds, and messages flow both ways")
    func sameToken() async throws {
        try await onThread("sameToken") {
            let session = try await establishedSession()
            #expect(session.source.role == .source)
            #expect(session.destination.role == .destination)
            try session.source.send(.commit)
            #expect(try session.destination.receive() == .commit)
            try session.destination.send(.committed)
            #expect(try session.source.receive() == .committed)
        }
    }

    @Test("the token never crosses the wire, on success or failure")
    func tokenStaysHome() async throws {
        try await onThread("tokenStaysHome") {
            let session = try await establishedSession(capturing: true)
            try session.source.send(.progress(MigrationProgress(phase: "dump", bytesDone: 1)))
            _ = try session.destination.receive()
            let (a, b) = MemoryTransport.pair(capturing: true)
            let wrongSource = MigrationChannel(transport: a, configuration: fastConfiguration())
            let wrongDestination = MigrationChannel(transport: b, configuration: fastConfiguration())
            _ = await bothSides(
                { try wrongSource.handshake(role: .source, token: testToken) },
                { try wrongDestination.handshake(role: .destination, token: otherToken) })
            let wire = [session.sourceTransport, session.destinationTransport, a, b].map(\.capturedOutput)
            #expect(wire.allSatisfy { !$0.isEmpty })
            for bytes in wire {
                #expect(!contains(bytes, testToken))
                #expect(!contains(bytes, otherToken))
                #expect(!contains(bytes, Array(testToken.prefix(8))))
                let hex = Array(testToken.map { String(format: "%02x", $0) }.joined().utf8)
                #expect(!contains(bytes, hex))
            }
        }
    }

    @Test("a wrong token is refused on both sides")
    func wrongToken() async throws {
        try await onThread("wrongToken") {
            let (a, b) = MemoryTransport.pair(capturing: true)
            let source = MigrationChannel(transport: a, configuration: fastConfiguration())
            let destination = MigrationChannel(transport: b, configuration: fastConfiguration())
            let (s, d) = await bothSides(
                { try source.handshake(role: .source, token: testToken) },
                { try destination.handshake(role: .destination, token: otherToken) })
            for (result, peer) in [(s, "memory peer B"), (d, "memory peer A")] {
                let error = try #require(result.migrationError)
                #expect(error.code == .authenticationFailed)
                #expect(error.description.contains("authentication failed"))
                #expect(error.description.contains(peer))
                #expect(error.peer == peer)
            }
            // The first side to decide told the other why before closing (the second may
            // find the connection already closed).
            let reason = Array("authentication failed".utf8)
            #expect(contains(a.capturedOutput, reason) || contains(b.capturedOutput, reason))
            // Neither channel can be used.
            expectMigrationError({ if case .protocolViolation = $0 { true } else { false } }) { try source.send(.commit) }
        }
    }

    @Test("a peer that refuses our proof: 'refused the token'")
    func peerRefusesToken() async throws {
        try await onThread("peerRefusesToken") {
            let (a, b) = MemoryTransport.pair()
            let source = MigrationChannel(transport: a, configuration: fastConfiguration())
            let fake = RawPeer(b, role: .destination)
            let (s, f) = await bothSides(
                { try source.handshake(role: .source, token: testToken) },
                {
                    try fake.send(.hello(version: MigrationProtocol.version, role: .destination, nonce: [UInt8](repeating: 7, count: 32)))
                    guard case .hello = try fake.receive() else { throw MigrationError(.io(nil), "no hello") }
                    guard case .proof = try fake.receive() else { throw MigrationError(.io(nil), "no proof") }
                    try fake.send(.refused(reason: "authentication failed"))
                })
            try f.get()
            let error = try #require(s.migrationError)
            #expect(error.code == .authenticationFailed)
            #expect(error.description == "cannot migrate: memory peer B refused the token (authentication failed)")
        }
    }

    @Test("a forged proof is refused, and the forger is told")
    func forgedProof() async throws {
        try await onThread("forgedProof") {
            let (a, b) = MemoryTransport.pair()
            let destination = MigrationChannel(transport: b, configuration: fastConfiguration())
            let fake = RawPeer(a, role: .source)
            let (d, f) = await bothSides(
                { try destination.handshake(role: .destination, token: testToken) },
                { () throws -> MigrationMessage in
                    try fake.send(.hello(version: MigrationProtocol.version, role: .source, nonce: [UInt8](repeating: 1, count: 32)))
                    _ = try fake.receive()
                    try fake.send(.proof(hmac: [UInt8](repeating: 0, count: 32)))
                    _ = try fake.receive()  // the destination's proof
                    return try fake.receive()
                })
            #expect(d.migrationError?.code == .authenticationFailed)
            let answer = try f.get()
            #expect(answer == .refused(reason: "authentication failed"))
        }
    }

    @Test("different versions are refused, naming both versions")
    func versionMismatch() async throws {
        try await onThread("versionMismatch") {
            let (a, b) = MemoryTransport.pair()
            var future = fastConfiguration()
            future.advertisedVersion = MigrationProtocol.version + 1
            let source = MigrationChannel(transport: a, configuration: fastConfiguration())
            let destination = MigrationChannel(transport: b, configuration: future)
            let (s, d) = await bothSides(
                { try source.handshake(role: .source, token: testToken) },
                { try destination.handshake(role: .destination, token: testToken) })
            let sourceError = try #require(s.migrationError)
            let destinationError = try #require(d.migrationError)
            #expect(sourceError.code == .versionMismatch)
            #expect(destinationError.code == .versionMismatch)
            #expect(
                sourceError.description
                    == "cannot migrate: memory peer B speaks migration protocol version \(MigrationProtocol.version + 1), this host speaks version \(MigrationProtocol.version) (version mismatch)"
            )
            #expect(destinationError.description.contains("version \(MigrationProtocol.version)"))
            #expect(destinationError.description.contains("version \(MigrationProtocol.version + 1)"))
        }
    }

    @Test("two sources refuse each other")
    func sameRole() async throws {
        try await onThread("sameRole") {
            let (a, b) = MemoryTransport.pair()
            let one = MigrationChannel(transport: a, configuration: fastConfiguration())
            let two = MigrationChannel(transport: b, configuration: fastConfiguration())
            let (x, y) = await bothSides(
                { try one.handshake(role: .source, token: testToken) },
                { try two.handshake(role: .source, token: testToken) })
            for result in [x, y] {
                let error = try #require(result.migrationError)
                #expect(error.code == .protocolViolation(unexpected: .hello))
                #expect(error.description.contains("is also a migration source"))
            }
        }
    }

    @Test("a busy destination refuses instead of shaking hands")
    func refuse() async throws {
        try await onThread("refuse") {
            let (a, b) = MemoryTransport.pair()
            let source = MigrationChannel(transport: a, configuration: fastConfiguration())
            let destination = MigrationChannel(transport: b, configuration: fastConfiguration())
            let (s, _) = await bothSides(
                { try source.handshake(role: .source, token: testToken) },
                { destination.refuse(reason: "another migration is in progress") })
            let error = try #require(s.migrationError)
            #expect(error.code == .refused(reason: "another migration is in progress"))
            #expect(error.description == "cannot migrate: memory peer B refused the session: another migration is in progress")
        }
    }

    @Test("a short token is rejected before anything is sent")
    func shortToken() throws {
        let (a, _) = MemoryTransport.pair(capturing: true)
        let source = MigrationChannel(transport: a, configuration: fastConfiguration())
        expectMigrationError({ $0 == .invalidArgument }) { try source.handshake(role: .source, token: Array("short".utf8)) }
        #expect(a.capturedOutput.isEmpty)
    }

    @Test("a silent peer times the handshake out")
    func silentPeer() async throws {
        try await onThread("silentPeer") {
            let (a, _) = MemoryTransport.pair()
            let source = MigrationChannel(
                transport: a, configuration: MigrationChannel.Configuration(timeout: .seconds(5), handshakeTimeout: .milliseconds(200)))
            let started = ContinuousClock.now
            let error = expectMigrationError({ $0 == .timedOut }) { try source.handshake(role: .source, token: testToken) }
            #expect(ContinuousClock.now - started < .seconds(5))
            #expect(error?.description == "cannot migrate: memory peer B sent nothing for 200 ms")
        }
    }

    @Test("messages before the handshake, and handshake messages after it, are refused")
    func outOfPlace() async throws {
        try await onThread("outOfPlace") {
            let (a, _) = MemoryTransport.pair()
            let early = MigrationChannel(transport: a, configuration: fastConfiguration())
            expectMigrationError({ $0 == .protocolViolation(unexpected: nil) }) { try early.send(.commit) }
            expectMigrationError({ $0 == .protocolViolation(unexpected: nil) }) { _ = try early.receive() }
            let session = try await establishedSession()
            expectMigrationError({ $0 == .protocolViolation(unexpected: .hello) }) {
                try session.source.send(.hello(version: 1, role: .source, nonce: [UInt8](repeating: 0, count: 32)))
            }
            expectMigrationError({ $0 == .protocolViolation(unexpected: nil) }) {
                try session.source.handshake(role: .source, token: testToken)
            }
        }
    }

    @Test("before the token is proved, a frame over 4 KiB is refused without reading it")
    func largeFrameBeforeAuthentication() async throws {
        try await onThread("largeFrameBeforeAuthentication") {
            let (a, b) = MemoryTransport.pair()
            let destination = MigrationChannel(transport: b, configuration: fastConfiguration())
            var header: [UInt8] = []
            header.appendBigEndian(UInt32(8 * 1024))
            header.appendBigEndian(MigrationMessage.Kind.hello.rawValue)
            try header.withUnsafeBytes { try a.write(all: $0, timeout: .seconds(1)) }
            let error = expectMigrationError({ $0 == .frameTooLarge }) { try destination.handshake(role: .destination, token: testToken) }
            #expect(
                error?.description
                    == "cannot migrate: memory peer A announced a frame of 8 KiB before the handshake was done, more than the 4 KiB limit (is it a Ferry migration peer?)"
            )
        }
    }

    @Test("a peer that trickles its hello a byte at a time is cut off when the handshake's time is up")
    func trickle() async throws {
        try await onThread("trickle") {
            let (a, b) = MemoryTransport.pair()
            let destination = MigrationChannel(
                transport: b, configuration: MigrationChannel.Configuration(timeout: .seconds(10), handshakeTimeout: .milliseconds(400)))
            let trickler = ThreadRun.start("the trickling peer") {
                // A plausible hello header, then payload bytes, each well within a read's timeout.
                var bytes: [UInt8] = []
                bytes.appendBigEndian(UInt32(2 + 35 + 32))
                bytes.appendBigEndian(MigrationMessage.Kind.hello.rawValue)
                bytes += [UInt8](repeating: 7, count: 40)
                for byte in bytes {
                    guard (try? [byte].withUnsafeBytes { try a.write(all: $0, timeout: .seconds(1)) }) != nil else { return }
                    usleep(50_000)
                }
            }
            let started = ContinuousClock.now
            let error = expectMigrationError({ $0 == .timedOut }) { try destination.handshake(role: .destination, token: testToken) }
            let elapsed = ContinuousClock.now - started
            #expect(error?.description == "cannot migrate: memory peer A did not finish the handshake within 400 ms")
            #expect(elapsed >= .milliseconds(390) && elapsed < .seconds(2), "cut off after \(elapsed)")
            a.close()
            _ = trickler.join(timeout: .seconds(10))
        }
    }
}
