import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `ferry run` and the container lifecycle, on the real kernel.
@Suite("Runtime", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct RuntimeTests {
    /// Two `ferry start` of one stopped container at the same moment: the supervisor that
    /// claims it first starts it, the other finds it starting; never two copies.
    @Test("two starts of one exited container at once: exactly one copy runs")
    func concurrentStarts() throws {
        let host = Host()
        let marker = "start-race-\(getpid())"
        func copies() -> [Int32] { FerryIntegrationTests.copies(withArgument: marker) }
        defer {
            host.tearDown()
            // A copy nobody supervises would survive rm: end it by pid, after the check.
            for pid in processes(withArgument: marker) { kill(pid, SIGKILL) }
        }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "twice", "busybox:latest", "sh", "-c", "while :; do sleep 1; done", marker).code == 0)
        for round in 1...3 {
            try #require(host("stop", "-t", "0", "twice").code == 0, "round \(round)")
            try #require(host.status(of: "twice") == "exited", "round \(round)")
            let null = try OwnedFD.open("/dev/null", O_RDWR)
            let pids = try (0..<2).map { _ in
                try Processes.spawn(
                    Environment.ferryBinary, arguments: [Environment.ferryBinary, "--root", host.root, "start", "twice"], environment: [],
                    descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
            }
            let codes = pids.map { pid in (try? Processes.wait(pid, timeout: .seconds(60))) ?? -1 }
            #expect(codes.allSatisfy { $0 == 0 || $0 == 125 } && codes.contains(0), "round \(round): \(codes)")
            #expect(host.eventually { host.status(of: "twice") == "running" }, "round \(round)")
            usleep(300_000)
            #expect(copies().count == 1, "round \(round): exactly one copy runs: \(copies())")
            #expect(host.leftovers().filter { $0.hasPrefix("mount:") }.count <= 1, "round \(round): one rootfs mount: \(host.leftovers())")
        }
    }

    @Test("foreground run passes stdout through and exits with the container's code")
    func foregroundExitCode() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        let result = host("run", "--name", "fg", "busybox:latest", "sh", "-c", "echo hello from $(hostname); exit 3")
        #expect(result.code == 3)
        #expect(result.stdout.contains("hello from"))
        #expect(host.status(of: "fg") == "exited")
        // stdin passes through too.
        let echo = host("run", "--name", "cat", "busybox:latest", "cat", input: "piped in\n")
        #expect(echo.code == 0)
        #expect(echo.stdout == "piped in\n")
    }

    @Test("run -d, ps, logs, exec, stop, rm")
    func detachedLifecycle() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        let started = host(
            "run", "-d", "--name", "web", "--hostname", "webhost", "-e", "GREETING=hi there", "busybox:latest",
            "sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo \"$GREETING\"; while true; do sleep 0.1; done")
        #expect(started.code == 0, "\(started.stderr)")
        #expect(started.stdout.trimmingCharacters(in: .whitespacesAndNewlines).count == 64)
        #expect(host.status(of: "web") == "running")

        let ps = host("ps")
        #expect(ps.stdout.contains("web"))
        #expect(ps.stdout.contains("Up"))

        #expect(host.eventually { host("logs", "web").stdout.contains("hi there") })

        let exec = host("exec", "web", "sh", "-c", "hostname; echo $GREETING; exit 7")
        #expect(exec.code == 7)
        #expect(exec.stdout == "webhost\nhi there\n")
        // The exec'd process is in the container's pid namespace: init is the shell.
        let pid1 = host("exec", "web", "cat", "/proc/1/cmdline")
        #expect(pid1.stdout.hasPrefix("sh"))

        #expect(host("exec", "-w", "/tmp", "web", "pwd").stdout == "/tmp\n")

        let stop = host("stop", "-t", "5", "web")
        #expect(stop.code == 0, "\(stop.stderr)")
        #expect(host.status(of: "web") == "exited")
        #expect(host("logs", "web").stdout.contains("got TERM"))
        #expect(!host("ps").stdout.contains("web"))
        #expect(host("ps", "-a").stdout.contains("Exited (0)"))

        #expect(host("rm", "web").code == 0)
        #expect(host.status(of: "web") == nil)
    }

    @Test("logs -f follows until the container exits; -w sets the working directory")
    func followLogs() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(
            host(
                "run", "-d", "--name", "f", "-w", "/srv/app", "busybox:latest", "sh", "-c",
                "pwd; for i in 1 2 3; do echo line $i; sleep 0.3; done"
            ).code == 0)
        let follow = host("logs", "-f", "f")
        #expect(follow.code == 0)
        #expect(follow.stdout == "/srv/app\nline 1\nline 2\nline 3\n", "\(follow.stdout)")
        #expect(host.status(of: "f") == "exited")
    }

    @Test("kill sends the signal, rm refuses a running container without -f")
    func killAndRemove() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "k", "busybox:latest", "sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.1; done").code == 0)
        let refused = host("rm", "k")
        #expect(refused.code != 0)
        #expect(refused.stderr.contains("is running"))
        #expect(host("kill", "-s", "USR1", "k").code == 0)
        #expect(host.eventually { host.status(of: "k") == "exited" })
        let list = host("ps", "-a", "--format", "json").stdout
        #expect(list.contains("\"exitCode\" : 42"))

        #expect(host("run", "-d", "--name", "k2", "busybox:latest", "sleep", "1000").code == 0)
        #expect(host("rm", "-f", "k2").code == 0)
        #expect(host.status(of: "k2") == nil)
    }

    @Test("named volumes outlive the container; host binds and read-only binds")
    func volumes() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "--name", "writer", "-v", "data:/data", "busybox:latest", "sh", "-c", "echo kept > /data/file").code == 0)
        #expect(host("rm", "writer").code == 0)
        let reader = host("run", "--name", "reader", "-v", "data:/data:ro", "busybox:latest", "sh", "-c", "cat /data/file; touch /data/x")
        #expect(reader.stdout == "kept\n")
        #expect(reader.code != 0, "a read-only volume must refuse writes")
        #expect(host("volume", "ls").stdout.contains("data"))
        let inUse = host("volume", "rm", "data")
        #expect(inUse.code != 0)
        #expect(inUse.stderr.contains("in use"))
        #expect(host("rm", "reader").code == 0)
        #expect(host("volume", "rm", "data").code == 0)

        let hostDir = "\(host.root)/shared"
        mkdir(hostDir, 0o755)
        #expect(host("run", "--name", "b", "-v", "\(hostDir):/mnt/shared", "busybox:latest", "sh", "-c", "echo from-container > /mnt/shared/out").code == 0)
        #expect((try? String(contentsOfFile: "\(hostDir)/out", encoding: .utf8)) == "from-container\n")
    }

    @Test("limits are visible in the container's cgroup")
    func limits() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        let run = host("run", "-d", "--name", "lim", "--memory", "64m", "--pids-limit", "50", "--cpus", "0.5", "busybox:latest", "sleep", "1000")
        #expect(run.code == 0, "\(run.stderr)")
        let inspect = host("inspect", "lim")
        let json = try #require((try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [[String: Any]])?.first)
        let cgroups = try #require(json["cgroups"] as? [String])
        func read(_ file: String) -> String? {
            for dir in cgroups {
                if let value = try? String(contentsOfFile: "\(dir)/\(file)", encoding: .utf8) {
                    return value.trimmingCharacters(in: .whitespacesAndNewlines)
                }
            }
            return nil
        }
        #expect(read("memory.limit_in_bytes") ?? read("memory.max") == "67108864")
        #expect(read("pids.max") == "50")
        if let quota = read("cpu.cfs_quota_us") {
            #expect(quota == "50000")
        } else {
            #expect(read("cpu.max") == "50000 100000")
        }
        // The container's processes are in that cgroup.
        let procs = cgroups.compactMap { try? String(contentsOfFile: "\($0)/cgroup.procs", encoding: .utf8) }
        #expect(procs.contains { !$0.isEmpty })
        // exec joins it too, and the container's cgroup namespace, whose root it is: a
        // process outside that cgroup would see a path ("/../...") there.
        let own = host("exec", "lim", "sh", "-c", "cat /proc/self/cgroup")
        let lines = own.stdout.split(separator: "\n")
        #expect(!lines.isEmpty && lines.allSatisfy { $0.hasSuffix(":/") }, "\(own.stdout)")
        #expect(!own.stdout.contains(host.cgroupParent), "the host's cgroup tree is out of sight")
    }

    @Test("a read-only bind of the host's /usr runs python3")
    func hostUsr() throws {
        let host = Host()
        defer { host.tearDown() }
        let tree = "\(host.root)/usr-image"
        for dir in ["", "/usr", "/etc", "/tmp", "/proc", "/sys", "/dev"] { mkdir(tree + dir, 0o755) }
        for link in ["lib", "lib64", "sbin", "bin"] { symlink("usr/\(link)", "\(tree)/\(link)") }
        #expect(host("image", "import", tree, "hostusr").code == 0)
        let result = host("run", "--name", "py", "-v", "/usr:/usr:ro", "hostusr", "python3", "-c", "import sys; print(6 * 7, sys.version_info[0])")
        #expect(result.code == 0, "\(result.stderr)")
        #expect(result.stdout == "42 3\n")
        let write = host("run", "--name", "py2", "-v", "/usr:/usr:ro", "hostusr", "sh", "-c", "touch /usr/ferry-should-fail")
        #expect(write.code != 0)
        #expect(!FileManager.default.fileExists(atPath: "/usr/ferry-should-fail"))
    }

    @Test("network none has only loopback; host sees the host's interfaces")
    func network() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        let none = host("run", "--name", "n1", "busybox:latest", "cat", "/proc/net/dev")
        #expect(none.code == 0, "\(none.stderr)")
        let interfaces = none.stdout.split(separator: "\n").dropFirst(2)
        #expect(interfaces.count == 1 && interfaces.first?.contains("lo:") == true, "\(none.stdout)")
        let lo = host("run", "--name", "n3", "busybox:latest", "ip", "link", "show", "lo")
        #expect(lo.stdout.contains("UP"), "loopback must be up: \(lo.stdout)")
        let hostNet = host("run", "--name", "n2", "--network", "host", "busybox:latest", "cat", "/proc/net/dev")
        let hostInterfaces = (try? String(contentsOfFile: "/proc/net/dev", encoding: .utf8))?.split(separator: "\n").count ?? 0
        #expect(hostNet.stdout.split(separator: "\n").count == hostInterfaces)
    }

    @Test("two state roots behave as two hosts")
    func twoRoots() {
        withHosts { a, b in
            #expect(a.cgroupParent != b.cgroupParent)
            a.importBusybox()
            b.importBusybox()
            #expect(a("run", "-d", "--name", "same", "busybox:latest", "sleep", "1000").code == 0)
            #expect(b("run", "-d", "--name", "same", "busybox:latest", "sleep", "1000").code == 0)
            #expect(a.status(of: "same") == "running")
            #expect(b.status(of: "same") == "running")
            #expect(a("rm", "-f", "same").code == 0)
            #expect(a.status(of: "same") == nil)
            #expect(b.status(of: "same") == "running")
        }
    }

    @Test("a failed run leaves nothing behind, and bad input gets one clear line")
    func failures() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        let cases: [([String], String)] = [
            (["run", "--name", "x", "busybox:latest", "/no/such/command"], "exec"),
            (["run", "-d", "--name", "x", "busybox:latest", "/no/such/command"], "exec"),
            (["run", "--name", "x", "nosuchimage", "true"], "not found"),
            (["run", "--name", "x", "-v", "/no/such/dir:/data", "busybox:latest", "true"], "does not exist"),
            (["run", "--name", "x", "-v", "bad", "busybox:latest", "true"], "invalid volume"),
            (["run", "--name", "x", "-e", "=v", "busybox:latest", "true"], "invalid environment"),
            (["run", "--name", "x", "--memory", "lots", "busybox:latest", "true"], "invalid memory"),
            (["run", "--name", "bad/name", "busybox:latest", "true"], "invalid container name"),
            (["exec", "nosuch", "true"], "no such container"),
            (["stop", "nosuch"], "no such container"),
        ]
        for (arguments, expected) in cases {
            let result = host.ferry(arguments)
            #expect(result.code != 0, "\(arguments) should fail")
            #expect(result.stderr.contains(expected), "\(arguments): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(arguments): \(result.stderr)")
            #expect(!result.stderr.contains("Fatal error"))
            #expect(host.status(of: "x") == nil, "\(arguments) left a container")
        }
        #expect(host.leftovers().isEmpty, "\(host.leftovers())")
        let containers = (try? FileManager.default.contentsOfDirectory(atPath: "\(host.root)/containers")) ?? []
        #expect(containers.isEmpty, "state left behind: \(containers)")
        // The volume a failed run would have created is not left either.
        #expect(host("run", "--name", "x", "-v", "fresh:/data", "busybox:latest", "/no/such/command").code != 0)
        #expect(!host("volume", "ls").stdout.contains("fresh"))

        #expect(host("run", "-d", "--name", "taken", "busybox:latest", "sleep", "1000").code == 0)
        let taken = host("run", "-d", "--name", "taken", "busybox:latest", "true")
        #expect(taken.code != 0)
        #expect(taken.stderr.contains("already in use"))
    }

    @Test("an OCI bundle runs with --bundle")
    func bundle() throws {
        let host = Host()
        defer { host.tearDown() }
        let bundle = "\(host.root)/bundle"
        mkdir(bundle, 0o755)
        #expect(Command.run(["/bin/cp", "-a", Environment.busyboxTree, "\(bundle)/rootfs"]).code == 0)
        let config = """
            {"ociVersion": "1.0.2-dev",
             "process": {"terminal": true, "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo bundle says $FOO; hostname"],
                         "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FOO=bar"], "cwd": "/",
                         "capabilities": {"bounding": ["CAP_KILL"]}, "noNewPrivileges": true},
             "root": {"path": "rootfs", "readonly": false}, "hostname": "runc",
             "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}],
             "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
                       "maskedPaths": ["/proc/kcore"]}}
            """
        try config.write(toFile: "\(bundle)/config.json", atomically: true, encoding: .utf8)
        let result = host("run", "--name", "oci", "--bundle", bundle)
        #expect(result.code == 0, "\(result.stderr)")
        #expect(result.stdout == "bundle says bar\nrunc\n")
    }

    @Test("ferry check says checkpoints can work here")
    func check() throws {
        let host = Host()
        defer { host.tearDown() }
        let result = host("check")
        #expect(result.code == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("criu"))
        #expect(result.stdout.contains("4.1"))
        let lastLine = result.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(lastLine.contains("checkpoints can work here"))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(host("check", "--format", "json").stdout.utf8)) as? [String: Any])
        #expect(json["checkpointsCanWork"] as? Bool == true)
    }
}
