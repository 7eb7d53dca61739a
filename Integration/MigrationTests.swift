import FerrySystem
import FerryTestSupport
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A `ferry serve` agent this test starts and stops.
final class Agent: @unchecked Sendable {
    let pid: Int32
    let log: String

    init(host: Host, listen: String, token: String, prefix: [String] = []) throws {
        log = "\(host.root).serve.log"
        let out = try OwnedFD.open(log, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        let null = try OwnedFD.open("/dev/null", O_RDWR)
        let arguments = prefix + [Environment.ferryBinary, "--root", host.root, "serve", "--listen", listen, "--token-file", token]
        pid = try Processes.spawn(
            arguments[0], arguments: arguments, environment: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            descriptors: [0: null.raw, 1: out.raw, 2: out.raw])
        // Ready when it says so.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, !((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("serving") { usleep(20_000) }
    }

    func stop() {
        kill(pid, SIGKILL)
        _ = try? Processes.wait(pid, timeout: .seconds(10))
        unlink(log)
    }
}

/// A source and a destination root, a token, and an agent serving the destination on
/// 127.0.0.1:`port`; all stopped and removed afterwards.
func withMigration(port: Int, _ body: (Host, Host, String, Agent) throws -> Void) throws {
    try withHosts { a, b in
        let token = makeToken(a.root)
        let agent = try Agent(host: b, listen: "127.0.0.1:\(port)", token: token)
        defer {
            agent.stop()
            unlink(token)
        }
        try body(a, b, token, agent)
    }
}

func makeToken(_ dir: String, _ text: String = "a-shared-secret-of-enough-length") -> String {
    let path = "\(dir).token"
    try? text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

@Suite("Migration", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct MigrationTests {
    @Test("stop-copy between two state roots over loopback: the counter continues, the source is gone")
    func loopback() throws {
        try withMigration(port: 17071) { a, b, token, agent in
            a.importBusybox()
            #expect(a("run", "-d", "--name", "mover", "-v", "moverdata:/data", "busybox:latest", "sh", "-c", counterScript).code == 0)
            #expect(a.eventually { (a.counter("mover") ?? 0) >= 5 })
            let result = a("migrate", "mover", "--to", "127.0.0.1:17071", "--token-file", token, "--mode", "stop-copy", "--format", "json")
            #expect(result.code == 0, "\(result.stderr)")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            #expect(report["mode"] as? String == "stop-copy")
            #expect((report["downtimeMs"] as? Double ?? 0) > 0)
            #expect((report["totalMs"] as? Double ?? 0) >= (report["downtimeMs"] as? Double ?? 0))
            #expect((report["bytesSent"] as? Int ?? 0) > 0)
            #expect(a.status(of: "mover") == nil, "exactly one copy: the source's is gone")
            #expect(b.status(of: "mover") == "running")
            let value = try #require(b.counter("mover"))
            #expect(value >= 5 && value < 200, "continued, not restarted: \(value)")
            #expect(b.eventually { (b.counter("mover") ?? 0) > value })
            #expect(b("volume", "ls").stdout.contains("moverdata"))
            // The base image came along (host b had none).
            #expect(b("image", "ls").stdout.contains("busybox"))
        }
    }

    @Test("a flood of connections that never prove the token: the agent stays small, and a real migration still goes through")
    func flood() throws {
        try withMigration(port: 17091) { a, b, token, agent in
            a.importBusybox()
            #expect(a("run", "-d", "--name", "mover", "busybox:latest", "sh", "-c", counterScript).code == 0)
            #expect(a.eventually { (a.counter("mover") ?? 0) >= 5 })
            // 300 connections that each announce a 4 MiB frame and hold it open, and 24 that
            // trickle a byte every 0.3 s (each for at most 20 s): bounded in count and time.
            var held: [Int32] = []
            defer { held.forEach { close($0) } }
            // Length 4 MiB - 4: a frame of exactly 4 MiB, the most a session may send.
            let announce: [UInt8] = [0x00, 0x3F, 0xFF, 0xFC, 0x00, 0x01]
            for _ in 0..<300 {
                guard let socket = connectLoopback(port: 17091) else { continue }
                _ = announce.withUnsafeBytes { send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                held.append(socket)
            }
            #expect(held.count == 300, "the kernel's backlog took every connection")
            let tricklers = (0..<24).map { index in
                ThreadRun.start("trickler \(index)") {
                    guard let socket = connectLoopback(port: 17091) else { return }
                    defer { close(socket) }
                    var byte: UInt8 = 0
                    for _ in 0..<66 {
                        guard withUnsafeBytes(of: &byte, { send(socket, $0.baseAddress, 1, Int32(MSG_NOSIGNAL)) }) == 1 else { return }
                        usleep(300_000)
                    }
                }
            }
            usleep(500_000)
            let threads = processStatus(agent.pid, "Threads") ?? 0
            let migrate = a("migrate", "mover", "--to", "127.0.0.1:17091", "--token-file", token, "--mode", "stop-copy")
            #expect(migrate.code == 0, "\(migrate.stderr)")
            #expect(b.status(of: "mover") == "running")
            let peak = (processStatus(agent.pid, "VmHWM") ?? 0) / 1024
            print("ferry serve during the flood: peak \(peak) MiB, \(threads) threads (informational)")
            #expect(peak < 100, "ferry serve reached \(peak) MiB during the flood")
            #expect(threads < 64, "ferry serve had \(threads) threads during the flood")
            for trickler in tricklers { _ = trickler.join(timeout: .seconds(30)) }
        }
    }

    @Test("lazy (post-copy) over loopback: the counter continues, pages arrive after the switch, the source is freed")
    func lazyLoopback() throws {
        try withMigration(port: 17076) { a, b, token, agent in
            a.importBusybox()
            #expect(a("run", "-d", "--name", "lazy", "-v", "lazydata:/data", "busybox:latest", "sh", "-c", counterScript).code == 0)
            #expect(a.eventually { (a.counter("lazy") ?? 0) >= 5 })
            let result = a("migrate", "lazy", "--to", "127.0.0.1:17076", "--token-file", token, "--mode", "lazy", "--format", "json")
            #expect(result.code == 0, "\(result.stderr)")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            #expect(report["mode"] as? String == "lazy")
            #expect((report["pagesTransferredLazily"] as? Int ?? 0) > 0, "memory moved after the switch: \(report)")
            #expect((report["totalMs"] as? Double ?? 0) >= (report["downtimeMs"] as? Double ?? 0))
            #expect(a.status(of: "lazy") == nil, "the source copy is removed once every page has arrived")
            #expect(b.status(of: "lazy") == "running")
            let value = try #require(b.counter("lazy"))
            #expect(value >= 5 && value < 200, "continued, not restarted: \(value)")
            #expect(b.eventually { (b.counter("lazy") ?? 0) > value })
            #expect(((try? String(contentsOfFile: agent.log, encoding: .utf8)) ?? "").contains("its memory follows"))
        }
    }

    @Test("lazy, the destination's answer to the commit lost: the page channel settles it, and exactly one copy runs")
    func lostCommitted() throws {
        try withHosts { a, b in
            let token = makeToken(a.root)
            // The agent lets the container run after the commit, then closes the control
            // channel instead of answering (docs/faults.md).
            let agent = try Agent(
                host: b, listen: "127.0.0.1:17097", token: token, prefix: ["/usr/bin/env", "FERRY_FAULT=\(FaultInjection.Point.loseCommitted.rawValue)"])
            defer {
                agent.stop()
                unlink(token)
            }
            a.importBusybox()
            #expect(a("run", "-d", "--name", "lc", "busybox:latest", "sh", "-c", counterScript).code == 0)
            #expect(a.eventually { (a.counter("lc") ?? 0) >= 5 })
            let result = a("migrate", "lc", "--to", "127.0.0.1:17097", "--token-file", token, "--mode", "lazy", "--format", "json")
            #expect(result.code == 0, "\(result.stderr)")
            #expect(result.stderr.contains("warning: the destination's answer to the commit was lost"), "\(result.stderr)")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stdout)")
            #expect((report["warnings"] as? [String])?.count == 1, "\(report)")
            #expect(a.status(of: "lc") == nil, "the source's copy is removed once the page channel confirmed")
            #expect(b.status(of: "lc") == "running")
            let value = try #require(b.counter("lc"))
            #expect(value >= 5, "continued, not restarted: \(value)")
            #expect(b.eventually { (b.counter("lc") ?? 0) > value }, "the destination's copy runs")
            #expect(a("ps", "-a", "-q").stdout.isEmpty, "no container left on the source")
        }
    }

    @Test("lazy: processes that fork while their memory is still arriving all see it intact")
    func lazyForks() throws {
        try withMigration(port: 17086) { a, b, token, agent in
            a.importWorkloadImage()
            // The parent forks a child every 50 ms; each child hashes all 256 MiB and
            // records the result, so children are forked (and read) on the destination while
            // pages are still coming, and several are mid-hash in the dump.
            let script = """
                import hashlib, os, time
                data = bytearray(os.urandom(256 << 20))
                digest = hashlib.sha256(data).hexdigest()
                mib = [hashlib.sha256(data[i << 20:(i + 1) << 20]).digest() for i in range(256)]
                n = 0
                while True:
                    n += 1
                    if os.fork() == 0:
                        ok = hashlib.sha256(data).hexdigest() == digest
                        open('/tmp/r%d' % n, 'w').write('%d %s' % (n, 'ok' if ok else 'bad'))
                        os.rename('/tmp/r%d' % n, '/tmp/result')
                        if not ok:
                            # Which MiB went wrong, and whether its wrong pages read as zeros.
                            wrong = [i for i in range(256) if hashlib.sha256(data[i << 20:(i + 1) << 20]).digest() != mib[i]]
                            zero = [i for i in wrong if data[i << 20:(i + 1) << 20].count(0) > (1 << 19)]
                            open('/tmp/bad', 'w').write('child %d: MiB %s wrong, %s mostly zeros' % (n, wrong[:20], zero[:20]))
                        os._exit(0)
                    try:
                        while os.waitpid(-1, os.WNOHANG)[0]: pass
                    except ChildProcessError:
                        pass
                    time.sleep(0.05)
                """
            #expect(a("run", "-d", "--name", "forks", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c", script).code == 0)
            #expect(a.eventually(60) { a("exec", "forks", "cat", "/tmp/result").stdout.hasSuffix("ok") })
            let result = a("migrate", "forks", "--to", "127.0.0.1:17086", "--token-file", token, "--mode", "lazy", "--format", "json")
            #expect(result.code == 0, "\(result.stderr)\nagent: \((try? String(contentsOfFile: agent.log, encoding: .utf8)) ?? "")")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            #expect((report["pagesTransferredLazily"] as? Int ?? 0) >= (256 << 20) / 4096, "the memory came after the switch")
            let first = b("exec", "forks", "cat", "/tmp/result").stdout
            let round = Int(first.split(separator: " ").first ?? "") ?? 0
            // Children forked after the move finish their hash and say ok.
            #expect(
                b.eventually(60) {
                    let now = b("exec", "forks", "cat", "/tmp/result").stdout.split(separator: " ")
                    return now.count == 2 && (Int(now[0]) ?? 0) >= round + 3 && now[1] == "ok"
                })
            let bad = b("exec", "forks", "cat", "/tmp/bad")
            #expect(
                bad.code != 0,
                "a child saw wrong memory: \(bad.stdout)\nagent: \((try? String(contentsOfFile: agent.log, encoding: .utf8)) ?? "")")
            let log = (try? String(contentsOfFile: agent.log, encoding: .utf8)) ?? ""
            let followed = log.split(separator: "\n").first { $0.contains("forks followed") }
            let forks = followed.flatMap { line in line.split(separator: " ").reversed().dropFirst(2).first.flatMap { Int($0) } } ?? 0
            #expect(forks > 0, "forks happened while memory was arriving: \(followed ?? "no summary line")")
        }
    }

    @Test("auto picks lazy when both hosts support it, as ferry check says")
    func autoPicksLazy() throws {
        try withMigration(port: 17077) { a, b, token, _ in
            a.importBusybox()
            let lazyWorks = a("check", "--format", "json").stdout.contains("post-copy (lazy) migration works")
            #expect(a("run", "-d", "--name", "auto", "busybox:latest", "sh", "-c", counterScript).code == 0)
            #expect(a.eventually { (a.counter("auto") ?? 0) >= 2 })
            let result = a("migrate", "auto", "--to", "127.0.0.1:17077", "--token-file", token, "--format", "json")
            #expect(result.code == 0, "\(result.stderr)")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            #expect(report["mode"] as? String == (lazyWorks ? "lazy" : "stop-copy"))
            #expect(b.status(of: "auto") == "running")
        }
    }

    @Test("lazy downtime for a 1 GiB container is well below stop-copy's")
    func lazyDowntime() throws {
        try withMigration(port: 17078) { a, b, token, _ in
            a.importWorkloadImage()
            let script = "import os, time; data = bytearray(os.urandom(1 << 30)); open('/tmp/ready', 'w').write('1'); time.sleep(100000)"
            var downtime: [String: Double] = [:]
            for mode in ["stop-copy", "lazy"] {
                let name = "gib-\(mode)"
                #expect(a("run", "-d", "--name", name, "-v", "/usr:/usr:ro", "workload:1", "python3", "-c", script).code == 0)
                #expect(a.eventually(60) { a("exec", name, "cat", "/tmp/ready").stdout == "1" })
                let result = a("migrate", name, "--to", "127.0.0.1:17078", "--token-file", token, "--mode", mode, "--format", "json")
                #expect(result.code == 0, "\(result.stderr)")
                let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
                downtime[mode] = report["downtimeMs"] as? Double
                #expect(b.status(of: name) == "running")
                #expect(b("rm", "-f", name).code == 0, "one 1 GiB container at a time")
            }
            let stop = try #require(downtime["stop-copy"])
            let lazy = try #require(downtime["lazy"])
            print("1 GiB container: stop-copy downtime \(Int(stop)) ms, lazy downtime \(Int(lazy)) ms")
            #expect(lazy * 2 < stop, "lazy \(lazy) ms vs stop-copy \(stop) ms")
        }
    }

    @Test("one agent receives two containers at once, one lazy and one stop-copy")
    func twoAtOnce() throws {
        try withMigration(port: 17081) { a, b, token, _ in
            a.importBusybox()
            for name in ["one", "two"] {
                #expect(a("run", "-d", "--name", name, "busybox:latest", "sh", "-c", counterScript).code == 0)
            }
            #expect(a.eventually { (a.counter("one") ?? 0) >= 3 && (a.counter("two") ?? 0) >= 3 })
            let results = Mutex<[String: CommandResult]>([:])
            let root = a.root
            let threads = [("one", "lazy"), ("two", "stop-copy")].map { name, mode in
                Thread {
                    let result = Command.run([
                        Environment.ferryBinary, "--root", root, "migrate", name, "--to", "127.0.0.1:17081", "--token-file", token, "--mode", mode,
                    ])
                    results.withLock { $0[name] = result }
                }
            }
            threads.forEach { $0.start() }
            #expect(a.eventually(120) { results.withLock { $0.count } == 2 })
            for name in ["one", "two"] {
                let result = results.withLock { $0[name] }
                #expect(result?.code == 0, "\(name): \(result?.stderr ?? "")")
                #expect(a.status(of: name) == nil)
                #expect(b.status(of: name) == "running")
                let value = try #require(b.counter(name))
                #expect(b.eventually { (b.counter(name) ?? 0) > value }, "\(name) counts on at the destination")
            }
        }
    }

    @Test("a wrong token is refused: the source keeps running, the destination stays empty")
    func wrongToken() throws {
        let a = Host("a")
        let b = Host("b")
        let good = makeToken(a.root)
        let bad = makeToken(b.root, "not-the-same-secret-at-all-1234")
        let agent = try Agent(host: b, listen: "127.0.0.1:17072", token: good)
        defer {
            agent.stop()
            a.tearDown()
            b.tearDown()
            unlink(good)
            unlink(bad)
        }
        a.importBusybox()
        #expect(a("run", "-d", "--name", "stay", "busybox:latest", "sh", "-c", counterScript).code == 0)
        let result = a("migrate", "stay", "--to", "127.0.0.1:17072", "--token-file", bad)
        #expect(result.code != 0)
        #expect(result.stderr.contains("authentication"), "\(result.stderr)")
        #expect(a.status(of: "stay") == "running")
        let value = try #require(a.counter("stay"))
        #expect(a.eventually { (a.counter("stay") ?? 0) > value })
        #expect(
            b("ps", "-a", "--format", "json").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[\n\n]"
                || b("ps", "-a").stdout.split(separator: "\n").count == 1)
        #expect(((try? String(contentsOfFile: agent.log, encoding: .utf8)) ?? "").contains("refused"))
    }

    @Test("pre-copy is refused with the reason on this kernel, before anything is touched")
    func preCopyUnavailable() throws {
        let a = Host("a")
        let token = makeToken(a.root)
        defer {
            a.tearDown()
            unlink(token)
        }
        a.importBusybox()
        #expect(a("run", "-d", "--name", "pc", "busybox:latest", "sh", "-c", counterScript).code == 0)
        let check = a("check", "--format", "json").stdout
        let tracking = check.contains("pre-copy and incremental dumps work")
        let result = a("migrate", "pc", "--mode", "pre-copy", "--to", "127.0.0.1:17075", "--token-file", token)
        #expect(result.code != 0)
        if !tracking {
            #expect(result.stderr.contains("dirty tracking"), "\(result.stderr)")
        }
        #expect(a.status(of: "pc") == "running")
    }

    @Test("the receiving agent killed mid-transfer: the source runs on, the destination is clean", arguments: ["stop-copy", "lazy"])
    func agentKilled(mode: String) throws {
        try withMigration(port: mode == "lazy" ? 17079 : 17073) { a, b, token, agent in
            a.importWorkloadImage()
            let run = a(
                "run", "-d", "--name", "big", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c",
                "import os, time; data = os.urandom(256 << 20); open('/tmp/count', 'w').write('1'); time.sleep(100000)")
            #expect(run.code == 0, "\(run.stderr)")
            #expect(a.eventually(30) { a("exec", "big", "cat", "/tmp/count").stdout == "1" })
            // Kill the agent as soon as the checkpoint starts arriving.
            // The checkpoint streams into the new container's staging directory.
            let staging = "\(b.root)/containers"
            let agentPid = agent.pid
            let killer = Thread {
                let deadline = Date().addingTimeInterval(60)
                while Date() < deadline {
                    let files = (try? FileManager.default.subpathsOfDirectory(atPath: staging)) ?? []
                    if files.contains(where: { $0.hasSuffix(".img") }) {
                        kill(agentPid, SIGKILL)
                        return
                    }
                    usleep(1_000)
                }
            }
            killer.start()
            let result = a("migrate", "big", "--to", "127.0.0.1:\(mode == "lazy" ? 17079 : 17073)", "--token-file", token, "--mode", mode)
            #expect(result.code != 0)
            #expect(result.stderr.contains("keeps running here"), "\(result.stderr)")
            #expect(a.status(of: "big") == "running")
            #expect(a("exec", "big", "cat", "/tmp/count").stdout == "1", "the source answers, thawed")
            #expect(b("ps", "-a").stdout.split(separator: "\n").count == 1, "no container on the destination")
            #expect(b.leftovers().isEmpty, "\(b.leftovers())")
        }
    }
}

/// Two "hosts" as network namespaces joined by a veth pair, made and removed by the test.
final class VethPair {
    let a = "ferry-it-a-\(UInt16.random(in: 1000...9999))"
    let b = "ferry-it-b-\(UInt16.random(in: 1000...9999))"
    let addressA = "10.231.0.1"
    let addressB = "10.231.0.2"

    init() {
        let ip = "/usr/sbin/ip"
        for ns in [a, b] { Command.run([ip, "netns", "add", ns]) }
        Command.run([ip, "link", "add", "vf-\(a.suffix(4))", "netns", a, "type", "veth", "peer", "name", "vf-\(b.suffix(4))", "netns", b])
        Command.run([ip, "-n", a, "addr", "add", "\(addressA)/24", "dev", "vf-\(a.suffix(4))"])
        Command.run([ip, "-n", b, "addr", "add", "\(addressB)/24", "dev", "vf-\(b.suffix(4))"])
        for (ns, dev) in [(a, "vf-\(a.suffix(4))"), (b, "vf-\(b.suffix(4))")] {
            Command.run([ip, "-n", ns, "link", "set", dev, "up"])
            Command.run([ip, "-n", ns, "link", "set", "lo", "up"])
        }
    }

    func remove() {
        for ns in [a, b] { Command.run(["/usr/sbin/ip", "netns", "del", ns]) }
    }
}

@Suite("Migration between hosts", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct MigrationHostTests {
    @Test("between two network namespaces joined by veth: 512 MiB of random memory keeps its checksum", arguments: ["stop-copy", "lazy"])
    func vethChecksum(mode: String) throws {
        let pair = VethPair()
        let a = Host("a")
        let b = Host("b")
        let token = makeToken(a.root)
        // nsenter switches only the network namespace (`ip netns exec` would also remount
        // /sys and hide the cgroup hierarchies).
        let agent = try Agent(host: b, listen: "\(pair.addressB):7070", token: token, prefix: ["/usr/bin/nsenter", "--net=/run/netns/\(pair.b)"])
        defer {
            agent.stop()
            a.tearDown()
            b.tearDown()
            pair.remove()
            unlink(token)
        }
        a.importWorkloadImage()
        b.importWorkloadImage()
        let script = """
            import hashlib, os, signal, time
            data = bytearray(os.urandom(512 << 20))
            digest = hashlib.sha256(data).hexdigest()
            open('/tmp/digest', 'w').write(digest)
            def check(signum, frame):
                open('/tmp/check.tmp', 'w').write('ok' if hashlib.sha256(data).hexdigest() == digest else 'bad')
                os.rename('/tmp/check.tmp', '/tmp/check')
            signal.signal(signal.SIGUSR1, check)
            while True: time.sleep(1)
            """
        #expect(a("run", "-d", "--name", "mem", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c", script).code == 0)
        #expect(a.eventually(60) { a("exec", "mem", "cat", "/tmp/digest").stdout.count == 64 })
        let digest = a("exec", "mem", "cat", "/tmp/digest").stdout
        let migrate = Command.run([
            "/usr/bin/nsenter", "--net=/run/netns/\(pair.a)", Environment.ferryBinary, "--root", a.root,
            "migrate", "mem", "--to", "\(pair.addressB):7070", "--token-file", token, "--mode", mode, "--format", "json",
        ])
        #expect(migrate.code == 0, "\(migrate.stderr)")
        if mode == "lazy" {
            let report = try #require(try JSONSerialization.jsonObject(with: Data(migrate.stdout.utf8)) as? [String: Any])
            #expect((report["pagesTransferredLazily"] as? Int ?? 0) >= (512 << 20) / 4096, "the 512 MiB came after the switch")
        }
        #expect(a.status(of: "mem") == nil)
        #expect(b.status(of: "mem") == "running")
        #expect(b("exec", "mem", "cat", "/tmp/digest").stdout == digest)
        #expect(b("kill", "-s", "USR1", "mem").code == 0)
        #expect(b.eventually(60) { b("exec", "mem", "cat", "/tmp/check").stdout == "ok" }, "the memory came over intact")
    }

    @Test("a TCP connection between two processes inside the container survives the move", arguments: ["stop-copy", "lazy"])
    func tcpSurvives(mode: String) throws {
        try withMigration(port: mode == "lazy" ? 17080 : 17074) { a, b, token, agent in
            a.importWorkloadImage()
            let script = """
                import os, socket, threading, time
                server = socket.socket(); server.bind(('127.0.0.1', 5555)); server.listen(1)
                client = socket.create_connection(('127.0.0.1', 5555))
                conn, _ = server.accept()
                def echo():
                    while True:
                        data = conn.recv(100)
                        if not data: break
                        conn.sendall(data)
                threading.Thread(target=echo, daemon=True).start()
                n = 0
                while True:
                    n += 1
                    client.sendall(b'ping %d' % n)
                    reply = client.recv(100)
                    with open('/tmp/tcp.tmp', 'w') as f: f.write('%s %d' % (reply.decode(), n))
                    os.rename('/tmp/tcp.tmp', '/tmp/tcp')
                    time.sleep(0.1)
                """
            #expect(a("run", "-d", "--name", "tcp", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c", script).code == 0)
            #expect(a.eventually(30) { a("exec", "tcp", "cat", "/tmp/tcp").stdout.hasPrefix("ping") })
            let migrate = a("migrate", "tcp", "--tcp-established", "--to", "127.0.0.1:\(mode == "lazy" ? 17080 : 17074)", "--token-file", token, "--mode", mode)
            #expect(migrate.code == 0, "\(migrate.stderr)")
            let first = b("exec", "tcp", "cat", "/tmp/tcp").stdout
            let count = Int(first.split(separator: " ").last ?? "") ?? 0
            #expect(
                b.eventually(10) {
                    let now = b("exec", "tcp", "cat", "/tmp/tcp").stdout.split(separator: " ")
                    return now.count == 3 && now[1] == now[2] && (Int(now[2]) ?? 0) > count + 3
                }, "the same connection goes on echoing after the move")
        }
    }

    /// A failed lazy `--tcp-established` migration, on the same machine: the destination
    /// cannot restore the host-network container (its ports are held here), so the
    /// source must run on and its clients' connections must work again (CRIU resumed the
    /// tree with them still locked: repair mode and drop rules, which Ferry undoes).
    @Test("a lazy --tcp-established migration whose destination fails: the source runs on and its client's connection keeps echoing")
    func lazyFailureKeepsConnections() throws {
        try withMigration(port: 17082) { a, b, token, _ in
            a.importWorkloadImage()
            b.importWorkloadImage()
            let port = 5583
            #expect(
                a("run", "-d", "--name", "echo", "--network", "host", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c", echoServerScript(port: port)).code
                    == 0)
            #expect(a.eventually(20) { connectLoopback(port: UInt16(port)).map { close($0) } != nil }, "the server listens")
            // The test's own client: one connection, a numbered ping every 0.1 s, the last
            // good reply written to a file; bounded (at most 60 s), ended by pid.
            let out = "\(a.root).client"
            let client = echoClientScript(port: port, out: out)
            let null = try OwnedFD.open("/dev/null", O_RDWR)
            let pid = try Processes.spawn(
                "/usr/bin/python3", arguments: ["python3", "-c", client], environment: [], descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
            defer {
                kill(pid, SIGKILL)
                _ = try? Processes.wait(pid, timeout: .seconds(10))
                unlink(out)
            }
            func replies() -> Int { Int((try? String(contentsOfFile: out, encoding: .utf8)) ?? "") ?? 0 }
            #expect(a.eventually(20) { replies() > 3 }, "the client gets its echoes")

            let migrate = a("migrate", "echo", "--tcp-established", "--mode", "lazy", "--to", "127.0.0.1:17082", "--token-file", token)
            #expect(migrate.code != 0, "the destination cannot restore a host-network container whose ports are held here")
            #expect(migrate.stderr.contains("keeps running here"), "\(migrate.stderr)")
            #expect(a.status(of: "echo") == "running")
            #expect(b.status(of: "echo") == nil)
            let after = replies()
            #expect(a.eventually(10) { replies() > after + 10 }, "the same connection echoes again (stuck at \(replies()))")
            // Only this test's rules: other suites' dumps may hold theirs meanwhile.
            func rules() -> [String] {
                Command.run(["/usr/sbin/iptables", "-w", "5", "-S"]).stdout.split(separator: "\n").map(String.init).filter {
                    $0.contains("0xc114") && $0.contains("port \(port) ")
                }
            }
            let left = rules()
            #expect(left.isEmpty, "CRIU's drop rules for the connection are gone: \(left)")
            for rule in left where rule.hasPrefix("-A ") {
                // A failed expectation leaves nothing behind either.
                Command.run(["/usr/sbin/iptables", "-w", "5", "-D"] + rule.dropFirst(3).split(separator: " ").map(String.init))
            }
            #expect(a("rm", "-f", "echo").code == 0)
        }
    }

    /// Lazy migration under load, many times over: each hop must either move the
    /// container whole or leave it where it was, never lose it (it once lost one at the
    /// 5th of ten hops with a core kept busy, the destination stopping its page receiver
    /// while the last frames were still arriving).
    @Test("eight lazy hops back and forth with a core kept busy: 256 MiB, half zeros, half random, keeps its checksum")
    func manyLazyHops() throws {
        try withMigration(port: 17083) { a, b, token, _ in
            let back = try Agent(host: a, listen: "127.0.0.1:17084", token: token)
            // The hog: bounded by timeout(1) even if this test dies, ended by pid.
            let null = try OwnedFD.open("/dev/null", O_RDWR)
            let hog = try Processes.spawn(
                "/usr/bin/timeout", arguments: ["timeout", "--signal=KILL", "300", "/bin/sh", "-c", "while :; do :; done"],
                environment: [], descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
            defer {
                kill(hog, SIGKILL)
                _ = try? Processes.wait(hog, timeout: .seconds(10))
                back.stop()
            }
            a.importWorkloadImage()
            b.importWorkloadImage()
            let script = """
                import hashlib, os, signal, time
                block = 256 << 10
                data = bytearray(256 << 20)
                for offset in range(0, len(data), 2 * block):
                    data[offset:offset + block] = os.urandom(block)
                digest = hashlib.sha256(data).hexdigest()
                open('/tmp/digest', 'w').write(digest)
                def check(signum, frame):
                    open('/tmp/check.tmp', 'w').write('ok' if hashlib.sha256(data).hexdigest() == digest else 'bad')
                    os.rename('/tmp/check.tmp', '/tmp/check')
                signal.signal(signal.SIGUSR1, check)
                while True: time.sleep(0.5)
                """
            #expect(a("run", "-d", "--name", "hops", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c", script).code == 0)
            #expect(a.eventually(60) { a("exec", "hops", "cat", "/tmp/digest").stdout.count == 64 })
            let digest = a("exec", "hops", "cat", "/tmp/digest").stdout
            var here = a
            var there = b
            var port = 17083
            for hop in 1...8 {
                let migrate = here("migrate", "hops", "--to", "127.0.0.1:\(port)", "--token-file", token, "--mode", "lazy")
                try #require(migrate.code == 0, "hop \(hop): \(migrate.stderr)")
                try #require(there.status(of: "hops") == "running", "hop \(hop): it runs at the destination")
                try #require(here.status(of: "hops") == nil, "hop \(hop): the source's copy is gone")
                swap(&here, &there)
                port = port == 17083 ? 17084 : 17083
            }
            #expect(here("exec", "hops", "cat", "/tmp/digest").stdout == digest)
            #expect(here("kill", "-s", "USR1", "hops").code == 0)
            #expect(here.eventually(60) { here("exec", "hops", "cat", "/tmp/check").stdout == "ok" }, "the memory came through eight hops intact")
        }
    }
}

/// Two test hosts made as network namespaces, "near" and "far", joined by a veth pair
/// (10.201.0.1/30 and 10.201.0.2/30, addresses inside the namespaces only); both removed
/// afterwards, which takes any rule or link left in them along.
func withNetworkHosts(_ body: (_ near: String, _ far: String) throws -> Void) throws {
    let tag = getpid()
    let near = "ferry-it-near-\(tag)"
    let far = "ferry-it-far-\(tag)"
    defer {
        Command.run(["/usr/sbin/ip", "netns", "delete", near])
        Command.run(["/usr/sbin/ip", "netns", "delete", far])
    }
    let setup: [[String]] = [
        ["netns", "add", near], ["netns", "add", far],
        ["-n", near, "link", "add", "fit-near", "type", "veth", "peer", "name", "fit-far", "netns", far],
        ["-n", near, "addr", "add", "10.201.0.1/30", "dev", "fit-near"], ["-n", far, "addr", "add", "10.201.0.2/30", "dev", "fit-far"],
        ["-n", near, "link", "set", "fit-near", "up"], ["-n", far, "link", "set", "fit-far", "up"],
        ["-n", near, "link", "set", "lo", "up"], ["-n", far, "link", "set", "lo", "up"],
    ]
    for step in setup {
        let result = Command.run(["/usr/sbin/ip"] + step)
        try #require(result.code == 0, "ip \(step.joined(separator: " ")): \(result.stderr)")
    }
    try body(near, far)
}

/// `nsenter --net=/run/netns/NS`: a command run in a test host's network namespace only
/// (mounts, cgroups and the rest stay the host's, unlike `ip netns exec`).
func inNetwork(_ netns: String) -> [String] { ["/usr/bin/nsenter", "--net=/run/netns/\(netns)"] }

/// CRIU's drop rules (mark 0xC114) for connections of `port`, in network namespace `netns`.
func connectionLockRules(port: Int, netns: String) -> [String] {
    Command.run(inNetwork(netns) + ["/usr/sbin/iptables", "-w", "5", "-S"]).stdout.split(separator: "\n").map(String.init).filter {
        $0.contains("0xc114") && $0.contains("port \(port) ")
    }
}

/// A python TCP echo server on `address`:`port`, one thread per connection.
func echoServerScript(port: Int, address: String = "127.0.0.1") -> String {
    """
    import socket, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('\(address)', \(port))); s.listen(4)
    while True:
        c, _ = s.accept()
        def echo(c=c):
            while True:
                d = c.recv(100)
                if not d: break
                c.sendall(d)
        threading.Thread(target=echo, daemon=True).start()
    """
}

/// A python client that holds one connection to `address`:`port` and pings it every 0.1 s
/// for at most 60 s, writing the number of the last echoed ping to `out`. It connects
/// once the server listens (retrying for up to 10 s). Pings are lines read as a stream:
/// an echo that comes late (the server was frozen longer than the 1 s the client waits)
/// still counts, and the ones after it too. (A client that compared each answer with the
/// ping just sent fell out of step for good after one late echo: a flaky failure.)
func echoClientScript(port: Int, out: String, address: String = "127.0.0.1") -> String {
    """
    import socket, time, os
    for _ in range(100):
        try: c = socket.create_connection(('\(address)', \(port))); break
        except OSError: time.sleep(0.1)
    c.settimeout(1)
    pending = b''
    for n in range(1, 600):
        try:
            c.sendall(b'p%d\\n' % n)
            data = c.recv(4096)
            if not data: break
            pending += data
            *lines, pending = pending.split(b'\\n')
            echoed = [int(l[1:]) for l in lines if l.startswith(b'p') and l[1:].isdigit()]
            if echoed:
                open('\(out).tmp', 'w').write('%d' % max(echoed)); os.rename('\(out).tmp', '\(out)')
        except socket.timeout:
            pass
        time.sleep(0.1)
    """
}

@Suite("Locked connections across network namespaces", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct ConnectionLockTests {
    /// CRIU ends a dumped tree with its connections still locked by drop rules; the
    /// destination's restore lifts only the rules of its own network namespace. On a real
    /// second host the source's rules would stay for good, dropping that traffic.
    @Test("a --tcp-established migration to another network namespace leaves no drop rules on the source", arguments: ["lazy", "stop-copy"])
    func migrationLeavesNoRules(mode: String) throws {
        try withNetworkHosts { near, far in
            try withHosts { a, b in
                let token = makeToken(a.root)
                let agent = try Agent(host: b, listen: "10.201.0.2:17085", token: token, prefix: inNetwork(far))
                defer {
                    agent.stop()
                    unlink(token)
                }
                a.importWorkloadImage()
                b.importWorkloadImage()
                let port = 5584
                func onA(_ arguments: String...) -> CommandResult {
                    Command.run(inNetwork(near) + [Environment.ferryBinary, "--root", a.root] + arguments)
                }
                let run = onA(
                    "run", "-d", "--name", "echo", "--network", "host", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c", echoServerScript(port: port))
                try #require(run.code == 0, "\(run.stderr)")
                let out = "\(a.root).client"
                let null = try OwnedFD.open("/dev/null", O_RDWR)
                let client = echoClientScript(port: port, out: out)
                let pid = try Processes.spawn(
                    "/usr/bin/nsenter", arguments: inNetwork(near) + ["/usr/bin/python3", "-c", client], environment: [],
                    descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
                defer {
                    kill(pid, SIGKILL)
                    _ = try? Processes.wait(pid, timeout: .seconds(10))
                    unlink(out)
                }
                #expect(a.eventually(20) { (Int((try? String(contentsOfFile: out, encoding: .utf8)) ?? "") ?? 0) > 3 }, "the client gets its echoes")

                let migrate = onA("migrate", "echo", "--tcp-established", "--mode", mode, "--to", "10.201.0.2:17085", "--token-file", token)
                try #require(migrate.code == 0, "\(migrate.stderr)")
                #expect(b.status(of: "echo") == "running")
                #expect(a.status(of: "echo") == nil)
                #expect(connectionLockRules(port: port, netns: near).isEmpty, "the source keeps no drop rules: \(connectionLockRules(port: port, netns: near))")
                #expect(connectionLockRules(port: port, netns: far).isEmpty, "the destination's restore lifted its own")
                // The moved server still listens at the destination.
                let probe = Command.run(
                    inNetwork(far) + [
                        "/usr/bin/python3", "-c",
                        "import socket; c = socket.create_connection(('127.0.0.1', \(port)), 5); c.sendall(b'hi'); print(c.recv(10).decode())",
                    ])
                #expect(probe.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "hi", "\(probe.stderr)")
                #expect(b("rm", "-f", "echo").code == 0)
            }
        }
    }

    /// A checkpoint without --leave-running keeps its connections locked until a restore;
    /// removing the checkpointed container instead must lift the lock.
    @Test("rm of a container checkpointed with --tcp-established removes CRIU's drop rules")
    func removingCheckpointLiftsRules() throws {
        try withNetworkHosts { near, _ in
            try withHosts { a, _ in
                a.importWorkloadImage()
                let port = 5585
                func onA(_ arguments: String...) -> CommandResult {
                    Command.run(inNetwork(near) + [Environment.ferryBinary, "--root", a.root] + arguments)
                }
                let run = onA(
                    "run", "-d", "--name", "echo", "--network", "host", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c", echoServerScript(port: port))
                try #require(run.code == 0, "\(run.stderr)")
                let out = "\(a.root).client"
                let client = echoClientScript(port: port, out: out)
                let null = try OwnedFD.open("/dev/null", O_RDWR)
                let pid = try Processes.spawn(
                    "/usr/bin/nsenter", arguments: inNetwork(near) + ["/usr/bin/python3", "-c", client], environment: [],
                    descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
                defer {
                    kill(pid, SIGKILL)
                    _ = try? Processes.wait(pid, timeout: .seconds(10))
                    unlink(out)
                }
                #expect(a.eventually(20) { (Int((try? String(contentsOfFile: out, encoding: .utf8)) ?? "") ?? 0) > 3 }, "the client gets its echoes")
                let checkpoint = onA("checkpoint", "echo", "--tcp-established")
                try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
                #expect(!connectionLockRules(port: port, netns: near).isEmpty, "CRIU holds the connection while the checkpoint waits for a restore")
                #expect(onA("rm", "echo").code == 0)
                #expect(connectionLockRules(port: port, netns: near).isEmpty, "no drop rules after rm: \(connectionLockRules(port: port, netns: near))")
            }
        }
    }
}

/// A TCP connection to 127.0.0.1:`port` (a descriptor the caller closes), or nil.
func connectLoopback(port: UInt16) -> Int32? {
    let raw = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard raw >= 0 else { return nil }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(raw, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else {
        close(raw)
        return nil
    }
    return raw
}

/// A value in KiB (or a count) from /proc/PID/status: "VmHWM", "Threads".
func processStatus(_ pid: Int32, _ field: String) -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("\(field):") {
        return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "")
    }
    return nil
}
