import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// Cgroups for containers on the three layouts Linux hosts use: pure cgroup v2, hybrid
// (v1 controllers plus an empty cgroup2 tree at /sys/fs/cgroup/unified, as systemd set up
// for years) and pure v1. Every absolute path comes from the layout's mount points, so
// tests can point a layout at a fixture tree in a temporary directory.

// MARK: - Layout

/// How the cgroup filesystems are mounted on this host.
public enum CgroupLayout: Equatable, Sendable, CustomStringConvertible {
    /// Pure cgroup v2: one hierarchy, mounted at the given path.
    case unified(String)
    /// cgroup v1 controllers (controller -> mount point) plus a cgroup2 hierarchy that
    /// holds no controllers but still offers `cgroup.freeze`.
    case hybrid(v1: [String: String], unified: String)
    /// Pure cgroup v1 (controller -> mount point).
    case legacy(v1: [String: String])

    /// Where distributions mount cgroup filesystems.
    public static let standardRoot = "/sys/fs/cgroup"

    /// Works out the layout from a mount table.
    ///
    /// Keys of the v1 map are controller names taken from the super options of each
    /// `cgroup` mount; co-mounted controllers ("cpu,cpuacct") each map to the same mount
    /// point, and named hierarchies keep their option ("name=systemd"). Mounts outside
    /// /sys/fs/cgroup (a tool's private mount, a container's bind mount) are ignored
    /// unless nothing is mounted there.
    public static func detect(mountInfo: [MountInfoEntry]) throws(CgroupError) -> CgroupLayout {
        let cgroupMounts = mountInfo.filter { $0.fsType == "cgroup" || $0.fsType == "cgroup2" }
        let standard = cgroupMounts.filter { isPath($0.mountPoint, under: standardRoot) }
        var candidates = standard.isEmpty ? cgroupMounts : standard
        // A hierarchy may be mounted twice; prefer the mount of its root over a bind mount
        // of a subdirectory, which would put our cgroups somewhere unexpected.
        candidates = candidates.filter { $0.root == "/" } + candidates.filter { $0.root != "/" }

        var v1: [String: String] = [:]
        var unified: String?
        for entry in candidates {
            if entry.fsType == "cgroup2" {
                if unified == nil || entry.mountPoint == standardRoot { unified = entry.mountPoint }
                continue
            }
            for controller in v1Controllers(superOptions: entry.superOptions) where v1[controller] == nil {
                v1[controller] = entry.mountPoint
            }
        }

        switch (unified, v1.isEmpty) {
        case (nil, true):
            throw CgroupError(
                .noCgroupFilesystem, "detect the cgroup layout",
                detail: "no cgroup or cgroup2 filesystem is mounted")
        case (let unified?, true):
            return .unified(unified)
        case (let unified?, false):
            // cgroup2 mounted at the root of the standard place owns the host, whatever
            // v1 hierarchies were mounted beneath it for old software.
            return unified == standardRoot ? .unified(unified) : .hybrid(v1: v1, unified: unified)
        case (nil, false):
            return .legacy(v1: v1)
        }
    }

    /// The layout of the running host, from /proc/self/mountinfo.
    public static func current() throws(CgroupError) -> CgroupLayout {
        let entries: [MountInfoEntry]
        do {
            entries = try MountInfo.current()
        } catch {
            throw CgroupError(.system(error.errno), "detect the cgroup layout", cause: error)
        }
        return try detect(mountInfo: entries)
    }

    public var description: String {
        switch self {
        case .unified: return "cgroup v2"
        case .hybrid(_, let unified): return "hybrid (v1 controllers + cgroup2 at \(unified))"
        case .legacy: return "cgroup v1"
        }
    }

    /// The cgroup2 mount point, if there is one.
    public var unifiedMountPoint: String? {
        switch self {
        case .unified(let path), .hybrid(_, let path): return path
        case .legacy: return nil
        }
    }

    /// The v1 controllers and their mount points (empty on pure v2).
    public var v1MountPoints: [String: String] {
        switch self {
        case .unified: return [:]
        case .hybrid(let v1, _), .legacy(let v1): return v1
        }
    }

    /// Mount options of a v1 cgroup mount that are not controllers.
    private static let nonControllerOptions: Set<String> = [
        "rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode",
        "favordynmods", "nofavordynmods", "none", "all",
    ]

    static func v1Controllers(superOptions: String) -> [String] {
        superOptions.split(separator: ",").map(String.init).filter { option in
            if nonControllerOptions.contains(option) { return false }
            // Other key=value options (release_agent=...) are settings; a named
            // hierarchy is the one exception and is kept whole.
            return !option.contains("=") || option.hasPrefix("name=")
        }
    }

    static func isPath(_ path: String, under root: String) -> Bool {
        path == root || path.hasPrefix(root.hasSuffix("/") ? root : root + "/")
    }

    /// v1 controllers Ferry puts containers in, in the order they are joined. cpuset is
    /// included although Ferry sets no cpuset limits: CRIU restores a tree into one
    /// cgroup root for every controller, so the container must have its own cpuset
    /// cgroup (whose cpus and mems `create()` copies from the parent, as a new v1 cpuset
    /// cgroup starts empty and refuses tasks).
    static let containerV1Controllers = [
        "memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices", "blkio", "name=systemd",
    ]

    /// The hierarchies of task `pid` that Ferry manages, named as /proc/PID/cgroup names
    /// them ("memory", "cpu,cpuacct", "name=systemd", "" for cgroup2): what a dump of a
    /// container should cover. A hierarchy someone else made (a named one, say) is left out.
    public static func managedHierarchies(ofTask pid: Int32) -> [String] {
        guard let text = try? Files.readString("/proc/\(pid)/cgroup") else { return [] }
        var result: [String] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            let names = String(fields[1])
            let managed = names.isEmpty || names.split(separator: ",").contains { containerV1Controllers.contains(String($0)) }
            if managed, !result.contains(names) { result.append(names) }
        }
        return result
    }

    /// The hierarchies a container gets a directory in: the mounts of the v1 controllers
    /// above (co-mounted ones once) and the cgroup2 mount.
    var containerHierarchies: [CgroupHierarchy] {
        var result: [CgroupHierarchy] = []
        let v1 = v1MountPoints
        for controller in Self.containerV1Controllers {
            guard let mountPoint = v1[controller] else { continue }
            if !result.contains(where: { $0.mountPoint == mountPoint }) {
                result.append(CgroupHierarchy(mountPoint: mountPoint, isUnified: false))
            }
        }
        if let unified = unifiedMountPoint {
            result.append(CgroupHierarchy(mountPoint: unified, isUnified: true))
        }
        return result
    }
}

/// One mounted cgroup hierarchy.
struct CgroupHierarchy: Equatable, Sendable {
    var mountPoint: String
    var isUnified: Bool
}

// MARK: - Limits

/// Resource limits for a container. `nil` means unlimited.
public struct CgroupLimits: Codable, Equatable, Sendable {
    /// Memory limit in bytes (v2 memory.max, v1 memory.limit_in_bytes). The kernel rounds
    /// it down to a whole number of pages.
    public var memoryBytes: Int64?
    /// CPU time as a number of CPUs: the CFS quota is `cpus * cpuPeriod` per period.
    public var cpus: Double?
    /// Maximum number of tasks (pids.max).
    public var pidsMax: Int64?

    /// The CFS period in microseconds, the kernel's default.
    public static let cpuPeriod: Int64 = 100_000

    /// The smallest quota the kernel accepts (1 ms).
    static let minimumCPUQuota: Int64 = 1_000

    public init(memoryBytes: Int64? = nil, cpus: Double? = nil, pidsMax: Int64? = nil) {
        self.memoryBytes = memoryBytes
        self.cpus = cpus
        self.pidsMax = pidsMax
    }

    /// The CFS quota in microseconds per `cpuPeriod`, or nil for no limit.
    public var cpuQuota: Int64? {
        guard let cpus, cpus.isFinite, cpus > 0, cpus * Double(Self.cpuPeriod) < Double(Int64.max) else { return nil }
        return Int64((cpus * Double(Self.cpuPeriod)).rounded())
    }

    /// Why these limits cannot be applied, or nil when they can.
    func problem() -> String? {
        if let memoryBytes, memoryBytes <= 0 { return "memory limit must be positive, not \(memoryBytes)" }
        if let pidsMax, pidsMax <= 0 { return "pids limit must be positive, not \(pidsMax)" }
        if let cpus {
            guard let quota = cpuQuota else { return "cpus must be a positive number, not \(cpus)" }
            if quota < Self.minimumCPUQuota {
                return "cpus must be at least \(Double(Self.minimumCPUQuota) / Double(Self.cpuPeriod)), not \(cpus)"
            }
        }
        return nil
    }
}

// MARK: - Errors

/// A cgroup operation that failed, naming the cgroup and what was being done.
public struct CgroupError: CodedError {
    public enum Code: Equatable, Sendable {
        /// No cgroup filesystem is mounted.
        case noCgroupFilesystem
        /// The relative cgroup path is not a clean relative path.
        case invalidPath
        /// A limit is out of range.
        case invalidLimit
        /// The named controller is not mounted (v1) or not enabled (v2) for this cgroup.
        case controllerUnavailable(String)
        /// Freezing or emptying the cgroup did not finish in time.
        case timedOut
        /// A system call failed; `cause` has the call and the file.
        case system(Errno)
    }

    public let code: Code
    /// What was being done, phrased to follow "cannot": "set memory limit on".
    public let operation: String
    /// The cgroup's relative path, when the error concerns one.
    public let cgroup: String?
    /// Extra explanation when there is no system error.
    public let detail: String?
    /// The system call and file that failed, when one did.
    public let systemError: SystemError?

    public init(_ code: Code, _ operation: String, cgroup: String? = nil, detail: String? = nil, cause: SystemError? = nil) {
        self.code = code
        self.operation = operation
        self.cgroup = cgroup
        self.detail = detail
        self.systemError = cause
    }

    /// "cannot freeze cgroup ferry/web", then the detail when no system call failed.
    public var message: String {
        var text = "cannot \(operation)"
        if let cgroup { text += " cgroup \(cgroup)" }
        if systemError == nil, let detail { text += ": \(detail)" }
        return text
    }

    public var cause: (any Error)? { systemError }
}

// MARK: - A container's cgroup

/// A container's cgroup: one directory at the same relative path in every hierarchy
/// Ferry uses.
///
/// Creating the value touches nothing; `create()` makes the directories and `remove()`
/// deletes them. All paths derive from the layout's mount points, so a layout pointing at
/// a temporary directory gives a fixture cgroup for tests.
public struct ContainerCgroup: Sendable, CustomStringConvertible {
    public let layout: CgroupLayout
    /// The path below each hierarchy's root, such as "ferry-1a2b3c4d5e6f/web".
    public let path: String

    /// cgroup2 controllers that limits need. Enabled down the parent chain on create.
    static let unifiedControllers = ["cpu", "memory", "pids"]

    /// How long `remove()` retries an rmdir the kernel calls busy: after the last task
    /// exits, it takes a moment before the cgroup stops counting it.
    public static let removeTimeout: Duration = .seconds(2)
    /// How long `freeze()` waits for every task to stop by default.
    public static let freezeTimeout: Duration = .seconds(5)

    /// - Throws: `CgroupError` with `.invalidPath` unless `path` is relative and made of
    ///   plain components (no empty, "." or ".." parts).
    public init(layout: CgroupLayout, path: String) throws(CgroupError) {
        let components = path.split(separator: "/", omittingEmptySubsequences: false)
        let clean =
            !path.isEmpty && !path.contains("\0")
            && components.allSatisfy { !$0.isEmpty && $0 != "." && $0 != ".." }
        guard clean else {
            throw CgroupError(
                .invalidPath, "use", cgroup: path,
                detail: "a cgroup path must be relative, with no empty, '.' or '..' components")
        }
        self.layout = layout
        self.path = path
    }

    public var description: String { path }

    private var hierarchies: [CgroupHierarchy] { layout.containerHierarchies }

    private func directory(in hierarchy: CgroupHierarchy) -> String {
        Self.join(hierarchy.mountPoint, path)
    }

    private static func join(_ base: String, _ relative: String) -> String {
        base.hasSuffix("/") ? base + relative : base + "/" + relative
    }

    /// The container's directory in every hierarchy, absolute.
    public var paths: [String] { hierarchies.map(directory(in:)) }

    /// The absolute path of every `cgroup.procs`, for joining the cgroups (writing "0"
    /// moves the writer) from a process about to exec inside the container.
    public func procsFiles() -> [String] {
        paths.map { $0 + "/cgroup.procs" }
    }

    /// True when any of the directories exists (a half-created cgroup still needs removing).
    public var exists: Bool {
        paths.contains { Files.isDirectory($0) }
    }

    // MARK: Create and remove

    /// Creates the directory in every hierarchy. On cgroup2, controllers that limits need
    /// are enabled in `cgroup.subtree_control` from the hierarchy's root down to the
    /// parent, where they are available and not yet enabled. Existing directories are
    /// fine. On failure, whatever was created is removed again.
    public func create() throws(CgroupError) {
        do {
            for hierarchy in hierarchies {
                let dir = directory(in: hierarchy)
                try makeDirectory(dir)
                if hierarchy.isUnified {
                    try enableUnifiedControllers(in: hierarchy)
                } else if hierarchy.mountPoint == layout.v1MountPoints["cpuset"] {
                    try inheritCpuset(in: hierarchy)
                }
            }
        } catch {
            try? remove()
            throw error
        }
    }

    private func makeDirectory(_ dir: String) throws(CgroupError) {
        // Another container sharing our parent may rmdir it between our mkdir of the
        // parent and of the leaf; a second attempt recreates it.
        var attempts = 0
        while true {
            do {
                try Files.createDirectory(dir)
                return
            } catch {
                attempts += 1
                if error.errno == .noSuchFileOrDirectory && attempts < 3 { continue }
                throw CgroupError(.system(error.errno), "create", cgroup: path, cause: error)
            }
        }
    }

    /// Copies cpuset.cpus and cpuset.mems down from the parent into each level that has
    /// none yet: an empty v1 cpuset refuses tasks.
    private func inheritCpuset(in hierarchy: CgroupHierarchy) throws(CgroupError) {
        var parent = hierarchy.mountPoint
        for component in path.split(separator: "/").map(String.init) {
            let dir = Self.join(parent, component)
            for file in ["cpuset.cpus", "cpuset.mems"] {
                // Only where the kernel made the file (a real v1 cpuset directory).
                guard let current = (try? Files.readString("\(dir)/\(file)"))?.trimmingCharacters(in: .whitespacesAndNewlines) else { continue }
                guard current.isEmpty, let inherited = try? Files.readString("\(parent)/\(file)") else { continue }
                do {
                    try Files.writeControl(inherited.trimmingCharacters(in: .whitespacesAndNewlines), to: "\(dir)/\(file)")
                } catch {
                    throw CgroupError(.system(error.errno), "create", cgroup: path, detail: "cannot initialise \(file)", cause: error)
                }
            }
            parent = dir
        }
    }

    private func enableUnifiedControllers(in hierarchy: CgroupHierarchy) throws(CgroupError) {
        let components = path.split(separator: "/").map(String.init)
        var ancestor = hierarchy.mountPoint
        for component in components {
            let available = try words(in: ancestor + "/cgroup.controllers", operation: "create")
            let enabled = try words(in: ancestor + "/cgroup.subtree_control", operation: "create")
            let missing = Self.unifiedControllers.filter { available.contains($0) && !enabled.contains($0) }
            if !missing.isEmpty {
                let file = ancestor + "/cgroup.subtree_control"
                do {
                    try Files.writeControl(missing.map { "+\($0)" }.joined(separator: " "), to: file)
                } catch {
                    // The kernel applies a multi-controller write all or nothing; try each
                    // alone so one refusal (cpu while a realtime task sits outside the
                    // root) keeps no other away. A controller still missing is reported
                    // by apply(), which names the limit that needs it.
                    for controller in missing {
                        try? Files.writeControl("+\(controller)", to: file)
                    }
                }
            }
            ancestor = Self.join(ancestor, component)
        }
    }

    /// Removes the directory in every hierarchy, then the parent directory (a
    /// "ferry-<instance>" directory shared with other containers) where it is now empty.
    ///
    /// Missing directories are fine. A directory the kernel calls busy is retried until
    /// `removeTimeout`, since a cgroup whose last task just died stays busy until the
    /// task is reaped.
    public func remove() throws(CgroupError) {
        var firstError: CgroupError?
        for dir in paths {
            do {
                try removeDirectory(dir, retryingBusyFor: Self.removeTimeout)
            } catch {
                firstError = firstError ?? CgroupError(.system(error.errno), "remove", cgroup: path, cause: error)
            }
        }
        let parent = Files.parent(of: path)
        if parent != "." {
            for hierarchy in hierarchies {
                let dir = Self.join(hierarchy.mountPoint, parent)
                do {
                    try Files.removeDirectory(dir)
                } catch {
                    // Another container still uses the parent, or removed it first.
                    if error == .directoryNotEmpty || error == .resourceBusy || error == .noSuchFileOrDirectory { continue }
                    firstError =
                        firstError
                        ?? CgroupError(
                            .system(error), "remove", cgroup: parent,
                            cause: error.with("rmdir", path: dir))
                }
            }
        }
        if let firstError { throw firstError }
    }

    private func removeDirectory(_ dir: String, retryingBusyFor timeout: Duration) throws(SystemError) {
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                try Files.removeDirectory(dir)
                return
            } catch {
                if error == .noSuchFileOrDirectory { return }
                if error != .resourceBusy || ContinuousClock.now >= deadline {
                    throw error.with("rmdir", path: dir)
                }
            }
            Self.pause(milliseconds: 10)
        }
    }

    // MARK: Limits

    /// Where a controller's files are for this cgroup: the v1 hierarchy that has it, or
    /// else the cgroup2 directory.
    private func controllerDirectory(_ controller: String) -> String? {
        switch layout {
        case .unified(let unified):
            return Self.join(unified, path)
        case .hybrid(let v1, let unified):
            // A controller not bound to v1 is left to cgroup2, where the kernel offers it.
            return Self.join(v1[controller] ?? unified, path)
        case .legacy(let v1):
            return v1[controller].map { Self.join($0, path) }
        }
    }

    private func usesV1(_ controller: String) -> Bool {
        layout.v1MountPoints[controller] != nil
    }

    /// The memory limit file: memory.max (v2) or memory.limit_in_bytes (v1).
    public var memoryLimitFile: String? {
        controllerDirectory("memory").map { $0 + (usesV1("memory") ? "/memory.limit_in_bytes" : "/memory.max") }
    }

    /// The CPU limit file: cpu.max ("quota period", v2) or cpu.cfs_quota_us (v1).
    public var cpuLimitFile: String? {
        controllerDirectory("cpu").map { $0 + (usesV1("cpu") ? "/cpu.cfs_quota_us" : "/cpu.max") }
    }

    /// The v1 CFS period file, cpu.cfs_period_us; nil on cgroup2, where cpu.max holds both.
    public var cpuPeriodFile: String? {
        usesV1("cpu") ? controllerDirectory("cpu").map { $0 + "/cpu.cfs_period_us" } : nil
    }

    /// The pids limit file, pids.max (the same name in v1 and v2).
    public var pidsLimitFile: String? {
        controllerDirectory("pids").map { $0 + "/pids.max" }
    }

    /// Sets every limit in `limits`; a nil limit is written as unlimited where the
    /// controller exists and skipped where it does not.
    public func apply(_ limits: CgroupLimits) throws(CgroupError) {
        if let problem = limits.problem() {
            throw CgroupError(.invalidLimit, "set limits on", cgroup: path, detail: problem)
        }

        let memoryValue = limits.memoryBytes.map(String.init) ?? (usesV1("memory") ? "-1" : "max")
        try setLimit(
            controller: "memory", what: "memory limit", file: memoryLimitFile,
            value: memoryValue, required: limits.memoryBytes != nil)

        let quota = limits.cpuQuota
        if usesV1("cpu") {
            // Period first: the kernel checks quota against the period already set.
            try setLimit(
                controller: "cpu", what: "cpu limit", file: cpuPeriodFile,
                value: String(CgroupLimits.cpuPeriod), required: quota != nil)
            try setLimit(
                controller: "cpu", what: "cpu limit", file: cpuLimitFile,
                value: quota.map(String.init) ?? "-1", required: quota != nil)
        } else {
            try setLimit(
                controller: "cpu", what: "cpu limit", file: cpuLimitFile,
                value: "\(quota.map(String.init) ?? "max") \(CgroupLimits.cpuPeriod)",
                required: quota != nil)
        }

        try setLimit(
            controller: "pids", what: "pids limit", file: pidsLimitFile,
            value: limits.pidsMax.map(String.init) ?? "max", required: limits.pidsMax != nil)
    }

    /// Restricts the devices the container may open to `rules` ("c 1:3 rwm" lines of the
    /// v1 devices controller, applied in order: "a" in devices.deny first empties the
    /// list). cgroup2 has no such files (its device control is an eBPF program): there,
    /// and where the devices controller is not mounted, nothing is done.
    public func restrictDevices(_ rules: [(allow: Bool, rule: String)]) throws(CgroupError) {
        guard usesV1("devices"), let directory = controllerDirectory("devices") else { return }
        for entry in rules {
            let file = "\(directory)/\(entry.allow ? "devices.allow" : "devices.deny")"
            do {
                try Files.writeControl(entry.rule, to: file)
            } catch {
                throw CgroupError(.system(error.errno), "restrict the devices of", cgroup: path, cause: error)
            }
        }
    }

    private func setLimit(controller: String, what: String, file: String?, value: String, required: Bool) throws(CgroupError) {
        let operation = "set \(what) on"
        guard let file, Files.exists(file) else {
            guard required else { return }
            let reason = file.map { "no \($0)" } ?? "it is not mounted"
            throw CgroupError(
                .controllerUnavailable(controller), operation, cgroup: path,
                detail: "the \(controller) controller is not available (\(reason))")
        }
        do {
            try Files.writeControl(value, to: file)
        } catch {
            throw CgroupError(.system(error.errno), operation, cgroup: path, cause: error)
        }
    }

    /// Reads the limits back from the cgroup's files. A missing file reads as no limit.
    public func readLimits() throws(CgroupError) -> CgroupLimits {
        let operation = "read the limits of"
        var limits = CgroupLimits()

        if let text = try readIfPresent(memoryLimitFile, operation: operation), text != "max",
            let bytes = Int64(text), bytes > 0, !Self.isV1Unlimited(bytes)
        {
            limits.memoryBytes = bytes
        }

        if let cpuLimitFile {
            if usesV1("cpu") {
                if let quotaText = try readIfPresent(cpuLimitFile, operation: operation),
                    let quota = Int64(quotaText), quota > 0,
                    let periodText = try readIfPresent(cpuPeriodFile, operation: operation),
                    let period = Int64(periodText), period > 0
                {
                    limits.cpus = Double(quota) / Double(period)
                }
            } else if let text = try readIfPresent(cpuLimitFile, operation: operation) {
                let fields = text.split(separator: " ")
                if fields.count == 2, let quota = Int64(fields[0]), let period = Int64(fields[1]), period > 0 {
                    limits.cpus = Double(quota) / Double(period)
                }
            }
        }

        if let text = try readIfPresent(pidsLimitFile, operation: operation), text != "max", let max = Int64(text) {
            limits.pidsMax = max
        }
        return limits
    }

    /// v1 reports "no memory limit" as the largest page-aligned value; allow for pages
    /// up to 1 MiB so that the check holds on every architecture.
    private static func isV1Unlimited(_ bytes: Int64) -> Bool {
        bytes > Int64.max - (1 << 20)
    }

    // MARK: Processes

    /// Moves `pid` into the cgroup in every hierarchy.
    public func addProcess(_ pid: Int32) throws(CgroupError) {
        for file in procsFiles() {
            do {
                try Files.writeControl(String(pid), to: file)
            } catch {
                throw CgroupError(.system(error.errno), "add process \(pid) to", cgroup: path, cause: error)
            }
        }
    }

    /// The processes in the cgroup, from every hierarchy, sorted and without repeats.
    public func pids() throws(CgroupError) -> [Int32] {
        var all = Set<Int32>()
        for file in procsFiles() {
            guard let text = try readIfPresent(file, operation: "list the processes of") else { continue }
            for line in text.split(separator: "\n") {
                if let pid = Int32(line) { all.insert(pid) }
            }
        }
        return all.sorted()
    }

    // MARK: Freezer

    private enum Freezer {
        case unified(String)
        case v1(String)
    }

    /// cgroup2's freezer wherever a cgroup2 tree exists (it needs no controller, so it
    /// works in the hybrid layout too), else the v1 freezer controller.
    private var freezer: Freezer? {
        if let unified = layout.unifiedMountPoint {
            return .unified(Self.join(unified, path))
        }
        if let mountPoint = layout.v1MountPoints["freezer"] {
            return .v1(Self.join(mountPoint, path))
        }
        return nil
    }

    /// The directory to give CRIU as the freeze cgroup: the one `freeze()` uses. CRIU
    /// tells v1 from v2 by which control file (freezer.state or cgroup.freeze) it finds.
    public var freezerPath: String? {
        switch freezer {
        case .unified(let dir), .v1(let dir): return dir
        case nil: return nil
        }
    }

    private func requireFreezer(_ operation: String) throws(CgroupError) -> Freezer {
        guard let freezer else {
            throw CgroupError(
                .controllerUnavailable("freezer"), operation, cgroup: path,
                detail: "no cgroup2 tree and no v1 freezer controller is mounted")
        }
        return freezer
    }

    /// Stops every task in the cgroup and waits until the kernel says all are stopped.
    /// If that takes longer than `timeout`, the cgroup is thawed again and the call fails,
    /// so that a container is never left half frozen.
    public func freeze(timeout: Duration = ContainerCgroup.freezeTimeout) throws(CgroupError) {
        let operation = "freeze"
        let freezer = try requireFreezer(operation)
        let deadline = ContinuousClock.now + timeout
        var delay = 1
        switch freezer {
        case .unified(let dir):
            try write("1", to: dir + "/cgroup.freeze", operation: operation)
            while try !unifiedFrozen(dir, operation: operation) {
                if ContinuousClock.now >= deadline { return try abandonFreeze(timeout) }
                Self.pause(milliseconds: delay)
                delay = min(delay * 2, 20)
            }
        case .v1(let dir):
            // A v1 cgroup can stay FREEZING while a task is in an uninterruptible sleep;
            // writing FROZEN again retries the tasks that were not caught.
            while true {
                try write("FROZEN", to: dir + "/freezer.state", operation: operation)
                if try v1State(dir, operation: operation) == "FROZEN" { return }
                if ContinuousClock.now >= deadline { return try abandonFreeze(timeout) }
                Self.pause(milliseconds: delay)
                delay = min(delay * 2, 20)
            }
        }
    }

    /// Asks the kernel to freeze the cgroup without waiting for the tasks to stop: for
    /// tasks that are stopped already (under ptrace during a CRIU restore), which freeze
    /// as soon as they would run.
    public func requestFreeze() throws(CgroupError) {
        switch try requireFreezer("freeze") {
        case .unified(let dir): try write("1", to: dir + "/cgroup.freeze", operation: "freeze")
        case .v1(let dir): try write("FROZEN", to: dir + "/freezer.state", operation: "freeze")
        }
    }

    private func abandonFreeze(_ timeout: Duration) throws(CgroupError) {
        try? thaw()
        throw CgroupError(
            .timedOut, "freeze", cgroup: path,
            detail: "not every task stopped within \(timeout); the cgroup was thawed again")
    }

    /// Lets the tasks run again.
    public func thaw(timeout: Duration = ContainerCgroup.freezeTimeout) throws(CgroupError) {
        let operation = "thaw"
        switch try requireFreezer(operation) {
        case .unified(let dir):
            // The kernel clears "frozen" in cgroup.events as part of this write.
            try write("0", to: dir + "/cgroup.freeze", operation: operation)
        case .v1(let dir):
            let deadline = ContinuousClock.now + timeout
            try write("THAWED", to: dir + "/freezer.state", operation: operation)
            while try v1State(dir, operation: operation) != "THAWED" {
                if ContinuousClock.now >= deadline {
                    throw CgroupError(
                        .timedOut, operation, cgroup: path,
                        detail: "freezer.state did not become THAWED within \(timeout)")
                }
                Self.pause(milliseconds: 5)
            }
        }
    }

    /// Whether the kernel reports every task in the cgroup as frozen.
    public var isFrozen: Bool {
        get throws(CgroupError) {
            let operation = "read the freezer state of"
            switch try requireFreezer(operation) {
            case .unified(let dir): return try unifiedFrozen(dir, operation: operation)
            case .v1(let dir): return try v1State(dir, operation: operation) == "FROZEN"
            }
        }
    }

    private func unifiedFrozen(_ dir: String, operation: String) throws(CgroupError) -> Bool {
        let events = try read(dir + "/cgroup.events", operation: operation)
        return events.split(separator: "\n").contains { trimmingSpaces($0) == "frozen 1" }
    }

    private func v1State(_ dir: String, operation: String) throws(CgroupError) -> String {
        try read(dir + "/freezer.state", operation: operation)
    }

    // MARK: File helpers

    private func write(_ value: String, to file: String, operation: String) throws(CgroupError) {
        do {
            try Files.writeControl(value, to: file)
        } catch {
            throw CgroupError(.system(error.errno), operation, cgroup: path, cause: error)
        }
    }

    /// The file's content without surrounding whitespace.
    private func read(_ file: String, operation: String) throws(CgroupError) -> String {
        do {
            return try trimmingSpaces(Files.readString(file))
        } catch {
            throw CgroupError(.system(error.errno), operation, cgroup: path, cause: error)
        }
    }

    private func readIfPresent(_ file: String?, operation: String) throws(CgroupError) -> String? {
        guard let file, Files.exists(file) else { return nil }
        return try read(file, operation: operation)
    }

    /// The space-separated words of a file; a missing file has none.
    private func words(in file: String, operation: String) throws(CgroupError) -> [String] {
        guard let text = try readIfPresent(file, operation: operation) else { return [] }
        return text.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
    }

    private static func pause(milliseconds: Int) {
        usleep(useconds_t(milliseconds * 1000))
    }
}

/// The text without leading and trailing spaces, tabs and newlines (kernel files end in a
/// newline).
private func trimmingSpaces(_ text: some StringProtocol) -> String {
    let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" }
    guard let first = text.firstIndex(where: { !isSpace($0) }),
        let last = text.lastIndex(where: { !isSpace($0) })
    else { return "" }
    return String(text[first...last])
}
