import CFerryLinux
import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A `ferry` command whose stdio is the slave of a pty pair this test opened, driven as a
/// user at a terminal would: type into the master, read the screen back from it.
final class TerminalSession {
    private var master: OwnedFD
    let pid: Int32
    private(set) var screen = ""

    init(_ arguments: [String], size: WindowSize = WindowSize(rows: 24, columns: 80)) throws {
        var pair = try OwnedPipe(pseudoTerminal: ())
        try Terminal.setWindowSize(pair.readEnd.raw, size)
        let environment = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        pid = try Processes.spawn(
            arguments[0], arguments: arguments, environment: environment,
            descriptors: [0: pair.writeEnd.raw, 1: pair.writeEnd.raw, 2: pair.writeEnd.raw])
        pair.writeEnd = try OwnedFD.open("/dev/null", O_WRONLY)
        master = pair.readEnd
    }

    func type(_ text: String) {
        try? master.writeAll(Array(text.utf8))
    }

    /// Reads until the screen contains `text` (after `from`), for at most `seconds`.
    @discardableResult
    func waitFor(_ text: String, seconds: Double = 15) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while !screen.contains(text), Date() < deadline {
            guard (try? master.waitReadable(timeout: .milliseconds(200))) == true else { continue }
            guard let bytes = try? master.read(upTo: 4096), !bytes.isEmpty else { break }
            screen += String(decoding: bytes, as: UTF8.self)
        }
        return screen.contains(text)
    }

    /// Resizes the terminal and, as a terminal emulator's SIGWINCH would, tells ferry
    /// (it runs without this terminal as its controlling one, so the kernel does not).
    func resize(_ size: WindowSize) throws {
        try Terminal.setWindowSize(master.raw, size)
        kill(pid, SIGWINCH)
    }

    /// The exit code, waiting at most `seconds`; nil (and killed) if still running.
    func exitCode(seconds: Double = 30) -> Int32? {
        if let code = try? Processes.wait(pid, timeout: .milliseconds(Int(seconds * 1000))) { return code }
        kill(pid, SIGKILL)
        _ = try? Processes.wait(pid, timeout: .seconds(10))
        return nil
    }
}

@Suite("Terminal", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct TerminalTests {
    @Test("run -it: the shell has a /dev/pts terminal, sees resizes, and ferry exits with its code")
    func runInteractive() throws {
        let host = Host("tty")
        defer { host.tearDown() }
        host.importBusybox()
        let session = try TerminalSession([Environment.ferryBinary, "--root", host.root, "run", "-it", "--name", "tty-it", "busybox:latest", "sh"])
        session.type("tty; echo marker-$((40+2))\r")
        #expect(session.waitFor("marker-42"), "screen: \(session.screen)")
        #expect(session.screen.contains("/dev/pts/"), "screen: \(session.screen)")
        session.type("stty size\r")
        #expect(session.waitFor("24 80"), "screen: \(session.screen)")
        try session.resize(WindowSize(rows: 33, columns: 101))
        usleep(200_000)
        session.type("stty size\r")
        #expect(session.waitFor("33 101"), "screen: \(session.screen)")
        session.type("exit 7\r")
        #expect(session.exitCode() == 7)
        #expect(host("logs", "tty-it").stdout.contains("marker-42"), "a -t container's output is in its log")
    }

    @Test("run -dit keeps the shell running; exec -it gets a terminal of its own")
    func detachedAndExec() throws {
        let host = Host("tty")
        defer { host.tearDown() }
        host.importBusybox()
        let run = host("run", "-dit", "--name", "tty-d", "busybox:latest", "sh")
        try #require(run.code == 0, "\(run.stderr)")
        usleep(500_000)
        #expect(host.status(of: "tty-d") == "running", "a shell on a terminal waits for input instead of exiting")
        let session = try TerminalSession([Environment.ferryBinary, "--root", host.root, "exec", "-it", "tty-d", "sh"])
        session.type("tty; echo exec-$((1+2))\r")
        #expect(session.waitFor("exec-3"), "screen: \(session.screen)")
        #expect(session.screen.contains("/dev/pts/"), "screen: \(session.screen)")
        session.type("exit 4\r")
        #expect(session.exitCode() == 4)
        // Without -t, exec keeps piping stdin.
        let piped = host("exec", "-i", "tty-d", "cat", input: "through a pipe\n")
        #expect(piped.stdout == "through a pipe\n")
        #expect(host("stop", "-t", "1", "tty-d").code == 0)
    }

    @Test("attach to a -dit shell answers; ctrl-p ctrl-q detaches and leaves it running")
    func attachAndDetach() throws {
        let host = Host("tty")
        defer { host.tearDown() }
        host.importBusybox()
        let run = host("run", "-dit", "--name", "tty-a", "busybox:latest", "sh")
        try #require(run.code == 0, "\(run.stderr)")
        let session = try TerminalSession([Environment.ferryBinary, "--root", host.root, "attach", "tty-a"])
        usleep(300_000)
        session.type("echo attached-$((2+3))\r")
        #expect(session.waitFor("attached-5"), "screen: \(session.screen)")
        session.type("\u{10}\u{11}")
        #expect(session.exitCode(seconds: 10) == 0, "detached")
        #expect(host.status(of: "tty-a") == "running")
        // Attached again, `exit` ends the container and attach returns its code.
        let again = try TerminalSession([Environment.ferryBinary, "--root", host.root, "attach", "tty-a"])
        usleep(300_000)
        again.type("exit 5\r")
        #expect(again.exitCode() == 5)
        #expect(host.eventually { host.status(of: "tty-a") == "exited" })
    }
}
