import Testing

@testable import FerrySystem

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct MountInfoTests {
    @Test func parsesOptionalFieldsAndEscapes() throws {
        let text = """
            22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
            35 22 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
            90 22 0:50 / /var/lib/ferry/containers/abc/rootfs rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c
            91 22 0:51 / /mnt/with\\040space rw - tmpfs tmpfs rw
            garbage line
            """
        let entries = MountInfo.parse(text)
        #expect(entries.count == 4)
        #expect(entries[0].mountPoint == "/")
        #expect(entries[0].optionalFields == ["shared:1"])
        #expect(entries[1].fsType == "cgroup2")
        #expect(entries[2].optionalFields.isEmpty)
        #expect(entries[2].superOptions.contains("upperdir=/b"))
        #expect(entries[3].mountPoint == "/mnt/with space")
    }

    @Test func readsThisProcess() throws {
        let entries = try MountInfo.current()
        #expect(entries.contains { $0.mountPoint == "/" })
    }
}

@Suite struct FilesTests {
    let dir = "/tmp/ferry-files-test-\(UInt32.random(in: 0...UInt32.max))"

    @Test func atomicWriteReplacesAndLeavesNoTemporaries() throws {
        try Files.createDirectory("\(dir)/a/b")
        defer { try? Files.removeTree(dir) }
        try Files.writeAtomically(Array("one".utf8), to: "\(dir)/a/b/state.json")
        try Files.writeAtomically(Array("two".utf8), to: "\(dir)/a/b/state.json")
        #expect(try Files.readString("\(dir)/a/b/state.json") == "two")
        #expect(try Files.listDirectory("\(dir)/a/b") == ["state.json"])
    }

    @Test func removeTreeDoesNotFollowSymlinks() throws {
        try Files.createDirectory("\(dir)/tree/sub")
        try Files.createDirectory("\(dir)/outside")
        defer { try? Files.removeTree(dir) }
        try Files.writeAtomically(Array("keep".utf8), to: "\(dir)/outside/file")
        #expect(symlink("\(dir)/outside", "\(dir)/tree/sub/link") == 0)
        try Files.removeTree("\(dir)/tree")
        #expect(!Files.exists("\(dir)/tree"))
        #expect(try Files.readString("\(dir)/outside/file") == "keep")
        try Files.removeTree("\(dir)/does-not-exist")
    }

    @Test func readingAMissingFileNamesIt() {
        #expect {
            try Files.read("/nonexistent/ferry")
        } throws: { error in
            "\(error)".contains("/nonexistent/ferry") && "\(error)".contains("No such file")
        }
    }

    @Test func lockIsExclusiveAcrossDescriptors() throws {
        try Files.createDirectory(dir)
        defer { try? Files.removeTree(dir) }
        let path = "\(dir)/lock"
        try FileLock.holding(path) {
            // A second open file description cannot take the lock while we hold it.
            let fd = open(path, O_RDWR)
            defer { close(fd) }
            #expect(flock(fd, LOCK_EX | LOCK_NB) == -1)
        }
        let fd = open(path, O_RDWR)
        defer { close(fd) }
        #expect(flock(fd, LOCK_EX | LOCK_NB) == 0)
    }
}

@Suite struct ProcessesTests {
    @Test func signalNames() {
        #expect(Processes.signalNumber("TERM") == SIGTERM)
        #expect(Processes.signalNumber("sigkill") == SIGKILL)
        #expect(Processes.signalNumber("10") == 10)
        #expect(Processes.signalNumber("NOPE") == nil)
        #expect(Processes.signalNumber("0") == nil)
    }

    @Test func statusDecoding() {
        #expect(Processes.decode(status: 3 << 8) == 3)
        #expect(Processes.decode(status: SIGKILL) == 137)
    }

    @Test func livenessChecksStartTime() throws {
        let me = getpid()
        let start = try #require(Processes.startTime(of: me))
        #expect(Processes.isAlive(me, startTime: start))
        #expect(!Processes.isAlive(me, startTime: start + 1))
        #expect(!Processes.isAlive(999_999_999, startTime: nil))
    }
}
