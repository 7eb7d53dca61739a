import FerrySystem
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// An IP literal and a port: "192.0.2.7:7070", "[2001:db8::7]:7070".
///
/// Only literal addresses: name resolution would make where the container's memory goes
/// depend on DNS, and the orchestration can resolve names itself if it wants them.
public struct MigrationAddress: Sendable, Hashable, CustomStringConvertible {
    /// The address literal, IPv6 without brackets.
    public let host: String
    /// The TCP port.
    public let port: UInt16

    /// Checks that `host` is an IPv4 or IPv6 literal.
    public init(host: String, port: UInt16) throws(MigrationError) {
        guard !host.contains("%"), SocketAddress(host: host, port: port) != nil else {
            throw MigrationError(.invalidArgument, "'\(host)' is not an IPv4 or IPv6 address literal")
        }
        self.host = host
        self.port = port
    }

    /// Parses "ADDR:PORT", "[V6ADDR]:PORT", or a bare address when `defaultPort` is given.
    public init(parsing text: String, defaultPort: UInt16? = nil) throws(MigrationError) {
        func invalid(_ why: String) -> MigrationError {
            MigrationError(.invalidArgument, "invalid migration address '\(text)': \(why)")
        }
        var host = Substring(text)
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw invalid("missing ']'") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { throw invalid("expected ':PORT' after ']'") }
                portText = rest.dropFirst()
            }
        } else {
            let colons = text.filter { $0 == ":" }.count
            if colons > 1 { throw invalid("write an IPv6 address in brackets, as in [::1]:7070") }
            if let colon = text.firstIndex(of: ":") {
                host = text[..<colon]
                portText = text[text.index(after: colon)...]
            }
        }
        let port: UInt16
        if let portText {
            guard let value = UInt16(portText) else { throw invalid("the port must be a number from 0 to 65535") }
            port = value
        } else if let defaultPort {
            port = defaultPort
        } else {
            throw invalid("no port (expected ADDR:PORT or [V6ADDR]:PORT)")
        }
        guard !host.isEmpty else { throw invalid("no address") }
        do {
            try self.init(host: String(host), port: port)
        } catch {
            throw invalid("'\(host)' is not an IPv4 or IPv6 address literal")
        }
    }

    fileprivate init(_ address: SocketAddress) {
        let parts = address.hostAndPort
        host = parts?.host ?? "?"
        port = parts?.port ?? 0
    }

    /// True for an IPv6 address.
    public var isIPv6: Bool { host.contains(":") }

    /// "127.0.0.1:7070" or "[::1]:7070": what `init(parsing:)` reads back.
    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    fileprivate var socketAddress: SocketAddress {
        // Validated in init, so the conversion cannot fail here.
        SocketAddress(host: host, port: port) ?? SocketAddress()
    }
}

/// A TCP connection carrying a migration channel.
///
/// The socket is non-blocking; reads, writes and connect wait with poll(2) so that every
/// wait has a timeout. `close()` shuts the socket down, which wakes a thread blocked in
/// it; the descriptor is released when the transport is deinitialized.
public final class TCPTransport: MigrationTransport, @unchecked Sendable {
    /// Socket settings.
    public struct Options: Sendable {
        /// SO_SNDBUF and SO_RCVBUF, set before connecting or listening so that the window
        /// scale is negotiated for them. Setting them turns Linux's buffer autotuning off,
        /// so the default is generous: 4 MiB keeps 1 Gbit/s flowing at a 32 ms round trip.
        /// As root, SO_*BUFFORCE lifts net.core.[rw]mem_max; otherwise the kernel caps the
        /// size. nil leaves the kernel's autotuning alone.
        public var socketBufferSize: Int?

        public init(socketBufferSize: Int? = 4 * 1024 * 1024) {
            self.socketBufferSize = socketBufferSize
        }
    }

    /// The peer's "ADDR:PORT".
    public let peerName: String
    /// The peer's address.
    public let peerAddress: MigrationAddress
    private let fd: OwnedFD
    private let closed = Atomic<Bool>(false)

    fileprivate init(fd: consuming OwnedFD, peer: MigrationAddress) {
        self.fd = fd
        self.peerAddress = peer
        self.peerName = peer.description
    }

    /// Connects to `address`, failing with `.timedOut` when the connection is not
    /// established within `timeout`.
    public static func connect(to address: MigrationAddress, timeout: Duration, options: Options = Options()) throws(MigrationError) -> TCPTransport {
        let peer = address.description
        func failure(_ operation: String, _ code: Errno) -> MigrationError {
            MigrationError(.io(code), "cannot connect to \(peer): \(operation): \(code)", peer: peer)
        }
        let fd: OwnedFD
        do {
            fd = try Socket.stream(family: address.isIPv6 ? AF_INET6 : AF_INET)
        } catch {
            throw failure("socket", error)
        }
        configure(fd, options)
        let deadline = ContinuousClock.now + timeout
        do {
            try Socket.connect(fd, to: address.socketAddress)
        } catch {
            guard error == .nowInProgress || error == .interrupted else { throw failure("connect", error) }
            let ready: Int16
            do {
                ready = try Socket.poll(fd, events: Int16(POLLOUT), deadline: deadline)
            } catch {
                throw failure("poll", error)
            }
            if ready == 0 {
                throw MigrationError(.timedOut, "cannot connect to \(peer): no answer within \(describe(timeout))", peer: peer)
            }
            let status: Int32
            do {
                status = try Socket.option(fd, level: SOL_SOCKET, name: SO_ERROR)
            } catch {
                throw failure("getsockopt", error)
            }
            if status != 0 { throw failure("connect", Errno(rawValue: status)) }
        }
        return TCPTransport(fd: fd, peer: address)
    }

    /// Connects to `host` (an IP literal) and `port`.
    public static func connect(host: String, port: UInt16, timeout: Duration, options: Options = Options()) throws(MigrationError) -> TCPTransport {
        try connect(to: try MigrationAddress(host: host, port: port), timeout: timeout, options: options)
    }

    /// TCP_NODELAY (frames are whole messages: a small control message must not wait for
    /// Nagle) and the buffer sizes. Both are best effort: a socket without them still works.
    fileprivate static func configure(_ fd: borrowing OwnedFD, _ options: Options) {
        try? Socket.setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
        guard let size = options.socketBufferSize else { return }
        let value = Int32(clamping: size)
        for (force, plain) in [(SO_SNDBUFFORCE, SO_SNDBUF), (SO_RCVBUFFORCE, SO_RCVBUF)] {
            do {
                try Socket.setOption(fd, level: SOL_SOCKET, name: force, value: value)
            } catch {
                try? Socket.setOption(fd, level: SOL_SOCKET, name: plain, value: value)
            }
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?) throws(MigrationError) -> Int {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while true {
            if closed.load(ordering: .relaxed) { throw closedLocally() }
            do {
                return try Socket.receive(fd, buffer)
            } catch {
                switch error {
                case .resourceTemporarilyUnavailable, .wouldBlock:
                    break
                case .connectionReset:
                    throw MigrationError(.connectionClosed, "\(peerName) reset the connection", peer: peerName)
                default:
                    throw MigrationError(.io(error), "cannot receive from \(peerName)", peer: peerName, cause: error)
                }
            }
            if try wait(for: Int16(POLLIN), until: deadline) == 0 {
                throw MigrationError(.timedOut, "\(peerName) sent nothing for \(describe(timeout ?? .zero))", peer: peerName)
            }
        }
    }

    public func write(all buffer: UnsafeRawBufferPointer, timeout: Duration?) throws(MigrationError) {
        var offset = 0
        var deadline = timeout.map { ContinuousClock.now + $0 }
        while offset < buffer.count {
            if closed.load(ordering: .relaxed) { throw closedLocally() }
            do {
                offset += try Socket.send(fd, UnsafeRawBufferPointer(rebasing: buffer[offset...]))
                // Progress: the peer is reading, so the timeout starts again.
                deadline = timeout.map { ContinuousClock.now + $0 }
                continue
            } catch {
                switch error {
                case .resourceTemporarilyUnavailable, .wouldBlock:
                    break
                case .brokenPipe, .connectionReset:
                    throw MigrationError(.connectionClosed, "\(peerName) closed the connection", peer: peerName)
                default:
                    throw MigrationError(.io(error), "cannot send to \(peerName)", peer: peerName, cause: error)
                }
            }
            if try wait(for: Int16(POLLOUT), until: deadline) == 0 {
                throw MigrationError(.timedOut, "\(peerName) accepted nothing for \(describe(timeout ?? .zero))", peer: peerName)
            }
        }
    }

    public func close() {
        if closed.exchange(true, ordering: .relaxed) { return }
        Socket.shutdown(fd)
    }

    /// Tells the peer that nothing more will be written (its reads see the end of the
    /// stream); reading goes on.
    public func finishWriting() {
        _ = Glibc.shutdown(fd.raw, Int32(SHUT_WR))
    }

    private func wait(for events: Int16, until deadline: ContinuousClock.Instant?) throws(MigrationError) -> Int16 {
        do {
            return try Socket.poll(fd, events: events, deadline: deadline)
        } catch {
            throw MigrationError(.io(error), "cannot wait for \(peerName): poll", peer: peerName, cause: error)
        }
    }

    private func closedLocally() -> MigrationError {
        MigrationError(.connectionClosed, "the connection to \(peerName) was closed locally", peer: peerName)
    }
}

/// A listening TCP socket that accepts migration connections.
public final class TCPListener: @unchecked Sendable {
    /// The address actually bound: with port 0, the port the kernel picked.
    public let address: MigrationAddress
    private let fd: OwnedFD
    private let closed = Atomic<Bool>(false)

    /// Listens on `address` (SO_REUSEADDR, so a restarted server can bind at once).
    public init(address: MigrationAddress, backlog: Int32 = 8, options: TCPTransport.Options = TCPTransport.Options()) throws(MigrationError) {
        let name = address.description
        func failure(_ operation: String, _ code: Errno) -> MigrationError {
            MigrationError(.io(code), "cannot listen on \(name): \(operation): \(code)")
        }
        let fd: OwnedFD
        do {
            fd = try Socket.stream(family: address.isIPv6 ? AF_INET6 : AF_INET)
        } catch {
            throw failure("socket", error)
        }
        try? Socket.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
        // Accepted sockets inherit the buffer sizes, which must be set before the SYN.
        TCPTransport.configure(fd, options)
        let bound: SocketAddress
        do {
            try Socket.bind(fd, to: address.socketAddress)
        } catch {
            throw failure("bind", error)
        }
        do {
            try Socket.listen(fd, backlog: backlog)
            bound = try Socket.localAddress(fd)
        } catch {
            throw failure("listen", error)
        }
        self.address = MigrationAddress(bound)
        self.fd = fd
    }

    /// Listens on `host` (an IP literal; "0.0.0.0" or "::" for every address) and `port`
    /// (0: any free port, see `address`).
    public convenience init(host: String, port: UInt16, backlog: Int32 = 8, options: TCPTransport.Options = TCPTransport.Options()) throws(MigrationError) {
        try self.init(address: try MigrationAddress(host: host, port: port), backlog: backlog, options: options)
    }

    /// Waits for the next connection, for at most `timeout` (nil: forever).
    public func accept(timeout: Duration? = nil) throws(MigrationError) -> TCPTransport {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        let name = address.description
        while true {
            if closed.load(ordering: .relaxed) {
                throw MigrationError(.connectionClosed, "the listener on \(name) was closed")
            }
            do {
                var peer = SocketAddress()
                let connection = try Socket.accept(fd, peer: &peer)
                try? Socket.setOption(connection, level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
                return TCPTransport(fd: connection, peer: MigrationAddress(peer))
            } catch {
                switch error {
                // A connection reset before we took it: wait for the next one.
                case .resourceTemporarilyUnavailable, .wouldBlock, .connectionAbort:
                    break
                case .invalidArgument where closed.load(ordering: .relaxed):
                    continue
                default:
                    throw MigrationError(.io(error), "cannot accept on \(name)", cause: error)
                }
            }
            let ready: Int16
            do {
                ready = try Socket.poll(fd, events: Int16(POLLIN), deadline: deadline)
            } catch {
                throw MigrationError(.io(error), "cannot wait for connections on \(name): poll", cause: error)
            }
            if ready == 0 {
                throw MigrationError(.timedOut, "no migration peer connected to \(name) within \(describe(timeout ?? .zero))")
            }
        }
    }

    /// Stops listening; an `accept` waiting in another thread fails with `.connectionClosed`.
    public func close() {
        if closed.exchange(true, ordering: .relaxed) { return }
        Socket.shutdown(fd)
    }
}
