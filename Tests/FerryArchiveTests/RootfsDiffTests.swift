import FerryArchive
import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("RootfsDiff", .enabled(if: isRoot, "whiteouts and trusted.overlay.* attributes need root"))
struct RootfsDiffTests {
    @Test("an upper directory made by hand survives create and apply")
    func createAndApply() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let upper = tmp.sub("upper")
        try makeTreeWithoutDevices(at: upper)
        // What overlayfs itself would have written: whiteouts and an opaque directory.
        try makeDir("\(upper)/var/opaque")
        try writeFile("\(upper)/var/opaque/fresh", "new content\n")
        try setExtendedAttribute("\(upper)/var/opaque", "trusted.overlay.opaque", "y")
        try setExtendedAttribute("\(upper)/etc", "trusted.overlay.impure", "y")
        makeWhiteout("\(upper)/etc/removed")
        makeWhiteout("\(upper)/removed-top")
        try writeFile("\(upper)/bin/ping", "ping\n", mode: 0o755)
        try OwnedFD.open("\(upper)/bin/ping", O_RDONLY).setExtendedAttribute("security.capability", netRawCapability)
        try setExtendedAttribute("\(upper)/etc/hostname", "trusted.private", "host only")
        makeSocket("\(upper)/tmp/app.sock")
        setTimes("\(upper)/etc", 1_111_111)
        setTimes("\(upper)/var/opaque", 2_222_222)

        let tar = tmp.sub("rootfs-diff.tar")
        let summary = try RootfsDiff.create(upperDirectory: upper, tarPath: tar)
        #expect(summary.deleted == ["/etc/removed", "/removed-top", "/var/opaque"])
        #expect(summary.skipped == ["/tmp/app.sock"])
        #expect(try Files.status(tar).permissions == 0o600)
        let listing = try capture(["tar", "--list", "--file", tar]).split(separator: "\n").map(String.init)
        #expect(listing.contains("var/opaque/"))
        #expect(!listing.contains("etc/removed"))
        #expect(!listing.contains("tmp/app.sock"))
        #expect(summary.entries == listing.count)

        let applied = tmp.sub("applied")
        try makeDir(applied)
        let report = try RootfsDiff.apply(tarPath: tar, deleted: summary.deleted, intoUpper: applied)
        #expect(report.warnings.isEmpty, "\(report.warnings)")

        // The socket is the one thing not carried over.
        #expect(unlink("\(upper)/tmp/app.sock") == 0)
        #expect(try TreeDigest.compute(root: applied) == TreeDigest.compute(root: upper))
        #expect(try inode("\(applied)/bin/tool") == inode("\(applied)/bin/tool-link"))
        let whiteout = try Files.status("\(applied)/etc/removed", followSymlinks: false)
        #expect(whiteout.kind == .characterDevice && whiteout.rdev == 0)
        #expect(extendedAttribute("\(applied)/var/opaque", "trusted.overlay.opaque") == Array("y".utf8))
        #expect(extendedAttribute("\(applied)/etc", "trusted.overlay.opaque") == nil)
        #expect(extendedAttribute("\(applied)/etc", "trusted.overlay.impure") == nil)
        #expect(extendedAttribute("\(applied)/etc/hostname", "trusted.private") == nil)
        #expect(extendedAttribute("\(applied)/etc/hostname", "user.origin") == Array("test".utf8))
        #expect(extendedAttribute("\(applied)/bin/ping", "security.capability") == netRawCapability)
        #expect(try Files.status("\(applied)/bin/suid").permissions == 0o4755)
        // Directory times survive, even where a whiteout was added after extraction.
        #expect(modificationTime("\(applied)/etc") == 1_111_111)
        #expect(modificationTime("\(applied)/var/opaque") == 2_222_222)
    }

    @Test("the diff is read straight from an export archive")
    func applyFromExport() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let upper = tmp.sub("upper")
        try makeDir(upper)
        try makeDir("\(upper)/etc")
        try writeFile("\(upper)/etc/motd", "hello\n")
        makeWhiteout("\(upper)/etc/gone")
        let tar = tmp.sub("rootfs-diff.tar")
        let summary = try RootfsDiff.create(upperDirectory: upper, tarPath: tar)
        let deleted = try JSONEncoder().encode(summary.deleted)

        let export = tmp.sub("web.tar.zst")
        let writer = try ExportWriter(path: export)
        let tarSize = try Files.status(tar).size
        try writer.add(name: "ferry.json", bytes: ferryJSON(declaring: ["deleted.files": Int64(deleted.count), "rootfs-diff.tar": tarSize]).content)
        try writer.add(name: "deleted.files", bytes: Array(deleted))
        try writer.add(name: "rootfs-diff.tar", file: tar)
        _ = try writer.finish()

        let reader = try openExport(export)
        #expect(try reader.next()?.name == "deleted.files")
        let paths = try JSONDecoder().decode([String].self, from: Data(reader.data(max: 1 << 20)))
        #expect(try reader.next()?.name == "rootfs-diff.tar")
        let applied = tmp.sub("applied")
        try makeDir(applied)
        _ = try RootfsDiff.apply(from: reader, deleted: paths, intoUpper: applied)
        #expect(try reader.next() == nil)
        #expect(try TreeDigest.compute(root: applied) == TreeDigest.compute(root: upper))
    }

    @Test(
        "deleted paths are checked before anything is written",
        arguments: [
            "etc/x", "/", "", "/a/../b", "/..", "/a//b", "/a/./b", "/a/", "/a\u{0}b",
        ])
    func deletedPathsAreChecked(path: String) throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let tar = tmp.sub("diff.tar")
        writeRawTar([.directory("a"), .file("a/b", "x")], to: tar)
        let applied = tmp.sub("applied")
        try makeDir(applied)
        expectArchiveError(.unsafeMember, "refusing deleted.files entry '\(path)'") {
            _ = try RootfsDiff.apply(tarPath: tar, deleted: [path], intoUpper: applied)
        }
        #expect(try entries(applied).isEmpty)
    }

    @Test("a deleted path through a symlink is refused; nothing outside changes")
    func deletedThroughSymlink() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let sentinel = try Sentinel(in: tmp)
        for target in [sentinel.path, "../sentinel", "/"] {
            let tar = tmp.sub("diff.tar")
            writeRawTar([.symlink("lnk", to: target)], to: tar)
            let applied = tmp.sub("applied")
            try makeDir(applied)
            expectArchiveError(.unsafeMember, "refusing deleted.files entry '/lnk/keep': path goes through a symlink") {
                _ = try RootfsDiff.apply(tarPath: tar, deleted: ["/lnk/keep"], intoUpper: applied)
            }
            try Files.removeUntrustedTree(applied)
            try Files.removeUntrustedTree(tar)
            try sentinel.check()
        }
    }

    @Test("missing parents of a deleted path are created; an existing file needs no whiteout")
    func deletedParents() throws {
        let tmp = try TempDir()
        defer { tmp.cleanup() }
        let tar = tmp.sub("diff.tar")
        writeRawTar([.directory("etc"), .file("etc/kept", "k")], to: tar)
        let applied = tmp.sub("applied")
        try makeDir(applied)
        _ = try RootfsDiff.apply(tarPath: tar, deleted: ["/usr/share/doc", "/etc/kept", "/etc/kept", "/etc"], intoUpper: applied)
        #expect(try Files.status("\(applied)/usr").permissions == 0o755)
        #expect(try Files.status("\(applied)/usr/share").permissions == 0o755)
        let whiteout = try Files.status("\(applied)/usr/share/doc", followSymlinks: false)
        #expect(whiteout.kind == .characterDevice && whiteout.rdev == 0)
        #expect(try Files.readString("\(applied)/etc/kept") == "k")
        #expect(extendedAttribute("\(applied)/etc", "trusted.overlay.opaque") == Array("y".utf8))
        #expect(extendedAttribute("\(applied)/usr", "trusted.overlay.opaque") == nil)
    }

    @Test("changes made through a real overlay mount survive create and apply")
    func realOverlay() throws {
        let tmp = try TempDir()
        let lower = tmp.sub("lower")
        let upper = tmp.sub("upper")
        let work = tmp.sub("work")
        let merged = tmp.sub("merged")
        let newUpper = tmp.sub("upper2")
        let newWork = tmp.sub("work2")
        let newMerged = tmp.sub("merged2")
        defer {
            try? Mounts.unmount(merged)
            try? Mounts.unmount(newMerged)
            tmp.cleanup()
        }
        for directory in [upper, work, merged, newUpper, newWork, newMerged] { try makeDir(directory) }
        try makeDir("\(lower)/etc")
        try makeDir("\(lower)/dir/sub")
        try makeDir("\(lower)/usr/bin")
        try writeFile("\(lower)/etc/keep", "keep\n")
        try writeFile("\(lower)/etc/gone", "gone\n")
        try writeFile("\(lower)/etc/modify", "original\n")
        try writeFile("\(lower)/dir/old", "old\n")
        try writeFile("\(lower)/dir/sub/older", "older\n")
        try writeFile("\(lower)/usr/bin/tool", "tool\n", mode: 0o755)

        func mount(_ upper: String, _ work: String, at target: String) throws {
            try Mounts.mount(
                source: "overlay", target: target, fsType: "overlay", flags: 0,
                data: "lowerdir=\(lower),upperdir=\(upper),workdir=\(work)")
        }

        try mount(upper, work, at: merged)
        try run([
            "sh", "-c",
            """
            set -e
            cd '\(merged)'
            echo new > new.txt
            echo more >> etc/modify
            rm etc/gone
            rm -rf dir
            mkdir dir
            echo fresh > dir/fresh
            chmod 4755 usr/bin/tool
            mkdir -p a/b
            ln -s ../../etc/keep a/b/link
            ln new.txt new-link.txt
            """,
        ])
        let before = try TreeDigest.compute(root: merged)
        try Mounts.unmount(merged)

        let tar = tmp.sub("rootfs-diff.tar")
        let summary = try RootfsDiff.create(upperDirectory: upper, tarPath: tar)
        #expect(summary.deleted == ["/dir", "/etc/gone"])
        _ = try RootfsDiff.apply(tarPath: tar, deleted: summary.deleted, intoUpper: newUpper)

        try mount(newUpper, newWork, at: newMerged)
        #expect(try TreeDigest.compute(root: newMerged) == before)
        #expect(!Files.exists("\(newMerged)/etc/gone"))
        #expect(try entries("\(newMerged)/dir") == ["fresh"])
        #expect(try Files.readString("\(newMerged)/etc/modify") == "original\nmore\n")
        #expect(try Files.status("\(newMerged)/usr/bin/tool").permissions == 0o4755)
        #expect(try inode("\(newMerged)/new.txt") == inode("\(newMerged)/new-link.txt"))
        try Mounts.unmount(newMerged)
    }
}

/// An overlayfs whiteout: a character device 0/0 with mode 0.
func makeWhiteout(_ path: String) {
    precondition(mknod(path, S_IFCHR, 0) == 0, "mknod \(path): \(errno)")
}

/// A bound Unix socket file at `path` (the socket itself is closed again).
func makeSocket(_ path: String) {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0)
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { buffer in
        for (index, byte) in path.utf8.enumerated() { buffer[index] = byte }
    }
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    precondition(result == 0, "bind \(path): \(errno)")
}

func setTimes(_ path: String, _ seconds: Int) {
    var times = [timespec(tv_sec: seconds, tv_nsec: 0), timespec(tv_sec: seconds, tv_nsec: 0)]
    precondition(utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0)
}

func modificationTime(_ path: String) -> Int {
    var st = stat()
    precondition(lstat(path, &st) == 0)
    return st.st_mtim.tv_sec
}
