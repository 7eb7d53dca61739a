import Foundation

/// How a container's network is set up.
public enum NetworkMode: String, Codable, Sendable, CaseIterable {
    /// A new network namespace with only loopback up.
    case none
    /// The host's network namespace.
    case host
    /// A new network namespace joined to a bridge network (`ContainerRecord.endpoint`).
    case bridge
}

/// A volume or host directory mounted into a container.
public struct VolumeMount: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// A named volume kept under the state root.
        case named
        /// A host path bind-mounted as it is.
        case bind
    }

    public var kind: Kind
    /// The volume name, or the absolute host path.
    public var source: String
    /// Absolute path inside the container.
    public var destination: String
    public var readOnly: Bool

    public init(kind: Kind, source: String, destination: String, readOnly: Bool) {
        self.kind = kind
        self.source = source
        self.destination = destination
        self.readOnly = readOnly
    }
}

/// Facts valid only while the container runs.
public struct RunningState: Codable, Sendable, Equatable {
    /// The container's init, as seen from the host.
    public var pid: Int32
    /// Start time of `pid` in clock ticks, to tell it from a process that reuses the number.
    public var pidStartTime: UInt64?
    /// The supervisor: parent and reaper of `pid`, writer of the log.
    public var supervisorPid: Int32
    public var startedAt: Date
    /// Frozen by `ferry pause` (its cgroup's freezer) until `ferry unpause`. Absent in
    /// records written before pause existed, which were never paused.
    public var paused: Bool?

    public init(pid: Int32, pidStartTime: UInt64?, supervisorPid: Int32, startedAt: Date) {
        self.pid = pid
        self.pidStartTime = pidStartTime
        self.supervisorPid = supervisorPid
        self.startedAt = startedAt
    }
}

public struct ExitState: Codable, Sendable, Equatable {
    public var exitCode: Int32
    public var startedAt: Date?
    public var finishedAt: Date

    public init(exitCode: Int32, startedAt: Date?, finishedAt: Date) {
        self.exitCode = exitCode
        self.startedAt = startedAt
        self.finishedAt = finishedAt
    }
}

public struct CheckpointState: Codable, Sendable, Equatable {
    public var checkpointedAt: Date
    /// Directory of the CRIU images, relative to the container's state directory.
    public var imagesDirectory: String

    public init(checkpointedAt: Date, imagesDirectory: String) {
        self.checkpointedAt = checkpointedAt
        self.imagesDirectory = imagesDirectory
    }
}

/// A restore in progress: the supervisor that claimed the checkpoint, and the checkpoint
/// it goes back to if the restore fails or the supervisor dies.
public struct RestoringState: Codable, Sendable, Equatable {
    public var supervisorPid: Int32
    /// Start time of `supervisorPid`, to tell it from a process that reuses the number.
    public var supervisorStartTime: UInt64?
    public var since: Date
    public var checkpoint: CheckpointState

    public init(supervisorPid: Int32, supervisorStartTime: UInt64?, since: Date, checkpoint: CheckpointState) {
        self.supervisorPid = supervisorPid
        self.supervisorStartTime = supervisorStartTime
        self.since = since
        self.checkpoint = checkpoint
    }
}

/// A fresh start in progress: the supervisor that claimed the container, and the exit
/// it goes back to if the start fails or the supervisor dies (nil: never started).
public struct StartingState: Codable, Sendable, Equatable {
    public var supervisorPid: Int32
    public var supervisorStartTime: UInt64?
    public var since: Date
    public var previousExit: ExitState?

    public init(supervisorPid: Int32, supervisorStartTime: UInt64?, since: Date, previousExit: ExitState?) {
        self.supervisorPid = supervisorPid
        self.supervisorStartTime = supervisorStartTime
        self.since = since
        self.previousExit = previousExit
    }
}

/// A container's lifecycle. Each case carries what is valid in that state only, so a
/// running pid can't be read from an exited container.
public enum ContainerStatus: Codable, Sendable, Equatable {
    case created
    case running(RunningState)
    /// A supervisor starts it: no other may (two `start`s at once, a restart policy).
    case starting(StartingState)
    /// A supervisor restores it from its checkpoint: no other may (exactly one copy).
    case restoring(RestoringState)
    /// Frozen and being dumped; back to `running` or on to `checkpointed` when done.
    case checkpointing(RunningState)
    case exited(ExitState)
    case checkpointed(CheckpointState)

    private enum CodingKeys: String, CodingKey {
        case state, running, starting, restoring, checkpointing, exited, checkpointed
    }

    /// Encoded flat, as scripts expect: {"state": "running", "running": {...}}.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .state)
        switch self {
        case .created: break
        case .running(let state): try container.encode(state, forKey: .running)
        case .starting(let state): try container.encode(state, forKey: .starting)
        case .restoring(let state): try container.encode(state, forKey: .restoring)
        case .checkpointing(let state): try container.encode(state, forKey: .checkpointing)
        case .exited(let state): try container.encode(state, forKey: .exited)
        case .checkpointed(let state): try container.encode(state, forKey: .checkpointed)
        }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch try container.decode(String.self, forKey: .state) {
        case "created": self = .created
        case "running": self = .running(try container.decode(RunningState.self, forKey: .running))
        case "starting": self = .starting(try container.decode(StartingState.self, forKey: .starting))
        case "restoring": self = .restoring(try container.decode(RestoringState.self, forKey: .restoring))
        case "checkpointing": self = .checkpointing(try container.decode(RunningState.self, forKey: .checkpointing))
        case "exited": self = .exited(try container.decode(ExitState.self, forKey: .exited))
        case "checkpointed": self = .checkpointed(try container.decode(CheckpointState.self, forKey: .checkpointed))
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .state, in: container, debugDescription: "unknown container state '\(other)'")
        }
    }

    /// The word `ps` shows.
    public var name: String {
        switch self {
        case .created: "created"
        case .running: "running"
        case .starting: "starting"
        case .restoring: "restoring"
        case .checkpointing: "checkpointing"
        case .exited: "exited"
        case .checkpointed: "checkpointed"
        }
    }

    /// The state as podman names it: `name`, but "paused" for a paused running container.
    public var stateName: String {
        if case .running(let state) = self, state.paused == true { return "paused" }
        return name
    }
}

/// What happens to a container: launches by its supervisor, checkpoints, rollbacks,
/// exits, pauses. `ContainerStatus.after` is the one place that says which state each
/// leads to, and from which states it may.
public enum LifecycleEvent: Sendable, Equatable {
    /// A supervisor claims a checkpointed container to restore it.
    case restoreBegan(supervisorPid: Int32, supervisorStartTime: UInt64?, at: Date)
    /// The restore failed or its supervisor died: the checkpoint is restorable again.
    case restoreAbandoned
    /// A supervisor claims a created or exited container to start it.
    case startBegan(supervisorPid: Int32, supervisorStartTime: UInt64?, at: Date)
    /// The start failed or its supervisor died: back to created, or to its last exit.
    case startAbandoned
    /// The container's init runs (started fresh, or restored): the claim is done.
    case launched(RunningState)
    /// A checkpoint freezes the running init `pid` to dump it.
    case checkpointBegan(pid: Int32)
    /// The dump is done and the processes ended: the images are restorable.
    case checkpointDone(CheckpointState)
    /// The processes run on after a checkpoint: `--leave-running` dumped them, or a
    /// failed dump thawed them.
    case checkpointResumed
    /// A checkpoint failed and its processes are gone too.
    case checkpointLost(at: Date)
    /// A rollback put a snapshot's images in place of a stopped container's state.
    case rolledBack(CheckpointState)
    /// The init exited: its supervisor saw it, or both are gone.
    case initExited(ExitState)
    /// The cgroup freezer holds a running container (`pause`), or let it go.
    case paused
    case unpaused
}

extension ContainerStatus {
    /// The state `event` leads to from this one, or an error naming why it may not happen.
    /// Callers apply it to a record re-read under the container's lock.
    public func after(_ event: LifecycleEvent, container name: String) throws(StoreError) -> ContainerStatus {
        switch (self, event) {
        case (.checkpointed(let checkpoint), .restoreBegan(let pid, let startTime, let at)):
            return .restoring(RestoringState(supervisorPid: pid, supervisorStartTime: startTime, since: at, checkpoint: checkpoint))
        case (.restoring(let state), .restoreAbandoned):
            return .checkpointed(state.checkpoint)
        case (.created, .startBegan(let pid, let startTime, let at)):
            return .starting(StartingState(supervisorPid: pid, supervisorStartTime: startTime, since: at, previousExit: nil))
        case (.exited(let exit), .startBegan(let pid, let startTime, let at)):
            return .starting(StartingState(supervisorPid: pid, supervisorStartTime: startTime, since: at, previousExit: exit))
        case (.starting(let state), .startAbandoned):
            return state.previousExit.map { .exited($0) } ?? .created
        case (.restoring, .launched(let running)), (.starting, .launched(let running)):
            return .running(running)
        case (.running(let state), .checkpointBegan(let pid)):
            guard state.pid == pid else {
                throw StoreError(.inUse, "cannot checkpoint container '\(name)': it stopped meanwhile")
            }
            // The dump thaws the tree when it is done: it would end a pause behind the
            // user's back.
            guard state.paused != true else {
                throw StoreError(.inUse, "cannot checkpoint container '\(name)': it is paused; unpause it first")
            }
            return .checkpointing(state)
        case (.checkpointing, .checkpointBegan):
            throw StoreError(.inUse, "cannot checkpoint container '\(name)': another checkpoint of it is in progress")
        case (.checkpointing, .checkpointDone(let checkpoint)):
            return .checkpointed(checkpoint)
        case (.checkpointing(let state), .checkpointResumed):
            return .running(state)
        case (.checkpointing(let state), .checkpointLost(let at)):
            return .exited(ExitState(exitCode: 255, startedAt: state.startedAt, finishedAt: at))
        case (.created, .rolledBack(let checkpoint)), (.exited, .rolledBack(let checkpoint)), (.checkpointed, .rolledBack(let checkpoint)):
            return .checkpointed(checkpoint)
        case (.running, .initExited(let exit)):
            return .exited(exit)
        case (.running(var state), .paused):
            guard state.paused != true else { throw StoreError(.inUse, "cannot pause container '\(name)': it is paused already") }
            state.paused = true
            return .running(state)
        case (.running(var state), .unpaused):
            guard state.paused == true else { throw StoreError(.inUse, "cannot unpause container '\(name)': it is not paused") }
            state.paused = nil
            return .running(state)
        case (_, .checkpointBegan):
            throw StoreError(.inUse, "cannot checkpoint container '\(name)': it is \(self.name), not running")
        case (_, .checkpointDone), (_, .checkpointResumed), (_, .checkpointLost):
            throw StoreError(.inUse, "container '\(name)' is \(self.name), not checkpointing")
        case (_, .rolledBack):
            throw StoreError(.inUse, "cannot roll back container '\(name)': it is \(self.name)")
        case (_, .initExited):
            throw StoreError(.inUse, "container '\(name)' is \(self.name), not running")
        case (_, .paused):
            throw StoreError(.inUse, "cannot pause container '\(name)': it is \(self.name), not running")
        case (_, .unpaused):
            throw StoreError(.inUse, "cannot unpause container '\(name)': it is not paused")
        case (_, .startBegan):
            throw StoreError(.inUse, "cannot start container '\(name)': it is \(self.name)")
        case (_, .startAbandoned):
            throw StoreError(.inUse, "container '\(name)' is \(self.name), not starting")
        case (_, .restoreBegan):
            throw StoreError(.inUse, "cannot restore container '\(name)': it is \(self.name), not checkpointed")
        case (_, .restoreAbandoned):
            throw StoreError(.inUse, "container '\(name)' is \(self.name), not restoring")
        case (_, .launched):
            throw StoreError(.inUse, "cannot start container '\(name)': it is \(self.name)")
        }
    }
}

extension ContainerStatus {
    /// The supervisor that holds a start or restore claim, if this is one.
    public var claimingSupervisor: (pid: Int32, startTime: UInt64?)? {
        switch self {
        case .starting(let state): (state.supervisorPid, state.supervisorStartTime)
        case .restoring(let state): (state.supervisorPid, state.supervisorStartTime)
        default: nil
        }
    }
}

/// `run --snapshot-every D --snapshot-keep N`: the supervisor snapshots on a schedule.
public struct SnapshotPolicy: Codable, Sendable, Equatable {
    public var everySeconds: Double
    public var keep: Int

    public init(everySeconds: Double, keep: Int) {
        self.everySeconds = everySeconds
        self.keep = keep
    }
}

/// `run --restart on-failure[:N] [--rollback-on-failure]`.
public struct RestartPolicy: Codable, Sendable, Equatable {
    public var maxRetries: Int
    /// Come back from the newest snapshot rather than from scratch.
    public var rollback: Bool
    /// Restarts so far.
    public var retries: Int

    public init(maxRetries: Int, rollback: Bool, retries: Int = 0) {
        self.maxRetries = maxRetries
        self.rollback = rollback
        self.retries = retries
    }
}

/// What the image's config (or `run --stop-signal`) says about a container beyond how to
/// start it: recorded at create because the image may be removed or replaced later, and
/// carried through checkpoint, export and migration so a restored container stops the
/// same way and shows the same metadata.
public struct ContainerImageSettings: Codable, Sendable, Equatable {
    /// The signal `ferry stop` sends first, as written ("SIGUSR1", "USR1" or "10");
    /// nil: SIGTERM.
    public var stopSignal: String?
    public var labels: [String: String]?
    /// "PORT/PROTO" keys of the image's ExposedPorts, sorted.
    public var exposedPorts: [String]?

    public init(stopSignal: String? = nil, labels: [String: String]? = nil, exposedPorts: [String]? = nil) {
        self.stopSignal = stopSignal
        self.labels = labels
        self.exposedPorts = exposedPorts
    }

    /// Nothing to record: the record then omits the field, as before.
    public var isEmpty: Bool { stopSignal == nil && (labels ?? [:]).isEmpty && (exposedPorts ?? []).isEmpty }
}

/// Everything Ferry records about one container, kept in `state.json`.
public struct ContainerRecord: Codable, Sendable {
    public var id: String
    public var name: String
    /// The image as the user named it ("busybox:latest"), or "bundle:PATH".
    public var image: String
    public var imageDigest: String?
    /// The read-only lower layer of the overlay rootfs.
    public var lowerDirectory: String
    public var command: [String]
    public var created: Date
    public var network: NetworkMode
    /// The address, MAC and ports of a `.bridge` container; nil otherwise.
    public var endpoint: ContainerNetwork?
    public var volumes: [VolumeMount]
    /// Named volumes that creating this container made; a failed first start removes
    /// them again, so a failed `run` leaves nothing behind.
    public var createdVolumes: [String]?
    public var snapshotPolicy: SnapshotPolicy?
    public var restartPolicy: RestartPolicy?
    /// Set by stop, kill and rm: an exit the user asked for is not a failure to restart.
    public var stopRequested: Bool?
    /// StopSignal, Labels and ExposedPorts; nil for a container that has none.
    public var imageSettings: ContainerImageSettings?
    /// The pod whose network, ipc and uts namespaces the container joined; nil for none.
    public var pod: String?
    public var status: ContainerStatus

    public init(
        id: String, name: String, image: String, imageDigest: String?, lowerDirectory: String,
        command: [String], created: Date, network: NetworkMode, volumes: [VolumeMount], status: ContainerStatus
    ) {
        self.id = id
        self.name = name
        self.image = image
        self.imageDigest = imageDigest
        self.lowerDirectory = lowerDirectory
        self.command = command
        self.created = created
        self.network = network
        self.volumes = volumes
        self.status = status
    }

    public var shortID: String { String(id.prefix(12)) }
}

extension JSONEncoder {
    /// The encoder for every file Ferry writes: stable key order and RFC 3339 dates, so
    /// files diff cleanly and scripts can read them.
    public static var ferry: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }
}

extension JSONDecoder {
    public static var ferry: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
