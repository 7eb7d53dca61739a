import CFerryLinux
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Owns one open file descriptor and closes it when it goes away.
///
/// Non-copyable so that exactly one owner can close it; borrow it for calls, or
/// `take()` it to hand the raw descriptor to something that closes it itself
/// (a child process, libcriu's inherit-fd).
public struct OwnedFD: ~Copyable, @unchecked Sendable {
    public let raw: Int32

    public init(adopting raw: Int32) {
        self.raw = raw
    }

    deinit {
        _ = Glibc.close(raw)
    }

    /// Gives up ownership without closing: the caller now owns `raw`.
    public consuming func take() -> Int32 {
        let fd = raw
        discard self
        return fd
    }

    /// `open(2)`, relative to the current directory or absolute.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws(Errno) -> OwnedFD {
        let fd = try retryingSyscall { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return OwnedFD(adopting: fd)
    }

    /// `openat(2)` relative to this directory descriptor.
    public func openAt(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws(Errno) -> OwnedFD {
        let dirfd = raw
        let fd = try retryingSyscall { Glibc.openat(dirfd, path, flags | O_CLOEXEC, mode) }
        return OwnedFD(adopting: fd)
    }

    /// `setsockopt(2)` with an int value.
    public func setSocketOption(level: Int32, name: Int32, value: Int32) throws(Errno) {
        let fd = raw
        var value = value
        _ = try retryingSyscall { setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// Writes all of `bytes`, retrying short writes.
    public func writeAll(_ bytes: some Sequence<UInt8>) throws(Errno) {
        let array = Array(bytes)
        var offset = 0
        while offset < array.count {
            let fd = raw
            // The loop runs only while offset < count, so the buffer is never empty here.
            let n = array.withUnsafeBytes { buf in
                Glibc.write(fd, buf.baseAddress.map { $0 + offset }, buf.count - offset)
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw Errno(rawValue: errno)
            }
            offset += n
        }
    }

    /// Reads up to `count` bytes; an empty result means end of file.
    public func read(upTo count: Int) throws(Errno) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        let fd = raw
        while true {
            let n = buffer.withUnsafeMutableBytes { buf in Glibc.read(fd, buf.baseAddress, buf.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Errno(rawValue: errno)
            }
            buffer.removeSubrange(n...)
            return buffer
        }
    }

    /// Reads until end of file.
    public func readAll() throws(Errno) -> [UInt8] {
        var result: [UInt8] = []
        while true {
            let chunk = try read(upTo: 65536)
            if chunk.isEmpty { return result }
            result += chunk
        }
    }

    public func sync() throws(Errno) {
        let fd = raw
        _ = try retryingSyscall { Glibc.fsync(fd) }
    }

    /// Sets or clears `O_NONBLOCK`.
    public func setNonBlocking(_ nonBlocking: Bool) throws(Errno) {
        let fd = raw
        let flags = try retryingSyscall { fcntl(fd, F_GETFL) }
        let updated = nonBlocking ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK)
        _ = try retryingSyscall { fcntl(fd, F_SETFL, updated) }
    }

    /// Waits until the descriptor is readable, or at its end (`poll(2)`, POLLIN): false
    /// if `timeout` passed first.
    public func waitReadable(timeout: Duration) throws(Errno) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = max(deadline - ContinuousClock.now, .zero)
            var entry = pollfd(fd: raw, events: Int16(POLLIN), revents: 0)
            let ready = Glibc.poll(&entry, 1, Int32(min(left.milliseconds.rounded(.up), 3_600_000)))
            if ready > 0 { return true }
            if ready == 0 { return false }
            if errno != EINTR { throw Errno(rawValue: errno) }
        }
    }

    /// `fcntl(2)` F_DUPFD_CLOEXEC: a second descriptor for the same open file, owned (and
    /// closed) separately; for a helper that writes to a file its owner also uses.
    public func duplicate() throws(Errno) -> OwnedFD {
        let fd = raw
        return OwnedFD(adopting: try retryingSyscall { fcntl(fd, F_DUPFD_CLOEXEC, 0) })
    }

    /// Clears close-on-exec so that a child process inherits this descriptor.
    public func setInheritable(_ inheritable: Bool) throws(Errno) {
        let fd = raw
        let flags = try retryingSyscall { fcntl(fd, F_GETFD) }
        let updated = inheritable ? (flags & ~FD_CLOEXEC) : (flags | FD_CLOEXEC)
        _ = try retryingSyscall { fcntl(fd, F_SETFD, updated) }
    }
}

/// A pipe whose two ends are owned separately.
@frozen
public struct OwnedPipe: ~Copyable {
    public var readEnd: OwnedFD
    public var writeEnd: OwnedFD

    /// `pipe2(2)` with O_CLOEXEC: nothing leaks into children unless asked for.
    public init() throws(Errno) {
        var fds: [Int32] = [-1, -1]
        _ = try retryingSyscall { ferry_pipe_cloexec(&fds) }
        readEnd = OwnedFD(adopting: fds[0])
        writeEnd = OwnedFD(adopting: fds[1])
    }

    /// A pseudo-terminal pair (`posix_openpt(3)`) used as a pipe, both ends close-on-exec:
    /// a process given `writeEnd` (the slave) as its stderr sees a terminal, and
    /// `readEnd` (the master) reads what it writes.
    public init(pseudoTerminal: Void) throws(Errno) {
        var fds: [Int32] = [-1, -1]
        _ = try retryingSyscall { ferry_open_pty(&fds) }
        readEnd = OwnedFD(adopting: fds[0])
        writeEnd = OwnedFD(adopting: fds[1])
    }
}
