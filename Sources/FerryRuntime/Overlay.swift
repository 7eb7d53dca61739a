import FerrySystem

#if canImport(Glibc)
    import Glibc
#endif

/// The container's root filesystem: overlayfs with the image as the read-only lower layer
/// and a per-container upper and work directory. The upper directory is exactly the
/// container's change to its image, which a checkpoint later packs as the rootfs diff.
public enum Overlay {
    /// `lower` is one directory or several joined by ':', top first (an image's layers).
    /// - Parameter readOnly: mount the overlay itself read-only (MS_RDONLY).
    public static func mount(lower: String, upper: String, work: String, at target: String, readOnly: Bool = false) throws(RuntimeError) {
        let lowers = lower.split(separator: ":").map(String.init)
        for path in lowers + [upper, work, target] where !Files.isDirectory(path) {
            throw RuntimeError(.mountFailed, "cannot mount the container's rootfs: '\(path)' is not a directory")
        }
        let options = "lowerdir=\(lower),upperdir=\(upper),workdir=\(work)"
        do {
            try Mounts.mount(source: "overlay", target: target, fsType: "overlay", flags: readOnly ? UInt(MS_RDONLY) : 0, data: options)
        } catch {
            throw RuntimeError(.mountFailed, "cannot mount the container's rootfs", cause: error)
        }
    }

    /// Unmounts the rootfs and anything left below it; a no-op when nothing is mounted.
    public static func unmount(_ target: String) throws(RuntimeError) {
        do {
            try Mounts.unmountAll(under: target)
        } catch {
            throw RuntimeError(.mountFailed, "cannot unmount the container's rootfs", cause: error)
        }
    }
}
