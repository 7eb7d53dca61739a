import CCRIUImages
import FerryCRIU

#if canImport(Glibc)
    import Glibc
#endif

// Builders for hand-made CRIU images: messages are packed by protobuf-c's generated
// `*__pack`, exactly as CRIU writes them, then framed as criu/protobuf.c does.

/// Packs one protobuf-c message.
func packed<M>(
    _ message: M,
    _ size: (UnsafePointer<M>?) -> Int,
    _ pack: (UnsafePointer<M>?, UnsafeMutablePointer<UInt8>?) -> Int
) -> [UInt8] {
    var message = message
    return withUnsafePointer(to: &message) { pointer in
        var out = [UInt8](repeating: 0, count: size(pointer))
        let written = out.withUnsafeMutableBufferPointer { pack(pointer, $0.baseAddress) }
        precondition(written == out.count)
        return out
    }
}

func le32(_ value: UInt32) -> [UInt8] {
    [UInt8(value & 0xff), UInt8(value >> 8 & 0xff), UInt8(value >> 16 & 0xff), UInt8(value >> 24)]
}

/// An image of `kind`: its magic(s), then each entry as a u32 length and the bytes.
func imageBytes(_ kind: CRIUImageKind, _ entries: [[UInt8]]) -> [UInt8] {
    var bytes: [UInt8]
    switch kind.header {
    case .typeMagicOnly: bytes = le32(kind.magic)
    case .common: bytes = le32(CRIUImageKind.commonMagic) + le32(kind.magic)
    case .service: bytes = le32(CRIUImageKind.serviceMagic) + le32(kind.magic)
    }
    for entry in entries { bytes += le32(UInt32(entry.count)) + entry }
    return bytes
}

func pstreeEntry(pid: UInt32, ppid: UInt32, pgid: UInt32, sid: UInt32, threads: [UInt32]) -> [UInt8] {
    var e = PstreeEntry()
    pstree_entry__init(&e)
    e.pid = pid
    e.ppid = ppid
    e.pgid = pgid
    e.sid = sid
    var threads = threads
    return threads.withUnsafeMutableBufferPointer { buffer in
        e.n_threads = buffer.count
        e.threads = buffer.baseAddress
        return packed(e, pstree_entry__get_packed_size, pstree_entry__pack)
    }
}

/// A main thread's core (task_core with comm and state), or, with `mainThread: false`,
/// another thread's (thread_core only).
func coreEntry(comm: String, state: UInt32 = 1, filesID: UInt32? = nil, mainThread: Bool = true) -> [UInt8] {
    var core = CoreEntry()
    core_entry__init(&core)
    core.mtype = CORE_ENTRY__MARCH__X86_64
    var tc = TaskCoreEntry()
    task_core_entry__init(&tc)
    var thread = ThreadCoreEntry()
    thread_core_entry__init(&thread)
    var ids = TaskKobjIdsEntry()
    task_kobj_ids_entry__init(&ids)
    let name = strdup(comm)
    defer { free(name) }
    tc.task_state = state
    tc.comm = name
    thread.comm = name
    ids.files_id = filesID ?? 0
    return withUnsafeMutablePointer(to: &tc) { tcPointer in
        withUnsafeMutablePointer(to: &thread) { threadPointer in
            withUnsafeMutablePointer(to: &ids) { idsPointer in
                core.thread_core = threadPointer
                if mainThread { core.tc = tcPointer }
                if filesID != nil { core.ids = idsPointer }
                return packed(core, core_entry__get_packed_size, core_entry__pack)
            }
        }
    }
}

func idsEntry(filesID: UInt32) -> [UInt8] {
    var ids = TaskKobjIdsEntry()
    task_kobj_ids_entry__init(&ids)
    ids.files_id = filesID
    return packed(ids, task_kobj_ids_entry__get_packed_size, task_kobj_ids_entry__pack)
}

func fdinfoEntry(fd: UInt32, type: FdTypes) -> [UInt8] {
    var e = FdinfoEntry()
    fdinfo_entry__init(&e)
    e.fd = fd
    e.id = fd + 100
    e.type = type
    return packed(e, fdinfo_entry__get_packed_size, fdinfo_entry__pack)
}

func mmEntry(vmas count: Int) -> [UInt8] {
    var mm = MmEntry()
    mm_entry__init(&mm)
    var vmas = [VmaEntry](repeating: VmaEntry(), count: count)
    for index in vmas.indices {
        vma_entry__init(&vmas[index])
        vmas[index].start = UInt64(index) * 0x1000
        vmas[index].end = UInt64(index + 1) * 0x1000
    }
    return vmas.withUnsafeMutableBufferPointer { buffer in
        let base = buffer.baseAddress
        var pointers: [UnsafeMutablePointer<VmaEntry>?] = (0..<count).map { index in base.map { $0 + index } }
        return pointers.withUnsafeMutableBufferPointer { list in
            mm.n_vmas = count
            mm.vmas = list.baseAddress
            return packed(mm, mm_entry__get_packed_size, mm_entry__pack)
        }
    }
}

func pagemapHead(pagesID: UInt32) -> [UInt8] {
    var head = PagemapHead()
    pagemap_head__init(&head)
    head.pages_id = pagesID
    return packed(head, pagemap_head__get_packed_size, pagemap_head__pack)
}

/// A pagemap_entry; `flags` nil writes an old-style entry (only in_parent, if given).
func pagemapEntry(pages: UInt32, flags: UInt32?, inParent: Bool? = nil) -> [UInt8] {
    var e = PagemapEntry()
    pagemap_entry__init(&e)
    e.vaddr = 0x40_0000
    e.nr_pages = pages
    if let flags {
        e.has_flags = 1
        e.flags = flags
    }
    if let inParent {
        e.has_in_parent = 1
        e.in_parent = inParent ? 1 : 0
    }
    return packed(e, pagemap_entry__get_packed_size, pagemap_entry__pack)
}

func inventoryEntry(plugins: [String]) -> [UInt8] {
    var inventory = InventoryEntry()
    inventory_entry__init(&inventory)
    inventory.img_version = 2
    inventory.has_lsmtype = 1
    inventory.lsmtype = LSMTYPE__APPARMOR
    var entry = PluginsEntry()
    plugins_entry__init(&entry)
    var names: [UnsafeMutablePointer<CChar>?] = plugins.map { strdup($0) }
    defer { names.forEach { free($0) } }
    return names.withUnsafeMutableBufferPointer { list in
        entry.n_plugins = list.count
        entry.plugins = list.baseAddress
        return withUnsafeMutablePointer(to: &entry) { pointer in
            inventory.plugins_entry = pointer
            return packed(inventory, inventory_entry__get_packed_size, inventory_entry__pack)
        }
    }
}

/// A stats_entry with the given halves.
func statsEntry(dump: DumpStatsEntry?, restore: RestoreStatsEntry?) -> [UInt8] {
    var stats = StatsEntry()
    stats_entry__init(&stats)
    var dumpValue = dump ?? DumpStatsEntry()
    var restoreValue = restore ?? RestoreStatsEntry()
    return withUnsafeMutablePointer(to: &dumpValue) { dumpPointer in
        withUnsafeMutablePointer(to: &restoreValue) { restorePointer in
            stats.dump = dump == nil ? nil : dumpPointer
            stats.restore = restore == nil ? nil : restorePointer
            return packed(stats, stats_entry__get_packed_size, stats_entry__pack)
        }
    }
}

func dumpStats(frozenTime: UInt32, pagesWritten: UInt64) -> DumpStatsEntry {
    var d = DumpStatsEntry()
    dump_stats_entry__init(&d)
    d.freezing_time = 120
    d.frozen_time = frozenTime
    d.memdump_time = 300
    d.memwrite_time = 400
    d.has_irmap_resolve = 1
    d.irmap_resolve = 5
    d.pages_scanned = 1000
    d.pages_skipped_parent = 10
    d.pages_written = pagesWritten
    d.pages_lazy = 0
    return d
}

func restoreStats() -> RestoreStatsEntry {
    var r = RestoreStatsEntry()
    restore_stats_entry__init(&r)
    r.pages_compared = 7
    r.pages_skipped_cow = 3
    r.forking_time = 900
    r.restore_time = 5000
    return r
}
