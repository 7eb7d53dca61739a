import CFerryLinux
import FerryCRIU
import FerryRuntime
import FerryStore
import FerrySystem
import Logging
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Launches a container by restoring its CRIU images, as a child of the supervisor
/// (criu_restore_child), into the cgroup the supervisor created, with the supervisor's
/// new stdio pipes in place of the old ones so that `ferry logs` goes on.
public struct RestoreLauncher: ContainerLauncher {
    let volumes: VolumeStore
    /// Leave the restored tree frozen (a migration's destination, until the source has
    /// ended its copy): the cgroup is frozen at CRIU's "pre-resume" notification, while
    /// the tasks are still stopped, so they never run a single instruction.
    let frozen: Bool

    public init(volumes: VolumeStore, frozen: Bool = false) {
        self.volumes = volumes
        self.frozen = frozen
    }

    public var restoresFromImages: Bool { true }

    public func launch(_ context: LaunchContext, logger: Logger) throws -> Int32 {
        let directory = context.containerDirectory
        let metadata = try CheckpointMetadata.load(from: directory)
        var request = RestoreRequest(imagesDirectory: "\(directory)/\(CheckpointMetadata.imagesDirectory)", root: context.rootfs)
        request.workDirectory = directory
        request.tcpEstablished = metadata.tcpEstablished
        request.fileLocks = metadata.fileLocks
        request.lazyPages = metadata.lazyPages ?? false
        request.cgroupRoot = "/\(context.cgroup.path)"
        request.externalMounts = try context.record.volumes.map { volume in
            let source = volume.kind == .named ? try volumes.inspect(volume.source).mountpoint : volume.source
            return (key: volume.destination, hostPath: source)
        }
        let stdio = [context.stdin, context.stdout, context.stderr]
        for (fd, name) in zip(stdio, metadata.stdio) where name.hasPrefix("pipe:") {
            request.inheritedDescriptors.append((fd: fd, key: name))
        }
        // The fds must survive into `criu swrk`, which libcriu forks and execs.
        let network: OwnedFD
        if metadata.network == .host {
            network = try OwnedFD.open("/proc/self/ns/net", O_RDONLY)
            request.inheritedDescriptors.append((fd: network.raw, key: hostNetworkKey))
        } else {
            let fd = ferry_new_network_namespace()
            guard fd >= 0 else {
                throw CheckpointError(
                    .restoreFailed, "cannot restore container '\(context.record.name)': cannot create its network namespace: \(Errno(rawValue: -fd))")
            }
            network = OwnedFD(adopting: fd)
            // CRIU restores sockets, not interfaces (the namespace is external to it): the
            // bridge network's eth0 is rebuilt first with the recorded address and MAC, so
            // restored sockets bound to that address, and their peers' ARP caches, still fit.
            // Disconnected until CRIU has restored the sockets (HostNetwork.attach).
            try ContainerNetworking.attach(context.record, root: context.root, namespace: network, connected: false)
            request.inheritedDescriptors.append((fd: network.raw, key: containerNetworkKey))
        }
        if frozen {
            let cgroup = context.cgroup
            request.notify = { action in
                guard action == "pre-resume" else { return 0 }
                return (try? cgroup.requestFreeze()) != nil ? 0 : 1
            }
        }
        for inherited in request.inheritedDescriptors { setCloseOnExec(inherited.fd, false) }
        defer { for inherited in request.inheritedDescriptors { setCloseOnExec(inherited.fd, true) } }
        logger.debug("restoring with criu", metadata: ["ferry.phase": "restore"])
        do {
            let pid = try CRIUSession().restoreChild(request)
            _ = consume network
            if metadata.network != .host {
                do {
                    try ContainerNetworking.connect(context.record)
                } catch {
                    // The restored tree would run cut off from its network: end it.
                    _ = kill(pid, SIGKILL)
                    throw error
                }
            }
            return pid
        } catch {
            throw CheckpointError(.restoreFailed, "cannot restore container '\(context.record.name)'", cause: error)
        }
    }

    private func setCloseOnExec(_ fd: Int32, _ on: Bool) {
        let flags = fcntl(fd, F_GETFD)
        guard flags >= 0 else { return }
        _ = fcntl(fd, F_SETFD, on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC))
    }
}
