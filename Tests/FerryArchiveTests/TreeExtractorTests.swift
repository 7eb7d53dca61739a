import FerryArchive
import FerrySystem
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("TreeExtractor")
struct TreeExtractorTests {
    // MARK: Round trips

    @Test(
        "a tar of a directory extracts to the same digest",
        arguments: [
            ("tar", [String]()), ("tar.gz", ["--gzip"]), ("tar.zst", ["--zstd"]), ("tar.xz", ["--xz"]),
        ])
    func tarRoundTrip(suffix: String, compression: [String]) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let source = tmp.sub("source")
        try makeSampleTree(at: source)
        // Named ".bin" on purpose: the compression is detected from the content.
        let archive = tmp.sub("image-\(suffix).bin")
        try run(["tar", "--create", "--file", archive, "--directory", source] + compression + ["."])
        let destination = tmp.sub("dest")
        try makeDir(destination)

        let report = try TreeExtractor.extract(archive: archive, into: destination)
        #expect(!isRoot || report.warnings.isEmpty, "\(report.warnings)")
        #expect(report.entries >= 15)
        #expect(try TreeDigest.compute(root: destination) == TreeDigest.compute(root: source))
        // The hardlink stays a hardlink.
        #expect(try inode("\(destination)/bin/tool") == inode("\(destination)/bin/tool-link"))
        // The root's mode comes from the archive's "./" member.
        #expect(try Files.status(destination).permissions == 0o755)
    }

    @Test("copying a directory preserves everything the digest sees, hardlinks and times")
    func copyDirectory() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let source = tmp.sub("source")
        try makeSampleTree(at: source)
        try Files.setPermissions(source, 0o750)
        var times = [timespec(tv_sec: 1_234_567, tv_nsec: 0), timespec(tv_sec: 1_234_567, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, "\(source)/etc/hostname", &times, 0) == 0)
        #expect(utimensat(AT_FDCWD, "\(source)/etc", &times, 0) == 0)
        let destination = tmp.sub("dest")
        try makeDir(destination)

        let report = try TreeExtractor.copy(directory: source, into: destination)
        #expect(!isRoot || report.warnings.isEmpty, "\(report.warnings)")
        #expect(try TreeDigest.compute(root: destination) == TreeDigest.compute(root: source))
        #expect(try Files.status(destination).permissions == 0o750)
        #expect(try inode("\(destination)/bin/tool") == inode("\(destination)/bin/tool-link"))
        #expect(try inode("\(destination)/bin/tool") != inode("\(source)/bin/tool"))
        var st = stat()
        #expect(lstat("\(destination)/etc/hostname", &st) == 0)
        #expect(st.st_mtim.tv_sec == 1_234_567)
        #expect(lstat("\(destination)/etc", &st) == 0)
        #expect(st.st_mtim.tv_sec == 1_234_567)
        if isRoot {
            #expect(try Files.status("\(destination)/null", followSymlinks: false).kind == .characterDevice)
            #expect(try Files.status("\(destination)/usr", followSymlinks: false).uid == 12345)
        }
    }

    @Test("a directory and a tar of it give the same digest after import")
    func copyAndExtractAgree() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let source = tmp.sub("source")
        try makeSampleTree(at: source)
        let archive = tmp.sub("image.tar.gz")
        try run(["tar", "--create", "--gzip", "--file", archive, "--directory", source, "."])
        let copied = tmp.sub("copied")
        let extracted = tmp.sub("extracted")
        try makeDir(copied)
        try makeDir(extracted)
        _ = try TreeExtractor.copy(directory: source, into: copied)
        _ = try TreeExtractor.extract(archive: archive, into: extracted)
        #expect(try TreeDigest.compute(root: copied) == TreeDigest.compute(root: extracted))
    }

    @Test("extended attributes survive extraction and copying")
    func extendedAttributesPreserved() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let archive = tmp.sub("xattr.tar")
        writeTar([.directory("."), .fileWithXattr("f", "x", name: "user.ferry", value: "kept")], to: archive)
        let extracted = tmp.sub("extracted")
        try makeDir(extracted)
        _ = try TreeExtractor.extract(archive: archive, into: extracted)
        #expect(extendedAttributes(of: "\(extracted)/f")["user.ferry"] == "kept")

        let copied = tmp.sub("copied")
        try makeDir(copied)
        _ = try TreeExtractor.copy(directory: extracted, into: copied)
        #expect(extendedAttributes(of: "\(copied)/f")["user.ferry"] == "kept")
    }

    @Test("file names that are not UTF-8 survive")
    func rawNames() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let source = tmp.sub("source")
        try makeDir(source)
        let dir = try OwnedFD.open(source, O_RDONLY | O_DIRECTORY)
        _ = try dir.openAt([0x66, 0xff, 0x2e], O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
        let archive = tmp.sub("raw.tar")
        try run(["tar", "--create", "--file", archive, "--directory", source, "."])
        let copied = tmp.sub("copied")
        let extracted = tmp.sub("extracted")
        try makeDir(copied)
        try makeDir(extracted)
        _ = try TreeExtractor.copy(directory: source, into: copied)
        _ = try TreeExtractor.extract(archive: archive, into: extracted)
        let expected = try TreeDigest.compute(root: source)
        #expect(try TreeDigest.compute(root: copied) == expected)
        #expect(try TreeDigest.compute(root: extracted) == expected)
    }

    @Test("an archive without a root member gets the destination's own root")
    func noRootMember() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let archive = tmp.sub("flat.tar.gz")
        writeTar(
            [.directory("etc"), .file("etc/os-release", "ID=ferry\n"), .symlink("lib", target: "usr/lib")],
            to: archive, gzip: true)
        let destination = tmp.sub("dest")
        try makeDir(destination, mode: 0o755)
        let report = try TreeExtractor.extract(archive: archive, into: destination)
        #expect(report.entries == 3)
        #expect(try Files.readString("\(destination)/etc/os-release") == "ID=ferry\n")
        #expect(try Files.status("\(destination)/lib", followSymlinks: false).kind == .symlink)
    }

    // MARK: Safety

    /// An archive that tries to write `outside` (a sibling of the destination).
    struct Escape: CustomTestStringConvertible, Sendable {
        let label: String
        let members: @Sendable (_ outside: String) -> [Member]
        var testDescription: String { label }
    }

    static let escapes: [Escape] = [
        Escape(label: "../evil") { _ in [.directory("."), .file("../evil", "pwned")] },
        Escape(label: "nested ../") { _ in [.directory("a"), .file("a/../../evil", "pwned")] },
        Escape(label: "absolute path") { outside in [.file("\(outside)/evil", "pwned")] },
        Escape(label: "symlink then write through it") { outside in
            [.symlink("link", target: outside), .file("link/evil", "pwned")]
        },
        Escape(label: "relative symlink then write through it") { _ in
            [.symlink("link", target: "../outside"), .file("link/evil", "pwned")]
        },
        Escape(label: "symlinked directory then a directory in it") { outside in
            [.symlink("d", target: outside), .directory("d/evil")]
        },
        Escape(label: "hardlink to ../") { _ in [.hardlink("h", target: "../outside/secret")] },
        Escape(label: "hardlink to an absolute path") { outside in [.hardlink("h", target: "\(outside)/secret")] },
        Escape(label: "hardlink through a symlink") { outside in
            [.symlink("link", target: outside), .hardlink("h", target: "link/secret")]
        },
        Escape(label: "the root replaced by a symlink") { outside in
            [.symlink(".", target: outside), .file("evil", "pwned")]
        },
    ]

    @Test("members that would land outside the destination are refused", arguments: escapes)
    func refusesEscapes(escape: Escape) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let outside = tmp.sub("outside")
        try makeDir(outside)
        try writeFile("\(outside)/secret", "secret")
        let destination = tmp.sub("dest")
        try makeDir(destination)
        let archive = "\(tmp.path)/archive.tar"
        writeTar(escape.members(outside), to: archive)

        #expect {
            try TreeExtractor.extract(archive: archive, into: destination)
        } throws: { error in
            guard let error = error as? ArchiveError else { return false }
            return error.code == .unsafeMember && error.message.contains(archive)
        }
        // Nothing appeared outside the destination, and the secret is untouched.
        #expect(try entries(tmp.path) == ["archive.tar", "dest", "outside"])
        #expect(try entries(outside) == ["secret"])
        #expect(try Files.readString("\(outside)/secret") == "secret")
        #expect(try Files.status("\(outside)/secret").linkCount == 1)
        #expect(Files.isDirectory(destination))
        #expect(try Files.status(destination, followSymlinks: false).kind == .directory)
    }

    @Test("a symlink pointing outside is itself extracted, as content")
    func symlinkItselfIsFine() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let archive = tmp.sub("a.tar")
        writeTar([.symlink("etc-link", target: "/etc"), .symlink("up", target: "../../..")], to: archive)
        let destination = tmp.sub("dest")
        try makeDir(destination)
        _ = try TreeExtractor.extract(archive: archive, into: destination)
        #expect(try Files.status("\(destination)/etc-link", followSymlinks: false).kind == .symlink)
        #expect(try Files.status("\(destination)/up", followSymlinks: false).kind == .symlink)
    }

    // MARK: Errors

    @Test("a truncated archive gives an error naming it")
    func truncated() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let source = tmp.sub("source")
        try makeSampleTree(at: source)
        let archive = tmp.sub("whole.tar.gz")
        try run(["tar", "--create", "--gzip", "--file", archive, "--directory", source, "."])
        let bytes = try Files.read(archive)
        let truncated = tmp.sub("truncated.tar.gz")
        try Files.writeAtomically(bytes.prefix(bytes.count / 2), to: truncated)
        let destination = tmp.sub("dest")
        try makeDir(destination)

        #expect {
            try TreeExtractor.extract(archive: truncated, into: destination)
        } throws: { error in
            guard let error = error as? ArchiveError else { return false }
            return error.code == .unreadable && error.message.hasPrefix("cannot extract '\(truncated)': ")
                && error.message.lowercased().contains("truncated")
        }
    }

    @Test("garbage, an empty file and a zip are not tar archives", arguments: ["garbage", "empty", "zip"])
    func notAnArchive(kind: String) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let file = tmp.sub("input.tar")
        switch kind {
        case "garbage": try Files.writeAtomically((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }, to: file)
        case "empty": try Files.writeAtomically([], to: file)
        default: try Files.writeAtomically(Array("PK\u{03}\u{04}".utf8) + [UInt8](repeating: 0, count: 600), to: file)
        }
        let destination = tmp.sub("dest")
        try makeDir(destination)
        #expect {
            try TreeExtractor.extract(archive: file, into: destination)
        } throws: { error in
            guard let error = error as? ArchiveError else { return false }
            return error.code == .unreadable && error.message.contains(file)
        }
    }

    @Test("a missing archive gives an error naming it")
    func missingArchive() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let destination = tmp.sub("dest")
        try makeDir(destination)
        #expect {
            try TreeExtractor.extract(archive: tmp.sub("nope.tar"), into: destination)
        } throws: { error in
            "\(error)".contains("nope.tar") && "\(error)".hasSuffix("No such file or directory")
        }
    }

    @Test("the destination must exist, be a directory and be empty")
    func destinationChecks() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let source = tmp.sub("source")
        try makeDir(source)
        try writeFile("\(source)/f", "x")
        let full = tmp.sub("full")
        try makeDir(full)
        try writeFile("\(full)/existing", "x")
        for destination in [tmp.sub("missing"), "\(source)/f", full] {
            #expect {
                try TreeExtractor.copy(directory: source, into: destination)
            } throws: { error in
                (error as? ArchiveError)?.code == .badDestination
            }
        }
    }

    @Test("copying a directory into itself is refused")
    func copyIntoItself() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let inner = tmp.sub("inner")
        try makeDir(inner)
        #expect {
            try TreeExtractor.copy(directory: tmp.path, into: inner)
        } throws: { error in
            (error as? ArchiveError)?.code == .badDestination
        }
        #expect(try entries(inner).isEmpty)
    }
}
