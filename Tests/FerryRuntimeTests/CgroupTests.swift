import FerrySystem
import Foundation
import Testing

@testable import FerryRuntime

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Fixtures

/// Debian 11 / Ubuntu 20.04 style hybrid mount table (systemd's "hybrid" mode).
private let hybridMountInfo = """
    22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
    24 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,size=4096k,nr_inodes=1024,mode=755,inode64
    25 24 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
    26 24 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
    29 24 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
    30 24 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
    31 24 0:30 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,net_cls,net_prio
    32 24 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
    33 24 0:32 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,freezer
    34 24 0:33 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,devices
    35 24 0:34 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,blkio
    36 24 0:35 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:21 - cgroup cgroup rw,cpuset
    """

/// Debian 12 default: cgroup2 only.
private let unifiedMountInfo = """
    22 64 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
    26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
    27 22 0:24 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw
    512 64 0:23 /system.slice/docker.service /mnt/sidecar rw,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
    """

/// CentOS 7: cgroup v1 only, with systemd's release agent on its named hierarchy.
private let legacyMountInfo = """
    18 62 0:18 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
    24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
    25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
    28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpuacct,cpu
    29 24 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
    30 24 0:26 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,freezer
    31 24 0:27 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
    32 24 0:28 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpuset,clone_children
    """

/// A temporary directory that stands in for /sys/fs/cgroup. A plain directory has no
/// control files, so each test creates the ones the kernel would.
private final class FixtureTree {
    let root: String

    init() throws {
        root = "/tmp/ferry-cgroup-test-\(UUID().uuidString)"
        try Files.createDirectory(root, mode: 0o700)
    }

    deinit {
        try? Files.removeTree(root)
    }

    /// Creates `relative` (a directory) with empty control files, the way the kernel
    /// shows them in a new cgroup.
    func cgroupDirectory(_ relative: String, files: [String] = [], content: [String: String] = [:]) throws {
        let dir = "\(root)/\(relative)"
        try Files.createDirectory(dir)
        for file in files {
            try Files.writeAtomically([], to: "\(dir)/\(file)")
        }
        for (file, text) in content {
            try Files.writeAtomically(Array(text.utf8), to: "\(dir)/\(file)")
        }
    }

    func read(_ relative: String) throws -> String {
        try Files.readString("\(root)/\(relative)")
    }

    func exists(_ relative: String) -> Bool {
        Files.exists("\(root)/\(relative)")
    }

    /// Deletes the fake control files, as the kernel makes them vanish on rmdir.
    func clearFiles(in relative: String) throws {
        let dir = "\(root)/\(relative)"
        for entry in try Files.listDirectory(dir) where !Files.isDirectory("\(dir)/\(entry)") {
            _ = unlink("\(dir)/\(entry)")
        }
    }
}

/// The hybrid layout of a typical systemd host, mounted in `tree`.
private func hybridFixture(_ tree: FixtureTree) -> CgroupLayout {
    let mounts: [String: String] = [
        "memory": "memory", "cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct", "pids": "pids",
        "freezer": "freezer", "devices": "devices", "blkio": "blkio", "name=systemd": "systemd",
        "cpuset": "cpuset",
    ]
    return .hybrid(v1: mounts.mapValues { "\(tree.root)/\($0)" }, unified: "\(tree.root)/unified")
}

/// Cgroup layout detection, fixture-tree tests of every operation, and one real-kernel
/// lifecycle test that runs as root.
struct CgroupTests {
    // MARK: - Layout detection

    @Test func detectsHybridLayout() throws {
        let layout = try CgroupLayout.detect(mountInfo: MountInfo.parse(hybridMountInfo))
        let expected: [String: String] = [
            "name=systemd": "/sys/fs/cgroup/systemd",
            "cpu": "/sys/fs/cgroup/cpu,cpuacct",
            "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
            "memory": "/sys/fs/cgroup/memory",
            "net_cls": "/sys/fs/cgroup/net_cls,net_prio",
            "net_prio": "/sys/fs/cgroup/net_cls,net_prio",
            "pids": "/sys/fs/cgroup/pids",
            "freezer": "/sys/fs/cgroup/freezer",
            "devices": "/sys/fs/cgroup/devices",
            "blkio": "/sys/fs/cgroup/blkio",
            "cpuset": "/sys/fs/cgroup/cpuset",
        ]
        #expect(layout == .hybrid(v1: expected, unified: "/sys/fs/cgroup/unified"))
        #expect(layout.description == "hybrid (v1 controllers + cgroup2 at /sys/fs/cgroup/unified)")
    }

    @Test func detectsUnifiedLayoutIgnoringMountsElsewhere() throws {
        let layout = try CgroupLayout.detect(mountInfo: MountInfo.parse(unifiedMountInfo))
        #expect(layout == .unified("/sys/fs/cgroup"))
        #expect(layout.description == "cgroup v2")
    }

    @Test func detectsLegacyLayoutWithoutMountOptions() throws {
        let layout = try CgroupLayout.detect(mountInfo: MountInfo.parse(legacyMountInfo))
        let expected: [String: String] = [
            "name=systemd": "/sys/fs/cgroup/systemd",
            "cpu": "/sys/fs/cgroup/cpu,cpuacct",
            "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
            "memory": "/sys/fs/cgroup/memory",
            "freezer": "/sys/fs/cgroup/freezer",
            "pids": "/sys/fs/cgroup/pids",
            "cpuset": "/sys/fs/cgroup/cpuset",
        ]
        #expect(layout == .legacy(v1: expected))
        #expect(layout.description == "cgroup v1")
    }

    @Test func fallsBackToMountsOutsideSysFsCgroup() throws {
        let text = """
            22 64 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
            90 64 0:40 / /run/cgroup2 rw,relatime shared:50 - cgroup2 none rw
            """
        #expect(try CgroupLayout.detect(mountInfo: MountInfo.parse(text)) == .unified("/run/cgroup2"))
    }

    @Test func detectFailsWithoutCgroupMounts() {
        let text = "22 64 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw"
        #expect {
            try CgroupLayout.detect(mountInfo: MountInfo.parse(text))
        } throws: { error in
            (error as? CgroupError)?.code == .noCgroupFilesystem
        }
    }

    @Test func hybridHierarchiesIncludeCpusetAndShareCoMounts() throws {
        let layout = try CgroupLayout.detect(mountInfo: MountInfo.parse(hybridMountInfo))
        let cgroup = try ContainerCgroup(layout: layout, path: "ferry-1a2b3c4d5e6f/abc")
        #expect(
            cgroup.paths == [
                "/sys/fs/cgroup/memory/ferry-1a2b3c4d5e6f/abc",
                "/sys/fs/cgroup/cpu,cpuacct/ferry-1a2b3c4d5e6f/abc",
                "/sys/fs/cgroup/cpuset/ferry-1a2b3c4d5e6f/abc",
                "/sys/fs/cgroup/pids/ferry-1a2b3c4d5e6f/abc",
                "/sys/fs/cgroup/freezer/ferry-1a2b3c4d5e6f/abc",
                "/sys/fs/cgroup/devices/ferry-1a2b3c4d5e6f/abc",
                "/sys/fs/cgroup/blkio/ferry-1a2b3c4d5e6f/abc",
                "/sys/fs/cgroup/systemd/ferry-1a2b3c4d5e6f/abc",
                "/sys/fs/cgroup/unified/ferry-1a2b3c4d5e6f/abc",
            ])
        #expect(cgroup.procsFiles().first == "/sys/fs/cgroup/memory/ferry-1a2b3c4d5e6f/abc/cgroup.procs")
        #expect(cgroup.freezerPath == "/sys/fs/cgroup/unified/ferry-1a2b3c4d5e6f/abc")
        #expect(cgroup.memoryLimitFile == "/sys/fs/cgroup/memory/ferry-1a2b3c4d5e6f/abc/memory.limit_in_bytes")
        #expect(cgroup.cpuLimitFile == "/sys/fs/cgroup/cpu,cpuacct/ferry-1a2b3c4d5e6f/abc/cpu.cfs_quota_us")
    }

    @Test(arguments: ["", "/abs", "a//b", "a/../b", ".", "a/", "ferry/./x"])
    func rejectsUncleanPaths(_ path: String) {
        #expect {
            try ContainerCgroup(layout: .unified("/sys/fs/cgroup"), path: path)
        } throws: { error in
            (error as? CgroupError)?.code == .invalidPath
        }
    }

    @Test func unifiedCreateEnablesControllersAndAppliesLimits() throws {
        let tree = try FixtureTree()
        try tree.cgroupDirectory(
            "cg", files: ["cgroup.subtree_control"],
            content: ["cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n"])
        // What the kernel shows in ferry-x once the root enabled cpu, memory and pids.
        try tree.cgroupDirectory(
            "cg/ferry-x", files: ["cgroup.subtree_control"],
            content: ["cgroup.controllers": "cpu memory pids\n"])
        try tree.cgroupDirectory("cg/ferry-x/c1", files: ["memory.max", "cpu.max", "pids.max", "cgroup.procs"])

        let cgroup = try ContainerCgroup(layout: .unified("\(tree.root)/cg"), path: "ferry-x/c1")
        try cgroup.create()
        #expect(try tree.read("cg/cgroup.subtree_control") == "+cpu +memory +pids")
        #expect(try tree.read("cg/ferry-x/cgroup.subtree_control") == "+cpu +memory +pids")

        let limits = CgroupLimits(memoryBytes: 64 << 20, cpus: 1.5, pidsMax: 50)
        try cgroup.apply(limits)
        #expect(try tree.read("cg/ferry-x/c1/memory.max") == "67108864")
        #expect(try tree.read("cg/ferry-x/c1/cpu.max") == "150000 100000")
        #expect(try tree.read("cg/ferry-x/c1/pids.max") == "50")
        #expect(try cgroup.readLimits() == limits)
        #expect(cgroup.cpuPeriodFile == nil)
    }

    @Test func unifiedCreateLeavesEnabledControllersAlone() throws {
        let tree = try FixtureTree()
        try tree.cgroupDirectory(
            "cg",
            content: [
                "cgroup.controllers": "cpu io memory pids\n",
                "cgroup.subtree_control": "cpu memory\n",
            ])
        let cgroup = try ContainerCgroup(layout: .unified("\(tree.root)/cg"), path: "ferry-x/c1")
        try cgroup.create()
        // Only pids was missing (a fixture file is overwritten from the start, not
        // truncated, hence the prefix); a fresh ferry-x (a plain directory, no
        // cgroup.controllers) offers nothing to enable.
        let written = try tree.read("cg/cgroup.subtree_control")
        #expect(written.hasPrefix("+pids") && !written.contains("+cpu") && !written.contains("+memory"))
        #expect(!tree.exists("cg/ferry-x/cgroup.subtree_control"))
        #expect(Files.isDirectory("\(tree.root)/cg/ferry-x/c1"))
    }

    @Test func unifiedNoLimitsWritesMax() throws {
        let tree = try FixtureTree()
        try tree.cgroupDirectory("cg/ferry-x/c1", files: ["memory.max", "cpu.max", "pids.max"])
        let cgroup = try ContainerCgroup(layout: .unified("\(tree.root)/cg"), path: "ferry-x/c1")
        try cgroup.create()
        try cgroup.apply(CgroupLimits())
        #expect(try tree.read("cg/ferry-x/c1/memory.max") == "max")
        #expect(try tree.read("cg/ferry-x/c1/cpu.max") == "max 100000")
        #expect(try tree.read("cg/ferry-x/c1/pids.max") == "max")
        #expect(try cgroup.readLimits() == CgroupLimits())
    }

    @Test func hybridCreateAndApplyUseV1Files() throws {
        let tree = try FixtureTree()
        let layout = hybridFixture(tree)
        try tree.cgroupDirectory("memory/ferry-x/c1", files: ["memory.limit_in_bytes"])
        try tree.cgroupDirectory("cpu,cpuacct/ferry-x/c1", files: ["cpu.cfs_quota_us", "cpu.cfs_period_us"])
        try tree.cgroupDirectory("pids/ferry-x/c1", files: ["pids.max"])
        try tree.cgroupDirectory("unified")
        // A v1 cpuset root has its cpus and mems; a new child starts empty.
        // (The fixture pre-creates the empty files the kernel would make.)
        try tree.cgroupDirectory("cpuset", files: ["cpuset.cpus", "cpuset.mems"])
        try tree.cgroupDirectory("cpuset/ferry-x/c1", files: ["cpuset.cpus", "cpuset.mems"])
        try tree.cgroupDirectory("cpuset/ferry-x", files: ["cpuset.cpus", "cpuset.mems"])
        try Files.writeControl("0-1\n", to: "\(tree.root)/cpuset/cpuset.cpus")
        try Files.writeControl("0\n", to: "\(tree.root)/cpuset/cpuset.mems")

        let cgroup = try ContainerCgroup(layout: layout, path: "ferry-x/c1")
        try cgroup.create()
        for mount in ["memory", "cpu,cpuacct", "cpuset", "pids", "freezer", "devices", "blkio", "systemd", "unified"] {
            #expect(Files.isDirectory("\(tree.root)/\(mount)/ferry-x/c1"), "\(mount)")
        }
        // Copied down level by level, so the container's cpuset accepts tasks.
        #expect(try tree.read("cpuset/ferry-x/cpuset.cpus") == "0-1")
        #expect(try tree.read("cpuset/ferry-x/c1/cpuset.mems") == "0")
        #expect(cgroup.exists)

        let limits = CgroupLimits(memoryBytes: 64 << 20, cpus: 1.5, pidsMax: 50)
        try cgroup.apply(limits)
        #expect(try tree.read("memory/ferry-x/c1/memory.limit_in_bytes") == "67108864")
        #expect(try tree.read("cpu,cpuacct/ferry-x/c1/cpu.cfs_quota_us") == "150000")
        #expect(try tree.read("cpu,cpuacct/ferry-x/c1/cpu.cfs_period_us") == "100000")
        #expect(try tree.read("pids/ferry-x/c1/pids.max") == "50")
        #expect(try cgroup.readLimits() == limits)
    }

    @Test func legacyNoLimitsWritesMinusOne() throws {
        let tree = try FixtureTree()
        try tree.cgroupDirectory("memory/ferry-x/c1", files: ["memory.limit_in_bytes"])
        try tree.cgroupDirectory("cpu/ferry-x/c1", files: ["cpu.cfs_quota_us", "cpu.cfs_period_us"])
        let layout = CgroupLayout.legacy(v1: ["memory": "\(tree.root)/memory", "cpu": "\(tree.root)/cpu"])
        let cgroup = try ContainerCgroup(layout: layout, path: "ferry-x/c1")
        try cgroup.create()
        // pids is not mounted and no pids limit is asked for: skipped, not an error.
        try cgroup.apply(CgroupLimits())
        #expect(try tree.read("memory/ferry-x/c1/memory.limit_in_bytes") == "-1")
        #expect(try tree.read("cpu/ferry-x/c1/cpu.cfs_quota_us") == "-1")
        #expect(try cgroup.readLimits() == CgroupLimits())
    }

    @Test func missingControllerIsReported() throws {
        let tree = try FixtureTree()
        let layout = CgroupLayout.legacy(v1: ["freezer": "\(tree.root)/freezer"])
        let cgroup = try ContainerCgroup(layout: layout, path: "ferry-x/c1")
        try cgroup.create()
        #expect {
            try cgroup.apply(CgroupLimits(pidsMax: 10))
        } throws: { error in
            guard let error = error as? CgroupError else { return false }
            return error.code == .controllerUnavailable("pids")
                && error.description.hasPrefix("cannot set pids limit on cgroup ferry-x/c1: the pids controller is not available")
        }
    }

    @Test func writeFailureNamesCgroupOperationAndFile() throws {
        let tree = try FixtureTree()
        // A directory where the control file should be: the write fails with EISDIR.
        try tree.cgroupDirectory("memory/ferry-x/c1/memory.limit_in_bytes")
        let cgroup = try ContainerCgroup(layout: .legacy(v1: ["memory": "\(tree.root)/memory"]), path: "ferry-x/c1")
        #expect {
            try cgroup.apply(CgroupLimits(memoryBytes: 1 << 20))
        } throws: { error in
            guard let error = error as? CgroupError else { return false }
            return error.code == .system(.isDirectory)
                && error.description
                    == "cannot set memory limit on cgroup ferry-x/c1: write \(tree.root)/memory/ferry-x/c1/memory.limit_in_bytes: Is a directory"
        }
    }

    @Test(arguments: [
        CgroupLimits(memoryBytes: 0),
        CgroupLimits(cpus: 0),
        CgroupLimits(cpus: 0.001),
        CgroupLimits(cpus: -1),
        CgroupLimits(cpus: .nan),
        CgroupLimits(pidsMax: -5),
    ])
    func rejectsInvalidLimits(_ limits: CgroupLimits) throws {
        let cgroup = try ContainerCgroup(layout: .unified("/nonexistent"), path: "ferry-x/c1")
        #expect {
            try cgroup.apply(limits)
        } throws: { error in
            (error as? CgroupError)?.code == .invalidLimit
        }
    }

    @Test func limitsRoundTripThroughCodable() throws {
        let limits = CgroupLimits(memoryBytes: 64 << 20, cpus: 1.5, pidsMax: 50)
        let data = try JSONEncoder().encode(limits)
        #expect(try JSONDecoder().decode(CgroupLimits.self, from: data) == limits)
        #expect(limits.cpuQuota == 150_000)
        #expect(CgroupLimits(cpus: 0.25).cpuQuota == 25_000)
    }

    @Test func unifiedFreezeWritesCgroupFreezeAndReadsEvents() throws {
        let tree = try FixtureTree()
        try tree.cgroupDirectory(
            "unified/ferry-x/c1", files: ["cgroup.freeze"],
            content: ["cgroup.events": "populated 1\nfrozen 1\n"])
        let cgroup = try ContainerCgroup(layout: hybridFixture(tree), path: "ferry-x/c1")
        try cgroup.freeze(timeout: .seconds(1))
        #expect(try tree.read("unified/ferry-x/c1/cgroup.freeze") == "1")
        #expect(try cgroup.isFrozen)
        #expect(cgroup.freezerPath == "\(tree.root)/unified/ferry-x/c1")
    }

    @Test func unifiedFreezeTimesOutAndThaws() throws {
        let tree = try FixtureTree()
        try tree.cgroupDirectory(
            "cg/ferry-x/c1", files: ["cgroup.freeze"],
            content: ["cgroup.events": "populated 1\nfrozen 0\n"])
        let cgroup = try ContainerCgroup(layout: .unified("\(tree.root)/cg"), path: "ferry-x/c1")
        #expect {
            try cgroup.freeze(timeout: .milliseconds(50))
        } throws: { error in
            (error as? CgroupError)?.code == .timedOut
        }
        // The "1" was overwritten by the thaw that undoes a failed freeze.
        #expect(try tree.read("cg/ferry-x/c1/cgroup.freeze") == "0")
    }

    @Test func legacyFreezeAndThawUseFreezerState() throws {
        let tree = try FixtureTree()
        try tree.cgroupDirectory("freezer/ferry-x/c1", files: ["freezer.state"])
        let layout = CgroupLayout.legacy(v1: ["freezer": "\(tree.root)/freezer"])
        let cgroup = try ContainerCgroup(layout: layout, path: "ferry-x/c1")
        #expect(cgroup.freezerPath == "\(tree.root)/freezer/ferry-x/c1")
        try cgroup.freeze(timeout: .seconds(1))
        #expect(try tree.read("freezer/ferry-x/c1/freezer.state") == "FROZEN")
        #expect(try cgroup.isFrozen)
        try cgroup.thaw(timeout: .seconds(1))
        #expect(try tree.read("freezer/ferry-x/c1/freezer.state") == "THAWED")
        #expect(try !cgroup.isFrozen)
    }

    @Test func addProcessWritesEveryProcsFile() throws {
        let tree = try FixtureTree()
        let layout = CgroupLayout.legacy(v1: ["memory": "\(tree.root)/memory", "pids": "\(tree.root)/pids"])
        try tree.cgroupDirectory("memory/ferry-x/c1", files: ["cgroup.procs"])
        try tree.cgroupDirectory("pids/ferry-x/c1", files: ["cgroup.procs"])
        let cgroup = try ContainerCgroup(layout: layout, path: "ferry-x/c1")
        try cgroup.addProcess(4242)
        #expect(try tree.read("memory/ferry-x/c1/cgroup.procs") == "4242")
        #expect(try tree.read("pids/ferry-x/c1/cgroup.procs") == "4242")
        #expect(try cgroup.pids() == [4242])
    }

    @Test func removeDeletesDirectoriesAndEmptyParent() throws {
        let tree = try FixtureTree()
        let layout = hybridFixture(tree)
        let first = try ContainerCgroup(layout: layout, path: "ferry-x/c1")
        let second = try ContainerCgroup(layout: layout, path: "ferry-x/c2")
        try first.create()
        try second.create()
        try tree.cgroupDirectory("memory/ferry-x/c1", files: ["memory.limit_in_bytes"])
        try first.apply(CgroupLimits(memoryBytes: 1 << 20))
        try tree.clearFiles(in: "memory/ferry-x/c1")

        // The parent stays while the second container uses it.
        try first.remove()
        #expect(!first.exists)
        #expect(second.exists)
        #expect(tree.exists("memory/ferry-x"))

        try second.remove()
        #expect(!second.exists)
        for mount in ["memory", "cpu,cpuacct", "pids", "freezer", "devices", "blkio", "systemd", "unified"] {
            #expect(!tree.exists("\(mount)/ferry-x"), "\(mount)")
        }
        // Removing again is fine: missing directories are not an error.
        try second.remove()
    }

    // MARK: - Real kernel

    /// Creates a cgroup on this host's real layout, limits it, puts a process in, freezes
    /// and thaws it, and removes everything again.
    @Test(.enabled(if: getuid() == 0, "needs root to create cgroups"))
    func realKernelCgroupLifecycle() throws {
        try runLifecycle(layout: CgroupLayout.current())
    }

    /// The same through the v1 hierarchies alone (v1 limit files, freezer.state), on a
    /// host that has them.
    @Test(
        .enabled(
            if: getuid() == 0 && (try? CgroupLayout.current())?.v1MountPoints["freezer"] != nil,
            "needs root and v1 controllers"))
    func realKernelV1Lifecycle() throws {
        try runLifecycle(layout: .legacy(v1: CgroupLayout.current().v1MountPoints))
    }

    private func runLifecycle(layout: CgroupLayout) throws {
        let parent = "ferry-test-\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"
        let cgroup = try ContainerCgroup(layout: layout, path: "\(parent)/c1")
        try cgroup.create()
        defer { try? cgroup.remove() }
        #expect(cgroup.exists)

        let limits = CgroupLimits(memoryBytes: 64 << 20, cpus: 0.5, pidsMax: 50)
        try cgroup.apply(limits)
        #expect(try cgroup.readLimits() == limits)
        let memoryFile = try #require(cgroup.memoryLimitFile)
        #expect(try Files.readString(memoryFile) == "67108864\n")
        let pidsFile = try #require(cgroup.pidsLimitFile)
        #expect(try Files.readString(pidsFile) == "50\n")

        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["30"]
        try sleeper.run()
        let pid = sleeper.processIdentifier
        defer {
            // A v1-frozen task only dies once thawed.
            try? cgroup.thaw()
            _ = kill(pid, SIGKILL)
            sleeper.waitUntilExit()
        }

        try cgroup.addProcess(pid)
        #expect(try cgroup.pids() == [pid])
        let membership = try Files.readString("/proc/\(pid)/cgroup")
        #expect(membership.contains("/\(parent)/c1\n"))

        try cgroup.freeze()
        // /proc shows a cgroup2-frozen task as sleeping, so the kernel's cgroup files are
        // the evidence.
        #expect(try cgroup.isFrozen)
        try cgroup.thaw()
        #expect(try !cgroup.isFrozen)

        _ = kill(pid, SIGKILL)
        sleeper.waitUntilExit()
        try cgroup.remove()
        #expect(!cgroup.exists)
        for dir in cgroup.paths {
            #expect(!Files.exists(Files.parent(of: dir)), "\(dir)")
        }
    }
}
