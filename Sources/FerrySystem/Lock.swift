import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// An exclusive advisory lock (`flock(2)`) on a lock file, held until the value goes away.
///
/// flock locks belong to the open file description, so they are released by the kernel
/// if the process dies: a crashed CLI never leaves a container locked.
public struct FileLock: ~Copyable {
    private let fd: OwnedFD
    public let path: String

    /// Blocks until the lock is ours. Creates the lock file if needed.
    public init(path: String) throws(SystemError) {
        self.path = path
        let fd = try describing("open lock", path: path) { () throws(Errno) in
            try OwnedFD.open(path, O_RDWR | O_CREAT, mode: 0o600)
        }
        let raw = fd.raw
        _ = try describing("flock", path: path) { () throws(Errno) in
            try retryingSyscall { flock(raw, LOCK_EX) }
        }
        self.fd = fd
    }
}

extension FileLock {
    /// Runs `body` while holding the lock at `path`; the lock is released when `body`
    /// returns or throws.
    public static func holding<T>(_ path: String, _ body: () throws -> T) throws -> T {
        let lock = try FileLock(path: path)
        let result = try body()
        _ = consume lock
        return result
    }
}

extension OwnedFD {
    /// `flock(2)` LOCK_EX | LOCK_NB on this descriptor: true if the lock is now held
    /// here, false if another open file description holds it. Held until the descriptor
    /// closes, or the process dies.
    public func tryLockExclusive() throws(Errno) -> Bool {
        let fd = raw
        do {
            _ = try retryingSyscall { flock(fd, LOCK_EX | LOCK_NB) }
            return true
        } catch  where error == .wouldBlock {
            return false
        }
    }
}
