import Crypto
import FerrySystem
import Foundation
import Testing

@testable import FerryMigration

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Streaming files over the memory transport", .timeLimit(.minutes(1)))
struct FileTransferTests {
    @Test("a file arrives whole, with its sha256", arguments: [0, 1, 4095, 3 * (1 << 20) + 17])
    func file(size: Int) async throws {
        try await onThread("file") {
            let dir = try TempDir()
            defer { dir.cleanup() }
            let digest = try writeTestFile(dir.sub("in"), size: size)
            let session = try await establishedSession()
            let (sent, received) = await bothSides(
                { try session.source.sendFile(name: "checkpoint/pages-1.img", path: dir.sub("in")) },
                { try session.destination.receiveFile(expectedName: "checkpoint/pages-1.img", path: dir.sub("out")) })
            #expect(try sent.get().sha256 == digest)
            #expect(
                try received.get() == MemberSummary(name: "checkpoint/pages-1.img", size: Int64(size), sha256: digest, duration: try received.get().duration))
            #expect(try sha256(ofFile: dir.sub("out")) == digest)
            #expect(try Files.status(dir.sub("out")).permissions == 0o600)
        }
    }

    @Test("a stream of unknown size (a pipe) announces -1 and ends with its total")
    func stream() async throws {
        try await onThread("stream") {
            let dir = try TempDir()
            defer { dir.cleanup() }
            let pipe = try OwnedPipe()
            let writer = pipe.writeEnd.take()
            let reader = pipe.readEnd.take()
            let size = 2 * (1 << 20) + 5
            let (a, b) = MemoryTransport.pair(capturing: true)
            let source = MigrationChannel(transport: a, configuration: fastConfiguration())
            let destination = MigrationChannel(transport: b, configuration: fastConfiguration())
            let (s, d) = await bothSides(
                { try source.handshake(role: .source, token: testToken) },
                { try destination.handshake(role: .destination, token: testToken) })
            try s.get()
            try d.get()
            async let digest = onThread { () throws -> [UInt8] in
                let fd = OwnedFD(adopting: writer)
                var hasher = SHA256()
                for i in 0..<size / 4096 + 1 {
                    let block = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: min(4096, size - i * 4096))
                    hasher.update(data: block)
                    try fd.writeAll(block)
                }
                return Array(hasher.finalize())
            }
            let (sent, received) = await bothSides(
                { try source.sendStream(name: "rootfs-diff.tar", from: OwnedFD(adopting: reader)) },
                { () throws -> (Int64, MemberSummary) in
                    let message = try destination.receive(expecting: .member)
                    guard case let .member(name, announced) = message else { throw MigrationError(.io(nil), "?") }
                    let out = try OwnedFD.open(dir.sub("diff.tar"), O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
                    let summary = try destination.receiveMemberData(name: name, size: announced, into: out)
                    return (announced, summary)
                })
            let produced = try await digest
            let summary = try received.get()
            #expect(summary.0 == -1)
            #expect(summary.1.size == Int64(size))
            #expect(summary.1.sha256 == produced)
            #expect(try sent.get().sha256 == produced)
            #expect(try sha256(ofFile: dir.sub("diff.tar")) == produced)
        }
    }

    /// Sends raw messages from the source, then runs `receiveFile` on the destination.
    func receive(after messages: [MigrationMessage], limit: Int64? = nil, path: String) async throws -> MigrationError? {
        let session = try await establishedSession()
        for message in messages { try session.source.send(message) }
        var error: MigrationError?
        do {
            try session.destination.receiveFile(expectedName: "a", path: path, limit: limit)
        } catch let caught {
            error = caught
        }
        return error
    }

    @Test("receiving refuses what does not add up, and leaves no partial file")
    func refusals() async throws {
        try await onThread("refusals") {
            let dir = try TempDir()
            defer { dir.cleanup() }
            let three: [UInt8] = [1, 2, 3]
            let digest = Array(SHA256.hash(data: three))
            let cases: [(String, [MigrationMessage], Int64?, (MigrationError.Code) -> Bool)] = [
                ("another name", [.member(name: "b", size: 3)], nil, { $0 == .protocolViolation(unexpected: .member) }),
                ("another message", [.commit], nil, { $0 == .protocolViolation(unexpected: .commit) }),
                ("more than announced", [.member(name: "a", size: 2), .data(three)], nil, { $0 == .protocolViolation(unexpected: .data) }),
                (
                    "fewer than announced", [.member(name: "a", size: 4), .data(three), .memberEnd(size: 3, sha256: digest)], nil,
                    { $0 == .protocolViolation(unexpected: .memberEnd) }
                ),
                (
                    "a wrong digest", [.member(name: "a", size: 3), .data(three), .memberEnd(size: 3, sha256: [UInt8](repeating: 0, count: 32))], nil,
                    { $0 == .integrityFailed }
                ),
                ("over the limit", [.member(name: "a", size: 3)], 2, { $0 == .protocolViolation(unexpected: .member) }),
                ("a stream over the limit", [.member(name: "a", size: -1), .data(three)], 2, { $0 == .protocolViolation(unexpected: .data) }),
                (
                    "the sender aborts", [.member(name: "a", size: 3), .data([1]), .abort(reason: "disk full")], nil,
                    { $0 == .peerAborted(reason: "disk full") }
                ),
                (
                    "a message inside the member", [.member(name: "a", size: 3), .data([1]), .commit], nil,
                    { $0 == .protocolViolation(unexpected: .commit) }
                ),
            ]
            for (label, messages, limit, matches) in cases {
                let path = dir.sub(label.replacingOccurrences(of: " ", with: "-"))
                let error = try await receive(after: messages, limit: limit, path: path)
                #expect(error.map { matches($0.code) } == true, "\(label): \(String(describing: error))")
                #expect(!Files.exists(path), "\(label): partial file left")
            }
            // And a well-formed one passes.
            let good = dir.sub("good")
            let error = try await receive(after: [.member(name: "a", size: 3), .data(three), .memberEnd(size: 3, sha256: digest)], path: good)
            #expect(error == nil)
            #expect(try Files.read(good) == three)
        }
    }

    @Test("the sender aborting mid-member names the reason")
    func abortMessage() async throws {
        try await onThread("abortMessage") {
            let dir = try TempDir()
            defer { dir.cleanup() }
            let error = try await receive(after: [.member(name: "a", size: 3), .abort(reason: "criu dump failed")], path: dir.sub("x"))
            #expect(error?.description == "cannot migrate: memory peer A aborted: criu dump failed")
        }
    }

    @Test("a directory is not sent as a file")
    func notRegular() async throws {
        try await onThread("notRegular") {
            let session = try await establishedSession()
            expectMigrationError({ $0 == .invalidArgument }) { try session.source.sendFile(name: "x", path: "/tmp") }
            expectMigrationError({ if case .io = $0 { true } else { false } }) {
                try session.source.sendFile(name: "x", path: "/nonexistent/ferry")
            }
        }
    }
}
