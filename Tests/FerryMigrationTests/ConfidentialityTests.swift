import Foundation
import Testing

@testable import FerryMigration

@Suite("Confidentiality of session frames", .timeLimit(.minutes(1)))
struct ConfidentialityTests {
    static let marker = Array("FERRY-MEMORY-MARKER-5b2e91".utf8)

    @Test("messages, files and pages cross the wire encrypted, in both directions, and arrive intact")
    func nothingInClear() async throws {
        try await onThread("nothingInClear") {
            let session = try await establishedSession(capturing: true)
            let text = String(decoding: Self.marker, as: UTF8.self)
            try session.source.send(.progress(MigrationProgress(phase: text, bytesDone: 1)))
            #expect(try session.destination.receive() == .progress(MigrationProgress(phase: text, bytesDone: 1)))
            try session.destination.send(.error(message: text))
            #expect(try session.source.receive() == .error(message: text))

            // A pages frame, as the page channel sends memory.
            let range = PageRange(id: 7, address: 0x7f00_0000_0000, count: 2)
            var payload = [UInt8](repeating: 0, count: PageRange.encodedSize + 2 * 4096)
            for start in stride(from: PageRange.encodedSize, to: payload.count - Self.marker.count, by: 512) {
                payload.replaceSubrange(start..<start + Self.marker.count, with: Self.marker)
            }
            let sent = payload
            try payload.withUnsafeMutableBytes { try session.source.sendPages(range, payload: $0) }
            var received: (PageRange, [UInt8])?
            let message = try session.destination.receive { got, bytes in received = (got, Array(bytes)) }
            #expect(message == nil)
            #expect(received?.0 == range)
            #expect(received?.1 == Array(sent[PageRange.encodedSize...]))

            for wire in [session.sourceTransport.capturedOutput, session.destinationTransport.capturedOutput] {
                #expect(!wire.isEmpty)
                #expect(!contains(wire, Self.marker), "a session frame crossed the wire in clear")
                #expect(!contains(wire, Array(Self.marker.prefix(12))))
            }
        }
    }

    @Test("each direction has its own key: a frame reflected back to its sender does not open")
    func reflected() async throws {
        try await onThread("reflected") {
            let session = try await establishedSession(capturing: true)
            try session.source.send(.commit)
            _ = try session.destination.receive()
            // The source's first session frame, after its two handshake frames, written
            // back to the source as if the destination had sent it.
            let bytes = session.sourceTransport.capturedOutput
            var offset = 0
            for _ in 0..<2 { offset += 4 + bytes.withUnsafeBytes { Int($0.bigEndian(UInt32.self, at: offset)) } }
            try Array(bytes[offset...]).withUnsafeBytes { try session.destinationTransport.write(all: $0, timeout: .seconds(1)) }
            expectMigrationError({ $0 == .integrityFailed }) { _ = try session.source.receive() }
        }
    }

    @Test("a tampered ciphertext byte fails integrity and is never delivered")
    func tamperedCiphertext() async throws {
        try await onThread("tamperedCiphertext") {
            let session = try await establishedSession()
            // Byte 10 is inside the encrypted payload (after length and type).
            session.sourceTransport.inject(.flipByte(frame: 0, offset: 10))
            try session.source.send(.error(message: String(decoding: Self.marker, as: UTF8.self)))
            expectMigrationError({ $0 == .integrityFailed }) { _ = try session.destination.receive(timeout: .seconds(2)) }
        }
    }
}
