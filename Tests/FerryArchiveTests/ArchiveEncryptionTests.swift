import FerrySystem
import Foundation
import Testing

@testable import FerryArchive

#if canImport(Glibc)
    import Glibc
#endif

/// The smallest chunk a reader accepts, so that small inputs span many chunks.
private let smallChunk = 4 << 10

private func testKey(_ seed: UInt8 = 1) throws(ArchiveError) -> ArchiveKey {
    try ArchiveKey(bytes: (0..<32).map { UInt8($0) &* 7 &+ seed })
}

/// An encrypted stream in memory, as the file would hold it, and the offsets the sealer
/// wrote each record at (to check that no chunk is written twice).
private struct Sealed {
    var bytes: [UInt8] = []
    var writes: [Int64] = []

    mutating func put(_ record: UnsafeRawBufferPointer, at offset: Int64) {
        let end = Int(offset) + record.count
        if bytes.count < end { bytes += [UInt8](repeating: 0, count: end - bytes.count) }
        bytes.replaceSubrange(Int(offset)..<end, with: record)
        writes.append(offset)
    }
}

/// Seals `plaintext`, appended in pieces of `step` bytes.
private func seal(_ plaintext: [UInt8], key: ArchiveKey, step: Int = 1000) throws -> Sealed {
    let sealer = ArchiveSealer(key: key, chunkSize: smallChunk)
    var out = Sealed()
    let sink: ArchiveSealer.Sink = { (record, offset) throws(ArchiveError) in out.put(record, at: offset) }
    try sealer.start(sink)
    var index = 0
    while index < plaintext.count {
        let count = min(step, plaintext.count - index)
        try plaintext.withUnsafeBytes { all in try sealer.append(UnsafeRawBufferPointer(rebasing: all[index..<index + count]), sink) }
        index += count
    }
    try sealer.finish(sink)
    return out
}

/// Opens an encrypted stream held in memory, as `ArchiveInput` does a file: the header,
/// then every chunk to the end.
private func open(_ bytes: [UInt8], key: ArchiveKey, readSize: Int = 3000) throws(ArchiveError) -> [UInt8] {
    let headerSize = SealedArchiveHeader.size
    guard bytes.count >= headerSize else { throw ArchiveError(.unreadable, "short header") }
    let opener = try ArchiveOpener(headerBytes: Array(bytes[0..<headerSize]), key: key, context: "test")
    var position = headerSize
    let source: ArchiveOpener.Source = { (buffer) throws(ArchiveError) in
        let count = min(buffer.count, readSize, bytes.count - position)
        bytes.withUnsafeBytes { all in buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: all[position..<position + count])) }
        position += count
        return count
    }
    var plaintext: [UInt8] = []
    while let chunk = try opener.next(source) { plaintext += chunk }
    return plaintext
}

private func recordSize() -> Int { smallChunk + SealedArchiveHeader.tagSize }

@Suite("Encrypted archive stream")
struct ArchiveEncryptionTests {
    @Test("round trip at sizes around chunk boundaries, in uneven pieces", arguments: [0, 1, 4095, 4096, 4097, 3 * 4096, 10_000])
    func roundTrip(size: Int) throws {
        let plaintext = patternBytes(count: size, seed: UInt64(size) + 3)
        let key = try testKey()
        for step in [1, 777, 5000] where step <= max(size, 1) || step == 1 {
            let sealed = try seal(plaintext, key: key, step: step)
            #expect(try open(sealed.bytes, key: key) == plaintext)
            // Header, then every chunk once, in order (the last one possibly empty).
            let chunks = size / smallChunk + 1
            #expect(sealed.bytes.count == SealedArchiveHeader.size + size + chunks * SealedArchiveHeader.tagSize)
            #expect(sealed.writes.count == chunks + 1)
            #expect(Set(sealed.writes).count == sealed.writes.count)
        }
    }

    @Test("the stream starts with the clear header and never shows the plaintext")
    func headerAndSecrecy() throws {
        let marker = Array("FERRY-SECRET-MARKER-0123456789".utf8)
        let plaintext = [UInt8]((0..<50).flatMap { _ in marker })
        let key = try testKey()
        let first = try seal(plaintext, key: key)
        let second = try seal(plaintext, key: key)
        #expect(SealedArchiveHeader.isSealed(first.bytes))
        #expect(!contains(first.bytes, marker))
        // A fresh salt and nonce prefix every time: the same input never seals the same.
        #expect(first.bytes != second.bytes)
        #expect(try open(second.bytes, key: key) == plaintext)
    }

    @Test("a wrong key is told apart from damage")
    func wrongKey() throws {
        let sealed = try seal(patternBytes(count: 9000), key: try testKey(1))
        #expect(throws: ArchiveError.self) { try open(sealed.bytes, key: try testKey(2)) }
        do {
            _ = try open(sealed.bytes, key: try testKey(2))
        } catch {
            #expect(error.code == .badKey)
            #expect(error.message.contains("the key does not open this archive"))
        }
    }

    @Test("a stream cut at any chunk boundary, or inside any chunk, fails")
    func truncation() throws {
        let key = try testKey()
        let plaintext = patternBytes(count: 4 * smallChunk + 100)
        let sealed = try seal(plaintext, key: key).bytes
        var cuts: [Int] = []
        for chunk in 0...4 {
            let start = SealedArchiveHeader.size + chunk * recordSize()
            cuts += [start, start + 1, start + SealedArchiveHeader.tagSize, start + recordSize() - 1]
        }
        cuts += [0, 7, SealedArchiveHeader.size - 1, sealed.count - 1]
        for cut in Set(cuts) where cut < sealed.count {
            var failure: ArchiveError?
            do {
                _ = try open(Array(sealed[0..<cut]), key: key)
            } catch {
                failure = error
            }
            #expect(failure?.code == .unreadable, "cut at \(cut) of \(sealed.count)")
        }
        // At a boundary the reader says so.
        do {
            _ = try open(Array(sealed[0..<SealedArchiveHeader.size + 2 * recordSize()]), key: key)
            Issue.record("a truncated stream was accepted")
        } catch {
            #expect(error.message.contains("truncated"), "\(error)")
        }
    }

    @Test("a flipped byte anywhere fails")
    func flippedByte() throws {
        let key = try testKey()
        let sealed = try seal(patternBytes(count: 2 * smallChunk + 10), key: key).bytes
        // Salt, nonce prefix, chunk size, key check, ciphertext, tags and the last chunk.
        let positions = [
            12, 15, 20, 60, 70, SealedArchiveHeader.size, SealedArchiveHeader.size + 4000,
            SealedArchiveHeader.size + recordSize() - 1, SealedArchiveHeader.size + recordSize() + 5, sealed.count - 1,
        ]
        for position in positions {
            var damaged = sealed
            damaged[position] ^= 0x01
            #expect(throws: ArchiveError.self, "byte \(position)") { try open(damaged, key: key) }
        }
    }

    @Test("reordered or repeated chunks fail")
    func reordered() throws {
        let key = try testKey()
        let sealed = try seal(patternBytes(count: 3 * smallChunk + 10), key: key).bytes
        let header = Array(sealed[0..<SealedArchiveHeader.size])
        let records = (0..<4).map { index -> [UInt8] in
            let start = SealedArchiveHeader.size + index * recordSize()
            return Array(sealed[start..<min(start + recordSize(), sealed.count)])
        }
        #expect(try open(header + records.joined(), key: key) == patternBytes(count: 3 * smallChunk + 10))
        for order in [[1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 3], [0, 0, 1, 2, 3], [0, 1, 2, 2, 3]] {
            #expect(throws: ArchiveError.self, "order \(order)") { try open(header + order.flatMap { records[$0] }, key: key) }
        }
    }

    @Test("data appended after the last chunk fails", arguments: [1, 16, 4096 + 16, 10_000])
    func appended(count: Int) throws {
        let key = try testKey()
        for size in [100, smallChunk] {
            let sealed = try seal(patternBytes(count: size), key: key).bytes
            #expect(throws: ArchiveError.self) { try open(sealed + [UInt8](repeating: 0, count: count), key: key) }
            #expect(throws: ArchiveError.self) { try open(sealed + sealed.suffix(min(count, sealed.count - 88)), key: key) }
        }
    }

    @Test("held chunks are sealed once, with their patched content")
    func holdAndPatch() throws {
        let key = try testKey()
        let sealer = ArchiveSealer(key: key, chunkSize: smallChunk)
        var out = Sealed()
        let sink: ArchiveSealer.Sink = { (record, offset) throws(ArchiveError) in out.put(record, at: offset) }
        try sealer.start(sink)
        var expected = patternBytes(count: 1000, seed: 1)
        func append(_ bytes: [UInt8]) throws {
            try bytes.withUnsafeBytes { all in try sealer.append(all, sink) }
        }
        try append(expected)
        // A region over three chunks, and a header-sized one in a later chunk.
        let reserved = [UInt8](repeating: 0x20, count: 2 * smallChunk + 500)
        try sealer.hold(1000..<Int64(1000 + reserved.count))
        try append(reserved)
        expected += reserved
        let tail = patternBytes(count: 3 * smallChunk, seed: 2)
        let headerAt = Int64(expected.count)
        try sealer.hold(headerAt..<headerAt + 512)
        try append(Array(tail.prefix(512)))
        try append(Array(tail.dropFirst(512)))
        expected += tail
        #expect(throws: ArchiveError.self) { try sealer.patch(at: 10, [1]) }
        #expect(throws: ArchiveError.self) { try sealer.finish(sink) }

        let header = patternBytes(count: 512, seed: 3)
        try sealer.patch(at: headerAt, header)
        try sealer.release(start: headerAt, sink)
        expected.replaceSubrange(Int(headerAt)..<Int(headerAt) + 512, with: header)
        let json = Array("{\"formatVersion\": 1}".utf8)
        try sealer.patch(at: 1000 + 700, json)
        try sealer.release(start: 1000, sink)
        expected.replaceSubrange(1700..<1700 + json.count, with: json)
        try sealer.finish(sink)

        #expect(try open(out.bytes, key: key) == expected)
        #expect(Set(out.writes).count == out.writes.count)
        #expect(out.writes.count == expected.count / smallChunk + 2)
    }

    @Test("key files: too short, too long and missing are refused by name")
    func keyFiles() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        try Files.writeAtomically(Array(repeating: 7, count: 31), to: tmp.sub("short"))
        try Files.writeAtomically(Array(repeating: 7, count: ArchiveKey.maximumSize + 1), to: tmp.sub("long"))
        try Files.writeAtomically(Array(repeating: 7, count: 32), to: tmp.sub("good"))
        for name in ["short", "long", "missing"] {
            do {
                _ = try ArchiveKey(file: tmp.sub(name))
                Issue.record("key file '\(name)' was accepted")
            } catch {
                #expect(error.code == .badKey)
                #expect(error.message.hasPrefix("cannot use key file '\(tmp.sub(name))'"), "\(error)")
            }
        }
        _ = try ArchiveKey(file: tmp.sub("good"))
    }
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    return (0...(haystack.count - needle.count)).contains { start in
        haystack[start] == needle[0] && haystack[start..<start + needle.count].elementsEqual(needle)
    }
}

/// Reads a whole export with `key`, as `importExport` does a clear one: small members
/// into memory, the others hashed and dropped. Returns the small members.
private func readEncrypted(_ path: String, key: ArchiveKey?) throws -> [String: [UInt8]] {
    let reader = try ExportReader(path: path, key: key, allowing: isExportMemberName)
    let first = try #require(try reader.next())
    try #require(first.name == "ferry.json")
    let object = try JSONSerialization.jsonObject(with: Data(reader.data(max: 1 << 20))) as? [String: Any]
    let members = try #require(object?["members"] as? [String: Int])
    try reader.expect(sizes: members.mapValues { Int64($0) })
    var small: [String: [UInt8]] = [:]
    while let member = try reader.next() {
        if member.size <= 1 << 20 { small[member.name] = try reader.data(max: 1 << 20) } else { try reader.skip() }
    }
    return small
}

@Suite("Encrypted export archives")
struct EncryptedExportTests {
    static let marker = Array("FERRY-MARKER-IN-MEMORY-7c1f".utf8)

    /// Pages holding the marker every 4 KiB, like a container's memory.
    static func pages(count: Int) -> [UInt8] {
        var bytes = patternBytes(count: count)
        var offset = 0
        while offset + marker.count <= count {
            bytes.replaceSubrange(offset..<offset + marker.count, with: marker)
            offset += 4096
        }
        return bytes
    }

    @Test("ExportWriter with a key: read back with it, refused without it or with another", arguments: ExportCompression.allCases)
    func twoPass(compression: ExportCompression) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let key = try testKey()
        let pages = Self.pages(count: 3 << 20)
        try Files.writeAtomically(pages, to: tmp.sub("pages-1.img"))
        let config = Array("{\"id\": \"abc\"}".utf8)
        let path = tmp.sub("web.tar")
        let writer = try ExportWriter(path: path, compression: compression, key: key)
        try writer.add(
            name: "ferry.json", bytes: ferryJSON(declaring: ["config.dump": Int64(config.count), "checkpoint/pages-1.img": Int64(pages.count)]).content)
        try writer.add(name: "config.dump", bytes: config)
        try writer.add(name: "checkpoint/pages-1.img", file: tmp.sub("pages-1.img"))
        let summary = try writer.finish()

        let bytes = try Files.read(path)
        #expect(summary.size == Int64(bytes.count))
        #expect(SealedArchiveHeader.isSealed(bytes))
        #expect(!contains(bytes, Self.marker))
        #expect(try Files.status(path).permissions == 0o600)
        #expect(try readEncrypted(path, key: key)["config.dump"] == config)
        expectArchiveError(.badKey, "it is encrypted; give its key with --key-file") { _ = try readEncrypted(path, key: nil) }
        expectArchiveError(.badKey, "the key does not open this archive") { _ = try readEncrypted(path, key: try testKey(9)) }

        // Cut at a chunk boundary past the tar's end: only the stream's own check sees it.
        let record = SealedArchiveHeader.defaultChunkSize + SealedArchiveHeader.tagSize
        let lastFull = (bytes.count - SealedArchiveHeader.size - 1) / record * record + SealedArchiveHeader.size
        try Files.writeAtomically(Array(bytes[0..<lastFull]), to: tmp.sub("cut.tar"))
        expectArchiveError(.unreadable, "truncated") { _ = try readEncrypted(tmp.sub("cut.tar"), key: key) }
        var flipped = bytes
        flipped[bytes.count / 2] ^= 0x40
        try Files.writeAtomically(flipped, to: tmp.sub("flipped.tar"))
        expectArchiveError(.unreadable, "fails authentication") { _ = try readEncrypted(tmp.sub("flipped.tar"), key: key) }
        try Files.writeAtomically(bytes + [0], to: tmp.sub("appended.tar"))
        expectArchiveError(.unreadable) { _ = try readEncrypted(tmp.sub("appended.tar"), key: key) }
    }

    @Test("a clear archive read with a key is refused")
    func clearWithKey() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("clear.tar.zst")
        let writer = try ExportWriter(path: path)
        try writer.add(name: "ferry.json", bytes: ferryJSON(declaring: [:]).content)
        _ = try writer.finish()
        expectArchiveError(.badKey, "it is not encrypted") { _ = try readEncrypted(path, key: try testKey()) }
        #expect(try readEncrypted(path, key: nil).isEmpty)
    }

    @Test("StreamedExportWriter with a key: patched headers and ferry.json read back", arguments: [ExportCompression.zstd, .none])
    func streamed(compression: ExportCompression) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let key = try testKey()
        let pages = Self.pages(count: 2 << 20 + 123)
        let config = Array("{\"id\": \"abc\"}".utf8)
        let path = tmp.sub("web.tar.zst")
        let writer = try StreamedExportWriter(path: path, compression: compression, key: key)
        try writer.reserve(name: "ferry.json", capacity: 200 << 10)
        try writer.begin(name: "checkpoint/pages-1.img")
        var index = 0
        while index < pages.count {
            let count = min(70_001, pages.count - index)
            try pages.withUnsafeBytes { try writer.append(UnsafeRawBufferPointer(rebasing: $0[index..<index + count])) }
            index += count
        }
        try writer.end()
        try writer.add(name: "config.dump", bytes: config)
        try writer.fill(
            name: "ferry.json",
            bytes: ferryJSON(declaring: ["config.dump": Int64(config.count), "checkpoint/pages-1.img": Int64(pages.count)]).content)
        let summary = try writer.finish()

        let bytes = try Files.read(path)
        #expect(summary.size == Int64(bytes.count))
        #expect(!contains(bytes, Self.marker))
        #expect(try readEncrypted(path, key: key)["config.dump"] == config)
        let reader = try ExportReader(path: path, key: key, allowing: isExportMemberName)
        #expect(reader.isEncrypted)
        #expect(try reader.next()?.name == "ferry.json")
        expectArchiveError(.badKey) { _ = try readEncrypted(path, key: try testKey(5)) }
        #expect(try entries(tmp.path) == ["web.tar.zst"])
    }

    @Test("an abandoned encrypted export leaves nothing")
    func abandoned() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let writer = try StreamedExportWriter(path: tmp.sub("a.tar.zst"), key: try testKey())
        try writer.reserve(name: "ferry.json", capacity: 1000)
        writer.abandon()
        let other = try ExportWriter(path: tmp.sub("b.tar.zst"), key: try testKey())
        try other.add(name: "ferry.json", bytes: [1, 2, 3])
        other.abandon()
        #expect(try entries(tmp.path).isEmpty)
    }
}
