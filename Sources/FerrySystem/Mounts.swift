import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Thin wrappers over mount(2) and umount2(2). Neither is restarted after a signal by
/// the kernel in a way we can rely on, so they are not retried on EINTR.
public enum Mounts {
    /// `mount(2)`.
    public static func mount(source: String, target: String, fsType: String, flags: UInt, data: String?) throws(SystemError) {
        let result: Int32
        if let data {
            result = Glibc.mount(source, target, fsType, flags, data)
        } else {
            result = Glibc.mount(source, target, fsType, flags, nil)
        }
        if result != 0 { throw Errno(rawValue: errno).with("mount \(fsType) on", path: target) }
    }

    /// `umount2(2)`; an unmounted or missing target is not an error.
    public static func unmount(_ target: String, detach: Bool = false) throws(SystemError) {
        let flags: Int32 = detach ? Int32(MNT_DETACH) : 0
        if Glibc.umount2(target, flags) != 0 {
            let code = Errno(rawValue: errno)
            if code == .invalidArgument || code == .noSuchFileOrDirectory { return }
            throw code.with("umount", path: target)
        }
    }

    /// Whether `path` is a mount point in this process's mount namespace.
    public static func isMounted(_ path: String) -> Bool {
        guard let entries = try? MountInfo.current() else { return false }
        return entries.contains { $0.mountPoint == path }
    }

    /// Unmounts every mount at or below `path`, deepest first. Used for cleanup, where
    /// a half-built container may have left several.
    public static func unmountAll(under path: String) throws(SystemError) {
        let entries = (try? MountInfo.current()) ?? []
        let prefix = path.hasSuffix("/") ? path : path + "/"
        let targets =
            entries
            .map(\.mountPoint)
            .filter { $0 == path || $0.hasPrefix(prefix) }
            .sorted { $0.count > $1.count }
        for target in targets {
            do {
                try unmount(target)
            } catch {
                // Busy: fall back to a lazy detach so the tree can still be removed.
                try unmount(target, detach: true)
            }
        }
    }
}
