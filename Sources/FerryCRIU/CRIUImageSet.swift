import CCRIUImages
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A summary of one CRIU image directory (a checkpoint): its process tree, memory, open
/// files and CRIU's statistics, decoded from the images' bytes.
///
/// Build it from a directory, or from file name → bytes when the images come out of an
/// archive stream; `needsContents(of:)` says which files to buffer, and the sizes of the
/// others (the large pages-*.img above all) can be passed alone.
public struct CRIUImageSet: Codable, Equatable, Sendable {
    /// Every file given or found, with its size in bytes.
    public var fileSizes: [String: UInt64]
    /// inventory.img, when present.
    public var inventory: CRIUInventory?
    /// pstree.img's processes, in its order (the root first, then depth-first, as CRIU
    /// writes them); empty when the set has no pstree.img.
    public var processTree: [CRIUProcess]
    /// Pages and mappings over all pagemap and mm images.
    public var memory: CRIUMemorySummary
    /// Descriptors over all fdinfo images.
    public var openFiles: CRIUOpenFiles
    /// stats-dump, when present.
    public var dumpStatistics: DumpStatistics?
    /// stats-restore, when present (CRIU writes it into the images directory on restore).
    public var restoreStatistics: RestoreStatistics?

    /// The root of the process tree (the process whose parent is outside it).
    public var root: CRIUProcess? { processTree.first }

    /// The processes whose parent is `pid`, in tree order.
    public func children(of pid: Int32) -> [CRIUProcess] {
        processTree.filter { $0.parentPid == pid && $0.pid != pid }
    }

    /// Whether `CRIUImageSet` reads the contents of the file `name`; for any other file
    /// its size is enough. True for small protobuf images only, never for pages-*.img.
    public static func needsContents(of name: String) -> Bool {
        guard let kind = CRIUImageKind(fileName: name) else { return false }
        switch kind {
        case .inventory, .pstree, .core, .ids, .mm, .pagemap, .shmemPagemap, .fdinfo, .stats: return true
        case .files, .irmapCache: return false
        }
    }

    /// Decodes a set of images.
    ///
    /// - Parameters:
    ///   - images: file name → contents, for the files `needsContents(of:)` accepts
    ///     (others are ignored but for their size).
    ///   - fileSizes: sizes of files whose contents were not given, such as pages-*.img.
    /// - Throws: `CRIUImageError` naming the first image with a bad magic, a truncated
    ///   entry or an undecodable message, or a `core-<pid>.img` that pstree.img needs
    ///   and the set lacks.
    public init(images: [String: [UInt8]], fileSizes: [String: UInt64] = [:]) throws(CRIUImageError) {
        var sizes = fileSizes
        for (name, bytes) in images { sizes[name] = UInt64(bytes.count) }
        self.fileSizes = sizes

        var parsed: [String: CRIUImageFile] = [:]
        for name in images.keys.sorted() where Self.needsContents(of: name) {
            if let bytes = images[name] {
                parsed[name] = try CRIUImageFile(name: name, bytes: bytes)
            }
        }

        inventory = try parsed["inventory.img"].map { image throws(CRIUImageError) in
            try image.decode(entry: 0, as: "inventory_entry", inventory_entry__unpack, inventory_entry__free_unpacked) { CRIUInventory($0) }
        }
        dumpStatistics = try images["stats-dump"].map { bytes throws(CRIUImageError) in try DumpStatistics(statsDump: bytes) }
        restoreStatistics = try images["stats-restore"].map { bytes throws(CRIUImageError) in try RestoreStatistics(statsRestore: bytes) }

        // fd tables, by the files id in their name (criu/files.c names fdinfo images after
        // the task's files_id, not its pid, so that tasks sharing a table share the image).
        var descriptorsByTable: [UInt64: Int] = [:]
        var openFiles = CRIUOpenFiles()
        // Walked in name order, so that with several bad images the error is stable.
        let ordered = parsed.sorted { $0.key < $1.key }
        for (name, image) in ordered where image.kind == .fdinfo {
            let types = try image.decodeAll(as: "fdinfo_entry", fdinfo_entry__unpack, fdinfo_entry__free_unpacked) { $0.type }
            if let id = CRIUImageKind.number(in: name, prefix: "fdinfo-") { descriptorsByTable[id] = types.count }
            openFiles.total += types.count
            openFiles.tables += 1
            for type in types { openFiles.byType[CRIUOpenFiles.typeName(type), default: 0] += 1 }
        }
        self.openFiles = openFiles

        // Pages per pagemap image, keyed by the pid (or shmem id) in the name.
        var processPages: [UInt64: CRIUPageCounts] = [:]
        var sharedPages = CRIUPageCounts()
        var mappingsByPid: [UInt64: Int] = [:]
        for (name, image) in ordered {
            switch image.kind {
            case .pagemap, .shmemPagemap:
                let counts = try Self.pageCounts(image)
                if image.kind == .shmemPagemap {
                    sharedPages = sharedPages + counts
                } else if let pid = CRIUImageKind.number(in: name, prefix: "pagemap-") {
                    processPages[pid] = counts
                }
            case .mm:
                let vmas = try image.decode(entry: 0, as: "mm_entry", mm_entry__unpack, mm_entry__free_unpacked) { $0.n_vmas }
                if let pid = CRIUImageKind.number(in: name, prefix: "mm-") { mappingsByPid[pid] = vmas }
            default:
                break
            }
        }
        let pagesSizes = sizes.filter { $0.key.hasPrefix("pages-") && $0.key.hasSuffix(".img") }.map(\.value)
        memory = CRIUMemorySummary(
            pageSize: Self.pageSize,
            processPages: processPages.values.reduce(CRIUPageCounts(), +),
            sharedPages: sharedPages,
            pagesImageBytes: pagesSizes.isEmpty ? nil : pagesSizes.reduce(0, +),
            mappings: mappingsByPid.values.reduce(0, +)
        )

        processTree = []
        guard let pstree = parsed["pstree.img"] else { return }
        let entries = try pstree.decodeAll(as: "pstree_entry", pstree_entry__unpack, pstree_entry__free_unpacked) { e in
            (pid: e.pid, ppid: e.ppid, pgid: e.pgid, sid: e.sid, threads: swiftArray(e.threads, count: e.n_threads))
        }
        guard !entries.isEmpty else {
            throw CRIUImageError(.malformed, file: pstree.name, "no processes")
        }
        for entry in entries {
            let pid = UInt64(entry.pid)
            let coreName = "core-\(entry.pid).img"
            guard let core = parsed[coreName] else {
                throw CRIUImageError(.missing, file: coreName, "pstree.img lists pid \(entry.pid), but the set has no core image for it")
            }
            let task = try Self.taskCore(core)
            var filesID = task.filesID
            if let ids = parsed["ids-\(entry.pid).img"] {
                // CRIU 4.x writes the ids to ids-<pid>.img; core_entry.ids is the older place.
                filesID = try ids.decode(entry: 0, as: "task_kobj_ids_entry", task_kobj_ids_entry__unpack, task_kobj_ids_entry__free_unpacked) { $0.files_id }
            }
            processTree.append(
                CRIUProcess(
                    pid: Int32(truncatingIfNeeded: entry.pid),
                    parentPid: Int32(truncatingIfNeeded: entry.ppid),
                    pgid: Int32(truncatingIfNeeded: entry.pgid),
                    sid: Int32(truncatingIfNeeded: entry.sid),
                    threads: entry.threads.map { Int32(truncatingIfNeeded: $0) },
                    command: task.command,
                    state: task.state,
                    openFiles: filesID.flatMap { descriptorsByTable[UInt64($0)] },
                    mappings: mappingsByPid[pid],
                    pages: processPages[pid]
                ))
        }
    }

    /// Reads the images in `directory`: the contents of those `needsContents(of:)`
    /// accepts, the size of every other regular file. Symlinks and subdirectories (such
    /// as a pre-dump's "parent" link) are not followed.
    public init(directory: String) throws(CRIUImageError) {
        var images: [String: [UInt8]] = [:]
        var sizes: [String: UInt64] = [:]
        do throws(SystemError) {
            let dir = try describing("open", path: directory) { () throws(Errno) in
                try OwnedFD.open(directory, O_RDONLY | O_DIRECTORY)
            }
            let names = try describing("read directory", path: directory) { () throws(Errno) in try dir.directoryEntries() }
            for rawName in names {
                let name = String(decoding: rawName, as: UTF8.self)
                let path = "\(directory)/\(name)"
                let status = try describing("stat", path: path) { () throws(Errno) in try dir.status(of: rawName) }
                guard status.kind == .regular else { continue }
                guard Self.needsContents(of: name) else {
                    sizes[name] = UInt64(clamping: status.size)
                    continue
                }
                images[name] = try describing("read", path: path) { () throws(Errno) in
                    // O_NOFOLLOW: the name was a regular file a moment ago; never let a
                    // swapped-in symlink redirect the read.
                    try dir.openAt(rawName, O_RDONLY | O_NOFOLLOW).readAll()
                }
            }
        } catch {
            throw CRIUImageError(.readFailed(error.errno), file: error.path.map(Files.basename) ?? directory, "\(error)")
        }
        try self.init(images: images, fileSizes: sizes)
    }

    /// The page size pagemap counts are in: PAGE_SIZE of the dumping kernel, which the
    /// images do not record (see `CRIUMemorySummary.pageSize`).
    static var pageSize: UInt64 {
        UInt64(clamping: sysconf(Int32(_SC_PAGESIZE)))
    }

    /// A pagemap image is a pagemap_head (the pages-<id>.img it fills) followed by one
    /// pagemap_entry per run of pages.
    private static func pageCounts(_ image: CRIUImageFile) throws(CRIUImageError) -> CRIUPageCounts {
        var counts = CRIUPageCounts()
        for entry in try pagemapEntries(image) { counts.add(entry) }
        return counts
    }

    /// The runs of pages of a pagemap image, after checking its head.
    static func pagemapEntries(_ image: CRIUImageFile) throws(CRIUImageError) -> [PagemapEntry] {
        _ = try image.decode(entry: 0, as: "pagemap_head", pagemap_head__unpack, pagemap_head__free_unpacked) { $0.pages_id }
        var entries: [PagemapEntry] = []
        for index in 1..<max(image.entries.count, 1) {
            // The scalar fields are copied out before the unpacked message is freed.
            entries.append(try image.decode(entry: index, as: "pagemap_entry", pagemap_entry__unpack, pagemap_entry__free_unpacked) { $0 })
        }
        return entries
    }

    /// What a main thread's core image says about its process.
    private static func taskCore(_ image: CRIUImageFile) throws(CRIUImageError) -> (command: String, state: CRIUProcess.State, filesID: UInt32?) {
        let core = try image.decode(entry: 0, as: "core_entry", core_entry__unpack, core_entry__free_unpacked) { core in
            // task_core is only in the main thread's image; thread_core also carries a
            // comm, which is the thread's own name.
            (
                command: core.tc.flatMap { swiftString($0.pointee.comm) },
                state: core.tc.map { CRIUProcess.State(taskState: $0.pointee.task_state) },
                filesID: core.ids.map { $0.pointee.files_id }
            )
        }
        guard let command = core.command, let state = core.state else {
            throw CRIUImageError(.malformed, file: image.name, "the core_entry has no task_core (not a process's main thread?)")
        }
        return (command, state, core.filesID)
    }
}
