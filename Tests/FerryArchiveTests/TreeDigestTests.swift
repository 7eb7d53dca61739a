import FerryArchive
import FerrySystem
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("TreeDigest")
struct TreeDigestTests {
    // Needs root for the device node and uid/gid 0 ownership.
    @Test("the digest of a fixed tree matches the documented format", .enabled(if: isRoot))
    func goldenDigest() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let root = tmp.sub("tree")
        // Expected value computed independently (Python hashlib) from the format in the
        // doc comment of TreeDigest; changing it means changing the format version.
        try makeDir(root, mode: 0o755)
        try writeFile("\(root)/a", "hi\n", mode: 0o644)
        makeSymlink("\(root)/b", to: "a")
        try makeDir("\(root)/c", mode: 0o700)
        #expect(mknod("\(root)/c/n", S_IFCHR | 0o600, deviceNumber(1, 3)) == 0)
        let summary = try TreeDigest.summarize(root: root)
        #expect(summary.digest == "sha256:4ed39c193109ba50323494fe68b0cfcff06a9b6867f91b2f1cfa0600cc5db1d6")
        #expect(summary.size == 3)
        #expect(summary.entries == 5)
    }

    @Test("the digest is stable and ignores timestamps")
    func stable() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let root = tmp.sub("tree")
        try makeSampleTree(at: root)
        let first = try TreeDigest.compute(root: root)
        #expect(first.hasPrefix("sha256:"))
        #expect(first.count == 7 + 64)
        #expect(try TreeDigest.compute(root: root) == first)

        var times = [timespec(tv_sec: 1_000_000, tv_nsec: 0), timespec(tv_sec: 1_000_000, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, "\(root)/etc/hostname", &times, 0) == 0)
        #expect(utimensat(AT_FDCWD, "\(root)/bin", &times, 0) == 0)
        #expect(try TreeDigest.compute(root: root) == first)
    }

    @Test("size counts regular file bytes once per inode")
    func size() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let root = tmp.sub("tree")
        try makeDir(root)
        try writeFile("\(root)/a", "12345")
        try writeFile("\(root)/b", "678")
        makeHardlink("\(root)/a2", to: "\(root)/a")
        makeSymlink("\(root)/s", to: "a-long-target")
        let summary = try TreeDigest.summarize(root: root)
        #expect(summary.size == 8)
        #expect(summary.entries == 5)
    }

    @Test("the digest changes with content, mode, symlink target, name and ownership")
    func sensitivity() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let root = tmp.sub("tree")
        try makeSampleTree(at: root)
        var seen: Set<String> = [try TreeDigest.compute(root: root)]
        func expectNew(_ change: String) throws {
            let digest = try TreeDigest.compute(root: root)
            #expect(seen.insert(digest).inserted, "digest unchanged after \(change)")
        }

        try writeFile("\(root)/etc/hostname", "other\n")
        try expectNew("a content change")
        try writeFile("\(root)/etc/hostname", "othes\n")
        try expectNew("a same-length content change")
        try Files.setPermissions("\(root)/bin/tool", 0o700)
        try expectNew("a mode change")
        try Files.setPermissions("\(root)/bin/tool", 0o4700)
        try expectNew("setting the setuid bit")
        try Files.setPermissions("\(root)/empty", 0o755)
        try expectNew("a directory mode change")
        #expect(unlink("\(root)/bin/sh") == 0)
        makeSymlink("\(root)/bin/sh", to: "tool2")
        try expectNew("a symlink target change")
        #expect(rename("\(root)/etc/empty", "\(root)/etc/empty2") == 0)
        try expectNew("a rename")
        try makeDir("\(root)/empty/new")
        try expectNew("a new empty directory")
        if isRoot {
            changeOwner("\(root)/etc/abs", 7, 7)
            try expectNew("a symlink owner change")
            changeOwner("\(root)/etc", 0, 8)
            try expectNew("a group change")
        }
    }

    @Test("a file turned into a symlink to the same content changes the digest")
    func fileVersusSymlink() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let one = tmp.sub("one")
        let two = tmp.sub("two")
        try makeDir(one)
        try makeDir(two)
        try writeFile("\(one)/x", "a")
        try writeFile("\(two)/target", "a")
        try writeFile("\(one)/target", "a")
        makeSymlink("\(two)/x", to: "target")
        #expect(try TreeDigest.compute(root: one) != TreeDigest.compute(root: two))
    }

    @Test("the digest does not follow symlinks out of the tree")
    func noFollow() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let root = tmp.sub("tree")
        let outside = tmp.sub("outside")
        try makeDir(root)
        try makeDir(outside)
        try writeFile("\(outside)/secret", "1")
        makeSymlink("\(root)/link", to: outside)
        let before = try TreeDigest.compute(root: root)
        try writeFile("\(outside)/secret", "2")
        try writeFile("\(outside)/more", "3")
        #expect(try TreeDigest.compute(root: root) == before)
    }

    @Test("names that are not UTF-8 are hashed as bytes")
    func rawNames() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let root = tmp.sub("tree")
        try makeDir(root)
        let dir = try OwnedFD.open(root, O_RDONLY | O_DIRECTORY)
        _ = try dir.openAt([0x66, 0xff], O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
        let first = try TreeDigest.compute(root: root)
        _ = try dir.openAt([0x66, 0xfe], O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
        #expect(try TreeDigest.compute(root: root) != first)
    }

    @Test("a missing root is an error naming it")
    func missingRoot() {
        #expect {
            try TreeDigest.compute(root: "/nonexistent/ferry-tree")
        } throws: { error in
            "\(error)".contains("/nonexistent/ferry-tree") && "\(error)".contains("No such file")
        }
    }
}
