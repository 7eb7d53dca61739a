import FerrySystem
import FerryTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The integration tests drive the real `ferry` binary as a user would, as root, on the
/// real kernel with real CRIU. Each test gets its own state root (its own "host") and
/// checks at the end that nothing is left: no mounts, cgroups or processes of that root.
enum Environment {
    static let isRoot = getuid() == 0

    static let packageRoot: String = {
        // Integration/Harness.swift -> package root
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path
    }()

    static let ferryBinary: String = {
        if let path = ProcessInfo.processInfo.environment["FERRY_BIN"] { return path }
        return "\(packageRoot)/.build/debug/ferry"
    }()

    /// Whether this process (root) holds CAP_SYS_RESOURCE (bit 24): some hosts' root
    /// does not, and CRIU then cannot read the rlimits of another user's task.
    static let rootHoldsSysResource: Bool = {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("CapEff:") }
        let mask = line.flatMap { UInt64($0.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16) } ?? 0
        return mask & (1 << 24) != 0
    }()

    /// A busybox rootfs directory, made once per test run.
    static let busyboxTree: String = {
        let dir = "/var/tmp/ferry-it-busybox"
        let result = Command.run(["/bin/bash", "\(packageRoot)/scripts/busybox-rootfs.sh", dir])
        precondition(result.code == 0, "cannot make the busybox rootfs: \(result.stderr)")
        return dir
    }()
}

struct CommandResult {
    var code: Int32
    var stdout: String
    var stderr: String
}

enum Command {
    /// Runs a command to completion, feeding `input` and collecting its output. A command
    /// still running after `timeout` is killed, and its result says so (code -1).
    ///
    /// posix_spawn and poll rather than Foundation's Process: the commands under test
    /// leave detached supervisors behind on purpose, and the runner must only wait for
    /// the command itself and its output pipes.
    /// With `stderrTerminal` the command's stderr is a pseudo-terminal (what a user at a
    /// terminal sees: progress displays), read back through its master side.
    @discardableResult
    static func run(_ arguments: [String], input: String? = nil, timeout: Duration = .seconds(300), stderrTerminal: Bool = false) -> CommandResult {
        let deadline = ContinuousClock.now + timeout
        func remainingMilliseconds() -> Int32 {
            let left = deadline - ContinuousClock.now
            return left <= .zero ? 0 : Int32(min(left.seconds * 1000 + 1, 60_000))
        }
        do {
            var stdout = try OwnedPipe()
            var stderr: OwnedPipe
            if stderrTerminal {
                stderr = try OwnedPipe(pseudoTerminal: ())
            } else {
                stderr = try OwnedPipe()
            }
            var stdin = try OwnedPipe()
            let environment = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
            let pid = try Processes.spawn(
                arguments[0], arguments: arguments, environment: environment,
                descriptors: [0: stdin.readEnd.raw, 1: stdout.writeEnd.raw, 2: stderr.writeEnd.raw]
            )
            // Drop our copies of the child's ends so EOF arrives when it is done.
            stdout.writeEnd = try OwnedFD.open("/dev/null", O_WRONLY)
            stderr.writeEnd = try OwnedFD.open("/dev/null", O_WRONLY)
            stdin.readEnd = try OwnedFD.open("/dev/null", O_RDONLY)
            if let input { try? stdin.writeEnd.writeAll(Array(input.utf8)) }
            stdin.writeEnd = try OwnedFD.open("/dev/null", O_WRONLY)

            var collected: [Int32: [UInt8]] = [stdout.readEnd.raw: [], stderr.readEnd.raw: []]
            var open = [stdout.readEnd.raw, stderr.readEnd.raw]
            var buffer = [UInt8](repeating: 0, count: 65536)
            while !open.isEmpty && ContinuousClock.now < deadline {
                var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                if poll(&fds, nfds_t(fds.count), remainingMilliseconds()) < 0 {
                    if errno == EINTR { continue }
                    break
                }
                for entry in fds where entry.revents != 0 {
                    let n = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                    if n > 0 {
                        collected[entry.fd, default: []] += buffer[0..<n]
                    } else if n == 0 || errno != EINTR {
                        open.removeAll { $0 == entry.fd }
                    }
                }
            }
            let output = String(decoding: collected[stdout.readEnd.raw] ?? [], as: UTF8.self)
            let errors = String(decoding: collected[stderr.readEnd.raw] ?? [], as: UTF8.self)
            let waitLeft = max(deadline - ContinuousClock.now, .milliseconds(100))
            guard let code = try Processes.wait(pid, timeout: waitLeft) else {
                try? Processes.signal(pid, SIGKILL)
                _ = try? Processes.wait(pid, timeout: .seconds(10))
                let message = "timed out after \(timeout), killed: \(arguments.joined(separator: " "))"
                return CommandResult(code: -1, stdout: output, stderr: errors + "\n" + message)
            }
            return CommandResult(code: code, stdout: output, stderr: errors)
        } catch {
            return CommandResult(code: -1, stdout: "", stderr: "\(error)")
        }
    }
}

/// One state root, i.e. one simulated host, with leak checks on teardown.
final class Host {
    let root: String
    private(set) var cgroupParent = ""
    /// Put before every ferry command: `inNetwork(NS)` runs this host in a test's
    /// network namespace, where its bridges and nftables rules then live.
    let prefix: [String]

    init(_ label: String = "host", prefix: [String] = []) {
        self.prefix = prefix
        root = "/var/tmp/ferry-it-\(label)-\(UUID().uuidString.prefix(8))"
        mkdir(root, 0o700)
        if let json = try? JSONSerialization.jsonObject(with: Data(ferry("check", "--format", "json").stdout.utf8)) as? [String: Any],
            let parent = json["cgroupParent"] as? String
        {
            cgroupParent = parent
        }
    }

    @discardableResult
    func ferry(_ arguments: String..., input: String? = nil) -> CommandResult {
        ferry(arguments, input: input)
    }

    @discardableResult
    func ferry(_ arguments: [String], input: String? = nil) -> CommandResult {
        Command.run(prefix + [Environment.ferryBinary, "--root", root] + arguments, input: input)
    }

    /// `ferry --root R <args>` with a pseudo-terminal as stderr.
    @discardableResult
    func ferry(terminal arguments: String...) -> CommandResult {
        Command.run([Environment.ferryBinary, "--root", root] + arguments, stderrTerminal: true)
    }

    /// `ferry --root R <args>`.
    @discardableResult
    func callAsFunction(_ arguments: String..., input: String? = nil) -> CommandResult {
        ferry(arguments, input: input)
    }

    /// Imports the busybox tree as busybox:latest.
    func importBusybox() {
        let result = self("image", "import", Environment.busyboxTree, "busybox:latest")
        #expect(result.code == 0, "image import failed: \(result.stderr)")
    }

    /// Waits until `condition` holds, for at most `seconds`.
    func eventually(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(50_000)
        }
        return condition()
    }

    func status(of name: String) -> String? {
        let result = self("ps", "-a", "--format", "json")
        guard let list = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] else { return nil }
        return list.first { ($0["name"] as? String) == name }?["status"] as? String
    }

    /// Processes named `name*` whose parent is a `ferry` of this root: e.g. the CRIU a
    /// checkpoint of this host started, never another test's (suites run in parallel).
    static func childProcesses(named name: String, root: String) -> [pid_t] {
        func field(_ file: String, of pid: String) -> String? {
            (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/\(file)"))).map { String(decoding: $0, as: UTF8.self) }
        }
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { Int32($0) != nil }
        return pids.compactMap { pid in
            guard let comm = field("comm", of: pid), comm.hasPrefix(name),
                let stat = field("stat", of: pid), let close = stat.lastIndex(of: ")")
            else { return nil }
            // stat: "pid (comm) state ppid ..."
            let rest = stat[stat.index(after: close)...].split(separator: " ")
            guard rest.count > 1, let parent = field("cmdline", of: String(rest[1])) else { return nil }
            return parent.split(separator: "\0").map(String.init).contains(root) ? Int32(pid) : nil
        }
    }

    /// Everything of this root that could leak: mounts, cgroups, processes.
    func leftovers() -> [String] {
        var found: [String] = []
        let mountinfo = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        found += mountinfo.split(separator: "\n").filter { $0.contains(root) }.map { "mount: \($0)" }
        if !cgroupParent.isEmpty {
            let hierarchies =
                ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []).map { "/sys/fs/cgroup/\($0)" } + ["/sys/fs/cgroup"]
            for hierarchy in hierarchies where FileManager.default.fileExists(atPath: "\(hierarchy)/\(cgroupParent)") {
                found.append("cgroup: \(hierarchy)/\(cgroupParent)")
            }
        }
        for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int(pid) != nil {
            guard let cmdline = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { continue }
            let text = String(decoding: cmdline.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            if text.contains(root), !text.contains("ferry-it-busybox") { found.append("process \(pid): \(text)") }
        }
        return found
    }

    /// Removes every container of this root, then checks nothing is left and deletes it.
    func tearDown(sourceLocation: SourceLocation = #_sourceLocation) {
        let list = self("ps", "-a", "--format", "json")
        if let entries = try? JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]] {
            for entry in entries {
                if let name = entry["name"] as? String { self("rm", "-f", name) }
            }
        }
        let clean = eventually(5) { leftovers().isEmpty }
        #expect(clean, "leftovers of \(root): \(leftovers())", sourceLocation: sourceLocation)
        _ = Command.run(["/bin/rm", "-rf", root])
    }
}

/// Two state roots ("hosts") for one test; both are torn down, and checked for
/// leftovers, afterwards.
func withHosts(_ body: (Host, Host) throws -> Void) rethrows {
    let a = Host("a")
    let b = Host("b")
    defer {
        a.tearDown()
        b.tearDown()
    }
    try body(a, b)
}

/// The pids of the processes, anywhere on the host, one of whose arguments is exactly
/// `argument`: a test's marker names its own copies of a workload.
func processes(withArgument argument: String) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap(Int32.init).filter { pid in
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return String(decoding: data, as: UTF8.self).split(separator: "\0").contains { $0 == argument }
    }
}

/// The roots among `processes(withArgument:)`: those whose parent does not carry the
/// argument too. A shell forks before it execs each command, and until the exec the child
/// has the shell's arguments; it belongs to its parent's copy, not to another one.
func copies(withArgument argument: String) -> [Int32] {
    let all = processes(withArgument: argument)
    let marked = Set(all)
    return all.filter { pid in
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("PPid:") }),
            let parent = Int32(line.dropFirst("PPid:".count).trimmingCharacters(in: .whitespaces))
        else { return true }
        return !marked.contains(parent)
    }
}
