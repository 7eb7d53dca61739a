import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Says that a long operation on a container (a checkpoint) is in progress, and by what
/// kind of operation, in a way that cannot outlive the processes doing it: an exclusive
/// `flock` on a small file, whose descriptor is deliberately inheritable so that CRIU,
/// forked and exec'd by the operation, holds the lock too. The kernel releases it only
/// once the operation's process and its CRIU have both exited, however they ended, so a
/// lease found free while the container's record still says "checkpointing" means the
/// operation died: it is safe to finish or roll back then, never while CRIU still runs.
public final class OperationLease {
    private let fd: OwnedFD
    public let path: String

    /// Takes the lease at `path` for an operation of `kind` ("checkpoint"), or fails with
    /// EWOULDBLOCK if another live operation holds it.
    public init(path: String, kind: String) throws(SystemError) {
        self.path = path
        fd = try describing("take the operation lease", path: path) { () throws(Errno) -> OwnedFD in
            let fd = try OwnedFD.open(path, O_RDWR | O_CREAT, mode: 0o600)
            guard try fd.tryLockExclusive() else { throw Errno.wouldBlock }
            try fd.truncate(to: 0)
            try fd.writeAll(Array(kind.utf8))
            try fd.setInheritable(true)
            return fd
        }
    }

    /// The kind of operation recorded at `path` if it is stale (its lease was taken and
    /// nothing holds it any more); nil if there is no lease file or a live process holds it.
    public static func abandonedKind(at path: String) -> String? {
        guard let fd = try? OwnedFD.open(path, O_RDONLY), (try? fd.tryLockExclusive()) == true,
            let bytes = try? fd.readAll()
        else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The lease's descriptor, for a child that must hold the lease too but does not
    /// inherit every inheritable descriptor (a CRIU started with posix_spawn).
    public var descriptor: Int32 { fd.raw }

    /// Ends the lease: the file goes now, the lock when the lease does (a later
    /// operation makes a new file).
    public func release() {
        _ = unlink(path)
    }
}
