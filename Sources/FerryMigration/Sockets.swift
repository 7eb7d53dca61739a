import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The socket system calls the TCP transport needs, each wrapped once and throwing a
/// typed `Errno`. (FerrySystem has no sockets yet; these can move there when another
/// module needs them.) Sockets are always non-blocking and close-on-exec: timeouts are
/// done with poll(2), and no socket leaks into a CRIU or container child.
enum Socket {
    /// `socket(2)`: a non-blocking, close-on-exec TCP socket.
    static func stream(family: Int32) throws(Errno) -> OwnedFD {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        return OwnedFD(adopting: try retryingSyscall { Glibc.socket(family, type, 0) })
    }

    /// `setsockopt(2)` with an int value.
    static func setOption(_ fd: borrowing OwnedFD, level: Int32, name: Int32, value: Int32) throws(Errno) {
        try fd.setSocketOption(level: level, name: name, value: value)
    }

    /// `getsockopt(2)` of an int value.
    static func option(_ fd: borrowing OwnedFD, level: Int32, name: Int32) throws(Errno) -> Int32 {
        let raw = fd.raw
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try retryingSyscall { getsockopt(raw, level, name, &value, &length) }
        return value
    }

    /// `connect(2)`. Not retried: on a non-blocking socket EINPROGRESS (and EINTR) mean
    /// the connection goes on in the background, which the caller waits for with poll.
    static func connect(_ fd: borrowing OwnedFD, to address: SocketAddress) throws(Errno) {
        let raw = fd.raw
        _ = try address.withSockaddr { pointer, length throws(Errno) in
            try syscallResult { Glibc.connect(raw, pointer, length) }
        }
    }

    /// `bind(2)`.
    static func bind(_ fd: borrowing OwnedFD, to address: SocketAddress) throws(Errno) {
        let raw = fd.raw
        _ = try address.withSockaddr { pointer, length throws(Errno) in
            try retryingSyscall { Glibc.bind(raw, pointer, length) }
        }
    }

    /// `listen(2)`.
    static func listen(_ fd: borrowing OwnedFD, backlog: Int32) throws(Errno) {
        let raw = fd.raw
        _ = try retryingSyscall { Glibc.listen(raw, backlog) }
    }

    /// `accept4(2)`: the new connection, non-blocking and close-on-exec; its address goes
    /// to `address`.
    ///
    /// glibc declares accept4 only under _GNU_SOURCE, so Swift's Glibc module lacks it; it
    /// is looked up by name instead of accept + fcntl, which would leave a moment in which
    /// a fork in another thread (a CRIU or container child) inherits the connection.
    static func accept(_ fd: borrowing OwnedFD, peer address: inout SocketAddress) throws(Errno) -> OwnedFD {
        typealias Accept4 = @convention(c) (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?, Int32) -> Int32
        let raw = fd.raw
        let flags = Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        // RTLD_DEFAULT is the null handle in glibc.
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "accept4") else {
            throw Errno.noFunction
        }
        let accept4 = unsafeBitCast(symbol, to: Accept4.self)
        let connection = try address.withMutableSockaddr { pointer, length throws(Errno) in
            try retryingSyscall { accept4(raw, pointer, length, flags) }
        }
        return OwnedFD(adopting: connection)
    }

    /// `getsockname(2)`.
    static func localAddress(_ fd: borrowing OwnedFD) throws(Errno) -> SocketAddress {
        let raw = fd.raw
        var address = SocketAddress()
        _ = try address.withMutableSockaddr { pointer, length throws(Errno) in
            try retryingSyscall { getsockname(raw, pointer, length) }
        }
        return address
    }

    /// `poll(2)` on one descriptor until `deadline` (nil: forever). Returns the revents,
    /// 0 when the deadline passed. After EINTR it waits only for the time that is left.
    static func poll(_ fd: borrowing OwnedFD, events: Int16, deadline: ContinuousClock.Instant?) throws(Errno) -> Int16 {
        var entry = pollfd(fd: fd.raw, events: events, revents: 0)
        while true {
            var milliseconds: Int32 = -1
            if let deadline {
                let left = deadline - .now
                if left <= .zero { return 0 }
                let (seconds, attoseconds) = left.components
                let total = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
                milliseconds = Int32(clamping: total)
            }
            let ready = Glibc.poll(&entry, 1, milliseconds)
            if ready > 0 { return entry.revents }
            if ready == 0 { return 0 }
            let code = Errno(rawValue: errno)
            if code != .interrupted { throw code }
        }
    }

    /// `send(2)` with MSG_NOSIGNAL: a peer that has gone must give EPIPE, not a SIGPIPE
    /// that would kill the whole process.
    static func send(_ fd: borrowing OwnedFD, _ buffer: UnsafeRawBufferPointer) throws(Errno) -> Int {
        let raw = fd.raw
        return try retryingSyscall { Glibc.send(raw, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL)) }
    }

    /// `recv(2)`; 0 means the peer closed its side.
    static func receive(_ fd: borrowing OwnedFD, _ buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let raw = fd.raw
        return try retryingSyscall { Glibc.recv(raw, buffer.baseAddress, buffer.count, 0) }
    }

    /// `shutdown(2)` both ways. Wakes a poll, recv or accept blocked in another thread;
    /// the descriptor itself stays open (and its number reserved) until its owner goes.
    /// ENOTCONN (already shut down, never connected) is expected and ignored.
    static func shutdown(_ fd: borrowing OwnedFD) {
        _ = Glibc.shutdown(fd.raw, Int32(SHUT_RDWR))
    }
}

/// A `sockaddr_in` or `sockaddr_in6` in a `sockaddr_storage`.
struct SocketAddress {
    private var storage = sockaddr_storage()
    private var length = socklen_t(MemoryLayout<sockaddr_storage>.size)

    init() {}

    /// The address of `host` (an IPv4 or IPv6 literal, checked by the caller) and `port`.
    init?(host: String, port: UInt16) {
        if host.contains(":") {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            guard inet_pton(AF_INET6, host, &address.sin6_addr) == 1 else { return nil }
            withUnsafeMutableBytes(of: &storage) { target in
                withUnsafeBytes(of: address) { target.copyMemory(from: $0) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { return nil }
            withUnsafeMutableBytes(of: &storage) { target in
                withUnsafeBytes(of: address) { target.copyMemory(from: $0) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        }
    }

    var family: Int32 { Int32(storage.ss_family) }

    /// The literal host and the port, as inet_ntop(3) writes them.
    var hostAndPort: (host: String, port: UInt16)? {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        return withUnsafeBytes(of: storage) { raw -> (String, UInt16)? in
            switch Int32(storage.ss_family) {
            case AF_INET:
                var address = raw.loadUnaligned(as: sockaddr_in.self)
                guard inet_ntop(AF_INET, &address.sin_addr, &text, socklen_t(text.count)) != nil else { return nil }
                return (Self.string(text), UInt16(bigEndian: address.sin_port))
            case AF_INET6:
                var address = raw.loadUnaligned(as: sockaddr_in6.self)
                guard inet_ntop(AF_INET6, &address.sin6_addr, &text, socklen_t(text.count)) != nil else { return nil }
                return (Self.string(text), UInt16(bigEndian: address.sin6_port))
            default:
                return nil
            }
        }
    }

    private static func string(_ text: [CChar]) -> String {
        String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func withSockaddr<T, E: Error>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(E) -> T) throws(E) -> T {
        var copy = storage
        let length = self.length
        return try withUnsafePointer(to: &copy) { pointer throws(E) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer throws(E) in
                try body(sockaddrPointer, length)
            }
        }
    }

    mutating func withMutableSockaddr<T, E: Error>(_ body: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) throws(E) -> T) throws(E) -> T {
        length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        var copy = storage
        var newLength = length
        let result = try withUnsafeMutablePointer(to: &copy) { pointer throws(E) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer throws(E) in
                try body(sockaddrPointer, &newLength)
            }
        }
        storage = copy
        length = newLength
        return result
    }
}
