import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Runs a raw system call, retrying on EINTR, and turns a -1 return into a typed `Errno`.
///
/// Every wrapper in this module goes through here, so EINTR handling lives in one place.
@inline(__always)
public func retryingSyscall<T: FixedWidthInteger>(_ body: () -> T) throws(Errno) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Errno(rawValue: errno)
        if code == .interrupted { continue }
        throw code
    }
}

/// Like `retryingSyscall` for calls that are not restarted after a signal (mount, umount):
/// a -1 return is reported as it is.
@inline(__always)
public func syscallResult<T: FixedWidthInteger>(_ body: () -> T) throws(Errno) -> T {
    let result = body()
    if result == -1 { throw Errno(rawValue: errno) }
    return result
}

/// An error from a system call, with the operation and the object it was applied to,
/// so that a message can say "mount /var/lib/ferry/x/rootfs: Device or resource busy".
public struct SystemError: Sendable {
    public let operation: String
    public let path: String?
    public let errno: Errno

    public init(_ operation: String, path: String? = nil, errno: Errno) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }
}

extension Errno {
    /// Attaches the operation and path to a bare errno, one layer above the raw wrappers.
    public func with(_ operation: String, path: String? = nil) -> SystemError {
        SystemError(operation, path: path, errno: self)
    }
}

/// Runs `body`, converting a thrown `Errno` into a `SystemError` that names the operation.
@inline(__always)
public func describing<T: ~Copyable>(_ operation: String, path: String? = nil, _ body: () throws(Errno) -> T) throws(SystemError) -> T {
    do {
        return try body()
    } catch {
        throw error.with(operation, path: path)
    }
}
