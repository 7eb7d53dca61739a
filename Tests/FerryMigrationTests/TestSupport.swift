import Crypto
import FerrySystem
@_exported import FerryTestSupport
import Foundation
import Testing

@testable import FerryMigration

#if canImport(Glibc)
    import Glibc
#endif

let testToken: [UInt8] = Array("0123456789abcdef-ferry-test-token".utf8)
let otherToken: [UInt8] = Array("fedcba9876543210-not-the-same!!".utf8)

extension Result {
    /// The MigrationError this failed with, if it did.
    var migrationError: MigrationError? {
        if case let .failure(error) = self { return error as? MigrationError }
        return nil
    }
}

/// A memory pair with both handshakes done.
struct Session {
    let source: MigrationChannel
    let destination: MigrationChannel
    let sourceTransport: MemoryTransport
    let destinationTransport: MemoryTransport
}

func fastConfiguration(timeout: Duration = .seconds(10)) -> MigrationChannel.Configuration {
    MigrationChannel.Configuration(timeout: timeout, handshakeTimeout: .seconds(10))
}

func establishedSession(capturing: Bool = false, timeout: Duration = .seconds(10)) async throws -> Session {
    let (a, b) = MemoryTransport.pair(capturing: capturing)
    let source = MigrationChannel(transport: a, configuration: fastConfiguration(timeout: timeout))
    let destination = MigrationChannel(transport: b, configuration: fastConfiguration(timeout: timeout))
    let (s, d) = await bothSides(
        { try source.handshake(role: .source, token: testToken) },
        { try destination.handshake(role: .destination, token: testToken) })
    try s.get()
    try d.get()
    return Session(source: source, destination: destination, sourceTransport: a, destinationTransport: b)
}

/// Asserts that `body` throws a MigrationError whose code matches, and returns it.
@discardableResult
func expectMigrationError(
    _ matches: (MigrationError.Code) -> Bool,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> MigrationError? {
    do {
        try body()
        Issue.record("expected a MigrationError, got success", sourceLocation: sourceLocation)
    } catch let error as MigrationError {
        #expect(matches(error.code), "unexpected code: \(error.code) (\(error))", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected a MigrationError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
        if haystack[start..<(start + needle.count)].elementsEqual(needle) { return true }
    }
    return false
}

/// Writes `size` bytes of pseudo-random content to `path`, one MiB at a time, and
/// returns their SHA-256.
func writeTestFile(_ path: String, size: Int) throws -> [UInt8] {
    let fd = try OwnedFD.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
    var hasher = SHA256()
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    var written = 0
    while written < size {
        let count = min(chunk.count, size - written)
        chunk.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in 0..<words.count {
                // xorshift64: fast and not compressible, unlike zeros.
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                words[i] = state
            }
        }
        try chunk.withUnsafeBytes { raw in
            let part = UnsafeRawBufferPointer(rebasing: raw[0..<count])
            hasher.update(bufferPointer: part)
            try fd.writeAll(part)
        }
        written += count
    }
    return Array(hasher.finalize())
}

/// SHA-256 of the file at `path`, read one MiB at a time.
func sha256(ofFile path: String) throws -> [UInt8] {
    let fd = try OwnedFD.open(path, O_RDONLY)
    var hasher = SHA256()
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = try buffer.withUnsafeMutableBytes { try fd.read(into: $0) }
        if n == 0 { break }
        buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }
    return Array(hasher.finalize())
}

/// A value from /proc/self/status in KiB ("VmHWM", "VmRSS").
func processStatus(_ field: String) -> Int? {
    guard let text = try? Files.readString("/proc/self/status") else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("\(field):") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }
    return nil
}

/// A hand-driven peer speaking raw frames, for handshakes a real channel would not do.
final class RawPeer: @unchecked Sendable {
    let transport: MemoryTransport
    var sender: FrameAuthenticator
    var receiver: FrameAuthenticator

    init(_ transport: MemoryTransport, role: MigrationRole) {
        self.transport = transport
        sender = FrameAuthenticator(direction: role)
        receiver = FrameAuthenticator(direction: role.peer)
    }

    func send(_ message: MigrationMessage) throws {
        var frame: [UInt8] = []
        let payload = try message.encodePayload()
        payload.withUnsafeBytes { sender.appendFrame(kind: message.kind.rawValue, payload: $0, to: &frame) }
        try frame.withUnsafeBytes { try transport.write(all: $0, timeout: .seconds(5)) }
    }

    func receive() throws -> MigrationMessage {
        let header = try readExactly(6)
        let length = header.withUnsafeBytes { Int($0.bigEndian(UInt32.self, at: 0)) }
        let kind = header.withUnsafeBytes { $0.bigEndian(UInt16.self, at: 4) }
        let rest = try readExactly(length - 2)
        var payload = Array(rest[0..<(rest.count - 32)])
        let tag = Array(rest[(rest.count - 32)...])
        let valid = payload.withUnsafeMutableBytes { p in tag.withUnsafeBytes { t in receiver.open(kind: kind, payload: p, received: t) } }
        #expect(valid)
        return try payload.withUnsafeBytes { try MigrationMessage.decode(kind: kind, payload: $0) }
    }

    private func readExactly(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = try bytes.withUnsafeMutableBytes { raw in
                try transport.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[done...]), timeout: .seconds(5))
            }
            if n == 0 { throw MigrationError(.connectionClosed, "raw peer: end of stream") }
            done += n
        }
        return bytes
    }
}
