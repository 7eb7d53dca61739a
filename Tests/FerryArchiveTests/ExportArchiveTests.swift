import FerryArchive
import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Export archive")
struct ExportArchiveTests {
    // MARK: Writing and reading back

    @Test("members round-trip with each compression; the manifest verifies", arguments: ExportCompression.allCases)
    func roundTrip(compression: ExportCompression) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let sources = tmp.sub("sources")
        let output = tmp.sub("out")
        let staging = tmp.sub("staging")
        try makeDir(sources)
        try makeDir(output)
        try makeDir(staging)
        let pages = patternBytes(count: 20 << 20)
        try Files.writeAtomically(pages, to: "\(sources)/pages-1.img")
        let config = Array("{\"id\": \"abc\"}".utf8)
        let empty: [UInt8] = []
        let metadata = ferryJSON(declaring: [
            "config.dump": Int64(config.count), "checkpoint/pages-1.img": Int64(pages.count), "stats-dump": 0,
        ]).content

        let path = "\(output)/web.tar.zst"
        let writer = try ExportWriter(path: path, compression: compression)
        try writer.add(name: "ferry.json", bytes: metadata)
        try writer.add(name: "config.dump", bytes: config)
        try writer.add(name: "stats-dump", bytes: empty)
        try writer.add(name: "checkpoint/pages-1.img", file: "\(sources)/pages-1.img")
        let summary = try writer.finish()

        // Only the final file is left, with mode 0600 and the reported size.
        #expect(try entries(output) == ["web.tar.zst"])
        let status = try Files.status(path)
        #expect(status.permissions == 0o600)
        #expect(summary.size == status.size)
        #expect(summary.path == path)
        #expect(summary.manifest.members.map(\.name) == ["ferry.json", "config.dump", "stats-dump", "checkpoint/pages-1.img"])
        #expect(summary.manifest.members[3].sha256 == sha256Hex(pages))
        #expect(summary.manifest.members[3].size == Int64(pages.count))

        // The compression is the one asked for (and is detected on read, whatever the name).
        let head = try Array(Files.read(path).prefix(512))
        switch compression {
        case .zstd: #expect(head.prefix(4) == [0x28, 0xb5, 0x2f, 0xfd])
        case .gzip: #expect(head.prefix(2) == [0x1f, 0x8b])
        case .none: #expect(Array(head[257..<262]) == Array("ustar".utf8))
        }
        if compression != .none { #expect(summary.size < Int64(pages.count)) }

        let small = try importExport(path, staging: staging)
        #expect(small["config.dump"] == config)
        #expect(small["stats-dump"] == empty)
        #expect(try Files.read("\(staging)/checkpoint_pages-1.img") == pages)

        // finish() on a fully read archive returns the manifest.
        let reader = try openExport(path)
        #expect(try reader.finish() == summary.manifest)
    }

    @Test("members carry mode 0600, owner 0:0 and one modification time")
    func memberHeaders() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("plain.tar")
        let writer = try ExportWriter(path: path, compression: ExportCompression.none)
        try writer.add(name: "ferry.json", bytes: Array("{}".utf8))
        _ = try writer.finish()
        let listing = try capture(["tar", "--list", "--verbose", "--numeric-owner", "--file", path])
        let lines = listing.split(separator: "\n")
        #expect(lines.count == 2)
        for line in lines {
            #expect(line.hasPrefix("-rw------- 0/0"), "\(line)")
        }
        #expect(lines.last?.hasSuffix(" manifest.json") == true)
    }

    @Test("each directory's entry precedes its first member, once, and is in neither ferry.json nor the manifest")
    func directoryEntries() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("plain.tar")
        let staging = tmp.sub("staging")
        try makeDir(staging)
        let image = Array("image".utf8)
        let writer = try ExportWriter(path: path, compression: ExportCompression.none)
        try writer.add(name: "ferry.json", bytes: ferryJSON(declaring: ["checkpoint/a.img": 5, "checkpoint/b.img": 5]).content)
        try writer.add(name: "checkpoint/a.img", bytes: image)
        try writer.add(name: "checkpoint/b.img", bytes: image)
        let summary = try writer.finish()
        #expect(summary.manifest.members.map(\.name) == ["ferry.json", "checkpoint/a.img", "checkpoint/b.img"])
        let listing = try capture(["tar", "--list", "--verbose", "--numeric-owner", "--file", path])
        let names = listing.split(separator: "\n").map { $0.split(separator: " ").last.map(String.init) ?? "" }
        #expect(names == ["ferry.json", "checkpoint/", "checkpoint/a.img", "checkpoint/b.img", "manifest.json"], "\(listing)")
        #expect(listing.split(separator: "\n")[1].hasPrefix("drwx------ 0/0"), "\(listing)")
        // Ferry's reader skips it and verifies the rest.
        #expect(try importExport(path, staging: staging).isEmpty)
        #expect(try Files.read("\(staging)/checkpoint_b.img") == image)
    }

    @Test("an abandoned, failed or dropped writer leaves no file behind")
    func abandonLeavesNothing() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let output = tmp.sub("out")
        try makeDir(output)

        let abandoned = try ExportWriter(path: "\(output)/a.tar.zst")
        try abandoned.add(name: "ferry.json", bytes: Array("{}".utf8))
        #expect(try entries(output).count == 1)
        abandoned.abandon()
        #expect(try entries(output).isEmpty)
        expectArchiveError(.writeFailed, "abandoned") { try abandoned.add(name: "config.dump", bytes: []) }

        let failed = try ExportWriter(path: "\(output)/b.tar.zst")
        expectArchiveError(.io, "\(output)/b.tar.zst", "missing") {
            try failed.add(name: "checkpoint/pages-1.img", file: tmp.sub("missing"))
        }
        #expect(try entries(output).isEmpty)

        do {
            let dropped = try ExportWriter(path: "\(output)/c.tar.zst")
            try dropped.add(name: "ferry.json", bytes: Array(repeating: 7, count: 100_000))
            #expect(try entries(output).count == 1)
        }
        #expect(try entries(output).isEmpty)
    }

    @Test("the writer refuses names the reader would refuse")
    func writerRefusesBadNames() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        for name in ["/etc/passwd", "../x", "checkpoint//a", "checkpoint/", "./ferry.json", "manifest.json"] {
            let writer = try ExportWriter(path: tmp.sub("x.tar"))
            #expect(throws: ArchiveError.self, "\(name)") { try writer.add(name: name, bytes: []) }
        }
        let writer = try ExportWriter(path: tmp.sub("y.tar"))
        try writer.add(name: "config.dump", bytes: [])
        expectArchiveError(.writeFailed, "already added") { try writer.add(name: "config.dump", bytes: []) }
        #expect(try entries(tmp.path).isEmpty)
    }

    @Test("a file that changes size while it is added fails the export")
    func sourceMustNotChange() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        try writeFile(tmp.sub("image"), "12345")
        let source = try OwnedFD.open(tmp.sub("image"), O_RDONLY)
        // Read past some of it first: fewer bytes remain than fstat reports.
        _ = try source.read(upTo: 2)
        let writer = try ExportWriter(path: tmp.sub("x.tar"))
        expectArchiveError(.writeFailed, "shrank") { try writer.add(name: "checkpoint/core.img", contentsOf: source) }
        #expect(try entries(tmp.path) == ["image"])
    }

    // MARK: Hostile archives: the outer stream

    @Test(
        "refused members of the outer archive",
        arguments: [
            ("absolute", RawMember.file("/etc/passwd", "root::0:0::/:/bin/sh\n"), "absolute path"),
            ("dotdot", RawMember.file("checkpoint/../../x", "x"), "'..'"),
            ("symlink", RawMember.symlink("checkpoint/core.img", to: "/etc/shadow"), "symlinks are not allowed"),
            ("hardlink", RawMember.hardlink("checkpoint/core.img", to: "ferry.json"), "hardlinks are not allowed"),
            ("device", RawMember(name: "checkpoint/mem", kind: .characterDevice(1, 1)), "device nodes are not allowed"),
            ("fifo", RawMember(name: "checkpoint/fifo", kind: .fifo), "only regular files"),
            ("unknown", RawMember.file("evil.sh", "#!/bin/sh\n"), "not a member a Ferry export may contain"),
            ("nested", RawMember.file("checkpoint/sub/core.img", "x"), "not a member a Ferry export may contain"),
        ])
    func refusedOuterMember(label: String, member: RawMember, reason: String) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let sentinel = try Sentinel(in: tmp)
        let staging = tmp.sub("staging")
        try makeDir(staging)
        let path = tmp.sub("\(label).tar.zst")
        writeHandMadeExport([.file("config.dump", "{}"), member], to: path)
        let before = try entries(tmp.path)
        expectArchiveError(.unsafeMember, "cannot read export '\(path)'", "refusing member '\(member.name)'", reason) {
            try importExport(path, staging: staging)
        }
        #expect(try entries(staging) == [])
        #expect(try entries(tmp.path) == before)
        try sentinel.check()
    }

    @Test("a duplicate member is refused")
    func duplicateMember() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("dup.tar.zst")
        writeHandMadeExport(
            [.file("config.dump", "{}"), .file("config.dump", "{}")], to: path, declared: ["config.dump": 2])
        expectArchiveError(.unsafeMember, "refusing member 'config.dump': duplicate member") {
            try importExport(path, staging: tmp.path)
        }
    }

    @Test(
        "manifest problems fail verification",
        arguments: [
            ("not-listed", ManifestVariant.omitting("config.dump"), "member 'config.dump' is not listed in manifest.json"),
            ("checksum", ManifestVariant.wrongChecksum("checkpoint/core.img"), "member 'checkpoint/core.img' does not match its checksum"),
            ("absent-member", ManifestVariant.listing("spec.dump"), "manifest.json lists 'spec.dump', which the archive does not contain"),
            ("missing", ManifestVariant.missing, "ends without manifest.json"),
        ])
    func manifestMismatch(label: String, variant: ManifestVariant, message: String) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("\(label).tar.gz")
        writeHandMadeExport(
            [.file("config.dump", "{}"), .file("checkpoint/core.img", "core")], to: path, manifest: variant, compression: .gzip)
        expectArchiveError(.verificationFailed, "cannot read export '\(path)'", message) {
            try importExport(path, staging: tmp.path)
        }
        // finish() applies the same check to a caller that stops early.
        let reader = try openExport(path)
        expectArchiveError(.verificationFailed, message) { _ = try reader.finish() }
    }

    @Test("a member after the manifest is refused")
    func manifestMustBeLast() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("late.tar.zst")
        writeHandMadeExport([.file("config.dump", "{}")], to: path, trailing: [.file("spec.dump", "{}")])
        expectArchiveError(.unsafeMember, "refusing member 'spec.dump': follows manifest.json") {
            try importExport(path, staging: tmp.path)
        }
    }

    @Test("a ferry.json that declares a member the archive lacks fails verification")
    func declaredButAbsent() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("absent.tar.zst")
        writeHandMadeExport([.file("config.dump", "{}")], to: path, declared: ["config.dump": 2, "spec.dump": 10])
        expectArchiveError(.verificationFailed, "ferry.json declares 'spec.dump'") {
            try importExport(path, staging: tmp.path)
        }
    }

    @Test("a truncated archive fails with a message naming it", arguments: ExportCompression.allCases)
    func truncated(compression: ExportCompression) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let staging = tmp.sub("staging")
        try makeDir(staging)
        let pages = patternBytes(count: 3 << 20, seed: 42)
        let path = tmp.sub("cut.tar")
        let writer = try ExportWriter(path: path, compression: compression)
        try writer.add(name: "ferry.json", bytes: ferryJSON(declaring: ["checkpoint/pages-1.img": Int64(pages.count)]).content)
        try writer.add(name: "checkpoint/pages-1.img", bytes: pages)
        let summary = try writer.finish()
        #expect(truncate(path, off_t(summary.size / 2)) == 0)
        do {
            try importExport(path, staging: staging)
            Issue.record("a truncated archive was accepted")
        } catch let error as ArchiveError {
            #expect(error.code == .unreadable || error.code == .verificationFailed, "\(error)")
            #expect(error.description.hasPrefix("cannot read export '\(path)': "), "\(error)")
        }
    }

    @Test("a member whose header size differs from ferry.json is refused before its data")
    func headerSizeDiffers() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("size.tar.zst")
        writeHandMadeExport(
            [.file("config.dump", "{}"), .file("checkpoint/pages-1.img", String(repeating: "x", count: 4096))],
            to: path, declared: ["config.dump": 2, "checkpoint/pages-1.img": 10])
        let reader = try openExport(path)
        #expect(try reader.next() == ExportMember(name: "config.dump", size: 2))
        expectArchiveError(.unsafeMember, "refusing member 'checkpoint/pages-1.img'", "4096 bytes but ferry.json declares 10") {
            _ = try reader.next()
        }
        #expect(reader.currentMember == nil)
        // The reader stays failed.
        expectArchiveError(.unsafeMember, "checkpoint/pages-1.img") { _ = try reader.next() }
    }

    @Test("a member ferry.json does not declare is refused")
    func undeclaredMember() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("undeclared.tar.zst")
        writeHandMadeExport(
            [.file("config.dump", "{}"), .file("spec.dump", "{}")], to: path, declared: ["config.dump": 2])
        expectArchiveError(.unsafeMember, "refusing member 'spec.dump': not declared in ferry.json") {
            try importExport(path, staging: tmp.path)
        }
    }

    @Test("only the first member may be read before the sizes are declared")
    func sizesMustBeDeclared() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("early.tar.zst")
        writeHandMadeExport([.file("config.dump", "{}")], to: path)
        let reader = try ExportReader(path: path, allowing: isExportMemberName)
        #expect(try reader.next()?.name == "ferry.json")
        expectArchiveError(.unsafeMember, "refusing member 'config.dump': comes before the member sizes are declared") {
            _ = try reader.next()
        }
    }

    @Test("data(max:) refuses a member larger than the caller expects, before reading it")
    func dataLimit() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("big.tar.zst")
        writeHandMadeExport([.file("config.dump", String(repeating: "y", count: 5000))], to: path)
        let reader = try openExport(path)
        #expect(try reader.next()?.name == "config.dump")
        expectArchiveError(.unsafeMember, "'config.dump' is 5000 bytes, more than the 4096 expected") {
            _ = try reader.data(max: 4096)
        }
    }

    @Test("a skipped member is still hashed and verified")
    func skippedMembersAreVerified() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let good = tmp.sub("good.tar.zst")
        let bad = tmp.sub("bad.tar.zst")
        let members: [RawMember] = [.file("config.dump", "{}"), .file("checkpoint/core.img", "core")]
        writeHandMadeExport(members, to: good)
        writeHandMadeExport(members, to: bad, manifest: .wrongChecksum("checkpoint/core.img"))
        for (path, valid) in [(good, true), (bad, false)] {
            let reader = try openExport(path)
            var names: [String] = []
            do {
                while let member = try reader.next() {
                    names.append(member.name)
                    if member.name == "config.dump" { try reader.skip() }
                    // checkpoint/core.img is not even skipped explicitly.
                }
                #expect(valid)
                #expect(names == ["config.dump", "checkpoint/core.img"])
            } catch {
                #expect(!valid, "\(error)")
                #expect(error.code == .verificationFailed)
            }
        }
    }

    @Test("the declared total must fit in the destination's free space")
    func insufficientSpace() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("huge.tar.zst")
        writeHandMadeExport([.file("config.dump", "{}")], to: path, declared: ["config.dump": 2, "checkpoint/pages-1.img": 1 << 60])
        let reader = try openExport(path)
        expectArchiveError(.insufficientSpace, "cannot read export '\(path)'", "\(1 << 60 + 2) bytes", tmp.path) {
            try reader.ensureSpace(directory: tmp.path)
        }
        // A reasonable total passes.
        let fine = tmp.sub("fine.tar.zst")
        writeHandMadeExport([.file("config.dump", "{}")], to: fine)
        try openExport(fine).ensureSpace(directory: tmp.path)
    }

    @Test("a negative or overflowing declaration is refused")
    func badDeclarations() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("x.tar.zst")
        writeHandMadeExport([.file("config.dump", "{}")], to: path)
        let reader = try ExportReader(path: path, allowing: isExportMemberName)
        _ = try reader.next()
        expectArchiveError(.unsafeMember, "negative size") { try reader.expect(sizes: ["config.dump": -1]) }
        let other = try ExportReader(path: path, allowing: isExportMemberName)
        _ = try other.next()
        expectArchiveError(.unsafeMember, "2^63") { try other.expect(sizes: ["a": Int64.max, "b": 1]) }
    }

    /// Run alone (`FERRY_LARGE_TESTS=1 swift test --filter largeExportMemory`): the peak
    /// resident size of the process is compared before and after.
    @Test(
        "a multi-GiB export and import keep memory bounded",
        .enabled(if: ProcessInfo.processInfo.environment["FERRY_LARGE_TESTS"] != nil))
    func largeExportMemory() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let source = tmp.sub("pages-1.img")
        let chunk = patternBytes(count: 8 << 20, seed: 99)
        let count = 3 * 1024 / 8
        do {
            let file = try OwnedFD.open(source, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            for index in 0..<count {
                var block = chunk
                block[0] = UInt8(truncatingIfNeeded: index)
                try file.writeAll(block)
            }
        }
        let size = Int64(count) * Int64(chunk.count)
        let baseline = peakResidentBytes()
        let path = tmp.sub("big.tar.zst")
        let writer = try ExportWriter(path: path)
        try writer.add(name: "ferry.json", bytes: ferryJSON(declaring: ["checkpoint/pages-1.img": size]).content)
        try writer.add(name: "checkpoint/pages-1.img", file: source)
        _ = try writer.finish()
        let afterExport = peakResidentBytes()
        try Files.removeUntrustedTree(source)

        let staging = tmp.sub("staging")
        try makeDir(staging)
        try importExport(path, staging: staging)
        let afterImport = peakResidentBytes()
        #expect(try Files.status("\(staging)/checkpoint_pages-1.img").size == size)
        #expect(afterExport - baseline < 32 << 20, "export grew the peak RSS by \((afterExport - baseline) >> 20) MiB")
        #expect(afterImport - baseline < 32 << 20, "import grew the peak RSS by \((afterImport - baseline) >> 20) MiB")
    }

    @Test("a file that is not an archive is unreadable, naming it")
    func notAnArchive() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let path = tmp.sub("garbage.tar.zst")
        try writeFile(path, String(repeating: "not a tar ", count: 200))
        expectArchiveError(.unreadable, "cannot read export '\(path)'") { try importExport(path, staging: tmp.path) }
        expectArchiveError(.io, "cannot read export '\(tmp.sub("absent"))'") {
            _ = try ExportReader(path: tmp.sub("absent"), allowing: { _ in true })
        }
    }
}

/// The standard output of a command that must succeed.
func capture(_ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "\(arguments.joined(separator: " ")) failed")
    return String(decoding: data, as: UTF8.self)
}

/// The process's peak resident set size so far (VmHWM), in bytes.
func peakResidentBytes() -> Int {
    let status = (try? Files.readString("/proc/self/status")) ?? ""
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let digits = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return digits * 1024
    }
    return 0
}
