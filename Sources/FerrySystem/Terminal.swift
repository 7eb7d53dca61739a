import CFerryLinux
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A terminal's size in character cells.
public struct WindowSize: Equatable, Sendable {
    public var rows: UInt16
    public var columns: UInt16

    public init(rows: UInt16, columns: UInt16) {
        self.rows = rows
        self.columns = columns
    }
}

/// Terminal calls, each wrapped once.
public enum Terminal {
    /// `isatty(3)`.
    public static func isTerminal(_ fd: Int32) -> Bool {
        isatty(fd) == 1
    }

    /// The window size of the terminal `fd` (TIOCGWINSZ).
    public static func windowSize(_ fd: Int32) throws(Errno) -> WindowSize {
        var rows: UInt16 = 0
        var columns: UInt16 = 0
        _ = try retryingSyscall { ferry_get_window_size(fd, &rows, &columns) }
        return WindowSize(rows: rows, columns: columns)
    }

    /// Sets the window size of the terminal `fd` (TIOCSWINSZ).
    public static func setWindowSize(_ fd: Int32, _ size: WindowSize) throws(Errno) {
        _ = try retryingSyscall { ferry_set_window_size(fd, size.rows, size.columns) }
    }
}

/// The user's terminal in raw mode (`cfmakeraw(3)`) for as long as this value lives: every
/// key, Ctrl-C included, goes to the container's terminal, which does its own line
/// editing and signals. The saved settings are put back in `deinit`, so an error that
/// unwinds past the owner restores the terminal too.
public struct RawTerminalMode: ~Copyable {
    private let fd: Int32
    /// nil: raw mode was not asked for, or `fd` is not a terminal; nothing to put back.
    private let saved: termios?

    /// Saves the settings of `fd` and switches it to raw mode, if `enabled` and `fd` is a
    /// terminal; otherwise does nothing.
    public init(_ fd: Int32, enabled: Bool) {
        self.fd = fd
        var settings = termios()
        guard enabled, isatty(fd) == 1, (try? retryingSyscall({ tcgetattr(fd, &settings) })) != nil else {
            saved = nil
            return
        }
        let original = settings
        cfmakeraw(&settings)
        saved = (try? retryingSyscall({ tcsetattr(fd, TCSADRAIN, &settings) })) != nil ? original : nil
    }

    deinit {
        guard var settings = saved else { return }
        _ = tcsetattr(fd, TCSADRAIN, &settings)
    }
}

/// Turns SIGWINCH into a readable byte on a pipe: a poll loop on any thread sees a
/// resize, whichever thread the kernel delivered the signal to. The pipe lives as long
/// as the process (one handler per process).
public enum WindowChangeSignal {
    nonisolated(unsafe) private static var writeEnd: Int32 = -1
    nonisolated(unsafe) private static var readEnd: Int32 = -1

    /// Installs the handler (once); returns the pipe's non-blocking read end to poll.
    public static func install() throws(Errno) -> Int32 {
        if readEnd >= 0 { return readEnd }
        let pipe = try OwnedPipe()
        try pipe.readEnd.setNonBlocking(true)
        try pipe.writeEnd.setNonBlocking(true)
        writeEnd = pipe.writeEnd.take()
        readEnd = pipe.readEnd.take()
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in
            // write(2) is async-signal-safe; a full pipe already says "resized".
            var byte: UInt8 = 1
            _ = write(WindowChangeSignal.writeEnd, &byte, 1)
        }
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART
        sigaction(SIGWINCH, &action, nil)
        return readEnd
    }

    /// Drains the pipe after poll said it is readable.
    public static func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while buffer.withUnsafeMutableBytes({ read(readEnd, $0.baseAddress, $0.count) }) > 0 {}
    }
}

/// A connected pair of Unix stream sockets (`socketpair(2)`), both ends close-on-exec.
@frozen
public struct SocketPair: ~Copyable {
    public var first: OwnedFD
    public var second: OwnedFD

    public init() throws(Errno) {
        var pair: [Int32] = [-1, -1]
        _ = try retryingSyscall { socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) }
        first = OwnedFD(adopting: pair[0])
        second = OwnedFD(adopting: pair[1])
    }
}
