import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A deterministic job: a chain of sha256 over a fixed number of steps, with its state
/// in shell variables (memory), one file per step in its rootfs, and the result in /data.
func hashJob(steps: Int, delay: String = "0.15") -> String {
    """
    h=seed; i=0
    while [ $i -lt \(steps) ]; do
      i=$((i+1)); h=$(echo "$h$i" | sha256sum | cut -c1-64)
      echo $h > /tmp/step-$i; echo $i > /tmp/progress.new; mv /tmp/progress.new /tmp/progress; sleep \(delay)
    done
    echo $h > /data/result; echo done > /tmp/progress.new; mv /tmp/progress.new /tmp/progress; sleep 100000
    """
}

extension Host {
    func progress(_ container: String) -> Int? {
        Int(self("exec", container, "cat", "/tmp/progress").stdout.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    func snapshots(_ container: String) -> [[String: Any]] {
        let result = self("snapshot", "ls", "--format", "json", container)
        return (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]]) ?? []
    }
}

@Suite("Snapshots and rollback", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct SnapshotTests {
    @Test("snapshot mid-way, kill, roll back: the result equals an uninterrupted run's, later files are gone")
    func rollbackDeterministicJob() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        let steps = 40
        #expect(host("run", "-d", "--name", "ref", "-v", "refdata:/data", "busybox:latest", "sh", "-c", hashJob(steps: steps, delay: "0.01")).code == 0)
        #expect(host("run", "-d", "--name", "job", "-v", "jobdata:/data", "busybox:latest", "sh", "-c", hashJob(steps: steps)).code == 0)
        #expect(host.eventually(30) { (host.progress("job") ?? 0) >= 8 })
        let snapshot = host("snapshot", "create", "--tag", "mid", "job")
        #expect(snapshot.code == 0, "\(snapshot.stderr)")
        #expect(host.status(of: "job") == "running", "a snapshot leaves the job running")
        let atSnapshot = try #require(host.progress("job"))
        #expect(host.eventually(30) { (host.progress("job") ?? 0) >= atSnapshot + 12 })
        let later = atSnapshot + 10
        #expect(host("exec", "job", "test", "-f", "/tmp/step-\(later)").code == 0)
        #expect(host("kill", "job").code == 0)
        #expect(host.eventually { host.status(of: "job") == "exited" })

        let rollback = host("rollback", "job")
        #expect(rollback.code == 0, "\(rollback.stderr)")
        #expect(host.status(of: "job") == "running")
        let resumed = try #require(host.progress("job"))
        #expect(resumed < later, "resumed from the snapshot (\(atSnapshot)), not from \(later): \(resumed)")
        if resumed < later - 1 {
            #expect(host("exec", "job", "test", "-f", "/tmp/step-\(later)").code != 0, "files written after the snapshot are gone")
        }
        #expect(host.eventually(60) { host("exec", "job", "cat", "/tmp/progress").stdout == "done\n" })
        #expect(host.eventually(30) { host("exec", "ref", "cat", "/tmp/progress").stdout == "done\n" })
        let result = host("exec", "job", "cat", "/data/result").stdout
        #expect(result.count == 65)
        #expect(result == host("exec", "ref", "cat", "/data/result").stdout)
    }

    @Test("periodic snapshots keep only the newest N; pruned ones are gone from disk")
    func periodic() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "p", "--snapshot-every", "1s", "--snapshot-keep", "2", "busybox:latest", "sh", "-c", counterScript).code == 0)
        #expect(host.eventually(30) { host.snapshots("p").count == 2 && host("ps", "-a").stdout.contains("Up") })
        let first = host.snapshots("p").compactMap { $0["tag"] as? String }
        // Wait until both have been replaced by newer ones.
        #expect(host.eventually(30) { Set(host.snapshots("p").compactMap { $0["tag"] as? String }).isDisjoint(with: first) })
        #expect(host.snapshots("p").count == 2)
        let inspect = try #require((try JSONSerialization.jsonObject(with: Data(host("inspect", "p").stdout.utf8)) as? [[String: Any]])?.first)
        let id = try #require(inspect["id"] as? String)
        let manifests = (try? FileManager.default.contentsOfDirectory(atPath: "\(host.root)/snapshots/\(id)")) ?? []
        #expect(manifests.filter { $0.hasSuffix(".json") }.count == 2, "\(manifests)")
        for tag in first {
            #expect(!manifests.contains("\(tag).json"), "pruned snapshot \(tag) still on disk")
        }
        #expect(host("exec", "p", "true").code == 0)
    }

    @Test("--rollback-on-failure brings a crashed job back from its latest snapshot")
    func rollbackOnFailure() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        let run = host(
            "run", "-d", "--name", "crashy", "--snapshot-every", "1s", "--snapshot-keep", "3",
            "--restart", "on-failure:2", "--rollback-on-failure", "busybox:latest", "sh", "-c", counterScript)
        #expect(run.code == 0, "\(run.stderr)")
        #expect(host.eventually(30) { host.snapshots("crashy").count >= 2 })
        #expect(host.eventually(10) { (host.counter("crashy") ?? 0) >= 25 })
        // Crash it from outside Ferry: not a stop the user asked Ferry for.
        // (Between periodic snapshots: while one runs the state is "checkpointing".)
        var pid: Int?
        #expect(
            host.eventually(10) {
                let inspect = (try? JSONSerialization.jsonObject(with: Data(host("inspect", "crashy").stdout.utf8)) as? [[String: Any]])?.first
                pid = ((inspect?["status"] as? [String: Any])?["running"] as? [String: Any])?["pid"] as? Int
                return pid != nil
            })
        let before = try #require(host.counter("crashy"))
        kill(Int32(try #require(pid)), SIGKILL)
        #expect(
            host.eventually(30) {
                guard host.status(of: "crashy") == "running", let value = host.counter("crashy") else { return false }
                return value > 10  // not restarted from scratch
            })
        let inspectAfter = try #require((try JSONSerialization.jsonObject(with: Data(host("inspect", "crashy").stdout.utf8)) as? [[String: Any]])?.first)
        let newPid = ((inspectAfter["status"] as? [String: Any])?["running"] as? [String: Any])?["pid"] as? Int
        #expect(newPid != nil && newPid != pid, "a new process tree runs")
        let value = try #require(host.counter("crashy"))
        #expect(value > 10 && value <= before + 40, "came back from a snapshot near \(before): \(value)")
    }

    @Test("ten snapshots of a container whose memory barely changes cost far less than ten copies")
    func deduplicated() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importWorkloadImage()
        let run = host(
            "run", "-d", "--name", "mem", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c",
            "import os, time; data = os.urandom(64 << 20); open('/tmp/count', 'w').write('1'); time.sleep(100000)")
        #expect(run.code == 0, "\(run.stderr)")
        #expect(host.eventually(30) { host("exec", "mem", "cat", "/tmp/count").stdout == "1" })
        for index in 0..<10 {
            let result = host("snapshot", "create", "--tag", "s\(index)", "mem")
            #expect(result.code == 0, "\(result.stderr)")
        }
        let list = host.snapshots("mem")
        #expect(list.count == 10)
        let one = try #require(list.first?["sizeBytes"] as? Int)
        #expect(one > 64 << 20, "a snapshot holds the 64 MiB")
        let blobs = Command.run(["/usr/bin/du", "-sb", "\(host.root)/blobs"]).stdout.split(separator: "\t").first.flatMap { Int($0) } ?? 0
        #expect(blobs > 0)
        #expect(blobs < one * 2, "ten snapshots take \(blobs) bytes; one is \(one)")
        let shared = list.compactMap { $0["sharedBytes"] as? Int }
        #expect(shared.allSatisfy { $0 > 60 << 20 }, "most of each snapshot is shared: \(shared)")
    }
}

@Suite("Snapshot failures", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct SnapshotFailureTests {
    @Test("a snapshot exports as a normal archive that restores on another root")
    func exportSnapshot() throws {
        try withHosts { a, b in
            a.importBusybox()
            b.importBusybox()
            #expect(a("run", "-d", "--name", "c", "busybox:latest", "sh", "-c", counterScript).code == 0)
            #expect(a.eventually { (a.counter("c") ?? 0) >= 3 })
            #expect(a("snapshot", "create", "--tag", "t1", "c").code == 0)
            let archive = "\(a.root)/t1.tar.zst"
            let export = a("snapshot", "export", "c", "t1", archive)
            #expect(export.code == 0, "\(export.stderr)")
            #expect(a("archive", "inspect", "--verify", archive).code == 0)
            let restore = b("restore", "--import", archive, "--name", "from-snapshot")
            #expect(restore.code == 0, "\(restore.stderr)")
            let value = try #require(b.counter("from-snapshot"))
            #expect(value >= 3)
            #expect(b.eventually { (b.counter("from-snapshot") ?? 0) > value })
        }
    }

    @Test("a failed rollback leaves the container as it was")
    func failedRollback() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "c", "busybox:latest", "sh", "-c", counterScript).code == 0)
        #expect(host("snapshot", "create", "--tag", "t1", "c").code == 0)
        let pid = host("inspect", "c").stdout
        // Damage the snapshot store: the process tree image's chunk goes missing.
        let inspect = try #require((try JSONSerialization.jsonObject(with: Data(host("inspect", "c").stdout.utf8)) as? [[String: Any]])?.first)
        let id = try #require(inspect["id"] as? String)
        let manifest = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(host.root)/snapshots/\(id)/t1.json"))) as? [String: Any])
        let members = try #require(manifest["members"] as? [[String: Any]])
        let chunk = try #require((members.first { $0["name"] as? String == "checkpoint/pstree.img" }?["chunks"] as? [String])?.first)
        try FileManager.default.removeItem(atPath: "\(host.root)/blobs/sha256/\(chunk.prefix(2))/\(chunk)")
        let rollback = host("rollback", "c")
        #expect(rollback.code != 0)
        #expect(rollback.stderr.contains("cannot roll back") || rollback.stderr.contains("No such file"), "\(rollback.stderr)")
        #expect(host.status(of: "c") == "running")
        #expect(host("inspect", "c").stdout == pid, "the same process runs on, untouched")
        let value = try #require(host.counter("c"))
        #expect(host.eventually { (host.counter("c") ?? 0) > value })
    }

    @Test("disk full while snapshotting: the job runs on, the partial snapshot is removed")
    func diskFull() throws {
        let host = Host("small")
        // The state root on a 48 MiB tmpfs: the 64 MiB of memory cannot fit.
        #expect(Command.run(["/bin/mount", "-t", "tmpfs", "-o", "size=48m", "ferry-test", host.root]).code == 0)
        defer {
            host("rm", "-f", "big")
            // umount fails while anything is still mounted inside; then the usual checks.
            #expect(Command.run(["/bin/umount", host.root]).code == 0)
            host.tearDown()
        }
        host.importWorkloadImage()
        let run = host(
            "run", "-d", "--name", "big", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c",
            "import os, time; data = os.urandom(64 << 20); open('/tmp/count', 'w').write('1'); time.sleep(100000)")
        #expect(run.code == 0, "\(run.stderr)")
        #expect(host.eventually(30) { host("exec", "big", "cat", "/tmp/count").stdout == "1" })
        let snapshot = host("snapshot", "create", "--tag", "full", "big")
        #expect(snapshot.code != 0, "a snapshot that cannot fit must fail")
        #expect(snapshot.stderr.contains("cannot"), "\(snapshot.stderr)")
        #expect(host.status(of: "big") == "running")
        #expect(host("exec", "big", "cat", "/tmp/count").stdout == "1", "the job runs on")
        #expect(host.snapshots("big").isEmpty)
        let blobs = (try? FileManager.default.subpathsOfDirectory(atPath: "\(host.root)/blobs")) ?? []
        #expect(blobs.filter { !$0.contains("/") || $0.count > 3 }.allSatisfy { !$0.contains("/") }, "partial chunks left: \(blobs.prefix(5))")
        let free =
            Command.run(["/bin/df", "--output=avail", "-B1", host.root]).stdout.split(separator: "\n").last.flatMap {
                Int($0.trimmingCharacters(in: .whitespaces))
            } ?? 0
        #expect(free > 30 << 20, "the partial dump was removed: \(free) bytes free")
    }
}
