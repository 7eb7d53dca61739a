import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Relays between this process's stdio and a container's terminal: output to our
/// stdout, our stdin to the container, and each resize of our terminal (SIGWINCH) to the
/// container's. Our terminal is raw while our keys go to the container, and put back
/// however this returns.
enum TerminalRelay {
    /// `ferry attach`: our stdin (raw) goes to the supervisor's socket as input frames,
    /// watched for the detach keys; resizes as resize frames; output back to our
    /// stdout. Returns true when the user detached, false when the container's terminal
    /// closed.
    static func attach(socket: borrowing OwnedFD, detachKeys: DetachKeys) -> Bool {
        var matcher = DetachKeyMatcher(detachKeys)
        return relay(
            peer: socket, input: true,
            resize: { size in try? socket.writeAll(AttachFrame.resize(size).encoded) },
            typed: { keys in
                let (forward, detach) = matcher.feed(keys)
                if !forward.isEmpty { try? socket.writeAll(AttachFrame.input(forward).encoded) }
                return detach
            })
    }

    /// `ferry exec -t`: the terminal's master directly; our stdin only with `input`.
    static func run(master: borrowing OwnedFD, input: Bool) {
        _ = relay(
            peer: master, input: input,
            resize: { size in try? Terminal.setWindowSize(master.raw, size) },
            typed: { keys in
                try? master.writeAll(keys)
                return false
            })
    }

    /// The loop both share: `peer`'s output to our stdout until it ends (EOF, or EIO once
    /// every slave is closed and the command and its children are gone); our stdin (with
    /// `input`) to `typed`, which returns true to stop; our terminal's size to `resize`,
    /// now and at each SIGWINCH. Returns whether `typed` stopped it.
    private static func relay(
        peer: borrowing OwnedFD, input: Bool, resize: (WindowSize) -> Void, typed: (ArraySlice<UInt8>) -> Bool
    ) -> Bool {
        let userTerminal = Terminal.isTerminal(0)
        if userTerminal, let size = try? Terminal.windowSize(0) { resize(size) }
        let rawMode = RawTerminalMode(0, enabled: input)
        let resized = userTerminal ? (try? WindowChangeSignal.install()) ?? -1 : -1
        var inputOpen = input
        var stopped = false
        var buffer = [UInt8](repeating: 0, count: 16384)
        loop: while true {
            var fds = [pollfd(fd: peer.raw, events: Int16(POLLIN), revents: 0)]
            if inputOpen { fds.append(pollfd(fd: 0, events: Int16(POLLIN), revents: 0)) }
            if resized >= 0 { fds.append(pollfd(fd: resized, events: Int16(POLLIN), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            for entry in fds where entry.revents != 0 {
                if entry.fd == resized {
                    WindowChangeSignal.drain()
                    if let size = try? Terminal.windowSize(0) { resize(size) }
                    continue
                }
                let n = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                if n < 0, errno == EINTR || errno == EAGAIN { continue }
                if entry.fd == 0 {
                    if n <= 0 {
                        inputOpen = false
                    } else if typed(buffer[0..<n]) {
                        stopped = true
                        break loop
                    }
                    continue
                }
                if n <= 0 { break loop }
                _ = try? FileDescriptor.standardOutput.writeAll(buffer[0..<n])
            }
        }
        _ = consume rawMode
        return stopped
    }
}
