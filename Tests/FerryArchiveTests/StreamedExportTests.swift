import FerryArchive
import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Streamed export archive")
struct StreamedExportTests {
    static let streamable: [ExportCompression] = [.zstd, .none]

    @Test("members of unknown size and a reserved ferry.json read back through ExportReader", arguments: streamable)
    func roundTrip(compression: ExportCompression) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let output = tmp.sub("out")
        let staging = tmp.sub("staging")
        try makeDir(output)
        try makeDir(staging)
        let pages = patternBytes(count: 5 << 20 + 123)
        let second = patternBytes(count: 700, seed: 7)
        let config = Array("{\"id\": \"abc\"}".utf8)
        try Files.writeAtomically(second, to: tmp.sub("core-1.img"))

        let path = "\(output)/web.tar.zst"
        let writer = try StreamedExportWriter(path: path, compression: compression)
        // More than one raw block of 128 KiB, so that filling crosses a block boundary.
        try writer.reserve(name: "ferry.json", capacity: 300 << 10)
        try writer.add(name: "config.dump", bytes: config)
        try writer.begin(name: "checkpoint/pages-1.img")
        // In uneven chunks, as a pipe delivers them.
        var index = 0
        var step = 1
        while index < pages.count {
            let count = min(step, pages.count - index)
            try pages.withUnsafeBytes { try writer.append(UnsafeRawBufferPointer(rebasing: $0[index..<index + count])) }
            index += count
            step = step * 3 % 200_000 + 1
        }
        #expect(try writer.end() == Int64(pages.count))
        try writer.add(name: "checkpoint/core-1.img", file: tmp.sub("core-1.img"))
        try writer.begin(name: "checkpoint/empty.img")
        try writer.end()
        let metadata = ferryJSON(declaring: [
            "config.dump": Int64(config.count), "checkpoint/pages-1.img": Int64(pages.count),
            "checkpoint/core-1.img": Int64(second.count), "checkpoint/empty.img": 0,
        ]).content
        try writer.fill(name: "ferry.json", bytes: metadata)
        let summary = try writer.finish()

        #expect(try entries(output) == ["web.tar.zst"])
        #expect(try Files.status(path).permissions == 0o600)
        #expect(summary.size == (try Files.status(path).size))
        let names = ["ferry.json", "config.dump", "checkpoint/pages-1.img", "checkpoint/core-1.img", "checkpoint/empty.img"]
        #expect(summary.manifest.members.map(\.name) == names)
        #expect(summary.manifest.members[2].sha256 == sha256Hex(pages))

        let small = try importExport(path, staging: staging)
        #expect(small["config.dump"] == config)
        // ferry.json is its JSON followed by spaces (openExport decoded it above).
        let head = try ExportReader(path: path, allowing: isExportMemberName)
        #expect(try head.next()?.name == "ferry.json")
        let json = try head.data(max: 1 << 20)
        #expect(json.count == 300 << 10)
        #expect(Array(json.prefix(metadata.count)) == metadata)
        #expect(json.dropFirst(metadata.count).allSatisfy { $0 == 0x20 })
        #expect(try Files.read("\(staging)/checkpoint_pages-1.img") == pages)
        #expect(try Files.read("\(staging)/checkpoint_core-1.img") == second)
        #expect(try Files.read("\(staging)/checkpoint_empty.img").isEmpty)
        let reader = try openExport(path)
        #expect(try reader.finish() == summary.manifest)

        // Other tools read it as one ordinary (concatenated-frame) stream.
        let decompress = compression == .zstd ? "zstd -dc '\(path)' | tar -tvf - --numeric-owner" : "tar -tvf '\(path)' --numeric-owner"
        let listing = try capture(["sh", "-c", decompress])
        let lines = listing.split(separator: "\n")
        let line = lines.first { $0.hasSuffix("checkpoint/pages-1.img") } ?? ""
        #expect(line.hasPrefix("-rw------- 0/0") && line.contains(" \(pages.count) "), "\(listing)")
        // checkpointctl needs the directory entry, once, before the images (as podman's).
        let directories = lines.filter { $0.hasPrefix("d") }
        #expect(directories.count == 1 && directories.first?.hasPrefix("drwx------ 0/0") == true, "\(listing)")
        #expect(directories.first?.hasSuffix(" checkpoint/") == true, "\(listing)")
        #expect(lines.firstIndex { $0.hasSuffix(" checkpoint/") } == lines.firstIndex { $0.contains(" checkpoint/") }, "\(listing)")
    }

    @Test("an abandoned or unfilled archive leaves nothing behind")
    func nothingLeft() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let output = tmp.sub("out")
        try makeDir(output)
        let writer = try StreamedExportWriter(path: "\(output)/a.tar.zst")
        try writer.reserve(name: "ferry.json", capacity: 1024)
        try writer.begin(name: "checkpoint/pages-1.img")
        #expect(throws: ArchiveError.self) { try writer.finish() }
        #expect(try entries(output).isEmpty)

        let second = try StreamedExportWriter(path: "\(output)/b.tar.zst")
        try second.reserve(name: "ferry.json", capacity: 16)
        #expect(throws: ArchiveError.self) { try second.fill(name: "ferry.json", bytes: [UInt8](repeating: 0x20, count: 513)) }
        #expect(try entries(output).isEmpty)
        #expect(throws: ArchiveError.self) { try StreamedExportWriter(path: "\(output)/c.tar.gz", compression: .gzip) }
    }
}
