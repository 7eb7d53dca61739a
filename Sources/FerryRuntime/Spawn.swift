import CFerryLinux
import FerrySystem
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// C strings that stay valid until the arena goes away: the spawn shim's structs point
/// into them while the child is being created.
final class CStringArena {
    private var owned: [UnsafeMutablePointer<CChar>] = []

    func string(_ value: String) -> UnsafeMutablePointer<CChar>? {
        guard let copy = strdup(value) else { return nil }
        owned.append(copy)
        return copy
    }

    /// A NULL-terminated argv/envp array.
    func array(_ values: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
        let pointer = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: values.count + 1)
        for (index, value) in values.enumerated() { pointer[index] = string(value) }
        pointer[values.count] = nil
        arrays.append(pointer)
        return pointer
    }

    private var arrays: [UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>] = []

    deinit {
        owned.forEach { free($0) }
        arrays.forEach { $0.deallocate() }
    }
}

/// The nsfs descriptors a spawn joins, by OCI type, closed when the spawn is done (a
/// class: `OwnedFD` cannot be kept in a dictionary).
final class JoinedNamespaces {
    var descriptors: [String: Int32] = [:]

    deinit {
        for fd in descriptors.values { _ = close(fd) }
    }
}

/// What the spawn shim needs to start a container's init.
public struct SpawnRequest: Sendable {
    public var rootfs: String
    public var mounts: [PlannedMount]
    public var newNetwork: Bool
    public var hostname: String?
    public var workingDirectory: String
    public var arguments: [String]
    public var environment: [String]
    public var security: ProcessSecurity
    /// Unshared once the child is in its cgroup, which becomes the root of its view.
    public var newCgroupNamespace = false
    public var maskedPaths: [String] = []
    public var readonlyPaths: [String] = []
    public var readonlyRoot = false
    /// Namespaces to join rather than create, by OCI type ("network", "ipc", "uts"):
    /// the nsfs files a pod pinned (a container of a pod).
    public var joinNamespaces: [String: String] = [:]
    /// A socket the init sends the master of its new terminal over (a pty of the
    /// container's devpts that becomes its stdio); nil: stdio as given.
    public var consoleSocket: Int32?

    public init(
        rootfs: String, mounts: [PlannedMount], newNetwork: Bool, hostname: String?, workingDirectory: String, arguments: [String], environment: [String],
        security: ProcessSecurity
    ) {
        self.rootfs = rootfs
        self.mounts = mounts
        self.newNetwork = newNetwork
        self.hostname = hostname
        self.workingDirectory = workingDirectory
        self.arguments = arguments
        self.environment = environment
        self.security = security
    }
}

/// The shim's view of a `ProcessSecurity`; its pointers are valid inside `body` only.
func withSecurity<R>(_ security: ProcessSecurity, _ body: (ferry_security) -> R) -> R {
    let program = security.seccompProgram ?? []
    let limits = security.rlimits.map { ferry_rlimit(resource: $0.resource, soft: $0.soft, hard: $0.hard) }
    return program.withUnsafeBytes { filter in
        security.groups.withUnsafeBufferPointer { groups in
            limits.withUnsafeBufferPointer { rlimits in
                var shim = ferry_security()
                shim.cap_bounding = security.bounding
                shim.cap_effective = security.effective
                shim.cap_permitted = security.permitted
                shim.cap_inheritable = security.inheritable
                shim.cap_ambient = security.ambient
                shim.no_new_privileges = security.noNewPrivileges ? 1 : 0
                shim.seccomp_filter = security.seccompProgram == nil ? nil : filter.baseAddress
                shim.seccomp_length = filter.count
                shim.uid = security.uid
                shim.gid = security.gid
                shim.groups = groups.baseAddress
                shim.n_groups = groups.count
                shim.rlimits = rlimits.baseAddress
                shim.n_rlimits = rlimits.count
                return body(shim)
            }
        }
    }
}

/// A container init that has been cloned but is held before exec, so the supervisor can
/// put it into its cgroups first.
public struct PendingContainer: ~Copyable {
    public let pid: Int32
    private let sync: OwnedFD
    private let errors: OwnedFD
    /// The paths the child's report may name by index.
    private let paths: Spawner.ReportPaths

    init(pid: Int32, sync: consuming OwnedFD, errors: consuming OwnedFD, paths: Spawner.ReportPaths = .init()) {
        self.paths = paths
        self.pid = pid
        self.sync = sync
        self.errors = errors
    }

    /// Lets the child exec, and waits until it did (or reports why it could not).
    public consuming func release() throws(RuntimeError) {
        do {
            try sync.writeAll([1])
        } catch {
            // The child died before reading: its error report says why.
        }
        let report: [UInt8]
        do {
            report = try errors.readAll()
        } catch {
            throw RuntimeError(.spawnFailed, "cannot read the container's start report", cause: error)
        }
        if report.isEmpty { return }
        _ = try? Processes.wait(pid)
        throw Spawner.describe(report, paths: paths)
    }

    /// Gives up on the child: it sees EOF on its sync pipe and exits without exec.
    public consuming func abandon() {
        let pid = self.pid
        _ = consume self
        _ = try? Processes.wait(pid)
    }
}

public enum Spawner {
    /// Clones the container's init in new namespaces and prepares its filesystem; it then
    /// waits for `PendingContainer.release()`.
    public static func spawn(_ request: SpawnRequest, stdio: (Int32, Int32, Int32)) throws(RuntimeError) -> PendingContainer {
        let arena = CStringArena()
        var mounts = request.mounts.map { mount in
            ferry_mount(
                source: arena.string(mount.source),
                target: arena.string(mount.target),
                fstype: arena.string(mount.fsType),
                flags: mount.flags,
                data: mount.data.flatMap { arena.string($0) },
                kind: Int32(mount.kind == .bind ? FERRY_MOUNT_BIND.rawValue : FERRY_MOUNT_FS.rawValue),
                recursive: mount.recursive ? 1 : 0
            )
        }
        var devices = MountPlan.defaultDevices.map { device in
            ferry_device(path: arena.string(device.path), mode: UInt32(S_IFCHR) | 0o666, major: device.major, minor: device.minor)
        }
        var symlinks = MountPlan.defaultSymlinks.map { link in
            ferry_symlink(target: arena.string(link.target), path: arena.string(link.path))
        }
        var syncFD: Int32 = -1
        var errorFD: Int32 = -1
        // Opened here, in the parent, and inherited by the clone: the child's view of
        // the filesystem changes before it could open them itself.
        let joined = JoinedNamespaces()
        for (type, path) in request.joinNamespaces {
            do {
                joined.descriptors[type] = try OwnedFD.open(path, O_RDONLY).take()
            } catch {
                throw RuntimeError(.spawnFailed, "cannot open the \(type) namespace to join at \(path)", cause: error)
            }
        }
        let joinFDs = (joined.descriptors["network"] ?? -1, joined.descriptors["ipc"] ?? -1, joined.descriptors["uts"] ?? -1)
        let masked = arena.array(request.maskedPaths)
        let readonly = arena.array(request.readonlyPaths)
        let pid: Int32 = mounts.withUnsafeMutableBufferPointer { mountBuffer in
            devices.withUnsafeMutableBufferPointer { deviceBuffer in
                symlinks.withUnsafeMutableBufferPointer { linkBuffer in
                    withSecurity(request.security) { security in
                        var spec = ferry_spawn()
                        spec.security = security
                        spec.new_cgroup_namespace = request.newCgroupNamespace ? 1 : 0
                        spec.masked_paths = UnsafeRawPointer(masked).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
                        spec.n_masked = request.maskedPaths.count
                        spec.readonly_paths = UnsafeRawPointer(readonly).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
                        spec.n_readonly = request.readonlyPaths.count
                        spec.readonly_root = request.readonlyRoot ? 1 : 0
                        spec.new_network = request.newNetwork ? 1 : 0
                        spec.join_pod = request.joinNamespaces.isEmpty ? 0 : 1
                        spec.join_net_fd = joinFDs.0
                        spec.join_ipc_fd = joinFDs.1
                        spec.join_uts_fd = joinFDs.2
                        spec.rootfs = UnsafePointer(arena.string(request.rootfs))
                        spec.mounts = UnsafePointer(mountBuffer.baseAddress)
                        spec.n_mounts = mountBuffer.count
                        spec.devices = UnsafePointer(deviceBuffer.baseAddress)
                        spec.n_devices = deviceBuffer.count
                        spec.symlinks = UnsafePointer(linkBuffer.baseAddress)
                        spec.n_symlinks = linkBuffer.count
                        spec.hostname = request.hostname.flatMap { UnsafePointer(arena.string($0)) }
                        spec.cwd = UnsafePointer(arena.string(request.workingDirectory))
                        spec.argv = UnsafePointer(arena.array(request.arguments))
                        spec.envp = UnsafePointer(arena.array(request.environment))
                        spec.stdio = stdio
                        if let socket = request.consoleSocket {
                            spec.terminal = 1
                            spec.console_socket = socket
                        }
                        return ferry_spawn_container(&spec, &syncFD, &errorFD)
                    }
                }
            }
        }
        withExtendedLifetime(arena) {}
        withExtendedLifetime(joined) {}
        if pid < 0 {
            throw RuntimeError(.spawnFailed, "cannot create the container process: clone: \(Errno(rawValue: -pid))")
        }
        return PendingContainer(
            pid: pid, sync: OwnedFD(adopting: syncFD), errors: OwnedFD(adopting: errorFD),
            paths: ReportPaths(
                masked: request.maskedPaths, readonly: request.readonlyPaths,
                rlimits: request.security.rlimits.map { limit in
                    ProcessSecurity.rlimitNumbers.first { $0.value == limit.resource }.map { "\($0.key)=\(limit.soft):\(limit.hard)" } ?? "#\(limit.resource)"
                }))
    }

    /// What a child's report names by index, besides mounts.
    struct ReportPaths: Sendable {
        var masked: [String] = []
        var readonly: [String] = []
        var rlimits: [String] = []
    }

    /// Turns a child's (stage, errno, index) report into a message.
    static func describe(_ report: [UInt8], paths: ReportPaths = .init()) -> RuntimeError {
        guard report.count >= MemoryLayout<ferry_child_error>.size else {
            return RuntimeError(.spawnFailed, "the container process failed to start (short report)")
        }
        let error = report.withUnsafeBytes { $0.loadUnaligned(as: ferry_child_error.self) }
        let stage = String(cString: ferry_stage_name(error.stage))
        let reason = Errno(rawValue: error.err).description
        if error.stage == Int32(FERRY_STAGE_EXEC.rawValue) {
            // The shell's and podman's distinction: 127 for a missing command, 126 for
            // one that exists but cannot run.
            let code: RuntimeError.Code = error.err == ENOENT || error.err == ENOTDIR ? .commandNotFound : .commandNotInvocable
            return RuntimeError(code, "cannot start the container's command: exec: \(reason)")
        }
        var index = error.index >= 0 ? " #\(error.index)" : ""
        let position = Int(error.index)
        if error.stage == Int32(FERRY_STAGE_CAPABILITIES.rawValue), position >= 0, position < CapabilitySet.names.count {
            index = " CAP_\(CapabilitySet.names[position])"
        } else if error.stage == Int32(FERRY_STAGE_MASK.rawValue), position >= 0, position < paths.masked.count {
            index = " \(paths.masked[position])"
        } else if error.stage == Int32(FERRY_STAGE_READONLY_PATH.rawValue), position >= 0, position < paths.readonly.count {
            index = " \(paths.readonly[position])"
        } else if error.stage == Int32(FERRY_STAGE_RLIMIT.rawValue), position >= 0, position < paths.rlimits.count {
            index = " \(paths.rlimits[position])"
        }
        return RuntimeError(.spawnFailed, "cannot start the container: \(stage)\(index): \(reason)")
    }

    /// Runs a command in a running container's namespaces and cgroups; returns its exit
    /// status. stdio is inherited, unless `terminal`: the command then gets a new terminal
    /// of the container, whose master is handed to `relay` once the command runs; the
    /// command is waited for when `relay` returns.
    public static func exec(
        pid: Int32, cgroupProcsFiles: [String], workingDirectory: String, arguments: [String], environment: [String], joinNetwork: Bool,
        joinCgroupNamespace: Bool, security: ProcessSecurity, terminal: Bool = false,
        relay: (borrowing OwnedFD) -> Void = { _ in }
    ) throws(RuntimeError) -> Int32 {
        let console: SocketPair
        do {
            console = try SocketPair()
        } catch {
            throw RuntimeError(.execFailed, "cannot make a terminal for '\(arguments.first ?? "")'", cause: error)
        }
        let consoleSocket: Int32? = terminal ? console.second.raw : nil
        // mnt must come last: after it, /proc paths of the host no longer resolve. The
        // cgroup namespace is joined after the cgroup itself (the helper does that first).
        var types = ["ipc", "uts"]
        if joinNetwork { types.append("net") }
        if joinCgroupNamespace { types.append("cgroup") }
        types += ["pid", "mnt"]
        var namespaceFDs: [Int32] = []
        var cgroupFDs: [Int32] = []
        defer {
            namespaceFDs.forEach { _ = close($0) }
            cgroupFDs.forEach { _ = close($0) }
        }
        for type in types {
            let path = "/proc/\(pid)/ns/\(type)"
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd < 0 { throw RuntimeError(.execFailed, "cannot open \(path): \(Errno(rawValue: errno))") }
            namespaceFDs.append(fd)
        }
        for file in cgroupProcsFiles {
            let fd = open(file, O_WRONLY | O_CLOEXEC)
            if fd < 0 { throw RuntimeError(.execFailed, "cannot open \(file): \(Errno(rawValue: errno))") }
            cgroupFDs.append(fd)
        }
        let arena = CStringArena()
        var errorFD: Int32 = -1
        let helper: Int32 = namespaceFDs.withUnsafeBufferPointer { ns in
            cgroupFDs.withUnsafeBufferPointer { cg in
                withSecurity(security) { shimSecurity in
                    var spec = ferry_exec()
                    spec.security = shimSecurity
                    spec.ns_fds = ns.baseAddress
                    spec.n_ns = ns.count
                    spec.cgroup_fds = cg.baseAddress
                    spec.n_cgroup = cg.count
                    spec.cwd = UnsafePointer(arena.string(workingDirectory))
                    spec.argv = UnsafePointer(arena.array(arguments))
                    spec.envp = UnsafePointer(arena.array(environment))
                    if let consoleSocket {
                        spec.terminal = 1
                        spec.console_socket = consoleSocket
                    }
                    return ferry_exec_in(&spec, &errorFD)
                }
            }
        }
        withExtendedLifetime(arena) {}
        if helper < 0 { throw RuntimeError(.execFailed, "cannot fork: \(Errno(rawValue: -helper))") }
        let errors = OwnedFD(adopting: errorFD)
        let report = (try? errors.readAll()) ?? []
        // The command sent its terminal's master before it exec'd, so this does not block.
        if report.isEmpty, terminal, let received = try? console.first.receiveDescriptor() {
            relay(received)
        }
        let status: Int32
        do {
            status = try Processes.wait(helper)
        } catch {
            throw RuntimeError(.execFailed, "cannot wait for the command", cause: error)
        }
        if !report.isEmpty {
            let failure = describe(report)
            let code: RuntimeError.Code = failure.code == .spawnFailed ? .execFailed : failure.code
            throw RuntimeError(code, failure.message.replacingOccurrences(of: "the container's command", with: "'\(arguments.first ?? "")'"))
        }
        return status
    }
}
