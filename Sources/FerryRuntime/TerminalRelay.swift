import FerrySystem

#if canImport(Glibc)
    import Glibc
#endif

/// Relays between this process's stdio and a container's terminal (its master), for
/// `ferry exec -t`: output to our stdout, our stdin (with `input`) to the terminal, and
/// each resize of our terminal (SIGWINCH) to the container's. Our terminal is raw while
/// our keys go to the container, and put back however this returns.
enum TerminalRelay {
    /// `ferry attach`: our stdin (raw) goes to the supervisor's socket as input frames,
    /// watched for the detach keys; resizes as resize frames; output back to our
    /// stdout. Returns true when the user detached, false when the container's terminal
    /// closed.
    static func attach(socket: borrowing OwnedFD, detachKeys: DetachKeys) -> Bool {
        let userTerminal = Terminal.isTerminal(0)
        let rawMode = RawTerminalMode(0, enabled: true)
        let resizedRaw = userTerminal ? (try? WindowChangeSignal.install()) ?? -1 : -1
        if userTerminal, let size = try? Terminal.windowSize(0) { try? socket.writeAll(AttachFrame.resize(size).encoded) }
        var matcher = DetachKeyMatcher(detachKeys)
        var inputOpen = true
        var detached = false
        var buffer = [UInt8](repeating: 0, count: 16384)
        loop: while true {
            var fds = [pollfd(fd: socket.raw, events: Int16(POLLIN), revents: 0)]
            if inputOpen { fds.append(pollfd(fd: 0, events: Int16(POLLIN), revents: 0)) }
            if resizedRaw >= 0 { fds.append(pollfd(fd: resizedRaw, events: Int16(POLLIN), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            for entry in fds where entry.revents != 0 {
                if entry.fd == resizedRaw {
                    WindowChangeSignal.drain()
                    if let size = try? Terminal.windowSize(0) { try? socket.writeAll(AttachFrame.resize(size).encoded) }
                    continue
                }
                let n = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                if n < 0, errno == EINTR || errno == EAGAIN { continue }
                if entry.fd == 0 {
                    guard n > 0 else {
                        inputOpen = false
                        continue
                    }
                    let (forward, detach) = matcher.feed(buffer[0..<n])
                    if !forward.isEmpty { try? socket.writeAll(AttachFrame.input(forward).encoded) }
                    if detach {
                        detached = true
                        break loop
                    }
                    continue
                }
                if n <= 0 { break loop }
                let output = OwnedFD(adopting: 1)
                try? output.writeAll(buffer[0..<n])
                _ = output.take()
            }
        }
        _ = consume rawMode
        return detached
    }

    static func run(master: borrowing OwnedFD, input: Bool) {
        let userTerminal = Terminal.isTerminal(0)
        if userTerminal, let size = try? Terminal.windowSize(0) { try? Terminal.setWindowSize(master.raw, size) }
        let rawMode = RawTerminalMode(0, enabled: input)
        let resizedRaw = userTerminal ? (try? WindowChangeSignal.install()) ?? -1 : -1
        var inputOpen = input
        var buffer = [UInt8](repeating: 0, count: 16384)
        loop: while true {
            var fds = [pollfd(fd: master.raw, events: Int16(POLLIN), revents: 0)]
            if inputOpen { fds.append(pollfd(fd: 0, events: Int16(POLLIN), revents: 0)) }
            if resizedRaw >= 0 { fds.append(pollfd(fd: resizedRaw, events: Int16(POLLIN), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            for entry in fds where entry.revents != 0 {
                if entry.fd == resizedRaw {
                    WindowChangeSignal.drain()
                    if let size = try? Terminal.windowSize(0) { try? Terminal.setWindowSize(master.raw, size) }
                    continue
                }
                let n = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                if n < 0, errno == EINTR || errno == EAGAIN { continue }
                if entry.fd == 0 {
                    if n <= 0 {
                        inputOpen = false
                    } else {
                        try? master.writeAll(buffer[0..<n])
                    }
                    continue
                }
                // EIO: every slave is closed, the command and its children are gone.
                if n <= 0 { break loop }
                let output = OwnedFD(adopting: 1)
                try? output.writeAll(buffer[0..<n])
                _ = output.take()
            }
        }
        _ = consume rawMode
    }
}
