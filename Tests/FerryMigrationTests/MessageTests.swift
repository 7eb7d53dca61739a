import Foundation
import Testing

@testable import FerryMigration

let sampleRequest = PreflightRequest(
    containerName: "web", imageDigest: "sha256:" + String(repeating: "ab", count: 32), imageReference: "busybox:latest",
    criuVersion: 40101, kernelRelease: "6.1.0-18-amd64", cpuFlags: ["sse4_2", "avx2"], neededBytes: 123_456_789, mode: .lazy)

let sampleResponse = PreflightResponse(
    reasons: ["kernel too old", "no space"], needsImage: true, freeBytes: 42, supportedModes: [.stopCopy, .preCopy])

/// One message of every kind that `send` accepts.
let sessionSamples: [MigrationMessage] = [
    .preflightRequest(sampleRequest),
    .preflightResponse(sampleResponse),
    .preflightResponse(PreflightResponse(reasons: [], needsImage: false, freeBytes: 1 << 40, supportedModes: MigrationMode.allCases)),
    .member(name: "checkpoint/pages-1.img", size: 1 << 33),
    .member(name: "volumes/data.tar", size: -1),
    .data([]),
    .data([0, 1, 2, 255]),
    .memberEnd(size: 4, sha256: [UInt8](repeating: 0xAB, count: 32)),
    .restored(RestoredInfo(pid: 4242, details: ["restoreMilliseconds": "312"])),
    .commit,
    .committed,
    .abort(reason: "disk full: é ✓"),
    .error(message: "criu restore failed: see restore.log"),
    .progress(MigrationProgress(phase: "transfer", bytesDone: 10, bytesTotal: 20)),
    .progress(MigrationProgress(phase: "dump", bytesDone: 0)),
    .lazyPagesReady(LazyPagesEndpoint(address: "192.0.2.7", port: 27027, details: ["tls": "no"])),
    .done,
    .pages(PageRun(range: PageRange(id: 7, address: 0x7f00_0000_0000, count: 2), bytes: (0..<8192).map { UInt8(truncatingIfNeeded: $0) })),
    .pageRequest(PageRange(id: 7, address: 0x7f00_0000_1000, count: 1)),
]

let handshakeSamples: [MigrationMessage] = [
    .hello(version: 1, role: .source, nonce: Array(0..<32)),
    .hello(version: 0xFFFF, role: .destination, nonce: [UInt8](repeating: 9, count: 32)),
    .proof(hmac: [UInt8](repeating: 0x5A, count: 32)),
    .refused(reason: "authentication failed"),
]

@Suite("Messages and frames", .timeLimit(.minutes(1)))
struct MessageTests {
    @Test("the samples cover every message type")
    func coverage() {
        let kinds = Set((sessionSamples + handshakeSamples).map(\.kind))
        #expect(kinds == Set(MigrationMessage.Kind.allCases))
    }

    @Test("type codes are stable (docs/migration-protocol.md lists them)")
    func typeCodes() {
        let table: [MigrationMessage.Kind: UInt16] = [
            .hello: 0x0001, .proof: 0x0002, .refused: 0x0003,
            .preflightRequest: 0x0101, .preflightResponse: 0x0102,
            .member: 0x0201, .data: 0x0202, .memberEnd: 0x0203,
            .restored: 0x0301, .commit: 0x0302, .committed: 0x0303, .lazyPagesReady: 0x0304,
            .progress: 0x0305, .done: 0x0306, .pages: 0x0307, .pageRequest: 0x0308,
            .abort: 0x0401, .error: 0x0402,
        ]
        #expect(table.count == MigrationMessage.Kind.allCases.count)
        for kind in MigrationMessage.Kind.allCases {
            #expect(kind.rawValue == table[kind], "\(kind)")
        }
    }

    @Test("every session message round-trips through a channel")
    func roundTrip() async throws {
        try await onThread("roundTrip") {
            let session = try await establishedSession()
            for message in sessionSamples {
                try session.source.send(message)
                #expect(try session.destination.receive() == message)
                try session.destination.send(message)
                #expect(try session.source.receive() == message)
            }
        }
    }

    @Test("handshake messages round-trip through their payload encoding")
    func handshakePayloads() throws {
        for message in handshakeSamples {
            let payload = try message.encodePayload()
            let decoded = try payload.withUnsafeBytes { try MigrationMessage.decode(kind: message.kind.rawValue, payload: $0) }
            #expect(decoded == message)
        }
    }

    @Test("binary payloads have the documented layout")
    func binaryLayout() throws {
        #expect(try MigrationMessage.member(name: "a.img", size: 5).encodePayload() == [0, 0, 0, 0, 0, 0, 0, 5] + Array("a.img".utf8))
        #expect(try MigrationMessage.member(name: "p", size: -1).encodePayload() == [UInt8](repeating: 0xFF, count: 8) + [0x70])
        #expect(
            try MigrationMessage.hello(version: 1, role: .destination, nonce: [UInt8](repeating: 3, count: 32)).encodePayload()
                == [0, 1, 2] + [UInt8](repeating: 3, count: 32))
        #expect(try MigrationMessage.commit.encodePayload().isEmpty)
        let json = String(decoding: try MigrationMessage.preflightResponse(sampleResponse).encodePayload(), as: UTF8.self)
        #expect(json == #"{"freeBytes":42,"needsImage":true,"reasons":["kernel too old","no space"],"supportedModes":["stopCopy","preCopy"]}"#)
    }

    @Test("a frame is length, type, payload and a 32-byte tag")
    func frameLayout() throws {
        var authenticator = FrameAuthenticator(direction: .source)
        var frame: [UInt8] = []
        ([1, 2, 3] as [UInt8]).withUnsafeBytes { authenticator.appendFrame(kind: 0x0202, payload: $0, to: &frame) }
        #expect(frame.count == 4 + 2 + 3 + 32)
        #expect(Array(frame[0..<9]) == [0, 0, 0, 37, 0x02, 0x02, 1, 2, 3])
        #expect(authenticator.sequence == 1)
    }

    @Test("malformed payloads and unknown types are protocol violations")
    func malformed() throws {
        let cases: [(UInt16, [UInt8])] = [
            (0x7777, []),
            (MigrationMessage.Kind.preflightRequest.rawValue, Array("{not json".utf8)),
            (MigrationMessage.Kind.proof.rawValue, [1, 2, 3]),
            (MigrationMessage.Kind.member.rawValue, [0, 0, 0]),
            (MigrationMessage.Kind.memberEnd.rawValue, [0]),
            (MigrationMessage.Kind.abort.rawValue, [0xFF, 0xFE]),
            (MigrationMessage.Kind.commit.rawValue, [1]),
            (MigrationMessage.Kind.hello.rawValue, [0, 1, 9] + [UInt8](repeating: 0, count: 32)),
        ]
        for (kind, payload) in cases {
            expectMigrationError({ if case .protocolViolation = $0 { true } else { false } }) {
                _ = try payload.withUnsafeBytes { try MigrationMessage.decode(kind: kind, payload: $0) }
            }
        }
    }

    @Test("a message larger than the frame limit is not sent, and the channel still works")
    func sendTooLarge() async throws {
        try await onThread("sendTooLarge") {
            let session = try await establishedSession()
            let error = expectMigrationError({ $0 == .frameTooLarge }) {
                try session.source.send(.data([UInt8](repeating: 0, count: MigrationProtocol.maxFrameSize)))
            }
            #expect(error?.description.contains("limited to 4 MiB") == true)
            try session.source.send(.data([UInt8](repeating: 1, count: MigrationProtocol.maxFrameSize - 38)))
            #expect(try session.destination.receive() == .data([UInt8](repeating: 1, count: MigrationProtocol.maxFrameSize - 38)))
        }
    }

    @Test("a frame announced over the limit is refused before its payload is read")
    func receiveTooLarge() async throws {
        try await onThread("receiveTooLarge") {
            let session = try await establishedSession()
            // Only the header crosses: if the receiver waited for the payload it would time out.
            var header: [UInt8] = []
            header.appendBigEndian(UInt32(5 * 1024 * 1024))
            header.appendBigEndian(MigrationMessage.Kind.data.rawValue)
            try header.withUnsafeBytes { try session.sourceTransport.write(all: $0, timeout: .seconds(1)) }
            let error = expectMigrationError({ $0 == .frameTooLarge }) { _ = try session.destination.receive(timeout: .seconds(30)) }
            #expect(error?.description == "cannot migrate: memory peer A announced a frame of 5 MiB, more than the 4 MiB limit (is it a Ferry migration peer?)")
            // The stream is out of step now: the same error again.
            expectMigrationError({ $0 == .frameTooLarge }) { _ = try session.destination.receive() }
        }
    }

    @Test("something that is not a Ferry peer fails the handshake clearly")
    func notAFerryPeer() async throws {
        try await onThread("notAFerryPeer") {
            let (a, b) = MemoryTransport.pair()
            let destination = MigrationChannel(transport: b, configuration: fastConfiguration())
            try Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8).withUnsafeBytes { try a.write(all: $0, timeout: .seconds(1)) }
            expectMigrationError({ $0 == .frameTooLarge }) { try destination.handshake(role: .destination, token: testToken) }
        }
    }
}
