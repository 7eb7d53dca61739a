#if canImport(Glibc)
    import Glibc
#endif

/// Signal masks of the calling thread.
public enum Signals {
    /// The signals a terminal or a service manager sends to stop a command: Ctrl-C,
    /// Ctrl-\, a closed terminal, `kill` without a signal.
    public static let termination: [Int32] = [SIGINT, SIGQUIT, SIGHUP, SIGTERM]

    /// Runs `body` with `signals` blocked in the calling thread only (`pthread_sigmask`).
    ///
    /// A child forked or spawned from this thread starts with the same mask and keeps it
    /// across exec, so a helper started inside `body` (CRIU) does not die of a Ctrl-C
    /// meant for the command: the command's other threads still take the signal, and the
    /// command decides what to do once the helper is done.
    public static func withBlocked<T, E: Error>(_ signals: [Int32], _ body: () throws(E) -> T) throws(E) -> T {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        var previous = sigset_t()
        // Fails only for an invalid `how`, which this is not.
        pthread_sigmask(SIG_BLOCK, &set, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        return try body()
    }

    /// Runs `body` so that a write to a pipe whose reader is gone fails with EPIPE instead
    /// of killing the process: SIGPIPE is blocked in the calling thread, and one that
    /// `body` raised (a thread-directed signal, pending there) is discarded before the
    /// mask is restored. Unlike ignoring SIGPIPE, this changes nothing for children.
    public static func withoutBrokenPipeSignal<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGPIPE)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &set, &previous)
        defer {
            var none = timespec(tv_sec: 0, tv_nsec: 0)
            while sigtimedwait(&set, nil, &none) == SIGPIPE {}
            pthread_sigmask(SIG_SETMASK, &previous, nil)
        }
        return try body()
    }
}
