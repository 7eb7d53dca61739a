import CFerryLinux
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A userfaultfd: faults on the registered memory of one process wait until whoever
/// holds it fills the pages (CRIU's lazy restore hands one per restored process to the
/// process that brings its memory). Shared by the thread that reads its events and the
/// threads that fill pages, hence a class; the descriptor closes with it.
public final class Userfault: @unchecked Sendable {
    public let descriptor: OwnedFD

    /// What reading the descriptor can bring (the kernel's UFFD_EVENT_*).
    public enum Event: Equatable, Sendable {
        /// A thread touched a missing page of registered memory and waits.
        case pageFault(address: UInt64)
        /// The process forked; the child's memory has its own userfaultfd, now open
        /// here (the caller adopts `descriptor`).
        case fork(descriptor: Int32)
        /// mremap moved [from, from + length) to `to`.
        case remap(from: UInt64, to: UInt64, length: UInt64)
        /// madvise(MADV_DONTNEED/REMOVE) dropped the range: it reads as zeros now.
        case remove(start: UInt64, length: UInt64)
        /// munmap: the range is gone.
        case unmap(start: UInt64, length: UInt64)
        case other
    }

    /// A UFFDIO_COPY that stopped part-way: how much was copied before `errno`.
    public struct PartialCopy: Error, Sendable {
        public let copied: Int
        public let errno: Errno
    }

    public init(adopting descriptor: consuming OwnedFD) {
        self.descriptor = descriptor
    }

    /// A new userfaultfd for this process's own memory (non-blocking), after the API
    /// handshake with `features`; for tests and probes.
    public static func open(features: UInt64 = 0) throws(Errno) -> Userfault {
        let raw = try retryingSyscall { ferry_userfaultfd(O_CLOEXEC | O_NONBLOCK) }
        let fault = Userfault(adopting: OwnedFD(adopting: raw))
        var granted = features
        try check(ferry_uffd_api(raw, &granted))
        return fault
    }

    /// Registers [start, start + length) in missing mode: its untouched pages fault here.
    public func registerMissing(start: UInt64, length: UInt64) throws(Errno) {
        try Self.check(ferry_uffd_register_missing(descriptor.raw, start, length))
    }

    public func unregister(start: UInt64, length: UInt64) throws(Errno) {
        try Self.check(ferry_uffd_unregister(descriptor.raw, start, length))
    }

    /// Copies `source` into the missing pages at `destination` and wakes the threads
    /// waiting for them.
    public func copy(to destination: UInt64, from source: UnsafeRawBufferPointer) throws(PartialCopy) {
        var copied: Int64 = 0
        let result = ferry_uffd_copy(descriptor.raw, destination, source.baseAddress, UInt64(source.count), &copied)
        if result != 0 { throw PartialCopy(copied: Int(copied), errno: Errno(rawValue: -result)) }
    }

    /// Maps zero pages at [start, start + length) and wakes the threads waiting there.
    public func zeroPages(start: UInt64, length: UInt64) throws(Errno) {
        try Self.check(ferry_uffd_zeropage(descriptor.raw, start, length))
    }

    /// Wakes the threads waiting on [start, start + length) (for pages already there).
    public func wake(start: UInt64, length: UInt64) throws(Errno) {
        try Self.check(ferry_uffd_wake(descriptor.raw, start, length))
    }

    /// The next event, or nil when none is pending.
    public func readEvent() throws(Errno) -> Event? {
        var event = ferry_uffd_event()
        let result = ferry_uffd_read_event(descriptor.raw, &event)
        if result < 0 { throw Errno(rawValue: -result) }
        if result == 0 { return nil }
        switch event.kind {
        case FERRY_UFFD_PAGEFAULT: return .pageFault(address: event.address)
        case FERRY_UFFD_FORK: return .fork(descriptor: event.fd)
        case FERRY_UFFD_REMAP: return .remap(from: event.start, to: event.to, length: event.length)
        case FERRY_UFFD_REMOVE: return .remove(start: event.start, length: event.length)
        case FERRY_UFFD_UNMAP: return .unmap(start: event.start, length: event.length)
        default: return .other
        }
    }

    private static func check(_ result: Int32) throws(Errno) {
        if result != 0 { throw Errno(rawValue: -result) }
    }
}

/// A listening unix stream socket bound to a name inside a directory. The name goes
/// through /proc/self/fd, so a deep directory does not hit sun_path's 108 bytes.
public struct UnixListener: ~Copyable, Sendable {
    public let descriptor: OwnedFD
    public let path: String

    public init(directory: String, name: String) throws(SystemError) {
        let path = "\(directory)/\(name)"
        let dir = try describing("open", path: directory) { () throws(Errno) in try OwnedFD.open(directory, O_RDONLY | O_DIRECTORY) }
        let socket = try unixStreamSocket(path: path)
        unlink(path)
        try unixAddressCall("bind", socket: socket, address: "/proc/self/fd/\(dir.raw)/\(name)", reportedAs: path, Glibc.bind)
        try describing("listen", path: path) { () throws(Errno) in _ = try retryingSyscall { Glibc.listen(socket.raw, 8) } }
        self.descriptor = socket
        self.path = path
    }

    /// Accepts one connection (blocking).
    public func accept() throws(Errno) -> OwnedFD {
        let raw = descriptor.raw
        let fd = OwnedFD(adopting: try retryingSyscall { Glibc.accept(raw, nil, nil) })
        try fd.setInheritable(false)
        return fd
    }

    deinit {
        unlink(path)
    }
}

/// A stream socket connected to the listener at `path` (short enough for sun_path).
public func connectUnixSocket(_ path: String) throws(SystemError) -> OwnedFD {
    let socket = try unixStreamSocket(path: path)
    try unixAddressCall("connect", socket: socket, address: path, reportedAs: path, Glibc.connect)
    return socket
}

/// A new AF_UNIX stream socket, close-on-exec.
private func unixStreamSocket(path: String) throws(SystemError) -> OwnedFD {
    try describing("socket", path: path) { () throws(Errno) in
        OwnedFD(adopting: try retryingSyscall { Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
    }
}

/// `call` (bind or connect) of `socket` with `address` as an AF_UNIX address; errors name
/// `reportedAs` (the path the caller knows, not the /proc/self/fd one).
private func unixAddressCall(
    _ operation: String, socket: borrowing OwnedFD, address path: String, reportedAs: String,
    _ call: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32
) throws(SystemError) {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
        throw SystemError(operation, path: reportedAs, errno: .fileNameTooLong)
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
    let raw = socket.raw
    try describing(operation, path: reportedAs) { () throws(Errno) in
        _ = try withUnsafePointer(to: &address) { pointer throws(Errno) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic throws(Errno) in
                try retryingSyscall { call(raw, generic, length) }
            }
        }
    }
}

extension UnixListener {
    /// Connects to the socket `name` in `directory`, through /proc/self/fd as `init` binds.
    public static func connect(directory: String, name: String) throws(SystemError) -> OwnedFD {
        let dir = try describing("open", path: directory) { () throws(Errno) in try OwnedFD.open(directory, O_RDONLY | O_DIRECTORY) }
        let path = "\(directory)/\(name)"
        let socket = try unixStreamSocket(path: path)
        try unixAddressCall("connect", socket: socket, address: "/proc/self/fd/\(dir.raw)/\(name)", reportedAs: path, Glibc.connect)
        return socket
    }
}

extension OwnedFD {
    /// Receives one byte that carries one descriptor (SCM_RIGHTS); nil at end of stream.
    public func receiveDescriptor() throws(Errno) -> OwnedFD? {
        var fd: Int32 = -1
        let result = ferry_recv_fd(raw, &fd)
        if result < 0 { throw Errno(rawValue: -result) }
        return result == 0 ? nil : OwnedFD(adopting: fd)
    }

    /// Sends one byte that carries `descriptor` (SCM_RIGHTS), as CRIU's send_fd does.
    public func sendDescriptor(_ descriptor: borrowing OwnedFD) throws(Errno) {
        let result = ferry_send_fd(raw, descriptor.raw)
        if result != 0 { throw Errno(rawValue: -result) }
    }
}
