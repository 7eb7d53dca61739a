import FerryStore
import FerrySystem
import Foundation

/// Builds the OCI config.json for `ferry run`, with the same defaults `runc spec` uses
/// for mounts and namespaces, so configs look familiar to runc and podman users.
public enum SpecBuilder {
    public static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// - Parameters:
    ///   - volumeSources: host directory for each named volume.
    ///   - user: the process's identity, resolved from `options.user` against the image.
    ///   - seccomp: the filter (see `seccomp(for:capabilities:)`), nil for none.
    public static func spec(
        for options: RunOptions, id: String, cgroupParent: String, volumeSources: [String: String], user: OCISpec.User = OCISpec.User(),
        seccomp: OCISpec.Seccomp? = nil
    ) throws(RuntimeError) -> OCISpec {
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
        mounts += options.tmpfs
        var namespaces = ["pid", "ipc", "uts", "mount", "cgroup"].map { OCISpec.Namespace(type: $0) }
        if options.network != .host { namespaces.append(OCISpec.Namespace(type: "network")) }
        var resources = OCISpec.Resources()
        if let memory = options.limits.memoryBytes { resources.memory = OCISpec.Memory(limit: memory) }
        if let cpus = options.limits.cpus {
            resources.cpu = OCISpec.CPU(quota: Int64((cpus * 100_000).rounded()), period: 100_000)
        }
        if let pids = options.limits.pidsMax { resources.pids = OCISpec.Pids(limit: pids) }
        // --privileged may open any device, as in podman.
        resources.devices = options.privileged ? [OCISpec.DeviceRule(allow: true, access: "rwm")] : defaultDevices
        let capabilities = try CapabilitySet.resolve(add: options.capAdd, drop: options.capDrop, privileged: options.privileged)
        if options.terminal, !env.contains(where: { $0.hasPrefix("TERM=") }) { env.append("TERM=xterm") }
        let process = OCISpec.Process(
            terminal: options.terminal, user: user, args: options.command, env: env, cwd: options.workingDirectory ?? "/",
            capabilities: CapabilitySet.spec(capabilities, uid: user.uid, added: options.capAdd), noNewPrivileges: options.noNewPrivileges ? true : nil,
            rlimits: options.ulimits.isEmpty ? nil : options.ulimits
        )
        // --privileged lifts the masks with the capabilities, as in podman.
        let linux = OCISpec.Linux(
            namespaces: namespaces, resources: resources, cgroupsPath: "\(cgroupParent)/\(id)", seccomp: seccomp,
            maskedPaths: options.privileged ? nil : defaultMaskedPaths, readonlyPaths: options.privileged ? nil : defaultReadonlyPaths
        )
        return OCISpec(
            process: process, root: OCISpec.Root(path: "rootfs", readonly: options.readOnly), hostname: hostname, mounts: mounts, linux: linux)
    }

    /// The filter `options` ask for: the default profile (none with --privileged), none
    /// (`seccomp=unconfined`), or a profile file's, each for the container's capabilities.
    public static func seccomp(for options: RunOptions) throws(RuntimeError) -> OCISpec.Seccomp? {
        let capabilities = try CapabilitySet.resolve(add: options.capAdd, drop: options.capDrop, privileged: options.privileged)
        switch options.seccomp {
        case .unconfined:
            return nil
        case .default:
            if options.privileged { return nil }
            return SeccompProfile.defaultProfile(
                capabilities: capabilities, known: SeccompFilter.knownSyscalls(), architecture: SeccompFilter.nativeArchitecture)
        case .file(let path):
            guard let bytes = try? Files.read(path) else {
                throw RuntimeError(.invalidArgument, "cannot read seccomp profile '\(path)'")
            }
            let kernel = (try? HostProbe.kernelRelease()) ?? ""
            let profile = try SeccompProfile.parse(
                Data(bytes), capabilities: capabilities, architecture: SeccompFilter.nativeArchitecture, kernel: kernel, source: path)
            // Refused now rather than at start: the profile must compile.
            _ = try SeccompFilter.compile(profile)
            return profile
        }
    }

    /// The device cgroup rules runc gives a container: nothing but the nodes of its own
    /// /dev (null, zero, full, random, urandom, tty, console, ptmx, pts) and tun may be
    /// opened; any node may be made (mknod), which is harmless once it cannot be opened.
    public static let defaultDevices: [OCISpec.DeviceRule] = [
        .init(allow: false, access: "rwm"),
        .init(allow: true, type: "c", access: "m"), .init(allow: true, type: "b", access: "m"),
        .init(allow: true, type: "c", major: 1, minor: 3, access: "rwm"), .init(allow: true, type: "c", major: 1, minor: 5, access: "rwm"),
        .init(allow: true, type: "c", major: 1, minor: 7, access: "rwm"), .init(allow: true, type: "c", major: 1, minor: 8, access: "rwm"),
        .init(allow: true, type: "c", major: 1, minor: 9, access: "rwm"), .init(allow: true, type: "c", major: 5, minor: 0, access: "rwm"),
        .init(allow: true, type: "c", major: 5, minor: 1, access: "rwm"), .init(allow: true, type: "c", major: 5, minor: 2, access: "rwm"),
        .init(allow: true, type: "c", major: 136, access: "rwm"), .init(allow: true, type: "c", major: 10, minor: 200, access: "rwm"),
    ]

    /// The OCI defaults (runc spec, podman): kernel state a container must not read.
    public static let defaultMaskedPaths = [
        "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
        "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    ]

    /// The OCI defaults: kernel settings a container must not change.
    public static let defaultReadonlyPaths = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

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
