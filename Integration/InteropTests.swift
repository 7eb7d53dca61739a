import FerrySystem
import FerryTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The listing of an export as GNU tar gives it ("drwx------ 0/0 0 DATE TIME checkpoint/");
/// tar detects the compression from the content.
func archiveListing(_ path: String) -> [String] {
    Command.run(["/bin/tar", "-tvf", path, "--numeric-owner"]).stdout.split(separator: "\n").map(String.init)
}

/// One member of an export, read with tar (not Ferry's reader): what other tools see.
func archiveMember(_ path: String, _ name: String) -> Data? {
    let result = Command.run(["/bin/tar", "-xOf", path, name])
    return result.code == 0 ? Data(result.stdout.utf8) : nil
}

@Suite("Interoperability", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct InteropTests {
    /// What checkpointctl (show, inspect --ps-tree/--all, memparse) reads from an archive,
    /// from its source: a `checkpoint/` directory entry (it refuses an archive without
    /// one), config.dump's id, name, image, runtime and times, spec.dump's
    /// `io.container.manager` annotation (by which it takes the name from config.dump),
    /// network.status, stats-dump and CRIU's images.
    static func expectCheckpointctlLayout(_ archive: String, name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let listing = archiveListing(archive)
        let names = listing.compactMap { $0.split(separator: " ").last.map(String.init) }
        let directory = listing.filter { $0.hasSuffix(" checkpoint/") }
        #expect(directory.count == 1 && directory.first?.hasPrefix("d") == true, "\(listing)", sourceLocation: sourceLocation)
        let firstImage = names.firstIndex { $0.hasPrefix("checkpoint/") && $0 != "checkpoint/" }
        #expect(names.firstIndex(of: "checkpoint/").map { $0 < (firstImage ?? 0) } == true, "\(names)", sourceLocation: sourceLocation)
        for required in ["config.dump", "spec.dump", "network.status", "stats-dump", "rootfs-diff.tar", "checkpoint/pstree.img", "checkpoint/files.img"] {
            #expect(names.contains(required), "\(required) missing: \(names)", sourceLocation: sourceLocation)
        }
        for prefix in ["core-", "mm-", "pagemap-", "pages-", "fs-", "ids-", "fdinfo-"] {
            #expect(names.contains { $0.hasPrefix("checkpoint/\(prefix)") }, "no checkpoint/\(prefix)*: \(names)", sourceLocation: sourceLocation)
        }

        let config = try #require(try archiveMember(archive, "config.dump").flatMap { try JSONSerialization.jsonObject(with: $0) as? [String: Any] })
        #expect(config["name"] as? String == name, "\(config)", sourceLocation: sourceLocation)
        #expect((config["id"] as? String)?.count == 64, "\(config)", sourceLocation: sourceLocation)
        #expect(config["rootfsImageName"] as? String == "busybox:latest", "\(config)", sourceLocation: sourceLocation)
        #expect(config["runtime"] as? String == "ferry", "\(config)", sourceLocation: sourceLocation)
        // RFC 3339, as Go's time.Time decodes it.
        for key in ["createdTime", "checkpointedTime"] {
            let text = config[key] as? String ?? ""
            #expect(ISO8601DateFormatter().date(from: text) != nil, "\(key): \(config)", sourceLocation: sourceLocation)
        }
        let spec = try #require(try archiveMember(archive, "spec.dump").flatMap { try JSONSerialization.jsonObject(with: $0) as? [String: Any] })
        #expect((spec["annotations"] as? [String: String])?["io.container.manager"] == "libpod", "\(spec)", sourceLocation: sourceLocation)
        #expect(!((spec["mounts"] as? [Any]) ?? []).isEmpty, sourceLocation: sourceLocation)
    }

    @Test(
        "both export writers (streamed zstd, two-pass gzip and --leave-running) write the layout checkpointctl reads, and the archive still imports",
        arguments: [["--compress", "zstd"], ["--compress", "gzip"], ["--leave-running"]])
    func checkpointctlLayout(flags: [String]) throws {
        try withHosts { a, b in
            a.importBusybox()
            b.importBusybox()
            #expect(a("run", "-d", "--name", "ctl", "busybox:latest", "sh", "-c", counterScript).code == 0)
            #expect(a.eventually { (a.counter("ctl") ?? 0) >= 2 })
            let archive = "\(a.root)/ctl.tar"
            let checkpoint = a.ferry(["checkpoint", "--export", archive] + flags + ["ctl"])
            try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
            try Self.expectCheckpointctlLayout(archive, name: "ctl")
            // A container without a bridge network: podman's "null".
            #expect(archiveMember(archive, "network.status").map { String(decoding: $0, as: UTF8.self) } == "null")
            // Ferry's own reader skips the directory entry and reads the rest.
            let inspect = a("archive", "inspect", archive)
            #expect(inspect.code == 0, "\(inspect.stderr)")
            let restore = b("restore", "--import", archive)
            #expect(restore.code == 0, "\(restore.stderr)")
            #expect(b.eventually { (b.counter("ctl") ?? 0) >= 3 })
        }
    }

    @Test("a bridge container's network.status gives its network, interface, address with prefix, gateway and MAC as podman's does")
    func networkStatus() throws {
        try withTestNamespace("interop") { ns in
            let host = Host("interop", prefix: inNetwork(ns))
            defer { host.tearDown() }
            host.importBusybox()
            try #require(host("network", "create", "--subnet", "10.89.41.0/24", "interopnet").code == 0)
            defer { host("network", "rm", "interopnet") }
            let run = host(
                "run", "-d", "--name", "br", "--network", "interopnet", "--ip", "10.89.41.7", "--mac-address", "02:42:0a:59:29:07", "busybox:latest", "sleep",
                "600")
            try #require(run.code == 0, "\(run.stderr)")
            let archive = "\(host.root)/br.tar.zst"
            let checkpoint = host("checkpoint", "--export", archive, "br")
            try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
            try Self.expectCheckpointctlLayout(archive, name: "br")
            let status = try #require(try archiveMember(archive, "network.status").flatMap { try JSONSerialization.jsonObject(with: $0) as? [String: Any] })
            let interface = ((status["interopnet"] as? [String: Any])?["interfaces"] as? [String: Any])?["eth0"] as? [String: Any]
            #expect(interface?["mac_address"] as? String == "02:42:0a:59:29:07", "\(status)")
            let subnet = (interface?["subnets"] as? [[String: Any]])?.first
            #expect(subnet?["ipnet"] as? String == "10.89.41.7/24", "\(status)")
            #expect(subnet?["gateway"] as? String == "10.89.41.1", "\(status)")
        }
    }

    /// A counter that holds a lock on /tmp/lock (util-linux's flock, from the host's /usr
    /// in the workload image, keeps it while its command runs): CRIU refuses to dump it
    /// without --file-locks.
    static let lockingCounter = ["-v", "/usr:/usr:ro", "workload:1", "flock", "/tmp/lock", "sh", "-c", counterScript]

    @Test(
        "checkpoint --all takes the running containers and goes on past one that fails; restore --all brings back the checkpointed ones; stopped ones stay stopped; --keep keeps a failed dump's images"
    )
    func allContainers() throws {
        let host = Host("interop-all")
        defer { host.tearDown() }
        host.importBusybox()
        host.importWorkloadImage()
        for name in ["one", "two"] {
            #expect(host("run", "-d", "--name", name, "busybox:latest", "sh", "-c", counterScript).code == 0)
        }
        #expect(host.ferry(["run", "-d", "--name", "locker"] + Self.lockingCounter).code == 0)
        #expect(host("run", "--name", "done", "busybox:latest", "true").code == 0)
        #expect(host.eventually { ["one", "two", "locker"].allSatisfy { (host.counter($0) ?? 0) >= 3 } })
        let checkpointTwo = host("checkpoint", "--tcp-established", "two")
        try #require(checkpointTwo.code == 0, "\(checkpointTwo.stderr)")

        // Only the running ones; the failure is reported, and the exit code says so.
        let all = host("checkpoint", "--all")
        #expect(all.code == 125, "\(all)")
        #expect(all.stdout.split(separator: "\n") == ["one"], "\(all.stdout)")
        let errors = all.stderr.split(separator: "\n").map(String.init)
        #expect(errors.count == 2 && errors.first?.contains("'locker'") == true, "\(all.stderr)")
        #expect(errors.last == "Error: 1 of 2 containers failed", "\(all.stderr)")
        #expect(host.status(of: "one") == "checkpointed" && host.status(of: "two") == "checkpointed")
        #expect(host.status(of: "locker") == "running" && host.status(of: "done") == "exited")
        let saved = host("logs", "one").stdout.split(separator: "\n").last.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        #expect(saved > 0)

        // --keep: the failed dump's images stay, where the message says; without it, not.
        let kept = host("checkpoint", "--keep", "locker")
        #expect(kept.code != 0)
        let marker = "--keep: the partial images are in "
        let keptPath = kept.stderr.range(of: marker).map { String(kept.stderr[$0.upperBound...].prefix { !")\n;".contains($0) }) } ?? ""
        #expect(!keptPath.isEmpty && FileManager.default.fileExists(atPath: keptPath), "\(kept.stderr)")
        let dropped = host("checkpoint", "locker")
        #expect(dropped.code != 0 && !dropped.stderr.contains(marker))
        #expect(!FileManager.default.fileExists(atPath: keptPath), "a dump without --keep removes its partial images")
        #expect(host.status(of: "locker") == "running")
        let locked = host("checkpoint", "--file-locks", "locker")
        try #require(locked.code == 0, "\(locked.stderr)")

        // --tcp-established refuses the checkpoints taken without it, and restores the rest.
        let strict = host("restore", "--all", "--tcp-established", "--format", "json")
        #expect(strict.code == 125)
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(strict.stdout.utf8)) as? [[String: Any]], "\(strict)")
        #expect(entries.map { $0["container"] as? String } == ["locker", "one", "two"])
        #expect(entries[0]["error"] as? String != nil && entries[1]["error"] as? String != nil, "\(entries)")
        #expect(entries[2]["status"] as? String == "running" && entries[2]["error"] == nil, "\(entries)")
        #expect(host.status(of: "two") == "running" && host.status(of: "one") == "checkpointed")

        let rest = host("restore", "--all", "--file-locks")
        #expect(rest.code == 0, "\(rest.stderr)")
        #expect(rest.stdout.split(separator: "\n") == ["locker", "one"])
        // Resumed, not restarted: the counter goes on from where it was.
        let resumed = host.counter("one") ?? 0
        #expect(resumed >= saved && resumed < saved + 30, "continued from \(saved), not restarted: \(resumed)")
        #expect(host.eventually { (host.counter("locker") ?? 0) > 3 })
        // The restored flock still holds its lock.
        #expect(host("exec", "locker", "flock", "-n", "/tmp/lock", "true").code != 0)
        #expect(host.status(of: "done") == "exited")
        // Nothing left to restore.
        let none = host("restore", "--all")
        #expect(none.code == 0 && none.stdout.isEmpty, "\(none)")
    }

    /// The words of a unit's `key=` line, as systemd splits it (the test's paths need no
    /// quoting), without the "-" that makes a failure non-fatal.
    static func unitCommand(_ unit: String, _ key: String) -> (words: [String], failureIgnored: Bool) {
        let line = unit.split(separator: "\n").first { $0.hasPrefix("\(key)=") }.map { String($0.dropFirst(key.count + 1)) } ?? ""
        let ignored = line.hasPrefix("-")
        return (line.drop { $0 == "-" }.split(separator: " ").map(String.init), ignored)
    }

    @Test(
        "a generated unit: systemd-analyze verify passes; ExecStop checkpoints the container and ExecStart brings it back with its state, or starts it afresh when it had stopped"
    )
    func systemdUnit() throws {
        let host = Host("interop-unit")
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "svc", "busybox:latest", "sh", "-c", counterScript).code == 0)
        #expect(host.eventually { (host.counter("svc") ?? 0) >= 5 })

        let directory = "\(host.root)/units"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        let written = Command.run(["/bin/sh", "-c", "cd \(directory) && exec \(Environment.ferryBinary) --root \(host.root) generate systemd --files svc"])
        #expect(written.code == 0 && written.stdout == "\(directory)/ferry-svc.service\n", "\(written)")
        let unit = try String(contentsOfFile: "\(directory)/ferry-svc.service", encoding: .utf8)
        let json = host("generate", "systemd", "--format", "json", "--all")
        #expect((try? JSONSerialization.jsonObject(with: Data(json.stdout.utf8))) as? [String: String] == ["ferry-svc.service": unit], "\(json)")
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") {
            let verify = Command.run(["/usr/bin/systemd-analyze", "verify", "\(directory)/ferry-svc.service"])
            #expect(verify.code == 0 && verify.stderr.isEmpty, "\(verify)")
        } else {
            // Not a failure: the machine has no systemd to check against.
            print("systemd-analyze is not installed here: the unit is not verified")
        }

        let start = Self.unitCommand(unit, "ExecStart")
        let stop = Self.unitCommand(unit, "ExecStop")
        #expect(!start.failureIgnored && stop.failureIgnored)
        // The host shuts down: the unit stops.
        let stopped = Command.run(stop.words)
        #expect(stopped.code == 0, "\(stopped)")
        #expect(host.status(of: "svc") == "checkpointed")
        let saved = host("logs", "svc").stdout.split(separator: "\n").last.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        // It boots: the unit starts, and the container resumes where it was.
        let started = Command.run(start.words)
        #expect(started.code == 0, "\(started)")
        #expect(host.status(of: "svc") == "running")
        let resumed = host.counter("svc") ?? 0
        #expect(resumed >= saved && resumed < saved + 30, "continued from \(saved), not restarted: \(resumed)")
        #expect(Self.firstTicks(host, "svc") == 1)
        // Started again while it runs (systemctl start of an active unit's command): as it is.
        #expect(Command.run(start.words).code == 0)
        #expect(host.status(of: "svc") == "running")

        // Stopped before the shutdown: ExecStop fails (ignored by the unit), and at boot
        // the container starts afresh.
        #expect(host("stop", "-t", "1", "svc").code == 0)
        #expect(Command.run(stop.words).code != 0)
        #expect(host.status(of: "svc") == "exited")
        #expect(Command.run(start.words).code == 0)
        #expect(host.status(of: "svc") == "running")
        // A fresh start counts from 1 again (a resumed one did not).
        #expect(host.eventually { Self.firstTicks(host, "svc") == 2 }, "\(host("logs", "svc").stdout.suffix(200))")
    }

    /// How many times the container's counter started: its "tick 1" lines.
    static func firstTicks(_ host: Host, _ name: String) -> Int {
        host("logs", name).stdout.split(separator: "\n").filter { $0 == "tick 1" }.count
    }
}
