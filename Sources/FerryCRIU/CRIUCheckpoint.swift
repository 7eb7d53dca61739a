import CCRIU
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What a dump needs: one value, one comment per field, as runc's CriuOpts.
public struct DumpRequest: Sendable {
    /// The root of the process tree: the container's init, as seen from the host.
    public var pid: Int32
    /// Where CRIU writes its images; must exist and be empty.
    public var imagesDirectory: String
    /// Where CRIU writes its log (default: the images directory).
    public var workDirectory: String?
    /// CRIU's log, relative to the work directory.
    public var logFile = "dump.log"
    /// Keep the tree running after the dump (snapshots, `--leave-running`).
    public var leaveRunning = false
    /// Dump established TCP connections (they are locked until restore).
    public var tcpEstablished = false
    /// Dump file locks held by the tree.
    public var fileLocks = false
    /// The cgroup CRIU uses to freeze the tree (v1 freezer dir or v2 dir); Ferry has
    /// frozen it already, so CRIU only seizes tasks that cannot run.
    public var freezeCgroup: String?
    /// Bind mounts whose source lives outside the container: (mount point in the
    /// container, key). CRIU records the key instead of trying to dump the mount's
    /// source, which is not in the container's mount namespace.
    public var externalMounts: [(mountPoint: String, key: String)] = []
    /// Other external resources ("net[4026531993]:extRootNetNS").
    public var externals: [String] = []
    /// The cgroup hierarchies to dump, as /proc/PID/cgroup names them ("memory",
    /// "cpu,cpuacct", "name=systemd", "" for cgroup2); empty: every hierarchy the tree
    /// is in. CRIU otherwise walks every hierarchy of the host the tasks belong to.
    public var cgroupDumpControllers: [String] = []
    /// Post-copy: leave anonymous memory behind and serve it, once the images are
    /// written, from a page server on 127.0.0.1 at this port until every page has been
    /// fetched. The dump returns only then (the tree stays frozen meanwhile). Goes through
    /// CRIU's RPC, since libcriu cannot ask for it.
    public var lazyPagesPort: UInt16?
    /// A descriptor the criu process of a streamed dump keeps open as its fd 4: the
    /// operation's lease, which must outlive this process while CRIU runs (libcriu's
    /// `criu swrk` inherits it by itself).
    public var leaseDescriptor: Int32?
    /// Called with CRIU's notifications ("post-dump" once the images are written);
    /// returning false fails the dump and resumes the tree. Lazy dumps only.
    public var notify: (@Sendable (String) -> Bool)?

    public init(pid: Int32, imagesDirectory: String) {
        self.pid = pid
        self.imagesDirectory = imagesDirectory
    }
}

public struct RestoreRequest: Sendable {
    public var imagesDirectory: String
    /// Where CRIU writes its log (default: the images directory).
    public var workDirectory: String?
    public var logFile = "restore.log"
    /// The container's root filesystem, mounted, as CRIU must find it.
    public var root: String
    /// (key recorded at dump, host path to bind there).
    public var externalMounts: [(key: String, hostPath: String)] = []
    /// Descriptors the restored tree gets instead of what it had (the supervisor's new
    /// stdio pipes for "pipe:[inode]" keys).
    public var inheritedDescriptors: [(fd: Int32, key: String)] = []
    /// Restore the tree into this cgroup (relative to each hierarchy's root), which Ferry
    /// has created with its limits beforehand.
    public var cgroupRoot: String?
    public var tcpEstablished = false
    public var fileLocks = false
    /// Called with CRIU's notifications ("pre-resume", "post-restore"...) while the
    /// restore runs; a non-zero return aborts the restore.
    public var notify: (@Sendable (String) -> Int32)?
    /// Post-copy: the images hold no anonymous memory; CRIU hands each task's
    /// userfaultfd to the `criu lazy-pages` daemon already listening in the work
    /// directory, which fills memory as it is touched. Goes through CRIU's RPC.
    public var lazyPages = false

    public init(imagesDirectory: String, root: String) {
        self.imagesDirectory = imagesDirectory
        self.root = root
    }
}

extension CRIUSession {
    /// `criu dump` through libcriu. On failure the error quotes the log's error lines.
    public func dump(_ request: DumpRequest) throws(CRIUError) {
        if request.lazyPagesPort != nil { return try lazyDump(request) }
        let images = try openImages(request.imagesDirectory)
        let work = try openImages(request.workDirectory ?? request.imagesDirectory)
        let fd = images.raw
        let workFD = work.raw
        let result: (Int32, Int32) = try withOptions { (opts) throws(CRIUError) -> (Int32, Int32) in
            criu_local_set_pid(opts, request.pid)
            criu_local_set_images_dir_fd(opts, fd)
            criu_local_set_work_dir_fd(opts, workFD)
            criu_local_set_log_level(opts, 4)
            try check(criu_local_set_log_file(opts, request.logFile), "log file")
            criu_local_set_leave_running(opts, request.leaveRunning)
            criu_local_set_tcp_established(opts, request.tcpEstablished)
            criu_local_set_file_locks(opts, request.fileLocks)
            // Locking the network (iptables rules added and removed around the dump)
            // only matters for TCP connections being dumped; skipping it saves tens of ms
            // of frozen time.
            if !request.tcpEstablished { _ = criu_local_set_network_lock(opts, CRIU_NETWORK_LOCK_SKIP) }
            // Files deleted while open (ghosts) are dumped up to this size each.
            criu_local_set_ghost_limit(opts, 64 << 20)
            criu_local_set_manage_cgroups(opts, true)
            criu_local_set_manage_cgroups_mode(opts, CRIU_CG_MODE_SOFT)
            if let cgroup = request.freezeCgroup {
                try check(criu_local_set_freeze_cgroup(opts, cgroup), "freeze cgroup")
            }
            for mount in request.externalMounts {
                try check(criu_local_add_ext_mount(opts, mount.mountPoint, mount.key), "external mount \(mount.mountPoint)")
            }
            for external in request.externals {
                try check(criu_local_add_external(opts, external), "external \(external)")
            }
            for controller in request.cgroupDumpControllers {
                try check(criu_local_add_cg_dump_controller(opts, controller), "cgroup dump controller \(controller)")
            }
            // CRIU runs shielded from Ctrl-C and the like: killed half-way it can leave
            // the tasks dead and its images incomplete. It finishes (or fails) on its own;
            // Ferry takes the signal and acts once CRIU is done.
            return Signals.withBlocked(Signals.termination) {
                let rc = criu_local_dump(opts)
                return (rc, Glibc.errno)
            }
        }
        if result.0 < 0 {
            throw failure(result, operation: "dump", log: "\(request.workDirectory ?? request.imagesDirectory)/\(request.logFile)")
        }
    }

    /// `criu restore` through libcriu, as a child of this process (so the caller becomes
    /// the parent and reaper of the restored init). Returns the restored init's pid.
    public func restoreChild(_ request: RestoreRequest) throws(CRIUError) -> Int32 {
        if request.lazyPages { return try lazyRestoreChild(request) }
        let images = try openImages(request.imagesDirectory)
        let work = try openImages(request.workDirectory ?? request.imagesDirectory)
        let fd = images.raw
        let workFD = work.raw
        let result: (Int32, Int32) = try withOptions { (opts) throws(CRIUError) -> (Int32, Int32) in
            criu_local_set_images_dir_fd(opts, fd)
            criu_local_set_work_dir_fd(opts, workFD)
            criu_local_set_log_level(opts, 4)
            try check(criu_local_set_log_file(opts, request.logFile), "log file")
            try check(criu_local_set_root(opts, request.root), "root")
            criu_local_set_tcp_established(opts, request.tcpEstablished)
            criu_local_set_file_locks(opts, request.fileLocks)
            if !request.tcpEstablished { _ = criu_local_set_network_lock(opts, CRIU_NETWORK_LOCK_SKIP) }
            criu_local_set_manage_cgroups(opts, true)
            criu_local_set_manage_cgroups_mode(opts, CRIU_CG_MODE_SOFT)
            if let cgroupRoot = request.cgroupRoot {
                try check(criu_local_add_cg_root(opts, nil, cgroupRoot), "cgroup root")
            }
            for mount in request.externalMounts {
                try check(criu_local_add_ext_mount(opts, mount.key, mount.hostPath), "external mount \(mount.key)")
            }
            for inherited in request.inheritedDescriptors {
                try check(criu_local_add_inherit_fd(opts, inherited.fd, inherited.key), "inherit fd \(inherited.key)")
            }
            // libcriu's callback has no context argument: route it through one global,
            // which the libcriu lock (held here) keeps to a single restore at a time.
            CRIUNotifications.handler = request.notify
            if request.notify != nil { criu_local_set_notify_cb(opts, CRIUNotifications.trampoline) }
            defer { CRIUNotifications.handler = nil }
            let rc = criu_local_restore_child(opts)
            return (rc, Glibc.errno)
        }
        if result.0 < 0 {
            throw failure(result, operation: "restore", log: "\(request.workDirectory ?? request.imagesDirectory)/\(request.logFile)")
        }
        return result.0
    }

    func openImages(_ path: String) throws(CRIUError) -> OwnedFD {
        do {
            return try OwnedFD.open(path, O_RDONLY | O_DIRECTORY)
        } catch {
            throw CRIUError(.optionFailed, "cannot open directory \(path)", cause: error)
        }
    }

    private func check(_ rc: Int32, _ what: String) throws(CRIUError) {
        if rc != 0 { throw CRIUError(.optionFailed, "cannot set criu option '\(what)': out of memory") }
    }

    func failure(_ result: (Int32, Int32), operation: String, log: String) -> CRIUError {
        let base = CRIUError.libcriu(result.0, errno: result.1, operation: "criu \(operation)", binary: serviceBinary)
        let excerpt = CRIULog.errorExcerpt(log)
        guard !excerpt.isEmpty else { return CRIUError(base.code, "\(base.message) (log: \(log))") }
        return CRIUError(base.code, "\(base.message): \(excerpt.joined(separator: " | ")) (log: \(log))")
    }
}

/// The one dispatcher for libcriu's context-less notify callback.
enum CRIUNotifications {
    nonisolated(unsafe) static var handler: (@Sendable (String) -> Int32)?

    static let trampoline: @convention(c) (UnsafeMutablePointer<CChar>?, criu_notify_arg_t?) -> Int32 = { action, _ in
        guard let action, let handler = CRIUNotifications.handler else { return 0 }
        return handler(String(cString: action))
    }
}

/// Reading CRIU's log files for error messages people can act on.
public enum CRIULog {
    /// How much of a log's end is read for its errors: CRIU logs its errors last, and a
    /// log can grow to gigabytes (a tree with millions of files at -v4).
    public static let tailBytes = 256 << 10

    /// The last error lines of a CRIU log ("Error (criu/mount.c:1234): ..."), without the
    /// timestamps, at most `limit` of them, from the log's last `tailBytes`.
    public static func errorExcerpt(_ path: String, limit: Int = 3) -> [String] {
        guard let tail = try? Files.readTail(path, limit: tailBytes) else { return [] }
        var lines = String(decoding: tail, as: UTF8.self).split(separator: "\n").map(String.init)
        // The first line may start mid-line when the tail was cut.
        if tail.count == tailBytes, !lines.isEmpty { lines.removeFirst() }
        // CRIU always logs that it cannot raise its own RLIMIT_NOFILE when root lacks
        // CAP_SYS_RESOURCE (as here); it is harmless and would hide the real error.
        let errors = lines.filter { ($0.contains("Error (") || $0.contains("Error:")) && !$0.contains("RLIMIT_NOFILE") }
        let chosen = errors.isEmpty ? Array(lines.suffix(2)) : Array(errors.suffix(limit))
        return chosen.map { line in
            // "(00.123456) Error (criu/...): message" -> "Error (criu/...): message"
            if line.hasPrefix("("), let close = line.firstIndex(of: ")") {
                return String(line[line.index(after: close)...].drop { $0 == " " })
            }
            return line
        }
    }
}
