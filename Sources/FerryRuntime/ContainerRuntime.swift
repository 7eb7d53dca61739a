import FerryStore
import FerrySystem
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// What the CLI asks the runtime to do. Each method reads and writes the state store
/// and returns: there is no daemon.
public struct ContainerRuntime: Sendable {
    public let root: StateRoot
    public let containers: ContainerStore
    public let volumes: VolumeStore
    let logger: Logger

    public init(root: StateRoot, logger: Logger) {
        self.root = root
        self.containers = ContainerStore(root: root)
        self.volumes = VolumeStore(root: root)
        self.logger = logger
    }

    /// The base layer a container is created from.
    public struct BaseLayer: Sendable {
        public var reference: String
        public var digest: String?
        public var rootfs: String

        public init(reference: String, digest: String?, rootfs: String) {
            self.reference = reference
            self.digest = digest
            self.rootfs = rootfs
        }
    }

    public static func requireRoot() throws(RuntimeError) {
        if getuid() != 0 {
            throw RuntimeError(.permissionDenied, "ferry must run as root (it creates namespaces, mounts and cgroups)")
        }
    }

    // MARK: create and start

    /// Creates the container's state: config.json from `options` (or the given bundle
    /// spec), named volumes, and the name claim.
    public func create(name: String?, base: BaseLayer, options: RunOptions, bundleSpec: OCISpec? = nil) throws -> ContainerRecord {
        // A container of a pod is made under the pod lock, which `pod rm` holds while it
        // checks for containers: none can join a pod being removed.
        if options.pod != nil {
            return try pods.withLock { try createRecord(name: name, base: base, options: options, bundleSpec: bundleSpec) }
        }
        return try createRecord(name: name, base: base, options: options, bundleSpec: bundleSpec)
    }

    private func createRecord(name: String?, base: BaseLayer, options: RunOptions, bundleSpec: OCISpec?) throws -> ContainerRecord {
        try Self.requireRoot()
        for volume in options.volumes where volume.kind == .bind {
            if !Files.exists(volume.source) {
                throw RuntimeError(.invalidArgument, "host path '\(volume.source)' for volume \(volume.destination) does not exist")
            }
        }
        let id = ContainerStore.newID()
        let name = name ?? "ferry-\(id.prefix(12))"
        try Names.validate(name, kind: "container")
        if (try? containers.resolve(name)) != nil, Files.exists("\(root.namesDirectory)/\(name)") {
            throw StoreError(.alreadyExists, "the container name '\(name)' is already in use (remove it with: ferry rm \(name))")
        }
        // Everything the options say is checked before anything is made: a bad flag
        // leaves no volume behind.
        var spec: OCISpec
        do {
            var user = OCISpec.User()
            if options.user != nil || !options.groupAdd.isEmpty {
                user = try UserResolver.resolve(options.user ?? "0", groupAdd: options.groupAdd, rootfs: base.rootfs)
            }
            var sources: [String: String] = [:]
            for volume in options.volumes where volume.kind == .named {
                sources[volume.source] = volumes.dataPath(volume.source)
            }
            if let bundleSpec {
                spec = bundleSpec
            } else {
                let seccomp = try SpecBuilder.seccomp(for: options)
                spec = try SpecBuilder.spec(
                    for: options, id: id, cgroupParent: root.cgroupParent, volumeSources: sources, user: user, seccomp: seccomp)
            }
            _ = try ProcessSecurity.of(spec)
        } catch {
            throw RuntimeError(.invalidArgument, "cannot run container '\(name)'", cause: error)
        }
        var createdVolumes: [String] = []
        for volume in options.volumes where volume.kind == .named {
            if (try? volumes.inspect(volume.source)) == nil { createdVolumes.append(volume.source) }
            _ = try volumes.ensure(volume.source)
        }
        if let podName = options.pod {
            let pod = try pods.load(podName)
            spec = Self.joining(pod, spec: spec, store: pods)
        }
        spec.root = OCISpec.Root(path: "rootfs", readonly: spec.root.readonly)
        spec.linux?.cgroupsPath = "\(root.cgroupParent)/\(id)"
        var record = ContainerRecord(
            id: id, name: name, image: base.reference, imageDigest: base.digest, lowerDirectory: base.rootfs,
            command: spec.process.args, created: Date(), network: spec.createsNamespace("network") ? .none : .host,
            volumes: options.volumes, status: .created
        )
        record.createdVolumes = createdVolumes.isEmpty ? nil : createdVolumes
        record.snapshotPolicy = options.snapshotPolicy
        record.restartPolicy = options.restartPolicy
        record.imageSettings = options.imageSettings
        if let pod = options.pod {
            record.pod = pod
            record.network = .none
        }
        do {
            _ = try MountPlan.plan(spec.mounts)
            let data = try JSONEncoder.ferry.encode(spec)
            if let request = options.networkRequest {
                record = try createOnNetwork(record, config: data, request: request)
            } else {
                try containers.create(record, config: data)
            }
        } catch {
            for volume in createdVolumes { try? volumes.remove(volume, usedBy: []) }
            throw error
        }
        return record
    }

    /// Runs the supervisor in this process: stdio passes through (stdin only with
    /// `input`), returns the exit code.
    public func runForeground(id: String, input: Bool = true) throws -> Int32 {
        var options = Supervisor.Options(foreground: true, removeOnFailure: true)
        options.input = input
        let supervisor = Supervisor(store: containers, id: id, options: options, logger: logger)
        let started = try supervisor.start()
        return supervisor.supervise(started)
    }

    /// Starts a detached supervisor process and waits until it reports the container
    /// running (or why it is not).
    public func startDetached(id: String, removeOnFailure: Bool, restore: Bool = false, frozen: Bool = false) throws {
        let executable = try Processes.currentExecutable()
        var pipe = try OwnedPipe()
        let devNull = try OwnedFD.open("/dev/null", O_RDWR)
        let supervisorLog = try OwnedFD.open("\(containers.directory(id))/supervisor.log", O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        var arguments = [executable, "_supervise", "--root", root.path]
        if removeOnFailure { arguments.append("--remove-on-failure") }
        if restore { arguments.append("--restore") }
        if frozen { arguments.append("--frozen") }
        arguments.append(id)
        let environment = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        let pid = try Processes.spawn(
            executable, arguments: arguments, environment: environment,
            descriptors: [0: devNull.raw, 1: devNull.raw, 2: supervisorLog.raw, 3: pipe.writeEnd.raw]
        )
        pipe.writeEnd = try OwnedFD.open("/dev/null", O_WRONLY)  // drop our copy of the write end
        // One line: "ok" or "error: ...". Read up to the newline, not to EOF: the
        // supervisor keeps running.
        var bytes: [UInt8] = []
        while !bytes.contains(UInt8(ascii: "\n")), let chunk = try? pipe.readEnd.read(upTo: 4096), !chunk.isEmpty {
            bytes += chunk
        }
        let report = String(decoding: bytes, as: UTF8.self)
        if report.hasPrefix("ok") { return }
        _ = try? Processes.wait(pid)
        let (code, message) = Self.parseStartReport(report)
        throw RuntimeError(code, message.isEmpty ? "the container's supervisor exited before the container started" : message)
    }

    /// The supervisor's failure line: "KIND: message", KIND telling a missing command
    /// ("not-found") or one that cannot run ("not-invocable") from any other error.
    static func parseStartReport(_ report: String) -> (RuntimeError.Code, String) {
        let kinds: [(String, RuntimeError.Code)] = [
            ("not-found: ", .commandNotFound), ("not-invocable: ", .commandNotInvocable), ("error: ", .supervisorFailed),
        ]
        for (prefix, code) in kinds where report.hasPrefix(prefix) {
            return (code, String(report.dropFirst(prefix.count)).trimmingCharacters(in: .newlines))
        }
        return (.supervisorFailed, report.trimmingCharacters(in: .newlines))
    }

    /// The body of the hidden `_supervise` command: detach, start, report on fd 3, supervise.
    public func superviseDetached(id: String, removeOnFailure: Bool, launcher: any ContainerLauncher = FreshLauncher()) -> Int32 {
        _ = setsid()
        let ready = OwnedFD(adopting: 3)
        try? ready.setInheritable(false)
        let supervisor = Supervisor(
            store: containers, id: id, options: .init(foreground: false, removeOnFailure: removeOnFailure),
            launcher: launcher, logger: logger
        )
        let started: StartedContainer
        do {
            started = try supervisor.start()
        } catch {
            // The report keeps the distinction `ferry run -d` exits with (127/126).
            let kind =
                switch (error as? RuntimeError)?.code {
                case .commandNotFound: "not-found"
                case .commandNotInvocable: "not-invocable"
                default: "error"
                }
            Signals.withoutBrokenPipeSignal { try? ready.writeAll(Array("\(kind): \(error)\n".utf8)) }
            return 125
        }
        // The command that started this supervisor may be gone (killed while CRIU
        // restored): the report then has no reader, and must not end the supervisor,
        // which the container needs.
        Signals.withoutBrokenPipeSignal { try? ready.writeAll(Array("ok\n".utf8)) }
        _ = consume ready
        return supervisor.supervise(started)
    }

    // MARK: queries

    /// The record, with a stale `running` (supervisor and init both gone, e.g. after a
    /// host crash or a killed supervisor) turned into `exited` and its leftovers removed.
    public func load(_ nameOrID: String) throws -> ContainerRecord {
        let id = try containers.resolve(nameOrID)
        return try refresh(try containers.load(id: id))
    }

    public func list() -> [ContainerRecord] {
        containers.removeAbandonedImports()
        return containers.list().map { (try? refresh($0)) ?? $0 }
    }

    func refresh(_ record: ContainerRecord) throws -> ContainerRecord {
        if case .checkpointing = record.status { return try settleAbandonedCheckpoint(record) }
        if let owner = record.status.claimingSupervisor, !Processes.isAlive(owner.pid, startTime: owner.startTime) {
            return try settleAbandonedLaunch(record)
        }
        guard case .running(let state) = record.status,
            !Processes.isAlive(state.pid, startTime: state.pidStartTime),
            !Processes.isAlive(state.supervisorPid, startTime: nil)
        else { return record }
        return try containers.withLock(record.id) {
            var current = try containers.load(id: record.id)
            guard case .running = current.status else { return current }
            current.status = try current.status.after(
                .initExited(ExitState(exitCode: 255, startedAt: state.startedAt, finishedAt: Date())), container: current.name)
            try containers.save(current)
            removeSupervisorLeftovers(record.id)
            return current
        }
    }

    /// A container left `starting` or `restoring` by a supervisor that died (killed half-way):
    /// whatever it had started is ended; a checkpoint, whose images a restore does not
    /// change, is restorable again, and a start goes back to the state before it.
    func settleAbandonedLaunch(_ record: ContainerRecord) throws -> ContainerRecord {
        try containers.withLock(record.id) {
            var current = try containers.load(id: record.id)
            guard let owner = current.status.claimingSupervisor, !Processes.isAlive(owner.pid, startTime: owner.startTime)
            else { return current }
            if let cgroup = try? cgroup(for: record.id) {
                try? cgroup.thaw()
                for pid in (try? cgroup.pids()) ?? [] { try? Processes.signal(pid, SIGKILL) }
                let deadline = Date().addingTimeInterval(10)
                while !((try? cgroup.pids()) ?? []).isEmpty, Date() < deadline { usleep(10_000) }
            }
            removeSupervisorLeftovers(record.id)
            let event: LifecycleEvent = if case .restoring = current.status { .restoreAbandoned } else { .startAbandoned }
            current.status = try current.status.after(event, container: current.name)
            try containers.save(current)
            logger.info("settled an abandoned start or restore", metadata: ["ferry.container": "\(record.name)", "ferry.state": "\(current.status.name)"])
            return current
        }
    }

    /// A container left `checkpointing` by a checkpoint whose process and CRIU are both
    /// gone (killed, or the host's power), settled as the checkpoint would have ended:
    /// - its processes still run (the dump failed, or kept them running): thawed, and
    ///   running again, without the images;
    /// - they are gone and CRIU finished the images (it writes inventory.img last, and
    ///   ends the processes only after): checkpointed, and restorable;
    /// - they are gone without complete images: exited.
    /// A migration's source is left alone: the destination may run the container.
    func settleAbandonedCheckpoint(_ record: ContainerRecord) throws -> ContainerRecord {
        // The state the checkpoint started from, when this call settled it.
        let (settled, from) = try containers.withLock(record.id) { () throws -> (ContainerRecord, RunningState?) in
            var current = try containers.load(id: record.id)
            guard case .checkpointing(let state) = current.status,
                OperationLease.abandonedKind(at: containers.operationPath(record.id)) == "checkpoint"
            else { return (current, nil) }
            try? cgroup(for: record.id).thaw()
            let images = containers.checkpointImagesPath(record.id)
            let event: LifecycleEvent
            if Processes.isAlive(state.pid, startTime: state.pidStartTime) {
                event = .checkpointResumed
                try? Files.removeTree(images)
            } else if Files.exists("\(images)/inventory.img"), Files.exists(containers.checkpointMetadataPath(record.id)) {
                let checkedAt = (try? Files.status("\(images)/inventory.img")).map {
                    Date(timeIntervalSince1970: TimeInterval($0.modificationSeconds))
                }
                event = .checkpointDone(CheckpointState(checkpointedAt: checkedAt ?? Date(), imagesDirectory: ContainerStore.checkpointImagesName))
            } else {
                event = .checkpointLost(at: Date())
                try? Files.removeTree(images)
            }
            current.status = try current.status.after(event, container: current.name)
            try containers.save(current)
            unlink(containers.operationPath(record.id))
            logger.info(
                "settled an abandoned checkpoint", metadata: ["ferry.container": "\(record.name)", "ferry.state": "\(current.status.name)"])
            return (current, state)
        }
        guard let from else { return settled }
        if case .running = settled.status { return settled }
        // The thawed processes die now; their supervisor reaps them, unmounts the rootfs
        // and removes the cgroup (under the container's lock, so not above). A restore
        // must not race with that; a supervisor that is gone too cannot.
        let deadline = Date().addingTimeInterval(10)
        while Processes.isAlive(from.supervisorPid, startTime: nil), Date() < deadline { usleep(10_000) }
        if !Processes.isAlive(from.supervisorPid, startTime: nil) { removeSupervisorLeftovers(record.id) }
        return settled
    }

    /// What a container's supervisor removes when its container ends: the rootfs mount and
    /// the cgroup. For a container whose supervisor is gone.
    private func removeSupervisorLeftovers(_ id: String) {
        try? Overlay.unmount(containers.rootfsPath(id))
        try? cgroup(for: id).remove()
    }

    public func cgroup(for id: String) throws -> ContainerCgroup {
        try ContainerCgroup(layout: CgroupLayout.current(), path: "\(root.cgroupParent)/\(id)")
    }

    /// The cgroup of a container, for inspection and tests.
    public func cgroupPaths(of nameOrID: String) throws -> [String] {
        try cgroup(for: try containers.resolve(nameOrID)).paths
    }

    // MARK: signals, stop, remove

    public func kill(_ nameOrID: String, signal: Int32) throws {
        let record = try loadSettled(nameOrID)
        guard case .running(let state) = record.status else {
            throw RuntimeError(.invalidState, "container '\(record.name)' is not running (it is \(record.status.name))")
        }
        try markStopRequested(record.id)
        do {
            try Processes.signal(state.pid, signal)
        } catch {
            throw RuntimeError(.invalidState, "cannot signal container '\(record.name)'", cause: error)
        }
    }

    /// The container's stop signal (the image's StopSignal or `run --stop-signal`), then
    /// SIGKILL after `timeout` seconds, as `podman stop -t`.
    public func stop(_ nameOrID: String, timeout: Double) throws {
        let record = try loadSettled(nameOrID)
        guard case .running(let state) = record.status else { return }
        let signal = Self.stopSignal(of: record)
        try markStopRequested(record.id)
        try? Processes.signal(state.pid, signal)
        // A paused tree gets the signal only once thawed: stopping ends the pause.
        if state.paused == true { try? cgroup(for: record.id).thaw() }
        if try waitUntilStopped(record.id, seconds: timeout) { return }
        logger.debug("container did not stop after its stop signal; sending SIGKILL", metadata: ["ferry.signal": "\(signal)"])
        try? Processes.signal(state.pid, SIGKILL)
        if try !waitUntilStopped(record.id, seconds: 10) {
            throw RuntimeError(.invalidState, "container '\(record.name)' did not stop within \(Int(timeout) + 10) s")
        }
    }

    /// The signal `stop` sends first. A record's signal was checked when it was created;
    /// one that no longer parses (a hand-edited state.json) falls back to SIGTERM rather
    /// than leaving the container unstoppable.
    public static func stopSignal(of record: ContainerRecord) -> Int32 {
        record.imageSettings?.stopSignal.flatMap(Processes.signalNumber) ?? SIGTERM
    }

    /// A checkpoint or snapshot in progress lasts a moment: commands that act on a running
    /// container wait for it rather than fail (or, worse, race with it).
    func loadSettled(_ nameOrID: String, seconds: Double = 60) throws -> ContainerRecord {
        var record = try load(nameOrID)
        let deadline = Date().addingTimeInterval(seconds)
        while case .checkpointing = record.status, Date() < deadline {
            usleep(20_000)
            record = try load(record.id)
        }
        return record
    }

    /// Records that the user is ending the container, so a restart policy leaves it be.
    func markStopRequested(_ id: String) throws {
        try containers.withLock(id) {
            var current = try containers.load(id: id)
            current.stopRequested = true
            try containers.save(current)
        }
    }

    /// Polls the store until the supervisor has recorded the exit.
    public func waitUntilStopped(_ id: String, seconds: Double) throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            let record = try refresh(try containers.load(id: id))
            if case .running = record.status {} else { return true }
            usleep(20_000)
        } while Date() < deadline
        return false
    }

    /// Removes a container; a running one only with `force` (killed first).
    public func remove(_ nameOrID: String, force: Bool) throws {
        // A restart policy may start the container again while we remove it; the final
        // check happens under the container's lock, which a starting supervisor needs too.
        for _ in 0..<3 {
            // With force, a container left "checkpointing" by a Ferry that died mid-dump
            // (or kept frozen by a broken migration) is ended like a running one.
            let record = force ? try load(nameOrID) : try loadSettled(nameOrID)
            let live: RunningState? =
                switch record.status {
                case .running(let state): state
                case .checkpointing(let state) where force: state
                default: nil
                }
            if let state = live {
                guard force else {
                    throw RuntimeError(.invalidState, "container '\(record.name)' is running: stop it first or use rm -f")
                }
                try markStopRequested(record.id)
                try? Processes.signal(state.pid, SIGKILL)
                // A frozen tree only dies once thawed.
                try? cgroup(for: record.id).thaw()
                if try !waitUntilStopped(record.id, seconds: 10) {
                    throw RuntimeError(.invalidState, "container '\(record.name)' did not stop after SIGKILL")
                }
                // The supervisor may still be writing in the container's directory.
                let deadline = Date().addingTimeInterval(10)
                while Processes.isAlive(state.supervisorPid, startTime: nil), Date() < deadline { usleep(10_000) }
            }
            let removed = try containers.withLock(record.id) { () throws -> Bool in
                let current = try containers.load(id: record.id)
                if case .running = current.status { return false }
                if case .checkpointing = current.status, !force { return false }
                try Overlay.unmount(containers.rootfsPath(record.id))
                try? cgroup(for: record.id).remove()
                try containers.remove(current)
                releaseNetwork(of: current)
                return true
            }
            if removed {
                let snapshots = SnapshotStore(root: root)
                try? snapshots.remove(record.id, tags: snapshots.list(record.id).map(\.tag))
                return
            }
        }
        throw RuntimeError(.invalidState, "container '\(nameOrID)' keeps restarting; stop it first")
    }

    // MARK: exec and logs

    /// Runs a command inside a running container (all its namespaces and its cgroup).
    /// Runs `command` in the running container. `user` (UID[:GID] or NAME[:GROUP]) is
    /// looked up in the container's live root, /proc/PID/root, so accounts made inside the
    /// container count; nil: the container's own user.
    /// Attaches our terminal to a detached container's (`run -dit`) through its
    /// supervisor. Returns nil when the user detached (the container runs on), else the
    /// container's exit code.
    public func attach(_ nameOrID: String, detachKeys: DetachKeys) throws -> Int32? {
        let record = try loadSettled(nameOrID)
        guard case .running = record.status else {
            throw RuntimeError(.invalidState, "container '\(record.name)' is not running (it is \(record.status.name))")
        }
        let socket: OwnedFD
        do {
            socket = try UnixListener.connect(directory: containers.directory(record.id), name: AttachFrame.socketName)
        } catch {
            throw RuntimeError(.invalidState, "cannot attach to container '\(record.name)': it has no terminal (run it with -dit)", cause: error)
        }
        if TerminalRelay.attach(socket: socket, detachKeys: detachKeys) { return nil }
        return try wait(record.id, timeout: 30)
    }

    /// With `terminal` the command gets a new terminal of the container, relayed to our
    /// stdio (our stdin only with `input`).
    public func exec(
        _ nameOrID: String, command: [String], environment: [String], workingDirectory: String?, user: String? = nil, terminal: Bool = false,
        input: Bool = true
    ) throws -> Int32 {
        let record = try loadSettled(nameOrID)
        guard case .running(let state) = record.status else {
            throw RuntimeError(.invalidState, "container '\(record.name)' is not running (it is \(record.status.name))")
        }
        // The command would join the frozen cgroup and freeze with it.
        if state.paused == true {
            throw RuntimeError(.invalidState, "container '\(record.name)' is paused; unpause it first")
        }
        let spec = try JSONDecoder().decode(OCISpec.self, from: try containers.loadConfig(id: record.id))
        var env = spec.process.env ?? []
        for entry in environment {
            let key = entry.split(separator: "=", maxSplits: 1).first.map(String.init) ?? entry
            env.removeAll { $0.hasPrefix("\(key)=") }
            env.append(entry)
        }
        if terminal, !env.contains(where: { $0.hasPrefix("TERM=") }) { env.append("TERM=xterm") }
        return try Spawner.exec(
            pid: state.pid,
            cgroupProcsFiles: try cgroup(for: record.id).procsFiles(),
            workingDirectory: workingDirectory ?? spec.process.cwd,
            arguments: command,
            environment: env,
            joinNetwork: record.network != .host,
            joinCgroupNamespace: spec.createsNamespace("cgroup"),
            security: try execSecurity(spec, user: user, pid: state.pid, container: record.name),
            terminal: terminal,
            relay: { master in TerminalRelay.run(master: master, input: input) }
        )
    }

    func execSecurity(_ spec: OCISpec, user: String?, pid: Int32, container: String) throws -> ProcessSecurity {
        let security = try ProcessSecurity.of(spec)
        guard let user else { return security }
        do {
            return security.switchingUser(to: try UserResolver.resolve(user, groupAdd: [], rootfs: "/proc/\(pid)/root"))
        } catch {
            throw RuntimeError(.invalidArgument, "cannot exec in container '\(container)'", cause: error)
        }
    }

    /// Copies the log to `output`; with `follow`, keeps copying until the container stops.
    public func logs(_ nameOrID: String, follow: Bool, output: Int32 = 1) throws {
        var options = LogOptions()
        options.follow = follow
        try logs(nameOrID, options: options, output: output)
    }

    /// The lines `logs` would print (without --follow), each with its time when the log's
    /// index has it: for `logs --format json`.
    public func logLines(_ nameOrID: String, options: LogOptions) throws -> [LogIndex.Line] {
        let record = try load(nameOrID)
        let log = (try? Files.read(containers.logPath(record.id))) ?? []
        let entries = LogIndex.parse((try? Files.read(containers.logTimesPath(record.id))) ?? [])
        if options.needsTimes, entries.isEmpty, !log.isEmpty {
            throw RuntimeError(
                .invalidArgument,
                "the log of container '\(record.name)' has no timestamps (an older Ferry wrote it): --timestamps, --since and --until need them")
        }
        return options.select(LogIndex.lines(log, entries: entries).lines)
    }

    /// `ferry logs` with podman's options. Without --tail, -t, --since or --until the
    /// log is copied as it is; with them it is read line by line, each dated from the
    /// log's index of times (which logs of an older Ferry lack: they are refused then).
    public func logs(_ nameOrID: String, options: LogOptions, output: Int32 = 1) throws {
        let record = try load(nameOrID)
        let path = containers.logPath(record.id)
        guard let fd = try? OwnedFD.open(path, O_RDONLY) else { return }
        func emit(_ bytes: some Collection<UInt8>) {
            _ = Array(bytes).withUnsafeBytes { write(output, $0.baseAddress, $0.count) }
        }
        func stillRunning() throws -> Bool {
            let current = try refresh(try containers.load(id: record.id))
            if case .running = current.status { return true }
            return false
        }
        guard options.tail != nil || options.needsTimes else {
            while true {
                let chunk = try fd.read(upTo: 65536)
                if !chunk.isEmpty {
                    emit(chunk)
                    continue
                }
                guard options.follow else { return }
                if try stillRunning() {
                    usleep(100_000)
                    continue
                }
                // Drain what the supervisor wrote before it recorded the exit.
                while case let rest = try fd.read(upTo: 65536), !rest.isEmpty { emit(rest) }
                return
            }
        }
        let timesPath = containers.logTimesPath(record.id)
        func snapshot() throws -> (log: [UInt8], entries: [LogIndex.Entry]) {
            let log = (try? Files.read(path)) ?? []
            return (log, LogIndex.parse((try? Files.read(timesPath)) ?? []))
        }
        let first = try snapshot()
        if options.needsTimes, first.entries.isEmpty, !first.log.isEmpty {
            throw RuntimeError(
                .invalidArgument,
                "the log of container '\(record.name)' has no timestamps (an older Ferry wrote it): --timestamps, --since and --until need them")
        }
        // Following, an unfinished last line waits for its end.
        var (lines, consumed) = LogIndex.lines(first.log, entries: first.entries, includePartial: !options.follow)
        for line in options.select(lines) { emit(Array(options.render(line).utf8)) }
        guard options.follow else { return }
        var more = options
        more.tail = nil
        while true {
            let running = try stillRunning()
            let now = try snapshot()
            (lines, consumed) = LogIndex.lines(now.log, entries: now.entries, from: consumed, includePartial: !running)
            for line in more.select(lines) { emit(Array(more.render(line).utf8)) }
            if !running { return }
            if let until = options.until, Date() > until { return }
            usleep(100_000)
        }
    }
}
