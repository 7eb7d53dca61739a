/// Linux capabilities by name, and the sets a container starts with.
public enum CapabilitySet {
    /// Every capability Linux defines, by number (linux/capability.h), without "CAP_".
    public static let names: [String] = [
        "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
        "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
        "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
        "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
        "CHECKPOINT_RESTORE",
    ]

    /// podman's default set (containers.conf `default_capabilities`): CapEff 0x800405fb.
    public static let podmanDefault: [String] = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETFCAP",
        "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
    ]

    /// Every capability, spelled "CAP_X" (`--privileged`, `--cap-add ALL`).
    public static var all: [String] { names.map { "CAP_\($0)" } }

    /// "chown", "CAP_CHOWN", "cap_chown" -> "CAP_CHOWN"; nil if Linux has no such capability.
    public static func canonical(_ name: String) -> String? {
        var upper = name.uppercased()
        if upper.hasPrefix("CAP_") { upper.removeFirst(4) }
        return names.contains(upper) ? "CAP_\(upper)" : nil
    }

    /// The bit mask of spec names; an unknown name is an error naming it.
    public static func mask(_ list: [String]?) throws(RuntimeError) -> UInt64 {
        var mask: UInt64 = 0
        for name in list ?? [] {
            guard let canonical = canonical(name), let index = names.firstIndex(of: String(canonical.dropFirst(4))) else {
                throw RuntimeError(.invalidArgument, "unknown capability '\(name)'")
            }
            mask |= 1 << UInt64(index)
        }
        return mask
    }

    /// The set `--cap-add`/`--cap-drop`/`--privileged` ask for, from podman's default:
    /// drops first (ALL empties it), then adds (ALL fills it), as podman applies them.
    public static func resolve(add: [String], drop: [String], privileged: Bool) throws(RuntimeError) -> [String] {
        func canonicalList(_ list: [String], flag: String) throws(RuntimeError) -> [String] {
            var result: [String] = []
            for name in list {
                if name.uppercased() == "ALL" {
                    result.append("ALL")
                    continue
                }
                guard let canonical = canonical(name) else {
                    throw RuntimeError(.invalidArgument, "\(flag) \(name): unknown capability")
                }
                result.append(canonical)
            }
            return result
        }
        let added = try canonicalList(add, flag: "--cap-add")
        let dropped = try canonicalList(drop, flag: "--cap-drop")
        if privileged { return all }
        var set = podmanDefault
        if dropped.contains("ALL") { set = [] }
        set.removeAll { dropped.contains($0) }
        if added.contains("ALL") { return all.filter { !dropped.contains($0) || added.contains($0) } }
        for name in added where !set.contains(name) { set.append(name) }
        return all.filter { set.contains($0) }
    }

    /// The spec's capability sets for a process running as `uid`, as podman makes them:
    /// root gets the set in bounding, effective and permitted. Anyone else gets the set as
    /// its bounding set and holds only what `--cap-add` named (`added`), also in the
    /// inheritable and ambient sets: the kernel clears a non-root process's capabilities
    /// at exec, and ambient ones are what survives it.
    public static func spec(_ set: [String], uid: UInt32, added: [String] = []) -> OCISpec.Capabilities {
        if uid == 0 { return OCISpec.Capabilities(bounding: set, effective: set, inheritable: [], permitted: set, ambient: []) }
        let requested = Set(added.compactMap(canonical))
        let held = added.contains { $0.uppercased() == "ALL" } ? set : set.filter { requested.contains($0) }
        return OCISpec.Capabilities(bounding: set, effective: held, inheritable: held, permitted: held, ambient: held)
    }
}
