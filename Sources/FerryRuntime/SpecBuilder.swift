import FerryStore

/// Builds the OCI config.json for `ferry run`, with the same defaults `runc spec` uses
/// for mounts and namespaces, so configs look familiar to runc and podman users.
public enum SpecBuilder {
    public static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// - Parameter volumeSources: host directory for each named volume.
    public static func spec(for options: RunOptions, id: String, cgroupParent: String, volumeSources: [String: String]) -> OCISpec {
        var env = ["PATH=\(defaultPath)", "HOME=/root", "container=ferry"]
        let hostname = options.hostname ?? String(id.prefix(12))
        env.append("HOSTNAME=\(hostname)")
        // Later values override earlier ones with the same key, as with `podman run -e`.
        for entry in options.environment {
            let key = entry.split(separator: "=", maxSplits: 1).first.map(String.init) ?? entry
            env.removeAll { $0.hasPrefix("\(key)=") }
            env.append(entry)
        }
        var mounts = defaultMounts
        for volume in options.volumes {
            let source = volume.kind == .named ? (volumeSources[volume.source] ?? volume.source) : volume.source
            var mountOptions = ["rbind", "rprivate"]
            mountOptions.append(volume.readOnly ? "ro" : "rw")
            mounts.append(OCISpec.Mount(destination: volume.destination, type: "bind", source: source, options: mountOptions))
        }
        var namespaces = ["pid", "ipc", "uts", "mount"].map { OCISpec.Namespace(type: $0) }
        if options.network == .none { namespaces.append(OCISpec.Namespace(type: "network")) }
        var resources = OCISpec.Resources()
        if let memory = options.limits.memoryBytes { resources.memory = OCISpec.Memory(limit: memory) }
        if let cpus = options.limits.cpus {
            resources.cpu = OCISpec.CPU(quota: Int64((cpus * 100_000).rounded()), period: 100_000)
        }
        if let pids = options.limits.pidsMax { resources.pids = OCISpec.Pids(limit: pids) }
        return OCISpec(
            process: OCISpec.Process(args: options.command, env: env, cwd: options.workingDirectory ?? "/"),
            root: OCISpec.Root(path: "rootfs"),
            hostname: hostname,
            mounts: mounts,
            linux: OCISpec.Linux(namespaces: namespaces, resources: resources, cgroupsPath: "\(cgroupParent)/\(id)")
        )
    }

    /// The limits a spec asks for, in the form the cgroup code applies.
    public static func limits(of spec: OCISpec) -> CgroupLimits {
        var limits = CgroupLimits()
        let resources = spec.linux?.resources
        limits.memoryBytes = resources?.memory?.limit
        if let quota = resources?.cpu?.quota, quota > 0 {
            let period = Double(resources?.cpu?.period ?? 100_000)
            limits.cpus = Double(quota) / period
        }
        limits.pidsMax = resources?.pids?.limit
        return limits
    }

    /// The mounts every container gets, as `runc spec` writes them.
    public static let defaultMounts: [OCISpec.Mount] = [
        .init(destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"]),
        .init(destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        .init(destination: "/dev/pts", type: "devpts", source: "devpts", options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
        .init(destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        .init(destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"]),
        .init(destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"]),
    ]
}
