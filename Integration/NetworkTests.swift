import FerrySystem
import FerryTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A network namespace for one test: Ferry runs inside it, so its bridges, veths and
/// nftables table live there and go with it. Removed afterwards.
func withTestNamespace(_ label: String, _ body: (String) throws -> Void) throws {
    let ns = "ferry-it-\(label)-\(getpid())"
    defer { Command.run(["/usr/sbin/ip", "netns", "delete", ns]) }
    for step in [["netns", "add", ns], ["-n", ns, "link", "set", "lo", "up"]] {
        let result = Command.run(["/usr/sbin/ip"] + step)
        try #require(result.code == 0, "ip \(step.joined(separator: " ")): \(result.stderr)")
    }
    try body(ns)
}

/// Links of the namespace whose name Ferry gives (bridges "ferry*", veths "fv*").
func ferryLinks(_ ns: String) -> [String] {
    Command.run(["/usr/sbin/ip", "-n", ns, "-o", "link", "show"]).stdout.split(separator: "\n").compactMap { line in
        let name = line.split(separator: ":").dropFirst().first.map { String($0.trimmingCharacters(in: .whitespaces).prefix { $0 != "@" }) }
        return name.flatMap { $0.hasPrefix("ferry") || $0.hasPrefix("fv") ? $0 : nil }
    }
}

/// nftables tables of the namespace that Ferry made.
func ferryTables(_ ns: String) -> [String] {
    Command.run(inNetwork(ns) + ["/usr/sbin/nft", "list", "tables"]).stdout.split(separator: "\n").map(String.init).filter { $0.contains("ferry_") }
}

/// GET http://URL from the namespace (python's urllib: the static busybox's wget crashes
/// on glibc hosts); the body, or nil.
func fetch(_ ns: String, _ url: String) -> String? {
    let get = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    let result = Command.run(inNetwork(ns) + ["/usr/bin/python3", "-c", get, url], timeout: .seconds(30))
    return result.code == 0 ? result.stdout : nil
}

func endpoint(_ host: Host, _ name: String) -> [String: Any]? {
    let data = Data(host("inspect", name).stdout.utf8)
    return ((try? JSONSerialization.jsonObject(with: data)) as? [[String: Any]])?.first?["endpoint"] as? [String: Any]
}

@Suite("Bridge networks", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct NetworkTests {
    @Test("a container on a bridge network: address, published port from 127.0.0.1, bad input refused, kept through checkpoint/restore, nothing left after rm")
    func bridgeLifecycle() throws {
        try withTestNamespace("net") { ns in
            let host = Host("net", prefix: inNetwork(ns))
            defer { host.tearDown() }
            host.importBusybox()
            try #require(host("network", "create", "--subnet", "10.89.7.0/24", "--ip-range", "10.89.7.16/28", "web").code == 0)
            // Bad input: one line, and nothing made.
            for (arguments, words) in [
                (["network", "create", "--subnet", "10.89.0.0/16", "wide"], "overlaps network 'web'"),
                (["network", "create", "--subnet", "10.89.8.0/24", "--gateway", "10.89.9.1", "g"], "is not a host address"),
                (["network", "create", "web"], "already exists"),
                (["run", "--network", "web", "--ip", "10.89.6.5", "busybox:latest", "true"], "outside network"),
                (["run", "--network", "none", "--ip", "10.89.7.5", "busybox:latest", "true"], "--ip needs a bridge network"),
                (["run", "--network", "nope", "busybox:latest", "true"], "no such network"),
            ] {
                let result = host.ferry(arguments)
                // One line says why (a usage hint may follow, as for every flag error).
                let line = result.stderr.split(separator: "\n").first.map(String.init) ?? ""
                #expect(result.code != 0 && line.contains(words), "\(arguments): \(result.stderr)")
            }
            #expect(!host("network", "ls").stdout.contains("wide"))
            let run = host(
                "run", "-d", "--name", "web1", "--network", "web", "--mac-address", "02:42:0a:59:07:11", "--hostname", "box",
                "--add-host", "db:10.0.0.9", "-p", "8080:80", "busybox:latest", "httpd", "-f", "-p", "80", "-h", "/etc")
            try #require(run.code == 0, "\(run.stderr)")
            let first = try #require(endpoint(host, "web1"))
            #expect(first["address"] as? String == "10.89.7.16", "the first address of the range: \(first)")
            #expect(first["mac"] as? String == "02:42:0a:59:07:11")
            // Taken: a second container may not have the port, address or MAC.
            for arguments in [
                ["run", "--network", "web", "-p", "8080:81", "busybox:latest", "true"],
                ["run", "--network", "web", "--ip", "10.89.7.16", "busybox:latest", "true"],
                ["run", "--network", "web", "--mac-address", "02:42:0a:59:07:11", "busybox:latest", "true"],
            ] {
                let result = host.ferry(arguments)
                #expect(result.code != 0 && result.stderr.contains("already"), "\(arguments): \(result.stderr)")
            }
            let rm = host("network", "rm", "web")
            #expect(rm.code != 0 && rm.stderr.contains("used by container web1"), "\(rm.stderr)")
            #expect(host("ps").stdout.contains("0.0.0.0:8080->80/tcp"))
            #expect(host("port", "web1").stdout == "80/tcp -> 0.0.0.0:8080\n")
            let hosts = try #require(host.eventually { fetch(ns, "http://127.0.0.1:8080/hosts") != nil } ? fetch(ns, "http://127.0.0.1:8080/hosts") : nil)
            #expect(hosts.contains("10.89.7.16\tbox web1") && hosts.contains("10.0.0.9\tdb"), "\(hosts)")
            #expect(fetch(ns, "http://10.89.7.16/hosts") != nil)
            #expect(host("exec", "web1", "cat", "/sys/class/net/eth0/address").stdout == "02:42:0a:59:07:11\n")

            try #require(host("checkpoint", "web1").code == 0)
            // Checkpointed, it keeps its address: no one else may take it.
            let taken = host("run", "--network", "web", "--ip", "10.89.7.16", "busybox:latest", "true")
            #expect(taken.code != 0 && taken.stderr.contains("already in use"), "\(taken.stderr)")
            let restore = host("restore", "web1")
            try #require(restore.code == 0, "\(restore.stderr)")
            #expect(host("exec", "web1", "cat", "/sys/class/net/eth0/address").stdout == "02:42:0a:59:07:11\n")
            #expect(host("exec", "web1", "ip", "-4", "addr", "show", "eth0").stdout.contains("10.89.7.16/24"))
            #expect(host("exec", "web1", "ip", "route").stdout.contains("default via 10.89.7.1"))
            #expect(fetch(ns, "http://127.0.0.1:8080/hosts") != nil, "the published port after restore")

            #expect(host("rm", "-f", "web1").code == 0)
            #expect(ferryLinks(ns).isEmpty, "links left: \(ferryLinks(ns))")
            #expect(ferryTables(ns).isEmpty, "tables left: \(ferryTables(ns))")
            #expect(host("network", "rm", "web").code == 0)
            #expect(!host("network", "ls").stdout.contains("web"))
        }
    }

    @Test("a TCP connection from outside to the container's address survives checkpoint and restore with --tcp-established")
    func tcpEstablished() throws {
        try withTestNamespace("tcp") { ns in
            let host = Host("tcp", prefix: inNetwork(ns))
            defer { host.tearDown() }
            host.importWorkloadImage()
            try #require(host("network", "create", "--subnet", "10.89.9.0/24", "lan").code == 0)
            let run = host(
                "run", "-d", "--name", "echo", "--network", "lan", "--ip", "10.89.9.50", "-v", "/usr:/usr:ro", "workload:1", "python3", "-c",
                echoServerScript(port: 7000, address: "0.0.0.0"))
            try #require(run.code == 0, "\(run.stderr)")
            let out = "\(host.root).client"
            defer { unlink(out) }
            let client = echoClientScript(port: 7000, out: out, address: "10.89.9.50")
            let null = try OwnedFD.open("/dev/null", O_RDWR)
            let pid = try Processes.spawn(
                "/usr/bin/nsenter", arguments: inNetwork(ns) + ["/usr/bin/python3", "-c", client], environment: [],
                descriptors: [0: null.raw, 1: null.raw, 2: null.raw])
            defer {
                kill(pid, SIGKILL)
                _ = try? Processes.wait(pid)
            }
            func echoed() -> Int { Int((try? String(contentsOfFile: out, encoding: .utf8)) ?? "") ?? 0 }
            try #require(host.eventually(20) { echoed() > 3 }, "the client never got an echo")
            let checkpoint = host("checkpoint", "--tcp-established", "echo")
            try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
            let before = echoed()
            let restore = host("restore", "--tcp-established", "echo")
            try #require(restore.code == 0, "\(restore.stderr)")
            #expect(host.eventually(20) { echoed() > before + 5 }, "the connection did not go on after restore (last echo \(echoed()), before \(before))")
        }
    }

    @Test(
        "export/import onto a host with a network of the same name brings back address, MAC and port; a taken address is refused first, unless --ignore-static-ip/--ignore-static-mac"
    )
    func exportImport() throws {
        try withTestNamespace("exa") { nsA in
            try withTestNamespace("exb") { nsB in
                let a = Host("exa", prefix: inNetwork(nsA))
                let b = Host("exb", prefix: inNetwork(nsB))
                let archive = "\(a.root).tar.zst"
                defer {
                    a.tearDown()
                    b.tearDown()
                    unlink(archive)
                }
                a.importBusybox()
                b.importBusybox()
                try #require(a("network", "create", "--subnet", "10.89.20.0/24", "web").code == 0)
                let run = a(
                    "run", "-d", "--name", "srv", "--network", "web", "--ip", "10.89.20.9", "--mac-address", "02:00:0a:59:14:09", "-p", "8081:80",
                    "busybox:latest", "httpd", "-f", "-p", "80", "-h", "/etc")
                try #require(run.code == 0, "\(run.stderr)")
                try #require(a("checkpoint", "--export", archive, "srv").code == 0)

                // No network 'web' on b: refused, nothing made.
                let missing = b("restore", "--import", archive)
                #expect(missing.code != 0 && missing.stderr.contains("network 'web' does not exist"), "\(missing.stderr)")
                try #require(b("network", "create", "--subnet", "10.89.20.0/24", "web").code == 0)
                // The address is taken on b: refused before anything is made.
                try #require(b("run", "-d", "--name", "squat", "--network", "web", "--ip", "10.89.20.9", "busybox:latest", "sleep", "1000").code == 0)
                let taken = b("restore", "--import", archive)
                #expect(taken.code != 0 && taken.stderr.contains("10.89.20.9 is already in use"), "\(taken.stderr)")
                #expect(!b("ps", "-a").stdout.contains("srv"), "a refused import made a container")
                let copy = b("restore", "--import", archive, "--name", "copy", "--ignore-static-ip", "--ignore-static-mac")
                try #require(copy.code == 0, "\(copy.stderr)")
                let moved = try #require(endpoint(b, "copy"))
                #expect(moved["address"] as? String != "10.89.20.9" && moved["mac"] as? String != "02:00:0a:59:14:09", "\(moved)")
                #expect(b("rm", "-f", "copy", "squat").code == 0)

                let imported = b("restore", "--import", archive)
                try #require(imported.code == 0, "\(imported.stderr)")
                #expect(b("exec", "srv", "cat", "/sys/class/net/eth0/address").stdout == "02:00:0a:59:14:09\n")
                #expect(b("exec", "srv", "ip", "-4", "addr", "show", "eth0").stdout.contains("10.89.20.9/24"))
                #expect(b("port", "srv").stdout == "80/tcp -> 0.0.0.0:8081\n")
                #expect(b.eventually { fetch(nsB, "http://127.0.0.1:8081/hosts") != nil }, "the published port on the importing host")
                #expect(fetch(nsB, "http://10.89.20.9/hosts") != nil)
                for host in [a, b] { #expect(host("rm", "-f", "srv").code == 0) }
                for ns in [nsA, nsB] {
                    #expect(ferryLinks(ns).isEmpty, "links left in \(ns): \(ferryLinks(ns))")
                    #expect(ferryTables(ns).isEmpty, "tables left in \(ns): \(ferryTables(ns))")
                }
            }
        }
    }

    @Test("migration keeps the address and MAC; a destination whose address is taken is refused at the preflight, before anything is frozen")
    func migrationPreflight() throws {
        try withNetworkHosts { near, far in
            let a = Host("mga", prefix: inNetwork(near))
            let b = Host("mgb", prefix: inNetwork(far))
            let token = makeToken(a.root)
            let agent = try Agent(host: b, listen: "10.201.0.2:17095", token: token, prefix: inNetwork(far))
            defer {
                agent.stop()
                a.tearDown()
                b.tearDown()
                unlink(token)
            }
            a.importBusybox()
            b.importBusybox()
            for host in [a, b] { try #require(host("network", "create", "--subnet", "10.89.30.0/24", "web").code == 0) }
            let run = a(
                "run", "-d", "--name", "srv", "--network", "web", "--ip", "10.89.30.5", "--mac-address", "02:00:0a:59:1e:05", "busybox:latest",
                "httpd", "-f", "-p", "80", "-h", "/etc")
            try #require(run.code == 0, "\(run.stderr)")
            try #require(b("run", "-d", "--name", "squat", "--network", "web", "--ip", "10.89.30.5", "busybox:latest", "sleep", "1000").code == 0)
            let refused = a("migrate", "srv", "--to", "10.201.0.2:17095", "--token-file", token, "--mode", "stop-copy")
            #expect(refused.code != 0 && refused.stderr.contains("10.89.30.5 is already in use"), "\(refused.stderr)")
            #expect(a.status(of: "srv") == "running", "the source must go on running after a refused preflight")
            #expect(b("rm", "-f", "squat").code == 0)
            let migrate = a("migrate", "srv", "--to", "10.201.0.2:17095", "--token-file", token, "--mode", "stop-copy")
            try #require(migrate.code == 0, "\(migrate.stderr)")
            #expect(b.status(of: "srv") == "running")
            #expect(b("exec", "srv", "cat", "/sys/class/net/eth0/address").stdout == "02:00:0a:59:1e:05\n")
            #expect(b("exec", "srv", "ip", "-4", "addr", "show", "eth0").stdout.contains("10.89.30.5/24"))
            #expect(b.eventually { fetch(far, "http://10.89.30.5/hosts") != nil }, "the container's address on the destination")
            #expect(ferryLinks(near).isEmpty && ferryTables(near).isEmpty, "the source keeps \(ferryLinks(near)) \(ferryTables(near))")
        }
    }

    @Test("concurrent runs on one network never get the same address: a /29 holds five containers, the sixth is refused")
    func concurrentAllocation() throws {
        try withTestNamespace("alloc") { ns in
            let host = Host("alloc", prefix: inNetwork(ns))
            defer { host.tearDown() }
            host.importBusybox()
            try #require(host("network", "create", "--subnet", "10.89.40.0/29", "small").code == 0)
            let command = host.prefix + [Environment.ferryBinary, "--root", host.root]
            let runs = (0..<6).map { index in
                ThreadRun.start("run \(index)") {
                    Command.run(command + ["run", "-d", "--name", "c\(index)", "--network", "small", "busybox:latest", "sleep", "1000"])
                }
            }
            let results = runs.compactMap { try? $0.join(timeout: .seconds(120)).get() }
            #expect(results.count == 6)
            #expect(results.filter { $0.code == 0 }.count == 5, "\(results.map(\.stderr))")
            let refused = results.filter { $0.code != 0 }
            #expect(refused.count == 1 && refused.allSatisfy { $0.stderr.contains("no free address") }, "\(refused.map(\.stderr))")
            let addresses = (0..<6).compactMap { endpoint(host, "c\($0)")?["address"] as? String }
            #expect(Set(addresses) == Set((2...6).map { "10.89.40.\($0)" }), "\(addresses)")
        }
    }
}
