import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Export and import", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct ExportTests {
    @Test("a counter continues after export, rm, and import on a second state root")
    func counterOnSecondRoot() throws {
        try withHosts { a, b in
            a.importBusybox()
            b.importBusybox()
            #expect(a("run", "-d", "--name", "counter", "--memory", "64m", "--pids-limit", "40", "busybox:latest", "sh", "-c", counterScript).code == 0)
            #expect(a.eventually { (a.counter("counter") ?? 0) >= 5 })
            let archive = "\(a.root)/counter.tar.zst"
            let checkpoint = a("checkpoint", "--export", archive, "--format", "json", "counter")
            #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(checkpoint.stdout.utf8)) as? [String: Any])
            #expect(((report["export"] as? [String: Any])?["bytes"] as? Int ?? 0) > 0)
            #expect(((report["criu"] as? [String: Any])?["pagesWritten"] as? Int ?? 0) > 0)
            var st = stat()
            #expect(stat(archive, &st) == 0)
            #expect(st.st_mode & 0o777 == 0o600, "the export holds memory: mode 0600")
            let saved = try #require(Int(a("logs", "counter").stdout.split(separator: "\n").last?.split(separator: " ").last ?? ""))
            #expect(a("rm", "counter").code == 0)

            let restore = b("restore", "--import", archive)
            #expect(restore.code == 0, "\(restore.stderr)")
            #expect(b.status(of: "counter") == "running")
            let value = try #require(b.counter("counter"))
            #expect(value >= saved && value < saved + 30, "continued from \(saved), not restarted: \(value)")
            #expect(b.eventually { (b.counter("counter") ?? 0) > value })
            // The restored container runs in its own new cgroup, with the same limits.
            let inspect = try #require((try JSONSerialization.jsonObject(with: Data(b("inspect", "counter").stdout.utf8)) as? [[String: Any]])?.first)
            let cgroups = try #require(inspect["cgroups"] as? [String])
            #expect(cgroups.allSatisfy { $0.contains(b.cgroupParent) })
            let limits =
                cgroups.compactMap { try? String(contentsOfFile: "\($0)/memory.limit_in_bytes", encoding: .utf8) }
                + cgroups.compactMap { try? String(contentsOfFile: "\($0)/memory.max", encoding: .utf8) }
            #expect(limits.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.contains("67108864"), "\(limits)")
            let pids = cgroups.compactMap { try? String(contentsOfFile: "\($0)/cgroup.procs", encoding: .utf8) }.joined()
            #expect(!pids.isEmpty, "the restored processes are in the new cgroup")
            // The same export restores again, under another name.
            #expect(b("restore", "--import", archive, "--name", "counter2").code == 0)
            #expect(b.eventually { (b.counter("counter2") ?? 0) > saved })
            let conflict = b("restore", "--import", archive)
            #expect(conflict.code != 0)
            #expect(conflict.stderr.contains("already in use"))
        }
    }

    @Test("threads, pipe, socketpair, deleted-but-open file, appended file, rootfs changes and a volume come back on the second root")
    func fullStateOnSecondRoot() throws {
        withHosts { a, b in
            a.importWorkloadImage()
            b.importWorkloadImage()
            let run = a("run", "-d", "--name", "job", "-v", "/usr:/usr:ro", "-v", "jobdata:/data", "workload:1", "python3", "/workload.py")
            #expect(run.code == 0, "\(run.stderr)")
            let before = a.report("job")
            #expect(before["threads"] == "3", "\(before)")
            #expect(before["ghost"] == "ghost data")
            #expect(a("exec", "job", "sh", "-c", "echo created > /created.txt; echo changed > /etc/modify-me.txt; rm /etc/remove-me.txt").code == 0)

            let archive = "\(a.root)/job.tar.zst"
            let checkpoint = a("checkpoint", "--export", archive, "job")
            #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
            #expect(a("rm", "job").code == 0)
            let restore = b("restore", "--import", archive)
            #expect(restore.code == 0, "\(restore.stderr)")

            let after = b.report("job")
            #expect(after["threads"] == "3", "\(after)")
            #expect(after["pipe"] == "through the pipe")
            #expect(after["socketpair"] == "through the socketpair")
            #expect(after["ghost"] == "ghost data")
            // Still the same process: its tick count and its file went on.
            let ticksBefore = Int(before["ticks"] ?? "") ?? 0
            let ticksAfter = Int(after["ticks"] ?? "") ?? 0
            #expect(ticksAfter > ticksBefore)
            #expect(Int(after["appended"] ?? "") ?? 0 >= ticksAfter - 1, "the appended file kept its lines: \(after)")
            let counters = (after["counters"] ?? "").split(separator: ",").compactMap { Int($0) }
            let countersBefore = (before["counters"] ?? "").split(separator: ",").compactMap { Int($0) }
            #expect(counters.count == 3 && zip(counters, countersBefore).allSatisfy { $0 > $1 }, "threads went on: \(countersBefore) -> \(counters)")

            #expect(b("exec", "job", "cat", "/created.txt").stdout == "created\n")
            #expect(b("exec", "job", "cat", "/etc/modify-me.txt").stdout == "changed\n")
            #expect(b("exec", "job", "cat", "/etc/keep.txt").stdout == "keep original\n")
            #expect(b("exec", "job", "ls", "/etc/remove-me.txt").code != 0, "the deleted file stays deleted")
            #expect(b("volume", "ls").stdout.contains("jobdata"))
        }
    }

    @Test("--leave-running keeps the original, and the export restores beside it under a new name")
    func leaveRunningBeside() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "orig", "busybox:latest", "sh", "-c", counterScript).code == 0)
        #expect(host.eventually { (host.counter("orig") ?? 0) >= 3 })
        let archive = "\(host.root)/orig.tar.zst"
        #expect(host("checkpoint", "--leave-running", "--export", archive, "orig").code == 0)
        #expect(host.status(of: "orig") == "running")
        let restore = host("restore", "--import", archive, "--name", "copy")
        #expect(restore.code == 0, "\(restore.stderr)")
        #expect(host.status(of: "orig") == "running")
        #expect(host.status(of: "copy") == "running")
        let copy = try #require(host.counter("copy"))
        #expect(host.eventually { (host.counter("copy") ?? 0) > copy })
        #expect(host.eventually { (host.counter("orig") ?? 0) > copy })
    }

    @Test("a host-network container is not restored beside its running original: the port it holds is named")
    func busyHostPort() throws {
        try withHosts { a, b in
            let archive = try exportHostListener(a)
            b.importBusybox()
            let restore = b("restore", "--import", archive, "--name", "web2")
            #expect(restore.code != 0)
            #expect(
                restore.stderr.contains("cannot restore container 'web2': it shares the host's network and holds TCP port 17095, already in use"),
                "\(restore.stderr)")
            #expect(b.status(of: "web2") == nil)
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: "\(b.root)/containers")) ?? []).isEmpty)
            // Once the original is gone, the same archive restores.
            #expect(a("rm", "-f", "web").code == 0)
            let again = b("restore", "--import", archive, "--name", "web2")
            #expect(again.code == 0, "\(again.stderr)")
        }
    }

    @Test("an import whose restore fails keeps CRIU's log where the error says, and nothing else")
    func failedRestoreKeepsLog() throws {
        try withHosts { a, b in
            let archive = try exportHostListener(a)
            #expect(a("rm", "-f", "web").code == 0)
            b.importBusybox()
            // A socket bound to the port without listening: not a conflict Ferry looks for,
            // but CRIU's restore cannot bind the listener there, and fails.
            let null = try OwnedFD.open("/dev/null", O_RDWR)
            let bound = "\(b.root).bound"
            let binder = try Processes.spawn(
                "/usr/bin/python3",
                arguments: [
                    "python3", "-c",
                    "import socket, sys, time; s = socket.socket(socket.AF_INET6); s.bind(('::', 17095)); open(sys.argv[1], 'w').close(); time.sleep(60)",
                    bound,
                ],
                environment: [], descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
            defer {
                kill(binder, SIGKILL)
                _ = try? Processes.wait(binder, timeout: .seconds(10))
                unlink(bound)
            }
            #expect(b.eventually { FileManager.default.fileExists(atPath: bound) }, "the port is bound")
            let restore = b("restore", "--import", archive, "--name", "web2")
            #expect(restore.code != 0)
            let marker = "(log: \(b.root)/logs/restore-web2-"
            let path = restore.stderr.components(separatedBy: marker).dropFirst().first
                .flatMap { $0.split(separator: ")").first }.map { "\(b.root)/logs/restore-web2-\($0)" }
            let log = try #require(path, "the error names a kept log: \(restore.stderr)")
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            #expect(text.contains("Error ("), "CRIU's log is there, with its errors")
            #expect(b.status(of: "web2") == nil, "the failed import left no container")
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: "\(b.root)/containers")) ?? []).isEmpty)
        }
    }

    @Test("archive inspect shows the process tree of a two-process container")
    func inspect() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "two", "busybox:latest", "sh", "-c", "sleep 1000 & wait").code == 0)
        #expect(host.eventually { host("exec", "two", "ps").stdout.contains("sleep 1000") })
        let archive = "\(host.root)/two.tar.gz"
        let checkpoint = host("checkpoint", "--export", archive, "--compress", "gzip", "two")
        try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
        let table = host("archive", "inspect", archive)
        #expect(table.code == 0, "\(table.stderr)")
        #expect(table.stdout.contains("sleep"))
        let json = host("archive", "inspect", "--verify", "--format", "json", archive)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let tree = try #require(report["processTree"] as? [[String: Any]])
        #expect(tree.count == 2)
        #expect(tree.map { $0["command"] as? String } == ["sh", "sleep"])
        #expect(tree.last?["parentPid"] as? Int == tree.first?["pid"] as? Int)
        #expect(report["verified"] as? Bool == true)
        #expect(((report["memory"] as? [String: Any])?["dumpedBytes"] as? Int ?? 0) > 0)
    }
}

/// Runs "web" on `host`, a host-network listener on TCP port 17095, and exports it with
/// --leave-running; returns the archive's path.
func exportHostListener(_ host: Host) throws -> String {
    host.importBusybox()
    #expect(host("run", "-d", "--network", "host", "--name", "web", "busybox:latest", "nc", "-ll", "-p", "17095", "-e", "cat").code == 0)
    // Listening once /proc/net/tcp or tcp6 shows port 17095 (0x42C7) in state 0A.
    #expect(
        host.eventually {
            ["tcp", "tcp6"].contains { table in
                let text = (try? String(contentsOfFile: "/proc/net/\(table)", encoding: .utf8)) ?? ""
                return text.split(separator: "\n").contains { $0.contains(":42C7 ") && $0.contains(" 0A ") }
            }
        })
    let archive = "\(host.root)/web.tar.zst"
    let export = host("checkpoint", "--leave-running", "--export", archive, "web")
    #expect(export.code == 0, "\(export.stderr)")
    return archive
}
