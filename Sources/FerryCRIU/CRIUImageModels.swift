import CCRIUImages

// Swift values for what `ferry archive inspect` and `checkpoint --print-stats` show,
// decoded from CRIU's images (images/*.proto). Each value copies what it needs out of
// the protobuf-c message, so no C memory outlives a decode.

/// CRIU's account of one dump, from `stats-dump` (images/stats.proto, dump_stats_entry).
///
/// Times are in microseconds, as CRIU stores them (u32: an interval over ~71 minutes
/// wraps, which CRIU does not guard against either).
public struct DumpStatistics: Codable, Equatable, Sendable {
    /// Time to freeze the tree (cgroup freezer or ptrace seize), in µs.
    public var freezingTime: UInt32
    /// Time the tree stayed frozen: the application's downtime, in µs.
    public var frozenTime: UInt32
    /// Time to collect memory into page pipes, in µs.
    public var memdumpTime: UInt32
    /// Time to write the collected pages to the images, in µs.
    public var memwriteTime: UInt32
    /// Time to resolve inotify watch paths (irmap), in µs; CRIU 4.x always writes it.
    public var irmapResolveTime: UInt32?
    /// Private pages CRIU looked at.
    public var pagesScanned: UInt64
    /// Pages not written because an earlier pre-dump (the parent images) has them.
    public var pagesSkippedParent: UInt64
    /// Pages written to this dump's pages-*.img.
    public var pagesWritten: UInt64
    /// Pages left for lazy (post-copy) restore.
    public var pagesLazy: UInt64
    /// Page pipes used to move memory out of the tasks.
    public var pagePipes: UInt64?
    /// Buffers in those pipes.
    public var pagePipeBuffers: UInt64?
    /// Shared anonymous memory pages looked at.
    public var sharedPagesScanned: UInt64?
    /// Shared pages skipped because the parent images have them.
    public var sharedPagesSkippedParent: UInt64?
    /// Shared pages written.
    public var sharedPagesWritten: UInt64?

    /// The times carry their unit in JSON ("frozenTimeUs"), as every key of Ferry's
    /// reports does (docs/json.md); the Swift names follow CRIU's.
    private enum CodingKeys: String, CodingKey {
        case freezingTime = "freezingTimeUs"
        case frozenTime = "frozenTimeUs"
        case memdumpTime = "memdumpTimeUs"
        case memwriteTime = "memwriteTimeUs"
        case irmapResolveTime = "irmapResolveTimeUs"
        case pagesScanned, pagesSkippedParent, pagesWritten, pagesLazy, pagePipes, pagePipeBuffers
        case sharedPagesScanned, sharedPagesSkippedParent, sharedPagesWritten
    }

    public init(
        freezingTime: UInt32, frozenTime: UInt32, memdumpTime: UInt32, memwriteTime: UInt32,
        irmapResolveTime: UInt32? = nil, pagesScanned: UInt64, pagesSkippedParent: UInt64,
        pagesWritten: UInt64, pagesLazy: UInt64, pagePipes: UInt64? = nil, pagePipeBuffers: UInt64? = nil,
        sharedPagesScanned: UInt64? = nil, sharedPagesSkippedParent: UInt64? = nil, sharedPagesWritten: UInt64? = nil
    ) {
        self.freezingTime = freezingTime
        self.frozenTime = frozenTime
        self.memdumpTime = memdumpTime
        self.memwriteTime = memwriteTime
        self.irmapResolveTime = irmapResolveTime
        self.pagesScanned = pagesScanned
        self.pagesSkippedParent = pagesSkippedParent
        self.pagesWritten = pagesWritten
        self.pagesLazy = pagesLazy
        self.pagePipes = pagePipes
        self.pagePipeBuffers = pagePipeBuffers
        self.sharedPagesScanned = sharedPagesScanned
        self.sharedPagesSkippedParent = sharedPagesSkippedParent
        self.sharedPagesWritten = sharedPagesWritten
    }

    /// Decodes the contents of a `stats-dump` file.
    public init(statsDump bytes: [UInt8], name: String = "stats-dump") throws(CRIUImageError) {
        let image = try CRIUImageFile(name: name, bytes: bytes, kind: .stats)
        self = try image.decodeStats(section: "dump") { entry in entry.dump.map { DumpStatistics($0.pointee) } }
    }

    init(_ d: DumpStatsEntry) {
        self.init(
            freezingTime: d.freezing_time, frozenTime: d.frozen_time,
            memdumpTime: d.memdump_time, memwriteTime: d.memwrite_time,
            irmapResolveTime: d.has_irmap_resolve != 0 ? d.irmap_resolve : nil,
            pagesScanned: d.pages_scanned, pagesSkippedParent: d.pages_skipped_parent,
            pagesWritten: d.pages_written, pagesLazy: d.pages_lazy,
            pagePipes: d.has_page_pipes != 0 ? d.page_pipes : nil,
            pagePipeBuffers: d.has_page_pipe_bufs != 0 ? d.page_pipe_bufs : nil,
            sharedPagesScanned: d.has_shpages_scanned != 0 ? d.shpages_scanned : nil,
            sharedPagesSkippedParent: d.has_shpages_skipped_parent != 0 ? d.shpages_skipped_parent : nil,
            sharedPagesWritten: d.has_shpages_written != 0 ? d.shpages_written : nil
        )
    }
}

/// CRIU's account of one restore, from `stats-restore` (restore_stats_entry).
public struct RestoreStatistics: Codable, Equatable, Sendable {
    /// Pages compared with the parent images while restoring (auto-dedup).
    public var pagesCompared: UInt64
    /// Pages left shared copy-on-write with the restorer instead of copied.
    public var pagesSkippedCOW: UInt64
    /// Time to fork the process tree, in µs.
    public var forkingTime: UInt32
    /// Time for the whole restore, in µs.
    public var restoreTime: UInt32
    /// Pages read back into the tasks.
    public var pagesRestored: UInt64?

    /// µs in the key names, as `DumpStatistics`.
    private enum CodingKeys: String, CodingKey {
        case pagesCompared, pagesSkippedCOW, pagesRestored
        case forkingTime = "forkingTimeUs"
        case restoreTime = "restoreTimeUs"
    }

    public init(pagesCompared: UInt64, pagesSkippedCOW: UInt64, forkingTime: UInt32, restoreTime: UInt32, pagesRestored: UInt64? = nil) {
        self.pagesCompared = pagesCompared
        self.pagesSkippedCOW = pagesSkippedCOW
        self.forkingTime = forkingTime
        self.restoreTime = restoreTime
        self.pagesRestored = pagesRestored
    }

    /// Decodes the contents of a `stats-restore` file.
    public init(statsRestore bytes: [UInt8], name: String = "stats-restore") throws(CRIUImageError) {
        let image = try CRIUImageFile(name: name, bytes: bytes, kind: .stats)
        self = try image.decodeStats(section: "restore") { entry in entry.restore.map { RestoreStatistics($0.pointee) } }
    }

    init(_ r: RestoreStatsEntry) {
        self.init(
            pagesCompared: r.pages_compared, pagesSkippedCOW: r.pages_skipped_cow,
            forkingTime: r.forking_time, restoreTime: r.restore_time,
            pagesRestored: r.has_pages_restored != 0 ? r.pages_restored : nil
        )
    }
}

extension CRIUImageFile {
    /// A stats file holds exactly one stats_entry with the dump or the restore half set.
    fileprivate func decodeStats<Value>(section: String, _ pick: (StatsEntry) -> Value?) throws(CRIUImageError) -> Value {
        guard entries.count == 1 else {
            throw CRIUImageError(.malformed, file: name, "expected one stats_entry, found \(entries.count)")
        }
        let value = try decode(entry: 0, as: "stats_entry", stats_entry__unpack, stats_entry__free_unpacked) { entry in pick(entry) }
        guard let value else {
            throw CRIUImageError(.malformed, file: name, "the stats_entry has no \(section) section")
        }
        return value
    }
}

/// What `inventory.img` says about the image set as a whole.
///
/// CRIU does not record its own version in the images; `imageVersion` is the format
/// version (2 since CRIU 1.x: images with the common magic).
public struct CRIUInventory: Codable, Equatable, Sendable {
    /// The image format version (CRTOOLS_IMAGES_V1_1 = 2 for every current CRIU).
    public var imageVersion: UInt32
    /// The plugins the dump used (e.g. "amdgpu_plugin"); restore needs them too.
    public var plugins: [String]
    /// The LSM the dump recorded labels for: "selinux", "apparmor", or nil.
    public var lsm: String?
    /// Whether the dump was made with --tcp-close (restore must pass it too).
    public var tcpClose: Bool

    public init(imageVersion: UInt32, plugins: [String] = [], lsm: String? = nil, tcpClose: Bool = false) {
        self.imageVersion = imageVersion
        self.plugins = plugins
        self.lsm = lsm
        self.tcpClose = tcpClose
    }

    init(_ e: InventoryEntry) {
        var lsm: String?
        if e.has_lsmtype != 0 {
            switch e.lsmtype {
            case LSMTYPE__SELINUX: lsm = "selinux"
            case LSMTYPE__APPARMOR: lsm = "apparmor"
            default: lsm = nil
            }
        }
        let plugins =
            e.plugins_entry.map { entry in
                swiftArray(entry.pointee.plugins, count: entry.pointee.n_plugins).compactMap(swiftString)
            } ?? []
        self.init(imageVersion: e.img_version, plugins: plugins, lsm: lsm, tcpClose: e.has_tcp_close != 0 && e.tcp_close != 0)
    }
}

/// Page counts from pagemap images. For images CRIU wrote, `total` is the sum of the
/// three others: each run of pages is in this set, in the parent's, or left behind for
/// a lazy restore.
public struct CRIUPageCounts: Codable, Equatable, Sendable {
    /// Every page the pagemaps describe.
    public var total: UInt64
    /// Pages whose contents are in this image set's pages-*.img (PE_PRESENT).
    public var present: UInt64
    /// Pages whose contents are in the parent images of an earlier pre-dump (PE_PARENT).
    public var inParent: UInt64
    /// Pages whose contents are in no image: a lazy restore fetches them on demand from
    /// the source (PE_LAZY without PE_PRESENT; stats-dump's pages_lazy).
    ///
    /// CRIU also sets PE_LAZY on present pages in every dump, to mean "could be restored
    /// lazily" (criu/page-xfer.c, ppb_xfer_flags); those count as present only.
    public var lazy: UInt64

    public init(total: UInt64 = 0, present: UInt64 = 0, inParent: UInt64 = 0, lazy: UInt64 = 0) {
        self.total = total
        self.present = present
        self.inParent = inParent
        self.lazy = lazy
    }

    /// PE_PARENT, PE_LAZY, PE_PRESENT from criu/include/pagemap.h.
    static let parentFlag: UInt32 = 1 << 0
    static let lazyFlag: UInt32 = 1 << 1
    static let presentFlag: UInt32 = 1 << 2

    /// Counts one pagemap_entry.
    mutating func add(_ e: PagemapEntry) {
        // Images from CRIU before the flags field have only in_parent; CRIU itself reads
        // them as "in parent" or else "present" (init_compat_pagemap_entry).
        var flags = e.has_flags != 0 ? e.flags : 0
        if e.has_in_parent != 0 && e.in_parent != 0 {
            flags |= Self.parentFlag
        } else if e.has_flags == 0 {
            flags = Self.presentFlag
        }
        let pages = UInt64(e.nr_pages)
        total += pages
        if flags & Self.presentFlag != 0 { present += pages }
        if flags & Self.parentFlag != 0 { inParent += pages }
        if flags & Self.lazyFlag != 0 && flags & Self.presentFlag == 0 { lazy += pages }
    }

    static func + (a: CRIUPageCounts, b: CRIUPageCounts) -> CRIUPageCounts {
        CRIUPageCounts(total: a.total + b.total, present: a.present + b.present, inParent: a.inParent + b.inParent, lazy: a.lazy + b.lazy)
    }
}

/// The memory a checkpoint holds, summed over its pagemap and mm images.
public struct CRIUMemorySummary: Codable, Equatable, Sendable {
    /// The page size the counts are in. Images do not record it; this is the reading
    /// host's, which is the dumping host's whenever the images can be restored here.
    public var pageSize: UInt64
    /// Pages of the processes' private memory (pagemap-<pid>.img).
    public var processPages: CRIUPageCounts
    /// Pages of shared anonymous memory (pagemap-shmem-<id>.img).
    public var sharedPages: CRIUPageCounts
    /// Bytes of memory stored in this image set: present pages times the page size.
    public var dumpedBytes: UInt64
    /// The total size of the pages-*.img files, when their sizes were given; it should
    /// equal `dumpedBytes`.
    public var pagesImageBytes: UInt64?
    /// Memory mappings (VMAs) over all mm images.
    public var mappings: Int

    public init(pageSize: UInt64, processPages: CRIUPageCounts, sharedPages: CRIUPageCounts, pagesImageBytes: UInt64?, mappings: Int) {
        self.pageSize = pageSize
        self.processPages = processPages
        self.sharedPages = sharedPages
        self.dumpedBytes = (processPages.present + sharedPages.present) * pageSize
        self.pagesImageBytes = pagesImageBytes
        self.mappings = mappings
    }
}

/// The open file descriptors a checkpoint holds, from its fdinfo images.
public struct CRIUOpenFiles: Codable, Equatable, Sendable {
    /// Descriptors over all fd tables. Processes that share a table (CLONE_FILES) share
    /// one fdinfo image, so their descriptors count once.
    public var total: Int
    /// fd tables (fdinfo images).
    public var tables: Int
    /// Descriptors by CRIU's file type, lowercased ("reg", "pipe", "unixsk", "tty"...).
    public var byType: [String: Int]

    public init(total: Int = 0, tables: Int = 0, byType: [String: Int] = [:]) {
        self.total = total
        self.tables = tables
        self.byType = byType
    }

    /// The name of an fd_types value, from the generated descriptor so that types a
    /// newer CRIU adds are named without a change here.
    static func typeName(_ type: FdTypes) -> String {
        let value = withUnsafePointer(to: fd_types__descriptor) { descriptor in
            protobuf_c_enum_descriptor_get_value(descriptor, Int32(type.rawValue))
        }
        guard let name = value.flatMap({ swiftString(UnsafeMutablePointer(mutating: $0.pointee.name)) }) else {
            return "type \(type.rawValue)"
        }
        return name.lowercased()
    }
}

/// One process of a checkpointed tree: pstree.img's entry plus what the process's own
/// images say.
public struct CRIUProcess: Codable, Equatable, Sendable {
    /// How the process was when dumped (core's task_state; criu/include/pid.h).
    public enum State: String, Codable, Sendable {
        case alive, stopped, zombie, dead, unknown

        init(taskState: UInt32) {
            switch taskState {
            case 1: self = .alive
            case 2: self = .dead
            case 3: self = .stopped
            case 6: self = .zombie
            default: self = .unknown
            }
        }
    }

    /// The pid, in the tree's own pid namespace.
    public var pid: Int32
    /// The parent's pid; 0 for the root of the tree.
    public var parentPid: Int32
    /// Process group.
    public var pgid: Int32
    /// Session.
    public var sid: Int32
    /// Every thread id, the main thread (== pid) included.
    public var threads: [Int32]
    /// The command name (comm, at most 15 bytes), from core-<pid>.img.
    public var command: String
    /// Alive, stopped, zombie...
    public var state: State
    /// Descriptors in the process's fd table; nil when the images have none for it
    /// (zombies). Processes sharing a table report the same count.
    public var openFiles: Int?
    /// Memory mappings (VMAs) in mm-<pid>.img; nil when absent (zombies).
    public var mappings: Int?
    /// Pages in pagemap-<pid>.img; nil when absent (zombies).
    public var pages: CRIUPageCounts?

    public init(
        pid: Int32, parentPid: Int32, pgid: Int32, sid: Int32, threads: [Int32], command: String,
        state: State = .alive, openFiles: Int? = nil, mappings: Int? = nil, pages: CRIUPageCounts? = nil
    ) {
        self.pid = pid
        self.parentPid = parentPid
        self.pgid = pgid
        self.sid = sid
        self.threads = threads
        self.command = command
        self.state = state
        self.openFiles = openFiles
        self.mappings = mappings
        self.pages = pages
    }
}
