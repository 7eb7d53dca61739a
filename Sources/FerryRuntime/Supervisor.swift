import FerryNetwork
import FerryStore
import FerrySystem
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// The per-container supervisor (the role conmon plays for podman): it builds the
/// container (cgroup, rootfs, init process), then stays as the parent and reaper of the
/// container's init, owns its stdio pipes, writes its log file and records its exit.
///
/// The CLI is daemonless: `ferry run -d` starts a supervisor process and returns once it
/// reports ready; `ferry run` runs the supervisor in the foreground.
public struct Supervisor {
    public struct Options: Sendable {
        /// Pass the container's stdio through this process's stdio.
        public var foreground: Bool
        /// A failed start removes the container's state too (its first start, by `run`).
        public var removeOnFailure: Bool
        /// In the foreground: pass our stdin to the container (`run -t` without `-i` does not).
        public var input = true

        public init(foreground: Bool, removeOnFailure: Bool) {
            self.foreground = foreground
            self.removeOnFailure = removeOnFailure
        }
    }

    let store: ContainerStore
    let id: String
    let options: Options
    let launcher: any ContainerLauncher
    let logger: Logger

    public init(store: ContainerStore, id: String, options: Options, launcher: any ContainerLauncher = FreshLauncher(), logger: Logger) {
        self.store = store
        self.id = id
        self.options = options
        self.launcher = launcher
        self.logger = logger
    }

    /// Starts the container. On success returns the running container's handle, to be
    /// `supervise`d; on failure everything built so far has been undone.
    public func start() throws -> StartedContainer {
        var record = try store.load(id: id)
        let specData = try store.loadConfig(id: id)
        let spec: OCISpec
        do {
            spec = try JSONDecoder().decode(OCISpec.self, from: specData)
        } catch {
            throw RuntimeError(.invalidArgument, "the config of container '\(record.name)' is not a valid OCI spec", cause: error)
        }
        var logger = logger
        logger[metadataKey: "ferry.container"] = "\(record.name)"

        let cgroup = try ContainerCgroup(layout: CgroupLayout.current(), path: "\(store.root.cgroupParent)/\(id)")
        let rootfs = store.rootfsPath(id)
        var undo: [() -> Void] = []
        func rollback() {
            for step in undo.reversed() { step() }
        }
        do {
            // The claim, under the lock: a second start or restore of the same container
            // (run meanwhile) finds it claimed and refuses, so only one copy can run.
            let (began, abandoned): (LifecycleEvent, LifecycleEvent) =
                launcher.restoresFromImages
                ? (.restoreBegan(supervisorPid: getpid(), supervisorStartTime: Processes.startTime(of: getpid()), at: Date()), .restoreAbandoned)
                : (.startBegan(supervisorPid: getpid(), supervisorStartTime: Processes.startTime(of: getpid()), at: Date()), .startAbandoned)
            try store.withLock(id) {
                record = try store.load(id: id)
                record.status = try record.status.after(began, container: record.name)
                try store.save(record)
            }
            undo.append {
                try? store.withLock(id) {
                    var current = try store.load(id: id)
                    current.status = try current.status.after(abandoned, container: current.name)
                    try store.save(current)
                }
            }
            logger.debug("creating cgroup", metadata: ["ferry.phase": "cgroup"])
            try cgroup.create()
            undo.append { try? cgroup.remove() }
            try cgroup.apply(SpecBuilder.limits(of: spec))
            // Before the init exists (fresh) or is restored: CRIU's soft cgroup mode
            // leaves the properties of a cgroup it did not create to us.
            if let devices = spec.linux?.resources?.devices {
                var rules: [(allow: Bool, rule: String)] = []
                for device in devices {
                    guard let rule = device.cgroupRule else {
                        throw RuntimeError(.invalidArgument, "container '\(record.name)': invalid device rule \(device) in its config")
                    }
                    rules.append((allow: device.allow, rule: rule))
                }
                try cgroup.restrictDevices(rules)
            }

            logger.debug("mounting rootfs", metadata: ["ferry.phase": "rootfs"])
            // A restored container's root mount is CRIU's bind of this mount, without the
            // read-only flag the container's own remount gave it: a read-only root is
            // read-only here, for a restore (its mount points exist in the upper layer
            // since its first start, which made them before its own remount).
            let readOnly = (spec.root.readonly ?? false) && launcher.restoresFromImages
            try Overlay.mount(lower: record.lowerDirectory, upper: store.upperPath(id), work: store.workPath(id), at: rootfs, readOnly: readOnly)
            undo.append { try? Overlay.unmount(rootfs) }

            let stdout = try OwnedPipe()
            let stderr = try OwnedPipe()
            // stdin is a pipe even when detached (its write end is simply closed, so a
            // reader sees EOF as from /dev/null): CRIU can hand a pipe to the restored
            // tree (inherit-fd), but not a host file outside the container's mounts.
            let stdinPipe = try OwnedPipe()
            let stdin = stdinPipe.readEnd
            var stdinWriter: OwnedFD?
            if options.foreground, options.input {
                stdinWriter = .some(stdinPipe.writeEnd)
            }
            // `-t`: the init makes its terminal inside the container and sends us the master.
            let terminal = spec.process.terminal == true && !launcher.restoresFromImages
            let console = try SocketPair()
            let context = LaunchContext(
                record: record, spec: spec, rootfs: rootfs, cgroup: cgroup,
                containerDirectory: store.directory(id), root: store.root,
                stdin: stdin.raw, stdout: stdout.writeEnd.raw, stderr: stderr.writeEnd.raw,
                consoleSocket: terminal ? console.second.raw : nil
            )
            logger.debug("launching init", metadata: ["ferry.phase": "launch"])
            let pid = try launcher.launch(context, logger: logger)
            undo.append {
                _ = kill(pid, SIGKILL)
                _ = try? Processes.wait(pid)
            }
            _ = consume stdin
            // The init sent the master before it waited for release, so this does not block.
            var master: OwnedFD? = nil
            if terminal {
                let received: OwnedFD?
                do {
                    received = try console.first.receiveDescriptor()
                } catch {
                    throw RuntimeError(.spawnFailed, "cannot receive the terminal of container '\(record.name)'", cause: error)
                }
                guard let received else {
                    throw RuntimeError(.spawnFailed, "container '\(record.name)' did not send its terminal")
                }
                if options.foreground, Terminal.isTerminal(0), let size = try? Terminal.windowSize(0) {
                    try? Terminal.setWindowSize(received.raw, size)
                }
                master = consume received
            }

            let running = RunningState(pid: pid, pidStartTime: Processes.startTime(of: pid), supervisorPid: getpid(), startedAt: Date())
            try store.withLock(id) {
                // Re-read: the policies' counters may have changed since we loaded it.
                record = try store.load(id: id)
                record.status = try record.status.after(.launched(running), container: record.name)
                record.stopRequested = nil
                try store.save(record)
            }
            logger.info("container started", metadata: ["ferry.pid": "\(pid)"])
            if let terminal = master {
                // The master is both the output and (interactive) the input.
                let writer = stdinWriter != nil ? try terminal.duplicate() : nil
                return StartedContainer(
                    record: record, cgroup: cgroup, pid: pid, stdout: terminal, stderr: stderr.readEnd, stdinWriter: writer, terminal: true)
            }
            return StartedContainer(
                record: record, cgroup: cgroup, pid: pid,
                stdout: stdout.readEnd, stderr: stderr.readEnd, stdinWriter: stdinWriter, terminal: false
            )
        } catch {
            rollback()
            if options.removeOnFailure {
                // CRIU's log of a failed restore is what explains it: it goes with the
                // container's directory unless it is kept elsewhere, and the error names
                // where.
                let kept = keepRestoreLog(of: record)
                try? store.remove(record)
                if record.endpoint != nil {
                    try? NetworkStore(root: store.root).withLock {
                        try HostNetwork.sync(root: store.root, containers: store.list())
                    }
                }
                let volumes = VolumeStore(root: store.root)
                for name in record.createdVolumes ?? [] { try? volumes.remove(name, usedBy: []) }
                if let kept {
                    throw RuntimeError(.spawnFailed, "\(error)".replacingOccurrences(of: kept.from, with: kept.to))
                }
            }
            // Otherwise the record keeps the state it had (created, or checkpointed with
            // its images intact, ready for another try).
            throw error
        }
    }

    /// Moves CRIU's restore log out of a container directory about to be removed, to
    /// `<root>/logs/restore-<name>-<time>.log`; returns both paths, or nil if there was none.
    private func keepRestoreLog(of record: ContainerRecord) -> (from: String, to: String)? {
        let from = "\(store.directory(record.id))/restore.log"
        guard Files.exists(from) else { return nil }
        let logs = store.root.logsDirectory
        let stamp = Int(Date().timeIntervalSince1970)
        let to = "\(logs)/restore-\(record.name)-\(stamp).log"
        do {
            if !Files.exists(logs) { try Files.createDirectory(logs, mode: 0o700) }
            try Files.move(from, to: to)
        } catch {
            return nil
        }
        return (from, to)
    }

    /// Pumps the container's output into its log (and our stdio in the foreground) until
    /// the init exits, then records the exit and tears down the rootfs and cgroup.
    /// Returns the container's exit code.
    public func supervise(_ container: consuming StartedContainer) -> Int32 {
        let pid = container.pid
        SignalForwarder.install(forwardingTo: pid)
        let log: OwnedFD?
        do {
            log = try OwnedFD.open(store.logPath(id), O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        } catch {
            logger.error("cannot open the container log: \(error)")
            log = nil
        }
        let times = try? OwnedFD.open(store.logTimesPath(id), O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        var open: [(fd: Int32, echo: Int32)] = [(container.stdout.raw, 1), (container.stderr.raw, 2)]
        var stdinOpen = container.stdinWriter != nil
        // The user's terminal, raw while the container's terminal does the line editing;
        // put back when this function returns, however it does.
        let userTerminal = container.terminal && options.foreground && Terminal.isTerminal(0)
        let rawMode = RawTerminalMode(0, enabled: userTerminal && stdinOpen)
        let resizedRaw = userTerminal ? (try? WindowChangeSignal.install()) ?? -1 : -1
        var buffer = [UInt8](repeating: 0, count: 65536)
        var schedule = SnapshotSchedule(policy: container.record.snapshotPolicy)
        // Detached with a terminal: `ferry attach` connects here.
        let attach: AttachServer? = container.terminal && !options.foreground ? try? AttachServer(directory: store.directory(id)) : nil
        let listenerRaw = attach?.listenerFD ?? -1
        while !open.isEmpty {
            var fds = open.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            if stdinOpen { fds.append(pollfd(fd: 0, events: Int16(POLLIN), revents: 0)) }
            if resizedRaw >= 0 { fds.append(pollfd(fd: resizedRaw, events: Int16(POLLIN), revents: 0)) }
            if listenerRaw >= 0 { fds.append(pollfd(fd: listenerRaw, events: Int16(POLLIN), revents: 0)) }
            let clientRaw = attach?.clientFD ?? -1
            if clientRaw >= 0 { fds.append(pollfd(fd: clientRaw, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&fds, nfds_t(fds.count), schedule.pollTimeout())
            schedule.tick { spawnFerry(["snapshot", "create", "--keep", "\($0.keep)", id]) }
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            var closed: Set<Int32> = []
            for entry in fds where entry.revents != 0 {
                if entry.fd == listenerRaw {
                    attach?.accept()
                    continue
                }
                if entry.fd == clientRaw {
                    attach?.readClient(master: container.stdout.raw)
                    continue
                }
                if entry.fd == resizedRaw {
                    WindowChangeSignal.drain()
                    if let size = try? Terminal.windowSize(0) { try? Terminal.setWindowSize(container.stdout.raw, size) }
                    continue
                }
                let n = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                if n < 0, errno == EINTR || errno == EAGAIN { continue }
                if entry.fd == 0 {
                    if n <= 0 {
                        stdinOpen = false
                        container.closeStdin()
                    } else if let writer = container.stdinWriter?.raw {
                        _ = buffer.withUnsafeBytes { write(writer, $0.baseAddress, n) }
                    }
                    continue
                }
                if n <= 0 {
                    closed.insert(entry.fd)
                    continue
                }
                let chunk = buffer[0..<n]
                // The offset first: this supervisor is the log's only writer.
                if let offset = try? log?.status().size {
                    try? times?.writeAll(LogIndex.Entry(offset: offset, time: Date()).line)
                }
                try? log?.writeAll(chunk)
                attach?.send(chunk)
                if options.foreground, let echo = open.first(where: { $0.fd == entry.fd })?.echo {
                    _ = chunk.withUnsafeBytes { write(echo, $0.baseAddress, n) }
                }
            }
            open.removeAll { closed.contains($0.fd) }
        }
        _ = consume rawMode
        let code = (try? Processes.wait(pid)) ?? 255
        schedule.finish()
        finish(record: container.record, cgroup: container.cgroup, exitCode: code)
        restartIfAsked(exitCode: code)
        return code
    }

    /// `--restart on-failure`: a non-zero exit the user did not ask for starts the
    /// container again, from its newest snapshot with `--rollback-on-failure`. The new
    /// start is its own process; this supervisor's job ends here.
    private func restartIfAsked(exitCode: Int32) {
        guard exitCode != 0 else { return }
        var command: [String]?
        try? store.withLock(id) {
            var current = try store.load(id: id)
            guard var policy = current.restartPolicy, current.stopRequested != true, case .exited = current.status,
                policy.retries < policy.maxRetries
            else { return }
            policy.retries += 1
            current.restartPolicy = policy
            try store.save(current)
            let hasSnapshot = !SnapshotStore(root: store.root).list(id).isEmpty
            command = policy.rollback && hasSnapshot ? ["rollback", id] : ["_supervise", id]
            logger.info("restarting after exit code \(exitCode) (\(policy.retries)/\(policy.maxRetries))")
        }
        if let command { spawnFerry(command, wait: false) }
    }

    /// Runs `ferry --root ROOT <arguments>` (this executable) with the supervisor's log as
    /// its stderr. Returns its pid.
    @discardableResult
    private func spawnFerry(_ arguments: [String], wait: Bool = false) -> Int32? {
        guard let executable = try? Processes.currentExecutable(),
            let devNull = try? OwnedFD.open("/dev/null", O_RDWR),
            let log = try? OwnedFD.open("\(store.directory(id))/supervisor.log", O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        else { return nil }
        let environment = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        return try? Processes.spawn(
            executable, arguments: [executable, "--root", store.root.path] + arguments, environment: environment,
            descriptors: [0: devNull.raw, 1: log.raw, 2: log.raw]
        )
    }

    /// Records the exit unless the container left `running` some other way (a checkpoint
    /// ends the processes on purpose and records its own state), then cleans up.
    private func finish(record: ContainerRecord, cgroup: ContainerCgroup, exitCode: Int32) {
        let startedAt: Date? = if case .running(let state) = record.status { state.startedAt } else { nil }
        func cleanUp() {
            do {
                try Overlay.unmount(store.rootfsPath(id))
            } catch {
                logger.error("\(error)")
            }
            do {
                try cgroup.remove()
            } catch {
                logger.error("\(error)")
            }
        }
        var cleaned = false
        do {
            // Clean up first and record the exit last, under the container's lock: whoever
            // sees `exited` may rely on the mounts and cgroup being gone.
            try store.withLock(id) {
                cleanUp()
                cleaned = true
                var current = try store.load(id: id)
                // A checkpoint ends the tree on purpose and records its own state.
                if case .running(let state) = current.status, state.pid == record.statusPid {
                    current.status = try current.status.after(
                        .initExited(ExitState(exitCode: exitCode, startedAt: startedAt, finishedAt: Date())), container: current.name)
                    try store.save(current)
                }
            }
        } catch {
            logger.error("cannot record the exit of container '\(record.name)': \(error)")
        }
        // Even when the state is gone (removed meanwhile), nothing may be left behind.
        if !cleaned { cleanUp() }
        logger.info("container exited", metadata: ["ferry.exit-code": "\(exitCode)"])
    }
}

extension ContainerRecord {
    /// The init pid while running, for comparing records across a state change.
    var statusPid: Int32? {
        if case .running(let state) = status { return state.pid }
        return nil
    }
}

/// When the supervisor's periodic snapshots are due. Snapshots run as separate
/// `ferry snapshot create` processes, so the supervisor keeps pumping output meanwhile.
struct SnapshotSchedule {
    let policy: SnapshotPolicy?
    var next: ContinuousClock.Instant?
    var child: Int32?

    init(policy: SnapshotPolicy?) {
        self.policy = policy
        next = policy.map { ContinuousClock.now + .milliseconds(Int($0.everySeconds * 1000)) }
    }

    /// Milliseconds until the next snapshot, for poll(2); -1 without a schedule.
    func pollTimeout() -> Int32 {
        guard let next else { return -1 }
        let remaining = next - ContinuousClock.now
        return Int32(clamping: max(0, remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000))
    }

    /// Reaps a finished snapshot, and starts the next one when it is due.
    mutating func tick(start: (SnapshotPolicy) -> Int32?) {
        if let pid = child {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { child = nil }
        }
        guard let policy, let due = next, ContinuousClock.now >= due else { return }
        next = due + .milliseconds(Int(policy.everySeconds * 1000))
        if child == nil { child = start(policy) }
    }

    /// Waits for a snapshot still running when the container exits.
    mutating func finish() {
        if let pid = child { _ = try? Processes.wait(pid) }
        child = nil
    }
}

/// What a launcher gets: everything built for the container so far.
public struct LaunchContext {
    public let record: ContainerRecord
    public let spec: OCISpec
    /// The mounted overlay rootfs.
    public let rootfs: String
    /// Created, with its limits applied.
    public let cgroup: ContainerCgroup
    public let containerDirectory: String
    /// The state root: the container's network is looked up there.
    public let root: StateRoot
    /// The container's stdio: the read end of its stdin pipe, the write ends of its
    /// stdout and stderr pipes.
    public let stdin: Int32
    public let stdout: Int32
    public let stderr: Int32
    /// With `-t`: the socket the init sends its terminal's master over.
    public var consoleSocket: Int32? = nil
}

/// Makes the container's init process, a child of the supervisor, inside its cgroup.
/// Starting fresh and restoring from a checkpoint are the two ways.
public protocol ContainerLauncher: Sendable {
    /// Returns the init's pid once it runs (or is restored) in the container's cgroup.
    func launch(_ context: LaunchContext, logger: Logger) throws -> Int32
    /// Whether the init comes back from CRIU's images rather than starting afresh.
    var restoresFromImages: Bool { get }
}

extension ContainerLauncher {
    public var restoresFromImages: Bool { false }
}

/// Starts the spec's process in new namespaces.
public struct FreshLauncher: ContainerLauncher {
    public init() {}

    public func launch(_ context: LaunchContext, logger: Logger) throws -> Int32 {
        let spec = context.spec
        var request = SpawnRequest(
            rootfs: context.rootfs,
            mounts: try MountPlan.plan(spec.mounts),
            newNetwork: spec.createsNamespace("network"),
            hostname: spec.hostname,
            workingDirectory: spec.process.cwd,
            arguments: spec.process.args,
            environment: spec.process.env ?? [],
            security: try ProcessSecurity.of(spec)
        )
        request.newCgroupNamespace = spec.createsNamespace("cgroup")
        request.maskedPaths = spec.linux?.maskedPaths ?? []
        request.readonlyPaths = spec.linux?.readonlyPaths ?? []
        request.readonlyRoot = spec.root.readonly ?? false
        // A namespace listed with a path is joined (OCI): how a pod's containers share
        // its network, ipc and uts namespaces.
        for namespace in spec.linux?.namespaces ?? [] where ["network", "ipc", "uts"].contains(namespace.type) {
            if let path = namespace.path, !path.isEmpty { request.joinNamespaces[namespace.type] = path }
        }
        request.consoleSocket = context.consoleSocket
        ContainerNetworking.writeFiles(context.record, hostname: spec.hostname, rootfs: context.rootfs, logger: logger)
        let pending = try Spawner.spawn(request, stdio: (context.stdin, context.stdout, context.stderr))
        let pid = pending.pid
        do {
            try context.cgroup.addProcess(pid)
            // The init waits for release in its new network namespace: its interface is
            // there before the command runs.
            if context.record.endpoint != nil {
                let namespace = try OwnedFD.open("/proc/\(pid)/ns/net", O_RDONLY)
                try ContainerNetworking.attach(context.record, root: context.root, namespace: namespace)
            }
        } catch {
            pending.abandon()
            throw error
        }
        try pending.release()
        return pid
    }
}

/// A started container as the supervisor holds it.
public struct StartedContainer: ~Copyable {
    public let record: ContainerRecord
    let cgroup: ContainerCgroup
    public let pid: Int32
    /// The terminal's master with `terminal`.
    let stdout: OwnedFD
    /// With `terminal` an unused pipe (EOF at once): the terminal carries stderr too.
    let stderr: OwnedFD
    var stdinWriter: OwnedFD?
    /// The container's stdio is a terminal (`-t`).
    let terminal: Bool

    mutating func closeStdin() {
        stdinWriter = nil
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT received by the supervisor to the
/// container's init, so Ctrl-C on a foreground `ferry run` reaches the container.
enum SignalForwarder {
    nonisolated(unsafe) static var target: pid_t = 0

    static func install(forwardingTo pid: pid_t) {
        target = pid
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signal in
                // kill(2) is async-signal-safe; nothing else happens here.
                if SignalForwarder.target > 0 { _ = kill(SignalForwarder.target, signal) }
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            sigaction(sig, &action, nil)
        }
    }
}
