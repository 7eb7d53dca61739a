import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// File helpers built on the wrappers above. State on disk must survive a crash at any
/// instant, so every write of a state file goes through `writeAtomically`.
public enum Files {
    /// Writes `data` to a temporary file beside `path`, fsyncs it, renames it over `path`
    /// and fsyncs the directory: a reader sees the old content or the new, never a mix.
    public static func writeAtomically(_ data: some Collection<UInt8>, to path: String, mode: mode_t = 0o644) throws(SystemError) {
        let directory = parent(of: path)
        let temporary = "\(directory)/.\(basename(of: path)).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        do {
            let fd = try OwnedFD.open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode: mode)
            try fd.writeAll(data)
            try fd.sync()
        } catch {
            _ = unlink(temporary)
            throw error.with("write", path: path)
        }
        do {
            _ = try retryingSyscall { rename(temporary, path) }
        } catch {
            _ = unlink(temporary)
            throw error.with("rename", path: path)
        }
        syncDirectory(directory)
    }

    /// fsync a directory so a rename in it is durable; failures are not fatal (some
    /// filesystems refuse fsync on directories).
    public static func syncDirectory(_ path: String) {
        if let fd = try? OwnedFD.open(path, O_RDONLY | O_DIRECTORY) {
            try? fd.sync()
        }
    }

    public static func read(_ path: String) throws(SystemError) -> [UInt8] {
        try describing("read", path: path) { () throws(Errno) -> [UInt8] in
            let fd = try OwnedFD.open(path, O_RDONLY)
            return try fd.readAll()
        }
    }

    /// The last `limit` bytes of the file at `path` (all of it if it is smaller): a log's
    /// tail, read without loading a log that may have grown to gigabytes.
    public static func readTail(_ path: String, limit: Int) throws(SystemError) -> [UInt8] {
        try describing("read", path: path) { () throws(Errno) -> [UInt8] in
            let fd = try OwnedFD.open(path, O_RDONLY)
            let size = try fd.status().size
            if size > Int64(limit) {
                _ = try retryingSyscall { lseek(fd.raw, off_t(size - Int64(limit)), SEEK_SET) }
            }
            return try fd.read(upTo: limit)
        }
    }

    public static func readString(_ path: String) throws(SystemError) -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    /// Writes a small control file (cgroup knobs, /proc/sys) without truncation or rename:
    /// kernel files must be written in place, in one write.
    public static func writeControl(_ value: String, to path: String) throws(SystemError) {
        try describing("write", path: path) { () throws(Errno) in
            let fd = try OwnedFD.open(path, O_WRONLY)
            try fd.writeAll(Array(value.utf8))
        }
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// A new, empty directory (mode 0700) named `prefix` plus six random characters
    /// (mkdtemp); the caller removes it.
    public static func makeTemporaryDirectory(prefix: String) throws(SystemError) -> String {
        var template = Array("\(prefix)XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }
        guard made != nil else { throw Errno(rawValue: errno).with("mkdtemp", path: prefix) }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `mkdir -p`: creates each missing component; existing directories are fine.
    public static func createDirectory(_ path: String, mode: mode_t = 0o755) throws(SystemError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/\(component)"
            if mkdir(current, mode) != 0 {
                let code = Errno(rawValue: errno)
                if code == .fileExists, isDirectory(current) { continue }
                throw code.with("mkdir", path: current)
            }
        }
    }

    /// Removes a tree without following symlinks (names need not be UTF-8); quiet when
    /// `path` does not exist. One implementation: `removeUntrustedTree`.
    public static func removeTree(_ path: String) throws(SystemError) {
        try removeUntrustedTree(path)
    }

    /// `rmdir(2)` of one empty directory. Unlike `removeTree` it never deletes contents,
    /// which is what cgroup directories need: their control files cannot be unlinked, and
    /// the kernel refuses the rmdir (EBUSY) while the cgroup still has members.
    public static func removeDirectory(_ path: String) throws(Errno) {
        _ = try retryingSyscall { rmdir(path) }
    }

    /// Directory entries other than "." and "..", sorted.
    public static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else { throw Errno(rawValue: errno).with("opendir", path: path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }

    public static func basename(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    /// The absolute, symlink-free form of an existing path.
    public static func realPath(_ path: String) throws(SystemError) -> String {
        guard let resolved = realpath(path, nil) else { throw Errno(rawValue: errno).with("realpath", path: path) }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
