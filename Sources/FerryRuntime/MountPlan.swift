#if canImport(Glibc)
    import Glibc
#endif

/// One mount as the spawn shim performs it.
public struct PlannedMount: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case filesystem
        case bind
    }

    public var kind: Kind
    public var source: String
    public var target: String
    public var fsType: String
    public var flags: UInt
    public var data: String?
    public var recursive: Bool

    public var readOnly: Bool { flags & UInt(MS_RDONLY) != 0 }
}

/// Turns OCI mount entries into mount(2) calls: option words become MS_* flags, the rest
/// become the filesystem's data string.
public enum MountPlan {
    static let flagOptions: [String: (set: Bool, flag: UInt)] = [
        "ro": (true, UInt(MS_RDONLY)), "rw": (false, UInt(MS_RDONLY)),
        "nosuid": (true, UInt(MS_NOSUID)), "suid": (false, UInt(MS_NOSUID)),
        "nodev": (true, UInt(MS_NODEV)), "dev": (false, UInt(MS_NODEV)),
        "noexec": (true, UInt(MS_NOEXEC)), "exec": (false, UInt(MS_NOEXEC)),
        "sync": (true, UInt(MS_SYNCHRONOUS)), "async": (false, UInt(MS_SYNCHRONOUS)),
        "noatime": (true, UInt(MS_NOATIME)), "atime": (false, UInt(MS_NOATIME)),
        "nodiratime": (true, UInt(MS_NODIRATIME)), "diratime": (false, UInt(MS_NODIRATIME)),
        "relatime": (true, UInt(MS_RELATIME)), "norelatime": (false, UInt(MS_RELATIME)),
        "strictatime": (true, UInt(MS_STRICTATIME)), "nostrictatime": (false, UInt(MS_STRICTATIME)),
        "mand": (true, UInt(MS_MANDLOCK)), "nomand": (false, UInt(MS_MANDLOCK)),
    ]

    /// Propagation words are accepted but not applied: every container mount is private,
    /// so nothing propagates back to the host.
    static let ignoredOptions: Set<String> = [
        "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable", "defaults",
    ]

    /// - Parameter bundleDirectory: relative bind sources resolve against it (OCI bundles).
    /// - Returns: the mounts in order, skipping cgroup mounts (containers get no cgroupfs:
    ///   CRIU would have to restore it and nothing here needs it).
    public static func plan(_ mounts: [OCISpec.Mount], bundleDirectory: String? = nil) throws(RuntimeError) -> [PlannedMount] {
        var planned: [PlannedMount] = []
        for mount in mounts {
            guard mount.destination.hasPrefix("/"), !mount.destination.split(separator: "/").contains("..") else {
                throw RuntimeError(.invalidArgument, "mount destination '\(mount.destination)' must be absolute and without '..'")
            }
            let options = mount.options ?? []
            let type = mount.type ?? ""
            if type == "cgroup" || type == "cgroup2" { continue }
            let isBind = type == "bind" || options.contains("bind") || options.contains("rbind")
            var flags: UInt = 0
            var data: [String] = []
            for option in options {
                if option == "bind" || option == "rbind" || ignoredOptions.contains(option) { continue }
                if let (set, flag) = flagOptions[option] {
                    if set { flags |= flag } else { flags &= ~flag }
                } else {
                    data.append(option)
                }
            }
            var source = mount.source ?? type
            if isBind {
                guard let given = mount.source, !given.isEmpty else {
                    throw RuntimeError(.invalidArgument, "bind mount to '\(mount.destination)' has no source")
                }
                source = given.hasPrefix("/") ? given : "\(bundleDirectory ?? ".")/\(given)"
            }
            planned.append(
                PlannedMount(
                    kind: isBind ? .bind : .filesystem,
                    source: source,
                    target: mount.destination,
                    fsType: isBind ? "" : type,
                    flags: flags,
                    data: data.isEmpty || isBind ? nil : data.joined(separator: ","),
                    recursive: options.contains("rbind")
                ))
        }
        return planned
    }

    /// Device nodes created in the container's /dev (a fresh tmpfs), as runc does.
    public static let defaultDevices: [(path: String, major: UInt32, minor: UInt32)] = [
        ("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
        ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0),
    ]

    public static let defaultSymlinks: [(target: String, path: String)] = [
        ("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"),
        ("pts/ptmx", "/dev/ptmx"),
    ]
}
