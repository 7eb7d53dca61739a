import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A Python workload with the kinds of state CRIU must carry: threads, a pipe, a
/// socketpair, a deleted-but-open file, a file being appended to. On SIGUSR1 it writes
/// a report of all of them to /tmp/report; it runs with the host's /usr bound read-only.
let workload = #"""
    import os, signal, socket, sys, threading, time
    counters = [0, 0, 0]
    def work(i):
        while True:
            counters[i] += 1
            time.sleep(0.01)
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(3)]
    for t in threads: t.start()
    r, w = os.pipe()
    a, b = socket.socketpair()
    ghost = open("/tmp/ghost", "w+")
    ghost.write("ghost data")
    ghost.flush()
    os.unlink("/tmp/ghost")
    appended = open("/data/append.log", "a")
    ticks = 0
    def report(signum, frame):
        os.write(w, b"through the pipe")
        a.sendall(b"through the socketpair")
        ghost.seek(0)
        lines = [
            "ticks %d" % ticks,
            "threads %d" % sum(t.is_alive() for t in threads),
            "counters %s" % ",".join(str(c) for c in counters),
            "pipe %s" % os.read(r, 100).decode(),
            "socketpair %s" % b.recv(100).decode(),
            "ghost %s" % ghost.read(),
            "appended %d" % len(open("/data/append.log").read().splitlines()),
        ]
        with open("/tmp/report.tmp", "w") as out:
            out.write("\n".join(lines) + "\n")
        os.rename("/tmp/report.tmp", "/tmp/report")
    signal.signal(signal.SIGUSR1, report)
    open("/tmp/ready", "w").close()
    while True:
        ticks += 1
        appended.write("tick %d\n" % ticks)
        appended.flush()
        time.sleep(0.05)
    """#

extension Host {
    /// An image with the workload, the host's /usr as mount point, and files to change.
    func importWorkloadImage() {
        let tree = "/var/tmp/ferry-it-workload-image"
        // Written whenever it differs: the tree is kept between runs, and an older script
        // would lack what the tests wait for.
        if (try? String(contentsOfFile: "\(tree)/workload.py", encoding: .utf8)) != workload {
            for dir in ["", "/usr", "/etc", "/tmp", "/proc", "/sys", "/dev", "/data"] { mkdir(tree + dir, 0o755) }
            for link in ["lib", "lib64", "sbin", "bin"] { symlink("usr/\(link)", "\(tree)/\(link)") }
            try? workload.write(toFile: "\(tree)/workload.py", atomically: true, encoding: .utf8)
            for name in ["keep", "remove-me", "modify-me"] {
                try? "\(name) original\n".write(toFile: "\(tree)/etc/\(name).txt", atomically: true, encoding: .utf8)
            }
        }
        let result = self("image", "import", tree, "workload:1")
        #expect(result.code == 0, "image import failed: \(result.stderr)")
    }

    /// Asks the workload for a report and returns it as key -> value.
    func report(_ container: String) -> [String: String] {
        // The workload is its container's init: a signal it has no handler for yet is
        // dropped by the kernel, so ask only once it says the handler is there.
        guard eventually(30, { self("exec", container, "test", "-e", "/tmp/ready").code == 0 }) else { return [:] }
        _ = self("exec", container, "rm", "-f", "/tmp/report")
        guard self("kill", "-s", "USR1", container).code == 0 else { return [:] }
        var text = ""
        _ = eventually(10) {
            text = self("exec", container, "cat", "/tmp/report").stdout
            return text.contains("appended")
        }
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            if parts.count == 2 { result[parts[0]] = parts[1] }
        }
        return result
    }

    func counter(_ container: String) -> Int? {
        Int(self("exec", container, "cat", "/tmp/count").stdout.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// A busybox counter: its value in /tmp/count climbs once per 0.1 s from 1.
let counterScript = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; echo tick $i; sleep 0.1; done"

@Suite("Checkpoint and restore", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct CheckpointTests {
    @Test("a counter continues after checkpoint and restore in place")
    func inPlace() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "counter", "busybox:latest", "sh", "-c", counterScript).code == 0)
        #expect(host.eventually { (host.counter("counter") ?? 0) >= 5 })
        let checkpoint = host("checkpoint", "counter")
        #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
        #expect(host.status(of: "counter") == "checkpointed")
        let saved = try #require(Int(host("logs", "counter").stdout.split(separator: "\n").last?.split(separator: " ").last ?? ""))
        #expect(host.leftovers().isEmpty, "a checkpointed container keeps no mounts, cgroups or processes: \(host.leftovers())")

        let restore = host("restore", "counter")
        #expect(restore.code == 0, "\(restore.stderr)")
        #expect(host.status(of: "counter") == "running")
        let after = try #require(host.counter("counter"))
        // Not restarted (it would count from 1 again): it goes on from where it was.
        #expect(after >= saved, "counter went from \(saved) to \(after)")
        #expect(host.eventually { (host.counter("counter") ?? 0) > after })
        // The log goes on from the same supervisor-owned file.
        #expect(host.eventually { host("logs", "counter").stdout.contains("tick \(saved + 2)") })

        // Checkpoint again, from the restored container.
        #expect(host("checkpoint", "counter").code == 0)
        #expect(host("restore", "counter").code == 0)
        #expect(host.eventually { (host.counter("counter") ?? 0) > after + 2 })
    }

    @Test("--leave-running keeps the container running")
    func leaveRunning() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "c", "busybox:latest", "sh", "-c", counterScript).code == 0)
        #expect(host.eventually { (host.counter("c") ?? 0) >= 3 })
        let result = host("checkpoint", "--leave-running", "--format", "json", "c")
        #expect(result.code == 0, "\(result.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect((json["frozenMs"] as? Double ?? 0) > 0)
        #expect(host.status(of: "c") == "running")
        let now = try #require(host.counter("c"))
        #expect(host.eventually { (host.counter("c") ?? 0) > now })
    }

    @Test("checkpointing a container that isn't running, or restoring one not checkpointed, is refused")
    func refusals() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "--name", "done", "busybox:latest", "true").code == 0)
        let checkpoint = host("checkpoint", "done")
        #expect(checkpoint.code != 0)
        #expect(checkpoint.stderr.contains("not running"))
        let restore = host("restore", "done")
        #expect(restore.code != 0)
        #expect(restore.stderr.contains("not checkpointed"))
        #expect(host("checkpoint", "nosuch").stderr.contains("no such container"))
    }

    /// Two `ferry restore` of one checkpoint at the same moment (two terminals, or a
    /// script run twice): one restores it, the other is refused; never two copies.
    @Test("two restores of one checkpoint at once: exactly one copy runs")
    func concurrentRestores() throws {
        let host = Host()
        let marker = "restore-race-\(getpid())"
        func copies() -> [Int32] { FerryIntegrationTests.copies(withArgument: marker) }
        defer {
            host.tearDown()
            // A copy nobody supervises would survive rm: end it by pid, after the check.
            for pid in processes(withArgument: marker) { kill(pid, SIGKILL) }
        }
        host.importBusybox()
        // The marker is the script's $0: it names this test's copies in /proc.
        #expect(host("run", "-d", "--name", "counter", "busybox:latest", "sh", "-c", counterScript, marker).code == 0)
        #expect(host.eventually { (host.counter("counter") ?? 0) >= 3 })
        for round in 1...3 {
            try #require(host("checkpoint", "counter").code == 0, "round \(round)")
            let null = try OwnedFD.open("/dev/null", O_RDWR)
            let pids = try (0..<2).map { _ in
                try Processes.spawn(
                    Environment.ferryBinary, arguments: [Environment.ferryBinary, "--root", host.root, "restore", "counter"], environment: [],
                    descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
            }
            let codes = pids.map { pid in (try? Processes.wait(pid, timeout: .seconds(60))) ?? -1 }
            #expect(codes.filter { $0 == 0 }.count == 1, "round \(round): one restore succeeds, one is refused: \(codes)")
            #expect(host.status(of: "counter") == "running", "round \(round)")
            usleep(300_000)
            #expect(copies().count == 1, "round \(round): exactly one copy runs: \(copies())")
            let now = host.counter("counter") ?? 0
            #expect(host.eventually { (host.counter("counter") ?? 0) > now }, "round \(round): it counts on")
        }
    }

    /// The supervisor does the restore (CRIU is its child): killed half-way, it leaves
    /// the container claimed by a dead owner, which the next command settles back to a
    /// checkpoint that restores.
    @Test("the supervisor killed while CRIU restores: the container is checkpointed again and restores, nothing else runs")
    func supervisorKilledDuringRestore() throws {
        let host = Host()
        defer { host.tearDown() }
        try startBigWorkload(host)
        #expect(host("checkpoint", "big").code == 0)
        let id = try #require(host("inspect", "big").stdout.firstMatch(of: /"id" *: *"([0-9a-f]+)"/)?.1)
        let state = "\(host.root)/containers/\(id)/state.json"
        let restore = try spawnLeader(host, "restore", "big")
        // The claim names its supervisor; poll for it (bounded), then kill that process.
        var supervisor: Int32?
        let deadline = Date().addingTimeInterval(30)
        while supervisor == nil, Date() < deadline {
            if let text = try? String(contentsOfFile: state, encoding: .utf8), text.contains("\"restoring\""),
                let pid = text.firstMatch(of: /"supervisorPid" *: *([0-9]+)/).flatMap({ Int32($0.1) })
            {
                supervisor = pid
            } else {
                usleep(2_000)
            }
        }
        let pid = try #require(supervisor, "the restore claimed the checkpoint")
        kill(pid, SIGKILL)
        _ = try Processes.wait(restore, timeout: .seconds(60))
        let status = settledStatus(host, "big") { $0 != "restoring" }
        #expect(status == "checkpointed", "\(String(describing: status))")
        #expect(host.leftovers().isEmpty, "nothing of the killed restore is left: \(host.leftovers())")
        let again = host("restore", "big")
        #expect(again.code == 0, "\(again.stderr)")
        #expect(host("exec", "big", "cat", "/tmp/count").stdout == "1", "the workload is back, with its state")
    }

    /// Ctrl-C from a terminal signals the whole foreground process group (ferry and the
    /// CRIU it started); `kill -INT PID` signals ferry alone.
    enum Interrupt: String, CaseIterable, CustomTestStringConvertible {
        case group, ferryOnly
        var testDescription: String { rawValue }
    }

    @Test(
        "Ctrl-C at any moment of a checkpoint: the container runs on, or is checkpointed and restores",
        arguments: Interrupt.allCases, [0.2, 0.6, 1.2])
    func interrupted(_ interrupt: Interrupt, after seconds: Double) throws {
        let host = Host()
        defer { host.tearDown() }
        try startBigWorkload(host)
        let pid = try spawnLeader(host, "checkpoint", "big")
        let code = try signal(interrupt == .group ? -pid : pid, SIGINT, after: seconds, thenWait: pid)
        #expect(code != nil, "ferry checkpoint did not end after Ctrl-C")
        if code == nil { kill(-pid, SIGKILL) }
        expectRunsOrRestores(host, "after Ctrl-C at \(seconds) s")
    }

    @Test(
        "ferry killed outright at any moment of a checkpoint: the next command finds the container running, or checkpointed and restorable",
        arguments: [false, true], [0.3, 0.9, 1.6])
    func killed(leaveRunning: Bool, after seconds: Double) throws {
        let host = Host()
        defer { host.tearDown() }
        try startBigWorkload(host)
        let export = "\(host.root)/big.tar.zst"
        let pid = try spawnLeader(host, ["checkpoint", "--export", export] + (leaveRunning ? ["--leave-running"] : []) + ["big"])
        _ = try signal(pid, SIGKILL, after: seconds, thenWait: pid)
        // CRIU goes on without ferry and holds the checkpoint's lease until it is done:
        // until then the container is still "checkpointing".
        let status = settledStatus(host, "big") { $0 != "checkpointing" }
        if leaveRunning { #expect(status == "running", "--leave-running killed at \(seconds) s: \(String(describing: status))") }
        expectRunsOrRestores(host, "killed at \(seconds) s")
        // A partial export may stay until the next export to the same name, which removes it.
        let again = host("checkpoint", "--leave-running", "--export", export, "big")
        #expect(again.code == 0, "\(again.stderr)")
        let partial = ((try? FileManager.default.contentsOfDirectory(atPath: host.root)) ?? []).filter { $0.contains(".tmp-") }
        #expect(partial.isEmpty, "partial exports left: \(partial)")
    }

    /// The moments around the post-dump hook of a streamed export (`CRIUPostDumpHook`),
    /// which no timed SIGKILL hits reliably: Ferry kills itself there (FERRY_FAULT).
    @Test(
        "ferry killed while CRIU's last image is still in its pipe, or just after it said every image is written: the tree runs on, or is checkpointed and restores",
        arguments: [FaultInjection.Point.dieBeforeImagesWritten, .dieAfterImagesWritten])
    func killedAroundImagesWritten(_ fault: FaultInjection.Point) throws {
        let host = Host()
        defer { host.tearDown() }
        try startBigWorkload(host)
        let export = "\(host.root)/big.tar.zst"
        let null = try OwnedFD.open("/dev/null", O_RDWR)
        let ferry = try Processes.spawn(
            "/usr/bin/env",
            arguments: ["env", "FERRY_FAULT=\(fault.rawValue)", Environment.ferryBinary, "--root", host.root, "checkpoint", "--export", export, "big"],
            environment: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
        let code = try Processes.wait(ferry, timeout: .seconds(120))
        #expect(code == 128 + SIGKILL, "ferry reached the fault point '\(fault.rawValue)' and died there")
        let status = settledStatus(host, "big") { $0 != "checkpointing" }
        switch fault {
        case .dieBeforeImagesWritten:
            // CRIU asked, nobody answered: it resumed the tree instead of ending it.
            #expect(status == "running", "\(String(describing: status))")
        default:
            #expect(status == "checkpointed", "\(String(describing: status))")
        }
        expectRunsOrRestores(host, "killed at \(fault.rawValue)")
        let again = host("checkpoint", "--leave-running", "--export", export, "big")
        #expect(again.code == 0, "\(again.stderr)")
        let partial = ((try? FileManager.default.contentsOfDirectory(atPath: host.root)) ?? []).filter { $0.contains(".tmp-") }
        #expect(partial.isEmpty, "partial exports left: \(partial)")
    }

    @Test(
        "restore --import killed at any moment: the copy runs supervised, or is gone without a trace",
        arguments: [0.3, 0.8, 1.4, 2.2])
    func importKilled(after seconds: Double) throws {
        let host = Host()
        defer { host.tearDown() }
        try startBigWorkload(host)
        let archive = "\(host.root)/big.tar.zst"
        let export = host("checkpoint", "--leave-running", "--export", archive, "big")
        #expect(export.code == 0, "\(export.stderr)")
        let pid = try spawnLeader(host, "restore", "--import", archive, "--name", "copy")
        _ = try signal(pid, SIGKILL, after: seconds, thenWait: pid)
        // The restore may still be running in the supervisor: wait for it to settle.
        let status = settledStatus(host, "copy") { $0 == nil || $0 == "running" }
        let directories = (try? FileManager.default.contentsOfDirectory(atPath: "\(host.root)/containers")) ?? []
        if status == "running" {
            #expect(host("exec", "copy", "cat", "/tmp/count").stdout == "1", "killed at \(seconds) s: the copy has its state")
            let inspect = host("inspect", "copy").stdout
            let json = (try JSONSerialization.jsonObject(with: Data(inspect.utf8)) as? [[String: Any]])?.first
            let running = (json?["status"] as? [String: Any])?["running"] as? [String: Any]
            let supervisor = running?["supervisorPid"] as? Int ?? 0
            #expect(supervisor > 0 && kill(Int32(supervisor), 0) == 0, "killed at \(seconds) s: the copy's supervisor lives")
            #expect(directories.count == 2)
        } else {
            #expect(directories.count == 1, "killed at \(seconds) s: nothing hidden left: \(directories)")
        }
    }

    @Test("killing CRIU half-way through a (streamed) export leaves the container running and nothing behind")
    func criuKilled() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importWorkloadImage()
        // Enough memory that the dump takes a moment.
        let run = host(
            "run", "-d", "--name", "big", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c",
            "import time, os; data = os.urandom(512 << 20); open('/tmp/count', 'w').write('1'); time.sleep(100000)")
        #expect(run.code == 0, "\(run.stderr)")
        #expect(host.eventually(30) { host("exec", "big", "cat", "/tmp/count").stdout == "1" })
        // Kill criu once it is writing images: half-way through the dump.
        let images = "\(host.root)/containers"
        let root = host.root
        let killer = Thread {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                let written = ((try? FileManager.default.subpathsOfDirectory(atPath: images)) ?? []).contains { $0.contains("checkpoint/pages-") }
                if written {
                    // Only this host's CRIU: other suites may be dumping at the same time.
                    let criu = Host.childProcesses(named: "criu", root: root)
                    for pid in criu { kill(pid, SIGKILL) }
                    if !criu.isEmpty { return }
                }
                usleep(1_000)
            }
        }
        killer.start()
        let export = "\(host.root)/big.tar.zst"
        let result = host("checkpoint", "--export", export, "big")
        #expect(result.code != 0, "the dump must fail when criu is killed")
        #expect(host.status(of: "big") == "running")
        #expect(!FileManager.default.fileExists(atPath: export))
        let leftovers = ((try? FileManager.default.contentsOfDirectory(atPath: host.root)) ?? []).filter { $0.contains("tmp") }
        #expect(leftovers.isEmpty, "partial export left: \(leftovers)")
        // The export streamed the images from CRIU into its directory too: none is left.
        let partialImages = ((try? FileManager.default.subpathsOfDirectory(atPath: images)) ?? []).filter { $0.contains("checkpoint/") }
        #expect(partialImages.isEmpty, "partial images left: \(partialImages)")
        #expect(host("exec", "big", "true").code == 0, "the container still answers")
        // A later checkpoint works.
        let again = host("checkpoint", "--leave-running", "big")
        #expect(again.code == 0, "\(again.stderr)")
    }

    @Test(
        "an export whose disk fills up stops: the container keeps running, nothing is left (mid-stream, or --leave-running's pack)",
        arguments: [true, false])
    func exportDiskFull(leaveRunning: Bool) throws {
        let host = Host()
        defer { host.tearDown() }
        try startBigWorkload(host)
        // 300 MiB of memory, uncompressed, into 16 MiB: ENOSPC in the middle of the pages.
        let small = "\(host.root)/small"
        #expect(mkdir(small, 0o700) == 0)
        let mounted = Command.run(["/bin/mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", small])
        try #require(mounted.code == 0, "\(mounted.stderr)")
        defer { _ = Command.run(["/bin/umount", small]) }
        let arguments = ["checkpoint", "--export", "\(small)/big.tar", "--compress", "none"] + (leaveRunning ? ["--leave-running"] : []) + ["big"]
        let result = host.ferry(arguments)
        #expect(result.code != 0, "the export must fail on a full disk")
        // (libarchive, packing --leave-running's images, says only "Write error".)
        #expect(result.stderr.contains(leaveRunning ? "Write error" : "No space left"), "\(result.stderr)")
        #expect(host.status(of: "big") == "running")
        #expect(host("exec", "big", "cat", "/tmp/count").stdout == "1", "the container still answers with its state")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: small)) ?? []).isEmpty, "nothing left on the full disk")
        // Streamed, the dump itself failed: no images. (--leave-running keeps the
        // checkpoint it took, as it always has.)
        let images = ((try? FileManager.default.subpathsOfDirectory(atPath: "\(host.root)/containers")) ?? []).filter { $0.contains("checkpoint/") }
        #expect(leaveRunning || images.isEmpty, "partial images left: \(images)")
        #expect(Host.childProcesses(named: "criu", root: host.root).isEmpty, "no CRIU left behind")
        // A later export elsewhere works.
        let again = host("checkpoint", "--leave-running", "--export", "\(host.root)/big.tar.zst", "big")
        #expect(again.code == 0, "\(again.stderr)")
    }
}

/// The 300 MiB workload the fault tests interrupt: enough memory that a dump takes a
/// moment; /tmp/count holds 1 once it is ready.
func startBigWorkload(_ host: Host) throws {
    host.importWorkloadImage()
    let run = host(
        "run", "-d", "--name", "big", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c",
        "import time; data = bytes(range(256)) * (300 << 12); open('/tmp/count', 'w').write('1'); time.sleep(100000)")
    #expect(run.code == 0, "\(run.stderr)")
    #expect(host.eventually(30) { host("exec", "big", "cat", "/tmp/count").stdout == "1" })
}

/// Starts `ferry --root ROOT ARGS...` in the background as the leader of its own process
/// group, as a terminal's foreground job is (setsid execs in place in a spawned child).
func spawnLeader(_ host: Host, _ arguments: String...) throws -> Int32 {
    try spawnLeader(host, arguments)
}

func spawnLeader(_ host: Host, _ arguments: [String]) throws -> Int32 {
    let null = try OwnedFD.open("/dev/null", O_RDWR)
    return try Processes.spawn(
        "/usr/bin/setsid", arguments: ["setsid", Environment.ferryBinary, "--root", host.root] + arguments,
        environment: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
}

/// After a fault: the big workload runs, or is checkpointed and restores, with its state.
func expectRunsOrRestores(_ host: Host, _ moment: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let status = host.status(of: "big")
    #expect(status == "running" || status == "checkpointed", "\(moment): \(String(describing: status))", sourceLocation: sourceLocation)
    if status == "checkpointed" {
        let restore = host("restore", "big")
        #expect(restore.code == 0, "\(moment): the checkpoint must restore: \(restore.stderr)", sourceLocation: sourceLocation)
    }
    #expect(host("exec", "big", "cat", "/tmp/count").stdout == "1", "\(moment): the workload is there, with its state", sourceLocation: sourceLocation)
}

/// Sends `signal` to `target` (a pid, or a negated process group) after `seconds`, then
/// waits at most 120 s for `pid` to end; its exit status, or nil if it did not end.
func signal(_ target: Int32, _ signal: Int32, after seconds: Double, thenWait pid: Int32) throws -> Int32? {
    usleep(UInt32(seconds * 1_000_000))
    kill(target, signal)
    return try Processes.wait(pid, timeout: .seconds(120))
}

/// The status of `name` once `settled` holds for it, waiting at most 60 s (a checkpoint or
/// restore whose command was killed goes on in CRIU or the supervisor until it is done).
func settledStatus(
    _ host: Host, _ name: String, sourceLocation: SourceLocation = #_sourceLocation, _ settled: (String?) -> Bool
) -> String? {
    var status: String?
    let done = host.eventually(60) {
        status = host.status(of: name)
        return settled(status)
    }
    #expect(done, "'\(name)' still \(String(describing: status)) 60 s after its command was killed", sourceLocation: sourceLocation)
    return status
}
