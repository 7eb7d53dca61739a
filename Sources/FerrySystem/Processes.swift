import CFerryLinux
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Process helpers: signals, liveness with protection against pid reuse, waiting.
public enum Processes {
    /// `kill(2)`.
    public static func signal(_ pid: Int32, _ signal: Int32) throws(Errno) {
        _ = try syscallResult { Glibc.kill(pid, signal) }
    }

    /// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
    /// Recorded with a pid so that a later check can tell the same process from a new
    /// one that reused the number.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard let text = try? Files.readString("/proc/\(pid)/stat"),
            let close = text.lastIndex(of: ")")
        else { return nil }
        // Fields after the command (which may contain spaces) start at field 3.
        let rest = text[text.index(after: close)...].split(separator: " ")
        guard rest.count > 19 else { return nil }
        return UInt64(rest[19])
    }

    /// The process state letter (R, S, D, Z, T...) from /proc/PID/stat.
    public static func state(of pid: Int32) -> Character? {
        guard let text = try? Files.readString("/proc/\(pid)/stat"),
            let close = text.lastIndex(of: ")")
        else { return nil }
        return text[text.index(after: close)...].split(separator: " ").first?.first
    }

    /// True when `pid` exists, is not a zombie, and (if given) started at `startTime`.
    public static func isAlive(_ pid: Int32, startTime expected: UInt64?) -> Bool {
        guard pid > 0, let actual = startTime(of: pid) else { return false }
        if let expected, expected != actual { return false }
        return state(of: pid) != "Z"
    }

    /// `waitpid(2)` for one child; returns the exit status decoded as a shell would:
    /// the exit code, or 128 + the signal number.
    public static func wait(_ pid: Int32) throws(Errno) -> Int32 {
        var status: Int32 = 0
        _ = try retryingSyscall { waitpid(pid, &status, 0) }
        return decode(status: status)
    }

    /// `waitpid(2)` for one child, for at most `timeout`: its exit status decoded as by
    /// `wait(_:)`, or nil if it is still running then (it is not reaped).
    public static func wait(_ pid: Int32, timeout: Duration) throws(Errno) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while true {
            var status: Int32 = 0
            if try retryingSyscall({ waitpid(pid, &status, WNOHANG) }) == pid { return decode(status: status) }
            if ContinuousClock.now >= deadline { return nil }
            usleep(10_000)
        }
    }

    public static func decode(status: Int32) -> Int32 {
        let signal = status & 0x7f
        if signal == 0 { return (status >> 8) & 0xff }
        return 128 + signal
    }

    /// The path of the running executable, for re-executing ourselves as a supervisor.
    public static func currentExecutable() throws(SystemError) -> String {
        try link("/proc/self/exe")
    }

    /// `readlink(2)` of a /proc link ("/proc/PID/ns/net" reads "net:[INODE]").
    public static func link(_ path: String) throws(SystemError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buffer, buffer.count - 1)
        if n < 0 { throw Errno(rawValue: errno).with("readlink", path: path) }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Signal numbers by name, as `kill -s` accepts them (with or without SIG, or a number).
    public static func signalNumber(_ name: String) -> Int32? {
        if let number = Int32(name), number > 0, number < 65 { return number }
        var upper = name.uppercased()
        if upper.hasPrefix("SIG") { upper.removeFirst(3) }
        let table: [String: Int32] = [
            "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "ILL": SIGILL, "TRAP": SIGTRAP,
            "ABRT": SIGABRT, "BUS": SIGBUS, "FPE": SIGFPE, "KILL": SIGKILL, "USR1": SIGUSR1,
            "SEGV": SIGSEGV, "USR2": SIGUSR2, "PIPE": SIGPIPE, "ALRM": SIGALRM, "TERM": SIGTERM,
            "CHLD": SIGCHLD, "CONT": SIGCONT, "STOP": SIGSTOP, "TSTP": SIGTSTP, "TTIN": SIGTTIN,
            "TTOU": SIGTTOU, "URG": SIGURG, "XCPU": SIGXCPU, "XFSZ": SIGXFSZ, "VTALRM": SIGVTALRM,
            "PROF": SIGPROF, "WINCH": SIGWINCH, "IO": SIGIO, "PWR": SIGPWR, "SYS": SIGSYS,
        ]
        return table[upper]
    }
}

extension Processes {
    /// Starts `path` with `arguments` (argv[0] included) via posix_spawn. `descriptors`
    /// maps child fd numbers to the parent's descriptors to duplicate there; everything
    /// else the parent opened is close-on-exec and stays behind.
    ///
    /// The child starts with exactly `blockedSignals` blocked and the default action for
    /// the termination signals and SIGPIPE, whatever this thread blocks or this process
    /// ignores: a child must not inherit a mask or an ignored SIGPIPE by accident.
    public static func spawn(
        _ path: String, arguments: [String], environment: [String], descriptors: [Int32: Int32], blockedSignals: [Int32] = []
    ) throws(SystemError) -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, source) in descriptors.sorted(by: { $0.key < $1.key }) {
            posix_spawn_file_actions_adddup2(&actions, source, target)
        }
        // Nothing else leaks in, even a descriptor some library left inheritable.
        ferry_spawn_actions_closefrom(&actions, (descriptors.keys.max() ?? 2) + 1)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var mask = sigset_t()
        sigemptyset(&mask)
        for signal in blockedSignals { sigaddset(&mask, signal) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in Signals.termination + [SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &mask)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
        if rc != 0 { throw Errno(rawValue: rc).with("posix_spawn", path: path) }
        return pid
    }
}

extension Processes {
    /// A duplicate in this process of descriptor `fd` of process `pid` (pidfd_open and
    /// pidfd_getfd: needs ptrace access to it, which root has).
    public static func duplicateDescriptor(_ fd: Int32, of pid: Int32) throws(Errno) -> OwnedFD {
        let pidfd = OwnedFD(adopting: try retryingSyscall { ferry_pidfd_open(pid) })
        return OwnedFD(adopting: try retryingSyscall { ferry_pidfd_getfd(pidfd.raw, fd) })
    }

    /// The descriptors of `pid` that are sockets, with each socket's inode (what
    /// /proc/PID/fd/N reads as "socket:[INODE]"); none if the process is gone.
    public static func sockets(of pid: Int32) -> [(fd: Int32, inode: UInt64)] {
        guard let names = try? Files.listDirectory("/proc/\(pid)/fd") else { return [] }
        return names.compactMap { name in
            guard let fd = Int32(name), let target = try? link("/proc/\(pid)/fd/\(name)"),
                target.hasPrefix("socket:["), target.hasSuffix("]"),
                let inode = UInt64(target.dropFirst("socket:[".count).dropLast())
            else { return nil }
            return (fd, inode)
        }
    }
}

extension Processes {
    /// Runs a short host tool (iptables...) found in the usual system directories, with
    /// no input, and returns its exit status and what it wrote to stdout and stderr.
    /// `timeout` bounds the wait; a tool still running then is killed.
    public static func runTool(_ arguments: [String], timeout: Duration = .seconds(30)) throws(SystemError) -> (status: Int32, output: String) {
        guard let name = arguments.first else { throw Errno.invalidArgument.with("run", path: "(no command)") }
        let directories = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        let candidates: [String] = directories.map { directory in directory + "/" + name }
        guard let path = candidates.first(where: { candidate in access(candidate, X_OK) == 0 }) else {
            throw Errno.noSuchFileOrDirectory.with("run", path: name)
        }
        let null: OwnedFD
        do throws(Errno) { null = try OwnedFD.open("/dev/null", O_RDONLY) } catch { throw error.with("open", path: "/dev/null") }
        let output: OwnedPipe
        do throws(Errno) { output = try OwnedPipe() } catch { throw error.with("pipe") }
        let pid = try spawn(
            path, arguments: arguments, environment: ["PATH=" + directories.joined(separator: ":"), "LC_ALL=C"],
            descriptors: [0: null.raw, 1: output.writeEnd.raw, 2: output.writeEnd.raw])
        let reader = output.readEnd
        _ = consume output.writeEnd
        // The tool's output is a few lines; reading to EOF ends when it exits.
        let bytes = (try? reader.readAll()) ?? []
        do throws(Errno) {
            guard let status = try wait(pid, timeout: timeout) else {
                try? signal(pid, SIGKILL)
                _ = try? wait(pid)
                throw Errno.timedOut
            }
            return (status, String(decoding: bytes, as: UTF8.self))
        } catch {
            throw error.with("run", path: name)
        }
    }
}
