import CFerryLinux
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What `stat(2)` reports about one file, in Swift types.
public struct FileStatus: Sendable, Equatable {
    /// The file type bits of `st_mode`.
    public enum Kind: Sendable, Equatable {
        case regular, directory, symlink, characterDevice, blockDevice, fifo, socket, unknown
    }

    /// Regular file, directory, symlink...
    public var kind: Kind
    /// Permission bits including setuid, setgid and sticky (`st_mode & 07777`).
    public var permissions: UInt32
    /// Owner user id.
    public var uid: UInt32
    /// Owner group id.
    public var gid: UInt32
    /// `st_size`: bytes for a regular file, the target's length for a symlink.
    public var size: Int64
    /// `st_dev`: the filesystem the file lives on.
    public var device: UInt64
    /// `st_ino`: with `device`, identifies the file across its hardlinks.
    public var inode: UInt64
    /// `st_nlink`: how many names the inode has.
    public var linkCount: UInt64
    /// `st_rdev`: the device a character or block device node refers to.
    public var rdev: UInt64
    /// `st_mtim.tv_sec`: the last modification, in seconds since the epoch.
    public var modificationSeconds: Int64
    /// `st_mtim.tv_nsec`: the nanoseconds part of the last modification.
    public var modificationNanoseconds: Int64

    /// Decodes a `struct stat`.
    public init(_ st: stat) {
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symlink
        case S_IFCHR: kind = .characterDevice
        case S_IFBLK: kind = .blockDevice
        case S_IFIFO: kind = .fifo
        case S_IFSOCK: kind = .socket
        default: kind = .unknown
        }
        permissions = UInt32(st.st_mode & 0o7777)
        uid = st.st_uid
        gid = st.st_gid
        size = Int64(st.st_size)
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        linkCount = UInt64(st.st_nlink)
        rdev = UInt64(st.st_rdev)
        modificationSeconds = Int64(st.st_mtim.tv_sec)
        modificationNanoseconds = Int64(st.st_mtim.tv_nsec)
    }

    /// The major number of `rdev`, decoded as glibc's `major(3)` does (the macro is not
    /// imported into Swift).
    public var deviceMajor: UInt32 {
        UInt32(truncatingIfNeeded: ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000))
    }

    /// The minor number of `rdev`, decoded as glibc's `minor(3)` does.
    public var deviceMinor: UInt32 {
        UInt32(truncatingIfNeeded: (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00))
    }
}

/// Calls relative to a directory descriptor, with names as raw bytes.
///
/// File names on Linux are bytes, not necessarily UTF-8; going through `String` would
/// replace invalid sequences and then fail to find the file. Working relative to an open
/// directory (and never following a symlink in the last component) keeps a walk of an
/// untrusted tree inside that tree.
extension OwnedFD {
    /// `fstat(2)`.
    public func status() throws(Errno) -> FileStatus {
        var st = stat()
        let fd = raw
        _ = try retryingSyscall { fstat(fd, &st) }
        return FileStatus(st)
    }

    /// `fstatat(2)` with `AT_SYMLINK_NOFOLLOW`: describes `name` itself, never what a
    /// symlink points to.
    public func status(of name: [UInt8]) throws(Errno) -> FileStatus {
        var st = stat()
        let fd = raw
        let cName = Self.cString(name)
        _ = try retryingSyscall { fstatat(fd, cName, &st, AT_SYMLINK_NOFOLLOW) }
        return FileStatus(st)
    }

    /// `openat(2)` with a name given as raw bytes; O_CLOEXEC is always added.
    public func openAt(_ name: [UInt8], _ flags: Int32, mode: mode_t = 0o644) throws(Errno) -> OwnedFD {
        let dirfd = raw
        let cName = Self.cString(name)
        let fd = try retryingSyscall { Glibc.openat(dirfd, cName, flags | O_CLOEXEC, mode) }
        return OwnedFD(adopting: fd)
    }

    /// `readlinkat(2)`: the target of the symlink `name`, as bytes.
    public func readLink(at name: [UInt8]) throws(Errno) -> [UInt8] {
        let dirfd = raw
        let cName = Self.cString(name)
        var capacity = 256
        while true {
            var buffer = [CChar](repeating: 0, count: capacity)
            let n = try retryingSyscall { readlinkat(dirfd, cName, &buffer, capacity) }
            // A result that fills the buffer may have been truncated: retry bigger.
            if n < capacity {
                return buffer[0..<n].map { UInt8(bitPattern: $0) }
            }
            capacity *= 4
        }
    }

    /// The names in this directory other than "." and "..", sorted bytewise.
    ///
    /// Reads through `fdopendir(3)` on a duplicate descriptor (closedir closes the
    /// duplicate, not this one) after rewinding, since the duplicate shares the offset.
    public func directoryEntries() throws(Errno) -> [[UInt8]] {
        let fd = raw
        let duplicate = try retryingSyscall { fcntl(fd, F_DUPFD_CLOEXEC, Int32(0)) }
        guard let dir = fdopendir(duplicate) else {
            let code = Errno(rawValue: errno)
            _ = Glibc.close(duplicate)
            throw code
        }
        defer { closedir(dir) }
        rewinddir(dir)
        var names: [[UInt8]] = []
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 { throw Errno(rawValue: errno) }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                Array(raw.prefix(while: { $0 != 0 }))
            }
            if name != [0x2e] && name != [0x2e, 0x2e] { names.append(name) }
        }
        names.sort { $0.lexicographicallyPrecedes($1) }
        return names
    }

    /// `read(2)` into a caller-owned buffer, so that streaming a large file does not
    /// allocate per chunk. Returns the byte count; 0 means end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let fd = raw
        return try retryingSyscall { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// `unlinkat(2)`: removes the name `name`; with `directory`, an empty directory
    /// (AT_REMOVEDIR).
    public func unlink(at name: [UInt8], directory: Bool) throws(Errno) {
        let dirfd = raw
        let cName = Self.cString(name)
        _ = try retryingSyscall { unlinkat(dirfd, cName, directory ? AT_REMOVEDIR : 0) }
    }

    /// `fchmod(2)`.
    public func setPermissions(_ mode: mode_t) throws(Errno) {
        let fd = raw
        _ = try retryingSyscall { fchmod(fd, mode) }
    }

    /// Deletes everything inside this directory, depth-first, relative to directory
    /// descriptors. Directories on another filesystem than this one are not entered, so
    /// a mount point left inside stops the removal (EBUSY) instead of being emptied.
    /// `path` only names entries in errors.
    fileprivate func removeContents(_ status: FileStatus, path: String) throws(SystemError) {
        // A read-only directory (0555 is common in images) cannot be emptied without
        // CAP_DAC_OVERRIDE; it is about to go, so its mode no longer matters.
        if status.permissions & 0o700 != 0o700 {
            try? setPermissions(mode_t(status.permissions | 0o700))
        }
        let names = try describing("read directory", path: path) { () throws(Errno) in try directoryEntries() }
        let parent = status
        for name in names {
            let child = "\(path)/\(String(decoding: name, as: UTF8.self))"
            let status: FileStatus
            do {
                status = try self.status(of: name)
            } catch {
                if error == .noSuchFileOrDirectory { continue }
                throw error.with("lstat", path: child)
            }
            if status.kind == .directory && status.device == parent.device {
                let directory = try describing("open", path: child) { () throws(Errno) in
                    try openAt(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                }
                try directory.removeContents(status, path: child)
            }
            do {
                try unlink(at: name, directory: status.kind == .directory)
            } catch {
                if error == .noSuchFileOrDirectory { continue }
                throw error.with(status.kind == .directory ? "rmdir" : "unlink", path: child)
            }
        }
    }

    private static func cString(_ bytes: [UInt8]) -> [CChar] {
        bytes.map { CChar(bitPattern: $0) } + [0]
    }
}

extension Files {
    /// `stat(2)`, or `lstat(2)` when `followSymlinks` is false.
    public static func status(_ path: String, followSymlinks: Bool = true) throws(SystemError) -> FileStatus {
        var st = stat()
        let result = followSymlinks ? stat(path, &st) : lstat(path, &st)
        if result != 0 { throw Errno(rawValue: errno).with(followSymlinks ? "stat" : "lstat", path: path) }
        return FileStatus(st)
    }

    /// `chmod(2)`: sets exactly `mode`, which `mkdir(2)` cannot promise under a umask.
    public static func setPermissions(_ path: String, _ mode: mode_t) throws(SystemError) {
        _ = try describing("chmod", path: path) { () throws(Errno) in
            try retryingSyscall { chmod(path, mode) }
        }
    }

    /// Removes a tree that may hold anything: names that are not UTF-8 (which
    /// `removeTree`, listing names as `String`, cannot delete), symlinks, mount points.
    /// Works relative to directory descriptors and never follows a symlink, so a symlink
    /// swapped in during the walk cannot redirect it; does not descend into other
    /// filesystems. Returns quietly when `path` does not exist.
    public static func removeUntrustedTree(_ path: String) throws(SystemError) {
        let status: FileStatus
        do {
            status = try Files.status(path, followSymlinks: false)
        } catch {
            if error.errno == .noSuchFileOrDirectory { return }
            throw error
        }
        if status.kind != .directory {
            if Glibc.unlink(path) != 0, errno != ENOENT { throw Errno(rawValue: errno).with("unlink", path: path) }
            return
        }
        let directory = try describing("open", path: path) { () throws(Errno) in
            try OwnedFD.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        }
        try directory.removeContents(status, path: path)
        if rmdir(path) != 0, errno != ENOENT { throw Errno(rawValue: errno).with("rmdir", path: path) }
    }

    /// `sync(2)`: flushes every filesystem. Used once before publishing a freshly written
    /// tree by a rename, so a crash cannot leave a published tree with unwritten files
    /// (Swift's Glibc module does not export the narrower `syncfs(2)`).
    public static func syncAll() {
        Glibc.sync()
    }

    /// `rename(2)`: atomically moves a file or directory within one filesystem.
    public static func move(_ source: String, to destination: String) throws(SystemError) {
        _ = try describing("rename \(source) to", path: destination) { () throws(Errno) in
            try retryingSyscall { Glibc.rename(source, destination) }
        }
    }
}

// MARK: - Confined lookups and creating entries relative to a directory

/// Restrictions on how `openat2(2)` resolves a path (its `RESOLVE_*` flags).
public struct ResolveFlags: OptionSet, Sendable {
    /// The `RESOLVE_*` bits.
    public let rawValue: UInt64

    /// Flags from their `RESOLVE_*` bits.
    public init(rawValue: UInt64) {
        self.rawValue = rawValue
    }

    /// `RESOLVE_NO_XDEV`: fail (EXDEV) rather than cross a mount point.
    public static let noMountCrossing = ResolveFlags(rawValue: UInt64(FERRY_RESOLVE_NO_XDEV))
    /// `RESOLVE_NO_MAGICLINKS`: fail (ELOOP) at a /proc "magic" link such as /proc/self/fd/N.
    public static let noMagicLinks = ResolveFlags(rawValue: UInt64(FERRY_RESOLVE_NO_MAGICLINKS))
    /// `RESOLVE_NO_SYMLINKS`: fail (ELOOP) at any symlink, in any component.
    public static let noSymlinks = ResolveFlags(rawValue: UInt64(FERRY_RESOLVE_NO_SYMLINKS))
    /// `RESOLVE_BENEATH`: fail (EXDEV) if resolution would leave the directory.
    public static let beneath = ResolveFlags(rawValue: UInt64(FERRY_RESOLVE_BENEATH))
    /// `RESOLVE_IN_ROOT`: treat the directory as "/" for absolute paths, absolute symlink
    /// targets and "..", as if chrooted there.
    public static let inRoot = ResolveFlags(rawValue: UInt64(FERRY_RESOLVE_IN_ROOT))
}

extension OwnedFD {
    /// `openat2(2)`: opens `path` relative to this directory, resolved under the
    /// restrictions `resolve`; O_CLOEXEC is always added.
    ///
    /// With `.inRoot` the kernel may fail a lookup with EAGAIN when a rename elsewhere
    /// raced with it; that is retried a few times before being reported.
    public func open(beneath path: [UInt8], _ flags: Int32, mode: mode_t = 0o600, resolve: ResolveFlags) throws(Errno) -> OwnedFD {
        let dirfd = raw
        let cPath = Self.cString(path)
        var attempts = 0
        while true {
            do {
                let fd = try retryingSyscall {
                    ferry_openat2(dirfd, cPath, flags | O_CLOEXEC, UInt32(mode), resolve.rawValue)
                }
                return OwnedFD(adopting: fd)
            } catch {
                attempts += 1
                if error == .resourceTemporarilyUnavailable && attempts < 16 { continue }
                throw error
            }
        }
    }

    /// `mkdirat(2)`: creates the directory `name` here with `mode` (minus the umask).
    public func makeDirectory(at name: [UInt8], mode: mode_t) throws(Errno) {
        let dirfd = raw
        let cName = Self.cString(name)
        _ = try retryingSyscall { mkdirat(dirfd, cName, mode) }
    }

    /// `symlinkat(2)`: creates the symlink `name` here pointing at `target`, stored as is.
    public func makeSymlink(at name: [UInt8], target: [UInt8]) throws(Errno) {
        let dirfd = raw
        let cName = Self.cString(name)
        let cTarget = Self.cString(target)
        _ = try retryingSyscall { symlinkat(cTarget, dirfd, cName) }
    }

    /// `mknodat(2)`: creates a FIFO, device node or overlayfs whiteout (a character
    /// device 0/0) named `name` here. `mode` includes the file type bits.
    public func makeNode(at name: [UInt8], mode: mode_t, device: dev_t) throws(Errno) {
        let dirfd = raw
        let cName = Self.cString(name)
        _ = try retryingSyscall { mknodat(dirfd, cName, mode, device) }
    }

    /// `linkat(2)` without AT_SYMLINK_FOLLOW: gives the inode `existing` (in
    /// `directory`) the new name `name` here; a symlink is linked, not followed.
    public func makeHardlink(at name: [UInt8], to existing: [UInt8], in directory: borrowing OwnedFD) throws(Errno) {
        let newDirectory = raw
        let oldDirectory = directory.raw
        let cName = Self.cString(name)
        let cExisting = Self.cString(existing)
        _ = try retryingSyscall { linkat(oldDirectory, cExisting, newDirectory, cName, 0) }
    }

    /// `renameat(2)`: moves `name` here to `newName` in `directory`, replacing it.
    public func rename(_ name: [UInt8], to newName: [UInt8], in directory: borrowing OwnedFD) throws(Errno) {
        let oldDirectory = raw
        let newDirectory = directory.raw
        let cName = Self.cString(name)
        let cNewName = Self.cString(newName)
        _ = try retryingSyscall { renameat(oldDirectory, cName, newDirectory, cNewName) }
    }

    /// `fchown(2)`. Note that the kernel clears setuid/setgid bits and file capabilities
    /// on a chown, so those are set afterwards.
    public func setOwner(uid: UInt32, gid: UInt32) throws(Errno) {
        let fd = raw
        _ = try retryingSyscall { fchown(fd, uid, gid) }
    }

    /// `fchownat(2)` with AT_SYMLINK_NOFOLLOW: changes `name` itself, even a symlink.
    public func setOwner(of name: [UInt8], uid: UInt32, gid: UInt32) throws(Errno) {
        let dirfd = raw
        let cName = Self.cString(name)
        _ = try retryingSyscall { fchownat(dirfd, cName, uid, gid, AT_SYMLINK_NOFOLLOW) }
    }

    /// `futimens(2)`: sets the access and modification times.
    public func setTimes(access: timespec, modification: timespec) throws(Errno) {
        let fd = raw
        var times = [access, modification]
        _ = try retryingSyscall { futimens(fd, &times) }
    }

    /// `utimensat(2)` with AT_SYMLINK_NOFOLLOW: sets the times of `name` itself.
    public func setTimes(of name: [UInt8], access: timespec, modification: timespec) throws(Errno) {
        let dirfd = raw
        let cName = Self.cString(name)
        var times = [access, modification]
        _ = try retryingSyscall { utimensat(dirfd, cName, &times, AT_SYMLINK_NOFOLLOW) }
    }

    /// `flistxattr(2)`: the names of this file's extended attributes that are valid
    /// UTF-8 (Linux allows any bytes; no namespace Ferry reads uses others).
    public func extendedAttributeNames() throws(Errno) -> [String] {
        let fd = raw
        while true {
            let needed = try retryingSyscall { ferry_flistxattr(fd, nil, 0) }
            if needed == 0 { return [] }
            var list = [CChar](repeating: 0, count: needed)
            let count: Int
            do {
                count = try retryingSyscall { ferry_flistxattr(fd, &list, needed) }
            } catch {
                // An attribute was added between the two calls: ask again.
                if error == .outOfRange { continue }
                throw error
            }
            return list[0..<count]
                .split(separator: 0, omittingEmptySubsequences: true)
                .compactMap { name in String(validating: name.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        }
    }

    /// `fgetxattr(2)`: the value of the extended attribute `name`, or nil when the file
    /// has none by that name (ENODATA).
    public func extendedAttribute(_ name: String) throws(Errno) -> [UInt8]? {
        let fd = raw
        while true {
            let needed: Int
            do {
                needed = try retryingSyscall { ferry_fgetxattr(fd, name, nil, 0) }
            } catch {
                if error == .noData { return nil }
                throw error
            }
            var value = [UInt8](repeating: 0, count: needed)
            do {
                let count = try retryingSyscall { ferry_fgetxattr(fd, name, &value, needed) }
                return Array(value[0..<count])
            } catch {
                if error == .outOfRange { continue }
                if error == .noData { return nil }
                throw error
            }
        }
    }

    /// `fsetxattr(2)`: creates or replaces the extended attribute `name`.
    public func setExtendedAttribute(_ name: String, _ value: [UInt8]) throws(Errno) {
        let fd = raw
        _ = try retryingSyscall { ferry_fsetxattr(fd, name, value, value.count, 0) }
    }

    /// Writes all of `buffer` at the current offset, retrying short writes, without the
    /// copy that `writeAll(_:)` makes of its sequence.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws(Errno) {
        let fd = raw
        var offset = 0
        while offset < buffer.count {
            guard let base = buffer.baseAddress else { return }
            let start = base + offset
            let remaining = buffer.count - offset
            offset += try retryingSyscall { Glibc.write(fd, start, remaining) }
        }
    }

    /// `pwrite(2)` of all of `buffer` at `position`, retrying short writes.
    public func writeAll(_ buffer: UnsafeRawBufferPointer, at position: Int64) throws(Errno) {
        let fd = raw
        var offset = 0
        while offset < buffer.count {
            guard let base = buffer.baseAddress else { return }
            let start = base + offset
            let remaining = buffer.count - offset
            let at = off_t(position) + off_t(offset)
            offset += try retryingSyscall { pwrite(fd, start, remaining, at) }
        }
    }

    /// `ftruncate(2)`.
    public func truncate(to size: Int64) throws(Errno) {
        let fd = raw
        _ = try retryingSyscall { ftruncate(fd, off_t(size)) }
    }

    /// Bytes an unprivileged user may still write on this file's filesystem
    /// (`fstatvfs(3)`: `f_bavail * f_frsize`).
    public func availableSpace() throws(Errno) -> UInt64 {
        let fd = raw
        var st = statvfs()
        _ = try retryingSyscall { fstatvfs(fd, &st) }
        let (product, overflow) = UInt64(st.f_bavail).multipliedReportingOverflow(by: UInt64(st.f_frsize))
        return overflow ? UInt64.max : product
    }
}

extension OwnedFD {
    /// `write(2)` of all of `buffer`, retrying short writes.
    public func write(all buffer: UnsafeRawBufferPointer) throws(Errno) {
        let fd = raw
        var done = 0
        while done < buffer.count {
            done += try retryingSyscall { Glibc.write(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done) }
        }
    }

    /// `pwrite(2)` of all of `bytes` at `offset`, retrying short writes; the file offset
    /// does not move.
    public func write(_ bytes: [UInt8], at offset: Int64) throws(Errno) {
        let fd = raw
        var done = 0
        while done < bytes.count {
            let position = done
            let n = bytes.withUnsafeBytes { buffer in
                Glibc.pwrite(fd, buffer.baseAddress.map { $0 + position }, buffer.count - position, off_t(offset) + off_t(position))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw Errno(rawValue: errno)
            }
            done += n
        }
    }

    /// `sync_file_range(2)` with SYNC_FILE_RANGE_WRITE on the raw descriptor `fd` (for a
    /// background thread, which cannot borrow the owner): starts writing back that range
    /// of dirty pages without waiting, so that a later fsync has less to do.
    public static func startWriteBack(_ fd: Int32, offset: Int64, count: Int64) throws(Errno) {
        let result = ferry_start_writeback(fd, offset, count)
        if result < 0 { throw Errno(rawValue: -result) }
    }

    /// `fcntl(F_SETPIPE_SZ)`: asks for a pipe of `size` bytes (up to
    /// /proc/sys/fs/pipe-max-size for an unprivileged process); returns the capacity set.
    @discardableResult
    public func setPipeSize(_ size: Int32) throws(Errno) -> Int32 {
        let result = ferry_set_pipe_size(raw, size)
        if result < 0 { throw Errno(rawValue: -result) }
        return result
    }
}
