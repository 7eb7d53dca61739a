import FerryArchive
import FerryStore
import FerrySystem
import Foundation

/// What `ferry run` asks for, independent of how the flags were spelled.
public struct RunOptions: Sendable, Equatable {
    public var command: [String]
    public var environment: [String]
    public var workingDirectory: String?
    public var hostname: String?
    public var network: NetworkMode
    public var volumes: [VolumeMount]
    public var limits: CgroupLimits
    public var snapshotPolicy: SnapshotPolicy?
    public var restartPolicy: RestartPolicy?
    /// `--cap-add`, `--cap-drop` (names or ALL), `--privileged`.
    public var capAdd: [String] = []
    public var capDrop: [String] = []
    public var privileged = false
    /// `--security-opt no-new-privileges`.
    public var noNewPrivileges = false
    /// `--security-opt seccomp=...`.
    public var seccomp: SeccompChoice = .default
    /// `--user UID[:GID]` or `NAME[:GROUP]`, resolved against the image's /etc/passwd
    /// and /etc/group; nil: the image's User, or root.
    public var user: String?
    /// `--group-add`: supplementary groups, names or numbers.
    public var groupAdd: [String] = []
    /// `--ulimit NAME=SOFT[:HARD]`.
    public var ulimits: [OCISpec.Rlimit] = []
    /// `--read-only`: the root filesystem is mounted read-only.
    public var readOnly = false
    /// `--tmpfs PATH[:OPTIONS]`.
    public var tmpfs: [OCISpec.Mount] = []
    /// `-t`: the command's stdio is a new terminal of the container (its master is kept
    /// by the supervisor), and TERM is set to xterm unless given.
    public var terminal = false
    /// `--stop-signal`; nil: the image's StopSignal, or SIGTERM.
    public var stopSignal: String?
    /// The image's Labels and ExposedPorts, filled by `applyImage`.
    public var labels: [String: String] = [:]
    public var exposedPorts: [String] = []
    /// `--network NAME` of a bridge network, with `--ip`, `--mac-address`, `-p`, `--dns`,
    /// `--add-host`; nil for none and host.
    public var networkRequest: NetworkRequest?
    /// `--pod NAME`: join the pod's network, ipc and uts namespaces (the pod owns the
    /// network, so `networkRequest` and `hostname` go with it, not here).
    public var pod: String?

    public init(
        command: [String], environment: [String] = [], workingDirectory: String? = nil, hostname: String? = nil,
        network: NetworkMode = .none, volumes: [VolumeMount] = [], limits: CgroupLimits = CgroupLimits()
    ) {
        self.command = command
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.hostname = hostname
        self.network = network
        self.volumes = volumes
        self.limits = limits
    }
}

/// Which seccomp filter a container gets.
public enum SeccompChoice: Sendable, Equatable {
    /// Ferry's default profile (the effect of containers-common's).
    case `default`
    /// No filter (`seccomp=unconfined`).
    case unconfined
    /// A profile file in docker's or the OCI format.
    case file(String)
}

extension RunOptions {
    /// Fills what the user left unset from the image's config, as podman does: the
    /// command is the image's Entrypoint followed by the user's command, or else by the
    /// image's Cmd; `entrypoint` (--entrypoint; "" for none) replaces the image's and
    /// then the image's Cmd is dropped too. The image's Env comes first and the user's
    /// -e wins for a key both set; WorkingDir, User and StopSignal apply when the user
    /// gave none. Labels and ExposedPorts are recorded as they are.
    public mutating func applyImage(_ config: ImageRuntimeConfig?, entrypoint: String?, image: String) throws(RuntimeError) {
        let imageEntrypoint = config?.entrypoint ?? []
        let prefix: [String]
        let defaultArguments: [String]
        if let entrypoint {
            prefix = entrypoint.isEmpty ? [] : [entrypoint]
            defaultArguments = []
        } else {
            prefix = imageEntrypoint
            defaultArguments = config?.cmd ?? []
        }
        command = prefix + (command.isEmpty ? defaultArguments : command)
        guard !command.isEmpty else {
            throw RuntimeError(.invalidArgument, "cannot run image '\(image)': it has no Entrypoint or Cmd; give a command")
        }
        let userKeys = Set(environment.map { String($0.prefix { $0 != "=" }) })
        environment = (config?.env ?? []).filter { !userKeys.contains(String($0.prefix { $0 != "=" })) } + environment
        if workingDirectory == nil, let directory = config?.workingDir, !directory.isEmpty {
            workingDirectory = directory
        }
        if user == nil, let imageUser = config?.user, !imageUser.isEmpty {
            user = imageUser
        }
        if stopSignal == nil, let signal = config?.stopSignal, !signal.isEmpty {
            // Checked now, not at stop: a signal nobody can send must fail the run, not
            // turn a later stop into a silent SIGKILL.
            guard Processes.signalNumber(signal) != nil else {
                throw RuntimeError(.invalidArgument, "cannot run image '\(image)': its StopSignal '\(signal)' is not a signal")
            }
            stopSignal = signal
        }
        labels = config?.labels ?? [:]
        exposedPorts = (config?.exposedPorts ?? [:]).keys.sorted()
    }
}

extension RunOptions {
    /// What the container record keeps of the stop signal, labels and ports; nil when
    /// there is nothing, so records of plain containers stay as they were.
    public var imageSettings: ContainerImageSettings? {
        let settings = ContainerImageSettings(
            stopSignal: stopSignal, labels: labels.isEmpty ? nil : labels, exposedPorts: exposedPorts.isEmpty ? nil : exposedPorts)
        return settings.isEmpty ? nil : settings
    }
}

/// Parsers for the user's spellings of run options. Each error is one line naming the
/// offending value.
public enum RunOptionParser {
    /// `-v SOURCE:DEST[:ro|rw]`. SOURCE starting with '/' is a host path, otherwise a
    /// named volume.
    public static func volume(_ spec: String) throws(RuntimeError) -> VolumeMount {
        let parts = spec.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw RuntimeError(.invalidArgument, "invalid volume '\(spec)': expected NAME:/path[:ro] or /host/path:/path[:ro]")
        }
        var readOnly = false
        if parts.count == 3 {
            switch parts[2] {
            case "ro": readOnly = true
            case "rw": readOnly = false
            default:
                throw RuntimeError(.invalidArgument, "invalid volume '\(spec)': mode must be 'ro' or 'rw', not '\(parts[2])'")
            }
        }
        let destination = parts[1]
        guard destination.hasPrefix("/"), !destination.split(separator: "/").contains("..") else {
            throw RuntimeError(.invalidArgument, "invalid volume '\(spec)': the container path must be absolute and without '..'")
        }
        if let reserved = reservedDestination(normalize(destination)) {
            throw RuntimeError(.invalidArgument, "invalid volume '\(spec)': \(reserved); mount it elsewhere")
        }
        if parts[0].hasPrefix("/") {
            return VolumeMount(kind: .bind, source: parts[0], destination: normalize(destination), readOnly: readOnly)
        }
        do {
            try Names.validate(parts[0], kind: "volume")
        } catch {
            throw RuntimeError(.invalidArgument, "invalid volume '\(spec)'", cause: error)
        }
        return VolumeMount(kind: .named, source: parts[0], destination: normalize(destination), readOnly: readOnly)
    }

    /// `-e KEY=VALUE`, or `-e KEY` to pass the caller's value through (as podman does).
    public static func environment(_ spec: String, lookup: (String) -> String? = { ProcessInfo.processInfo.environment[$0] }) throws(RuntimeError) -> String {
        let key = spec.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        guard !key.isEmpty, !key.contains(where: { $0 == "\0" || $0.isWhitespace }) else {
            throw RuntimeError(.invalidArgument, "invalid environment variable '\(spec)': expected KEY=VALUE")
        }
        if spec.contains("=") { return spec }
        guard let value = lookup(key) else {
            throw RuntimeError(.invalidArgument, "invalid environment variable '\(spec)': expected KEY=VALUE ('\(key)' is not set here to pass through)")
        }
        return "\(key)=\(value)"
    }

    /// `--memory 512m`, `1g`, `1048576`, `64MiB`... (binary units, as podman).
    public static func memory(_ spec: String) throws(RuntimeError) -> Int64 {
        let lower = spec.lowercased().trimmingCharacters(in: .whitespaces)
        let digits = lower.prefix { $0.isNumber || $0 == "." }
        var unit = String(lower.dropFirst(digits.count))
        if unit.hasSuffix("ib") { unit = String(unit.dropLast(2)) } else if unit.hasSuffix("b") { unit = String(unit.dropLast()) }
        let multipliers: [String: Double] = ["": 1, "k": 1024, "m": 1024 * 1024, "g": 1024 * 1024 * 1024, "t": 1024 * 1024 * 1024 * 1024]
        guard let number = Double(digits), let multiplier = multipliers[unit] else {
            throw RuntimeError(.invalidArgument, "invalid memory size '\(spec)': use a number with an optional unit (k, m, g), e.g. 512m")
        }
        let bytes = number * multiplier
        guard bytes >= 4 * 1024 * 1024 else {
            throw RuntimeError(.invalidArgument, "invalid memory size '\(spec)': must be at least 4m")
        }
        // The kernel takes up to 2^63 - 1 bytes: beyond, the number would wrap around.
        guard bytes < Double(Int64.max) else {
            throw RuntimeError(.invalidArgument, "invalid memory size '\(spec)': too large (at most 8388607t)")
        }
        return Int64(bytes)
    }

    /// `--cpus 1.5`.
    public static func cpus(_ spec: String) throws(RuntimeError) -> Double {
        guard let value = Double(spec), value > 0, value <= 1024 else {
            throw RuntimeError(.invalidArgument, "invalid --cpus '\(spec)': use a positive number such as 0.5 or 2")
        }
        return value
    }

    /// `--pids-limit 100`.
    public static func pidsLimit(_ spec: String) throws(RuntimeError) -> Int64 {
        guard let value = Int64(spec), value > 0 else {
            throw RuntimeError(.invalidArgument, "invalid --pids-limit '\(spec)': use a positive whole number")
        }
        return value
    }

    /// `--snapshot-every 30s`, `5m`, `1h`, `500ms`, or plain seconds.
    public static func duration(_ spec: String) throws(RuntimeError) -> Double {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        var number = spec
        var scale = 1.0
        for (suffix, factor) in units where spec.hasSuffix(suffix) {
            number = String(spec.dropLast(suffix.count))
            scale = factor
            break
        }
        guard let value = Double(number), value > 0 else {
            throw RuntimeError(.invalidArgument, "invalid duration '\(spec)': use a number with s, m, h or ms, e.g. 30s")
        }
        guard value * scale >= 0.5 else {
            throw RuntimeError(.invalidArgument, "invalid duration '\(spec)': snapshots can be at most twice a second")
        }
        return value * scale
    }

    /// `--restart no | on-failure[:N]` (N defaults to 3). Returns nil for "no".
    public static func restart(_ spec: String) throws(RuntimeError) -> Int? {
        if spec == "no" { return nil }
        if spec == "on-failure" { return 3 }
        if spec.hasPrefix("on-failure:"), let count = Int(spec.dropFirst("on-failure:".count)), count > 0 { return count }
        throw RuntimeError(.invalidArgument, "invalid --restart '\(spec)': use no or on-failure[:N]")
    }

    /// `--security-opt no-new-privileges[=true|false]`, `seccomp=unconfined|FILE`.
    public static func securityOption(_ spec: String, into options: inout RunOptions) throws(RuntimeError) {
        let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
        let key = parts.first ?? ""
        // podman also accepts the old "key:value" form of no-new-privileges.
        switch (key, parts.count > 1 ? parts[1] : nil) {
        case ("no-new-privileges", nil), ("no-new-privileges", "true"), ("no-new-privileges:true", nil): options.noNewPrivileges = true
        case ("no-new-privileges", "false"), ("no-new-privileges:false", nil): options.noNewPrivileges = false
        case ("seccomp", "unconfined"): options.seccomp = .unconfined
        case ("seccomp", let file?) where !file.isEmpty: options.seccomp = .file(file)
        default:
            throw RuntimeError(
                .invalidArgument, "invalid --security-opt '\(spec)': use no-new-privileges, seccomp=unconfined or seccomp=/path/to/profile.json")
        }
    }

    /// `--ulimit nofile=1024:2048`, `nproc=512`, `core=-1` (-1 or "unlimited": no limit).
    public static func ulimit(_ spec: String) throws(RuntimeError) -> OCISpec.Rlimit {
        let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
        func fail() -> RuntimeError {
            RuntimeError(.invalidArgument, "invalid --ulimit '\(spec)': expected NAME=SOFT[:HARD], e.g. nofile=1024:2048")
        }
        guard parts.count == 2 else { throw fail() }
        let type = "RLIMIT_\(parts[0].uppercased())"
        guard ProcessSecurity.rlimitNumbers[type] != nil else {
            throw RuntimeError(.invalidArgument, "invalid --ulimit '\(spec)': unknown limit '\(parts[0])'")
        }
        func value(_ text: String) throws(RuntimeError) -> UInt64 {
            if text == "-1" || text == "unlimited" { return UInt64.max }
            guard let number = UInt64(text) else { throw fail() }
            return number
        }
        let values = parts[1].split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard values.count == 1 || values.count == 2 else { throw fail() }
        let soft = try value(values[0])
        let hard = values.count == 2 ? try value(values[1]) : soft
        guard soft <= hard else {
            throw RuntimeError(.invalidArgument, "invalid --ulimit '\(spec)': the soft limit is above the hard limit")
        }
        return OCISpec.Rlimit(type: type, hard: hard, soft: soft)
    }

    /// `--tmpfs /run[:OPTIONS]`; without options "rw,noexec,nosuid,nodev", as podman.
    public static func tmpfs(_ spec: String) throws(RuntimeError) -> OCISpec.Mount {
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        guard let path = parts.first, path.hasPrefix("/"), !path.split(separator: "/").contains("..") else {
            throw RuntimeError(.invalidArgument, "invalid --tmpfs '\(spec)': expected an absolute container path without '..', e.g. /run:size=64m")
        }
        let destination = normalize(path)
        if let reserved = reservedDestination(destination) {
            throw RuntimeError(.invalidArgument, "invalid --tmpfs '\(spec)': \(reserved)")
        }
        let options = parts.count == 2 ? parts[1].split(separator: ",").map(String.init) : ["rw", "noexec", "nosuid", "nodev"]
        return OCISpec.Mount(destination: destination, type: "tmpfs", source: "tmpfs", options: options)
    }

    /// Why a mount may not go to `destination`, or nil: /dev, /proc and /sys are the
    /// container's own (a host directory on /dev would get device nodes made in it; a
    /// mount in /proc or /sys would undo their masks and read-only paths).
    static func reservedDestination(_ destination: String) -> String? {
        for reserved in ["/dev", "/proc", "/sys"] where destination == reserved || destination.hasPrefix("\(reserved)/") {
            if reserved == "/dev", destination != "/dev" { continue }
            return "\(destination) belongs to the container's own \(reserved)"
        }
        return nil
    }

    static func normalize(_ path: String) -> String {
        "/" + path.split(separator: "/").filter { $0 != "." }.joined(separator: "/")
    }
}
