import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// What a podman user types: podman's spellings of the checkpoint flags, unknown options
/// refused as such, and podman's exit codes.
@Suite("Podman CLI", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct PodmanCLITests {
    func stateDirectory(_ host: Host, _ name: String) -> String? {
        let inspect = host("inspect", name)
        let json = (try? JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [[String: Any]])?.first
        return json?["stateDirectory"] as? String
    }

    @Test("checkpoint -R -e -c -k and restore -i -n --tcp-established, as podman spells them")
    func checkpointFlags() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "c", "busybox:latest", "sh", "-c", counterScript).code == 0)
        #expect(host.eventually { (host.counter("c") ?? 0) >= 3 })
        let export = "\(host.root)/c.tar.gz"
        let checkpoint = host("checkpoint", "-R", "-e", export, "-c", "gzip", "-k", "c")
        #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
        #expect(host.status(of: "c") == "running", "-R leaves it running")
        #expect(FileManager.default.fileExists(atPath: export))
        // gzip's magic, not zstd's: -c was taken.
        let head = try #require(FileHandle(forReadingAtPath: export)).readData(ofLength: 2)
        #expect(Array(head) == [0x1f, 0x8b])
        let directory = try #require(stateDirectory(host, "c"))
        #expect(FileManager.default.fileExists(atPath: "\(directory)/dump.log"), "-k keeps CRIU's log")

        // The checkpoint was taken without --tcp-established: restoring with it is refused.
        let refused = host("restore", "-i", export, "-n", "c2", "--tcp-established")
        #expect(refused.code == 125)
        #expect(refused.stderr.contains("without --tcp-established"), "\(refused.stderr)")
        #expect(host.status(of: "c2") == nil)
        let imported = host("restore", "-i", export, "-n", "c2", "-k")
        #expect(imported.code == 0, "\(imported.stderr)")
        #expect(host.status(of: "c2") == "running")
        #expect(host("rm", "-f", "c2").code == 0)

        // In place: refused without TCP state, restored with it.
        #expect(host("checkpoint", "c").code == 0)
        let inPlace = host("restore", "--tcp-established", "c")
        #expect(inPlace.code == 125)
        #expect(inPlace.stderr.contains("without --tcp-established"), "\(inPlace.stderr)")
        #expect(host.status(of: "c") == "checkpointed")
        #expect(host("restore", "c").code == 0)
        #expect(host("checkpoint", "--tcp-established", "c").code == 0)
        let withTCP = host("restore", "--tcp-established", "c")
        #expect(withTCP.code == 0, "\(withTCP.stderr)")
        #expect(host.status(of: "c") == "running")
    }

    @Test("an option where the image goes is an unknown option; exit codes are podman's")
    func unknownOptionsAndExitCodes() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        let publish = host("run", "--expose", "80", "busybox:latest", "true")
        #expect(publish.code == 125)
        #expect(publish.stderr.contains("unknown option '--expose'"), "\(publish.stderr)")
        #expect(!publish.stderr.contains("invalid image name"))
        let list = try? JSONSerialization.jsonObject(with: Data(host("ps", "-a", "--format", "json").stdout.utf8)) as? [Any]
        #expect(list?.isEmpty == true, "a refused run creates no container")
        #expect(host("ps", "--bogus").code == 125)

        let missing = host("run", "--name", "nf", "busybox:latest", "/no/such/command")
        #expect(missing.code == 127, "\(missing.stderr)")
        let notExecutable = host("run", "--name", "nx", "busybox:latest", "/etc/passwd")
        #expect(notExecutable.code == 126, "\(notExecutable.stderr)")
        #expect(host("run", "--name", "own", "busybox:latest", "sh", "-c", "exit 42").code == 42)
        #expect(host("run", "-d", "--name", "dnf", "busybox:latest", "/no/such/command").code == 127)
        #expect(host("run", "-d", "--name", "dnx", "busybox:latest", "/etc/passwd").code == 126)
        #expect(host("run", "--name", "nosuchimage", "no-such-image:latest", "true").code == 125)

        #expect(host("run", "-d", "--name", "web", "busybox:latest", "sleep", "1000").code == 0)
        #expect(host("exec", "web", "sh", "-c", "exit 5").code == 5)
        #expect(host("exec", "web", "/no/such/command").code == 127)
        #expect(host("exec", "web", "/etc/passwd").code == 126)
        let execOption = host("exec", "-z", "web", "sh")
        #expect(execOption.code == 125)
        #expect(execOption.stderr.contains("unknown option '-z'"), "\(execOption.stderr)")

        #expect(host("rm", "-f", "no-such-container").code == 0, "rm -f of a missing container succeeds")
        let plain = host("rm", "no-such-container")
        #expect(plain.code == 125)
        #expect(plain.stderr.contains("no such container"))
    }

    func lastTick(_ host: Host, _ name: String) -> Int? {
        host("logs", name).stdout.split(separator: "\n").last.flatMap { Int($0.split(separator: " ").last ?? "") }
    }

    func pid(_ host: Host, _ name: String) -> Int? {
        let list = try? JSONSerialization.jsonObject(with: Data(host("ps", "-a", "--format", "json").stdout.utf8)) as? [[String: Any]]
        return list?.first { ($0["name"] as? String) == name }?["pid"] as? Int
    }

    @Test("pause and unpause freeze and thaw; rename, restart and the container group")
    func pauseRenameRestart() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "v", "busybox:latest", "sh", "-c", counterScript).code == 0)
        #expect(host.eventually { (lastTick(host, "v") ?? 0) >= 3 })

        let pause = host("pause", "v")
        #expect(pause.code == 0, "\(pause.stderr)")
        #expect(host.status(of: "v") == "paused")
        #expect(host("ps").stdout.contains("Paused"))
        let frozen = try #require(lastTick(host, "v"))
        usleep(600_000)
        #expect(lastTick(host, "v") == frozen, "a paused container does not run")
        let exec = host("exec", "v", "true")
        #expect(exec.code == 125 && exec.stderr.contains("paused"), "\(exec.stderr)")
        let checkpoint = host("checkpoint", "--leave-running", "v")
        #expect(checkpoint.code == 125 && checkpoint.stderr.contains("paused"), "\(checkpoint.stderr)")
        #expect(host("pause", "v").code == 125)
        #expect(host.status(of: "v") == "paused", "a refused checkpoint does not thaw it")

        #expect(host("unpause", "v").code == 0)
        #expect(host.status(of: "v") == "running")
        #expect(host.eventually { (lastTick(host, "v") ?? 0) > frozen + 2 })
        #expect(host("unpause", "v").code == 125)

        let rename = host("rename", "v", "w")
        #expect(rename.code == 0, "\(rename.stderr)")
        #expect(host.status(of: "v") == nil)
        #expect(host.status(of: "w") == "running")
        #expect(host("container", "ls").stdout.contains("w"))
        #expect(host("exec", "w", "cat", "/tmp/count").code == 0)
        #expect(host("container", "checkpoint", "-R", "w").code == 0)
        #expect(host.status(of: "w") == "running")

        let before = try #require(pid(host, "w"))
        let restart = host("restart", "-t", "1", "w")
        #expect(restart.code == 0, "\(restart.stderr)")
        #expect(host.status(of: "w") == "running")
        #expect(pid(host, "w") != before, "restart starts a new init")

        // A paused container stops: stopping ends the pause.
        #expect(host("pause", "w").code == 0)
        #expect(host("stop", "-t", "1", "w").code == 0)
        #expect(host.status(of: "w") == "exited")
    }

    @Test("wait prints the exit code; start runs an exited container again")
    func waitAndStart() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "e", "busybox:latest", "sh", "-c", "sleep 0.5; echo ran; exit 7").code == 0)
        let wait = host("wait", "e")
        #expect(wait.code == 0, "\(wait.stderr)")
        #expect(wait.stdout == "7\n")
        #expect(host.status(of: "e") == "exited")

        #expect(host("start", "e").code == 0)
        #expect(host("container", "wait", "--timeout", "30", "e").stdout == "7\n")
        #expect(host.eventually { host("logs", "e").stdout == "ran\nran\n" }, "\(host("logs", "e").stdout)")

        #expect(host("run", "-d", "--name", "long", "busybox:latest", "sleep", "1000").code == 0)
        let timeout = host("wait", "--timeout", "0.3", "long")
        #expect(timeout.code == 125 && timeout.stderr.contains("still runs"), "\(timeout.stderr)")
        #expect(host("start", "long").code == 0, "start of a running container is a no-op")
        #expect(host("wait", "no-such").code == 125)
    }

    @Test("ps -q -l --no-trunc --filter --format, inspect of several names as an array")
    func psAndInspect() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "--name", "done", "busybox:latest", "sh", "-c", "exit 4").code == 4)
        #expect(host("run", "-d", "--name", "web1", "busybox:latest", "sleep", "1000").code == 0)
        let started = host("run", "-d", "--name", "web2", "busybox:latest", "sleep", "1000")
        #expect(started.code == 0)
        let id = started.stdout.trimmingCharacters(in: .whitespacesAndNewlines)

        #expect(Set(host("ps", "-q").stdout.split(separator: "\n").map(String.init)).count == 2)
        #expect(host("ps", "-q", "--no-trunc", "-l").stdout == "\(id)\n")
        #expect(host("ps", "-l", "--format", "{{.Names}}").stdout == "web2\n")
        #expect(host("ps", "--filter", "status=exited", "--format", "{{.Names}} {{.ExitCode}}").stdout == "done 4\n")
        #expect(host("ps", "-a", "--filter", "name=web", "--format", "{{.Names}}").stdout == "web1\nweb2\n")
        #expect(host("pause", "web1").code == 0)
        #expect(host("ps", "--filter", "status=paused", "--format", "{{.Names}} {{.Status}}").stdout == "web1 Paused\n")
        #expect(host("unpause", "web1").code == 0)
        #expect(host("ps", "--format", "table {{.Names}}").stdout.hasPrefix("NAMES\n"))
        let badFilter = host("ps", "--filter", "colour=red")
        #expect(badFilter.code == 125 && badFilter.stderr.contains("invalid filter"))

        let inspect = host("inspect", "web1", "done")
        #expect(inspect.code == 0, "\(inspect.stderr)")
        let list = try #require(try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [[String: Any]])
        #expect(list.compactMap { $0["name"] as? String } == ["web1", "done"])
        #expect(host("inspect", "--format", "{{.Name}} {{.State}}", "web2", "done").stdout == "web2 running\ndone exited\n")
        let partly = host("inspect", "web1", "no-such")
        #expect(partly.code == 125 && partly.stderr.contains("no such container"))
        let found = try #require(try JSONSerialization.jsonObject(with: Data(partly.stdout.utf8)) as? [[String: Any]])
        #expect(found.count == 1, "the containers that exist are printed")
    }

    @Test("logs --tail, -t, --since and --until; a log without its index of times still reads")
    func logs() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "l", "busybox:latest", "sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; sleep 1.5; echo late").code == 0)
        #expect(host("wait", "--timeout", "30", "l").stdout == "0\n")

        #expect(host("logs", "--tail", "2", "l").stdout == "line 5\nlate\n")
        #expect(host("logs", "-n", "0", "l").stdout == "")
        let stamped = host("logs", "-t", "l").stdout.split(separator: "\n").map(String.init)
        #expect(stamped.count == 6)
        let times = stamped.compactMap { line -> Date? in
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            return line.split(separator: " ").first.flatMap { formatter.date(from: String($0)) }
        }
        #expect(times.count == 6, "\(stamped)")
        #expect(stamped.last?.hasSuffix(" late") == true)
        let first = try #require(times.first)
        let late = try #require(times.last)
        #expect(late.timeIntervalSince(first) >= 1.2, "the late line was written later: \(stamped)")
        #expect(abs(first.timeIntervalSinceNow) < 60)

        // Between the burst and the late line.
        let middle = String(format: "%.3f", first.timeIntervalSince1970 + 0.7)
        #expect(host("logs", "--since", middle, "l").stdout == "late\n")
        #expect(host("logs", "--until", middle, "l").stdout == "line 1\nline 2\nline 3\nline 4\nline 5\n")
        #expect(host("logs", "--since", "10m", "--tail", "1", "l").stdout == "late\n")
        #expect(host("logs", "--since", "soon", "l").code == 125)

        // A log an older Ferry wrote has no index: it prints, but cannot be dated.
        let directory = try #require(stateDirectory(host, "l"))
        #expect(unlink("\(directory)/container.log.times") == 0)
        #expect(host("logs", "l").stdout == "line 1\nline 2\nline 3\nline 4\nline 5\nlate\n")
        #expect(host("logs", "--tail", "1", "l").stdout == "late\n")
        let undated = host("logs", "-t", "l")
        #expect(undated.code == 125 && undated.stderr.contains("no timestamps"), "\(undated.stderr)")
    }

    @Test("logs -f -t follows with timestamps until the container exits")
    func followTimestamps() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "f", "busybox:latest", "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done").code == 0)
        let follow = host("logs", "-f", "-t", "f")
        #expect(follow.code == 0)
        let lines = follow.stdout.split(separator: "\n")
        #expect(lines.count == 3, "\(follow.stdout)")
        #expect(lines.allSatisfy { $0.contains("Z line ") }, "\(follow.stdout)")
    }
}
