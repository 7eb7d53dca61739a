#if canImport(Glibc)
    import Glibc
#endif

/// Ctrl-C, SIGTERM or SIGHUP during a checkpoint must not lose the container, leave it
/// frozen or leave a half-written export behind. While `guarding`, those signals only
/// raise a flag. CRIU is shielded from them (FerryCRIU starts it with them blocked): a
/// CRIU killed half-way could leave the tasks dead and the images incomplete. So the dump
/// ends as it would have, and the packing loop checks the flag between members: an
/// interrupted export takes the normal error path, which thaws, or restores in place a
/// container the dump stopped, and cleans up.
enum Interruption {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0

    static var requested: Bool { flag != 0 }

    static func guarding<T>(_ body: () throws -> T) rethrows -> T {
        var saved: [Int32: sigaction] = [:]
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { _ in Interruption.flag = 1 }
            sigemptyset(&action.sa_mask)
            var old = sigaction()
            sigaction(sig, &action, &old)
            saved[sig] = old
        }
        defer {
            for (sig, old) in saved {
                var previous = old
                sigaction(sig, &previous, nil)
            }
        }
        return try body()
    }
}
