import CFerryLinux
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Checks of what the host kernel offers, for `ferry` to report and to decide on before
/// it starts something that would fail halfway.
///
/// What CRIU itself needs from the kernel (soft-dirty memory tracking, lazy pages, the
/// pidfd store) is asked of CRIU through FerryCRIU's feature check instead: CRIU knows
/// which kernel interfaces it actually uses.
public enum HostProbe {
    /// The kernel release, as `uname -r` prints it ("6.1.0-18-amd64").
    ///
    /// `uname(2)`.
    public static func kernelRelease() throws(SystemError) -> String {
        var names = utsname()
        _ = try describing("uname") { () throws(Errno) in
            try syscallResult { uname(&names) }
        }
        return withUnsafeBytes(of: names.release) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }

    /// Whether the kernel can mount overlayfs: it is registered in /proc/filesystems, or
    /// it is a module of the running kernel (registered only once the first overlay
    /// mount loads it) or built in.
    public static func overlayfsSupported() -> Bool {
        if let text = try? Files.readString("/proc/filesystems"), filesystems(in: text).contains("overlay") {
            return true
        }
        guard let release = try? kernelRelease() else { return false }
        let moduleDirectory = "/lib/modules/\(release)"
        for index in ["modules.dep", "modules.builtin"] {
            if let text = try? Files.readString("\(moduleDirectory)/\(index)"), moduleListed("overlay", in: text) {
                return true
            }
        }
        return false
    }

    /// Whether this process can create a userfaultfd, which CRIU's lazy restore (and
    /// so post-copy migration) is built on: either the `userfaultfd(2)` system call with
    /// O_CLOEXEC | O_NONBLOCK succeeds, or /dev/userfaultfd (Linux 5.11+) opens. The
    /// second matters where vm.unprivileged_userfaultfd is 0 and the caller lacks
    /// CAP_SYS_PTRACE: the system call is refused, the device may still be allowed.
    public static func userfaultfdAvailable() -> Bool {
        do {
            let raw = try retryingSyscall { ferry_userfaultfd(O_CLOEXEC | O_NONBLOCK) }
            // Only asking: the descriptor is closed right away.
            _ = OwnedFD(adopting: raw)
            return true
        } catch {
            // Fall through to the device.
        }
        do {
            _ = try OwnedFD.open("/dev/userfaultfd", O_RDWR)
            return true
        } catch {
            return false
        }
    }

    /// The largest pipe buffer an unprivileged process may ask for with F_SETPIPE_SZ, in
    /// bytes, from /proc/sys/fs/pipe-max-size; nil when that cannot be read.
    public static func pipeMaxSize() -> Int? {
        guard let text = try? Files.readString("/proc/sys/fs/pipe-max-size") else { return nil }
        return parsePipeMaxSize(text)
    }

    /// The pipe size CRIU's lazy dump needs: it keeps the dumped memory in pipes of up
    /// to ~3.3 MB and, without CAP_SYS_RESOURCE (root here lacks it), may not grow a pipe
    /// past fs.pipe-max-size.
    public static let lazyDumpPipeSize = 4 << 20

    /// Raises /proc/sys/fs/pipe-max-size to `lazyDumpPipeSize` when it is lower (a
    /// host-wide setting; it is left raised).
    public static func ensurePipeMaxSizeForLazyDump() throws(SystemError) {
        let path = "/proc/sys/fs/pipe-max-size"
        if let current = pipeMaxSize(), current >= lazyDumpPipeSize { return }
        do {
            let fd = try OwnedFD.open(path, O_WRONLY)
            try fd.writeAll(Array("\(lazyDumpPipeSize)\n".utf8))
        } catch {
            throw SystemError("write", path: path, errno: error)
        }
    }

    // MARK: Parsing, separate so that tests can feed it fixture text

    /// Filesystem names from /proc/filesystems ("nodev\toverlay" -> "overlay").
    static func filesystems(in text: String) -> Set<String> {
        var names = Set<String>()
        for line in text.split(separator: "\n") {
            if let name = line.split(whereSeparator: { $0 == "\t" || $0 == " " }).last {
                names.insert(String(name))
            }
        }
        return names
    }

    /// Whether modules.dep or modules.builtin lists the module `name`: a line whose
    /// first path ends in "/name.ko", possibly compressed (.ko.xz, .ko.zst, .ko.gz).
    static func moduleListed(_ name: String, in text: String) -> Bool {
        let suffixes = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].map { "/\(name)\($0)" }
        for line in text.split(separator: "\n") {
            let path = line.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
            if suffixes.contains(where: { path.hasSuffix($0) }) { return true }
        }
        return false
    }

    static func parsePipeMaxSize(_ text: String) -> Int? {
        guard let value = Int(text.filter { $0 != "\n" && $0 != " " }), value > 0 else { return nil }
        return value
    }
}
