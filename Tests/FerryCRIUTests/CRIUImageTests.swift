import CCRIUImages
import FerryCRIU
import FerrySystem
import Foundation
import Testing

/// Tier 1: images built in memory, valid and broken.
@Suite("CRIU image parsing")
struct CRIUImageParsingTests {
    @Test("file names map to kinds as CRIU's templates say")
    func kinds() {
        #expect(CRIUImageKind(fileName: "inventory.img") == .inventory)
        #expect(CRIUImageKind(fileName: "pstree.img") == .pstree)
        #expect(CRIUImageKind(fileName: "core-4242.img") == .core)
        #expect(CRIUImageKind(fileName: "pagemap-7.img") == .pagemap)
        #expect(CRIUImageKind(fileName: "pagemap-shmem-12345.img") == .shmemPagemap)
        #expect(CRIUImageKind(fileName: "fdinfo-3.img") == .fdinfo)
        #expect(CRIUImageKind(fileName: "stats-dump") == .stats)
        #expect(CRIUImageKind(fileName: "stats-restore") == .stats)
        #expect(CRIUImageKind(fileName: "pages-1.img") == nil)
        #expect(CRIUImageKind(fileName: "core-.img") == nil)
        #expect(CRIUImageKind(fileName: "core-1x.img") == nil)
        #expect(CRIUImageKind(fileName: "mountpoints-13.img") == nil)
        #expect(CRIUImageSet.needsContents(of: "core-1.img"))
        #expect(!CRIUImageSet.needsContents(of: "pages-1.img"))
        #expect(!CRIUImageSet.needsContents(of: "dump.log"))
    }

    @Test("a valid image splits into its entries")
    func splitsEntries() throws {
        let first = pstreeEntry(pid: 1, ppid: 0, pgid: 1, sid: 1, threads: [1])
        let second = pstreeEntry(pid: 2, ppid: 1, pgid: 1, sid: 1, threads: [2, 3])
        let image = try CRIUImageFile(name: "pstree.img", bytes: imageBytes(.pstree, [first, second]))
        #expect(image.kind == .pstree)
        #expect(image.entries.map { Array($0) } == [first, second])
        // An image with no entries at all is well-formed (CRIU writes empty fdinfo images).
        #expect(try CRIUImageFile(name: "fdinfo-9.img", bytes: imageBytes(.fdinfo, [])).entries.isEmpty)
    }

    @Test("a wrong magic is reported with the file's name and both values")
    func wrongMagic() throws {
        // A core image under a pstree name: common magic right, type magic wrong.
        let core = imageBytes(.core, [coreEntry(comm: "sh")])
        let error = try #require(throws: CRIUImageError.self) { try CRIUImageFile(name: "pstree.img", bytes: core) }
        #expect(error.file == "pstree.img")
        #expect(error.code == .badMagic(expected: [CRIUImageKind.commonMagic, 0x5027_3030], found: [CRIUImageKind.commonMagic, 0x5505_3847]))
        #expect(error.description.contains("pstree.img"))
        #expect(error.description.contains("0x55053847"))

        // Not an image at all.
        let text = Array("hello, world".utf8)
        let garbage = try #require(throws: CRIUImageError.self) { try CRIUImageFile(name: "core-1.img", bytes: text) }
        guard case .badMagic = garbage.code else { Issue.record("expected badMagic, got \(garbage.code)"); return }
    }

    @Test("inventory has no head magic, and stats have the service magic")
    func headerVariants() throws {
        let inventory = imageBytes(.inventory, [inventoryEntry(plugins: [])])
        #expect(Array(inventory.prefix(4)) == le32(0x5831_3116))
        _ = try CRIUImageFile(name: "inventory.img", bytes: inventory)
        // An inventory written with the common magic in front is not CRIU's.
        let withHead = le32(CRIUImageKind.commonMagic) + inventory
        #expect(throws: CRIUImageError.self) { try CRIUImageFile(name: "inventory.img", bytes: withHead) }

        let stats = imageBytes(.stats, [statsEntry(dump: dumpStats(frozenTime: 1, pagesWritten: 1), restore: nil)])
        #expect(Array(stats.prefix(4)) == le32(CRIUImageKind.serviceMagic))
        _ = try CRIUImageFile(name: "stats-dump", bytes: stats)
        // The same stats behind the common magic must be refused.
        let common = le32(CRIUImageKind.commonMagic) + stats.dropFirst(4)
        let error = try #require(throws: CRIUImageError.self) { try CRIUImageFile(name: "stats-dump", bytes: common) }
        guard case .badMagic = error.code else { Issue.record("expected badMagic, got \(error.code)"); return }
    }

    @Test("truncation: inside the magic, inside a length, inside a payload")
    func truncated() throws {
        let valid = imageBytes(.pstree, [pstreeEntry(pid: 1, ppid: 0, pgid: 1, sid: 1, threads: [1])])

        let empty = try #require(throws: CRIUImageError.self) { try CRIUImageFile(name: "pstree.img", bytes: []) }
        #expect(empty.code == .truncated(offset: 0))
        let halfMagic = try #require(throws: CRIUImageError.self) { try CRIUImageFile(name: "pstree.img", bytes: Array(valid.prefix(6))) }
        #expect(halfMagic.code == .truncated(offset: 4))

        // Magic plus two bytes of a length.
        let shortLength = try #require(throws: CRIUImageError.self) { try CRIUImageFile(name: "pstree.img", bytes: Array(valid.prefix(10))) }
        #expect(shortLength.code == .truncated(offset: 8))
        #expect(shortLength.message.contains("pstree.img"))

        // The last byte of the payload missing.
        let shortPayload = try #require(throws: CRIUImageError.self) { try CRIUImageFile(name: "pstree.img", bytes: Array(valid.dropLast())) }
        #expect(shortPayload.code == .truncated(offset: 12))

        // A length near 4 GiB must not be trusted.
        let huge = imageBytes(.pstree, []) + le32(0xffff_fff0) + [1, 2, 3]
        let hugeError = try #require(throws: CRIUImageError.self) { try CRIUImageFile(name: "pstree.img", bytes: huge) }
        #expect(hugeError.code == .truncated(offset: 12))
    }

    @Test("a payload protobuf-c rejects is reported by message and entry")
    func garbagePayload() throws {
        let good = pstreeEntry(pid: 1, ppid: 0, pgid: 1, sid: 1, threads: [1])
        // 0xff... is a field key with an unterminated varint.
        let bytes = imageBytes(.pstree, [good, [0xff, 0xff, 0xff, 0xff]])
        let error = try #require(throws: CRIUImageError.self) { try CRIUImageSet(images: ["pstree.img": bytes]) }
        #expect(error.code == .unpackFailed(message: "pstree_entry", entry: 1))
        #expect(error.file == "pstree.img")
        #expect(error.description == "cannot read CRIU image 'pstree.img': entry 1 (4 bytes) is not a valid pstree_entry")

        // Well-formed protobuf missing required fields (pid, ppid...) is refused too.
        let empty = imageBytes(.pstree, [[]])
        let missing = try #require(throws: CRIUImageError.self) { try CRIUImageSet(images: ["pstree.img": empty]) }
        #expect(missing.code == .unpackFailed(message: "pstree_entry", entry: 0))
    }

    @Test("an unknown name is refused by the parser and ignored by the set")
    func unknownNames() throws {
        let error = try #require(throws: CRIUImageError.self) { try CRIUImageFile(name: "notes.txt", bytes: [1, 2, 3]) }
        #expect(error.code == .unknownImage)
        let set = try CRIUImageSet(images: ["notes.txt": [1, 2, 3]])
        #expect(set.fileSizes == ["notes.txt": 3])
        #expect(set.processTree.isEmpty)
    }
}

@Suite("CRIU statistics")
struct CRIUStatisticsTests {
    @Test("stats-dump decodes every field")
    func dump() throws {
        let bytes = imageBytes(.stats, [statsEntry(dump: dumpStats(frozenTime: 2500, pagesWritten: 321), restore: nil)])
        let stats = try DumpStatistics(statsDump: bytes)
        #expect(
            stats
                == DumpStatistics(
                    freezingTime: 120, frozenTime: 2500, memdumpTime: 300, memwriteTime: 400, irmapResolveTime: 5,
                    pagesScanned: 1000, pagesSkippedParent: 10, pagesWritten: 321, pagesLazy: 0
                ))
        let json = try JSONEncoder().encode(stats)
        #expect(try JSONDecoder().decode(DumpStatistics.self, from: json) == stats)
        // CRIU's times are µs, and the keys say so (docs/json.md).
        let keys = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
        #expect(keys["frozenTimeUs"] as? Int == 2500)
        #expect(keys["freezingTimeUs"] as? Int == 120)
        #expect(keys["frozenTime"] == nil)
        #expect(keys["pagesWritten"] as? Int == 321)
    }

    @Test("stats-restore decodes, and the wrong half is an error")
    func restore() throws {
        let bytes = imageBytes(.stats, [statsEntry(dump: nil, restore: restoreStats())])
        let stats = try RestoreStatistics(statsRestore: bytes)
        #expect(stats == RestoreStatistics(pagesCompared: 7, pagesSkippedCOW: 3, forkingTime: 900, restoreTime: 5000))

        let error = try #require(throws: CRIUImageError.self) { try DumpStatistics(statsDump: bytes) }
        #expect(error.code == .malformed)
        #expect(error.description.contains("no dump section"))
    }

    @Test("a stats file must hold exactly one entry")
    func entryCount() throws {
        let entry = statsEntry(dump: dumpStats(frozenTime: 1, pagesWritten: 1), restore: nil)
        #expect(throws: CRIUImageError.self) { try DumpStatistics(statsDump: imageBytes(.stats, [])) }
        #expect(throws: CRIUImageError.self) { try DumpStatistics(statsDump: imageBytes(.stats, [entry, entry])) }
    }
}

@Suite("CRIU image sets")
struct CRIUImageSetTests {
    /// A tree: 10 (sh) with children 11 (sleep) and 12 (worker, two threads: 12 and 13).
    /// 10 and 11 have their own fd tables (files ids 1, 2); 12 shares 11's (CLONE_FILES).
    static func images() -> [String: [UInt8]] {
        [
            "inventory.img": imageBytes(.inventory, [inventoryEntry(plugins: ["amdgpu_plugin"])]),
            "pstree.img": imageBytes(
                .pstree,
                [
                    pstreeEntry(pid: 10, ppid: 0, pgid: 10, sid: 10, threads: [10]),
                    pstreeEntry(pid: 11, ppid: 10, pgid: 10, sid: 10, threads: [11]),
                    pstreeEntry(pid: 12, ppid: 10, pgid: 12, sid: 10, threads: [12, 13]),
                ]),
            "core-10.img": imageBytes(.core, [coreEntry(comm: "sh")]),
            "core-11.img": imageBytes(.core, [coreEntry(comm: "sleep", state: 3)]),
            // 12's fd table id comes from its core (pre-4.x layout), 10 and 11 from ids-*.img.
            "core-12.img": imageBytes(.core, [coreEntry(comm: "worker", filesID: 2)]),
            "core-13.img": imageBytes(.core, [coreEntry(comm: "worker-io", mainThread: false)]),
            "ids-10.img": imageBytes(.ids, [idsEntry(filesID: 1)]),
            "ids-11.img": imageBytes(.ids, [idsEntry(filesID: 2)]),
            "fdinfo-1.img": imageBytes(
                .fdinfo,
                [
                    fdinfoEntry(fd: 0, type: FD_TYPES__REG), fdinfoEntry(fd: 1, type: FD_TYPES__PIPE),
                    fdinfoEntry(fd: 2, type: FD_TYPES__PIPE),
                ]),
            "fdinfo-2.img": imageBytes(.fdinfo, [fdinfoEntry(fd: 0, type: FD_TYPES__UNIXSK), fdinfoEntry(fd: 5, type: FD_TYPES__REG)]),
            "mm-10.img": imageBytes(.mm, [mmEntry(vmas: 4)]),
            "mm-11.img": imageBytes(.mm, [mmEntry(vmas: 2)]),
            "mm-12.img": imageBytes(.mm, [mmEntry(vmas: 3)]),
            "pagemap-10.img": imageBytes(
                .pagemap,
                [
                    pagemapHead(pagesID: 1),
                    pagemapEntry(pages: 5, flags: 4),  // present
                    pagemapEntry(pages: 7, flags: 1),  // in parent
                    pagemapEntry(pages: 2, flags: 4 | 2),  // present, could be lazy
                    pagemapEntry(pages: 8, flags: 2),  // left for lazy restore
                ]),
            "pagemap-11.img": imageBytes(
                .pagemap,
                [
                    pagemapHead(pagesID: 2),
                    pagemapEntry(pages: 3, flags: nil),  // old style: present
                    pagemapEntry(pages: 4, flags: nil, inParent: true),  // old style: in parent
                ]),
            "pagemap-12.img": imageBytes(.pagemap, [pagemapHead(pagesID: 3)]),
            "pagemap-shmem-77.img": imageBytes(.shmemPagemap, [pagemapHead(pagesID: 4), pagemapEntry(pages: 6, flags: 4)]),
            "stats-dump": imageBytes(.stats, [statsEntry(dump: dumpStats(frozenTime: 42, pagesWritten: 16), restore: nil)]),
        ]
    }

    @Test("the tree, memory, files and statistics of a hand-built set")
    func summary() throws {
        let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        let set = try CRIUImageSet(images: Self.images(), fileSizes: ["pages-1.img": 7 * pageSize, "pages-2.img": 3 * pageSize, "dump.log": 99])

        #expect(
            set.processTree == [
                CRIUProcess(
                    pid: 10, parentPid: 0, pgid: 10, sid: 10, threads: [10], command: "sh", openFiles: 3, mappings: 4,
                    pages: CRIUPageCounts(total: 22, present: 7, inParent: 7, lazy: 8)),
                CRIUProcess(
                    pid: 11, parentPid: 10, pgid: 10, sid: 10, threads: [11], command: "sleep", state: .stopped, openFiles: 2, mappings: 2,
                    pages: CRIUPageCounts(total: 7, present: 3, inParent: 4, lazy: 0)),
                CRIUProcess(
                    pid: 12, parentPid: 10, pgid: 12, sid: 10, threads: [12, 13], command: "worker", openFiles: 2, mappings: 3,
                    pages: CRIUPageCounts()),
            ])
        #expect(set.root?.pid == 10)
        #expect(set.children(of: 10).map(\.pid) == [11, 12])
        #expect(set.children(of: 11).isEmpty)

        #expect(set.memory.processPages == CRIUPageCounts(total: 29, present: 10, inParent: 11, lazy: 8))
        #expect(set.memory.sharedPages == CRIUPageCounts(total: 6, present: 6))
        #expect(set.memory.dumpedBytes == 16 * pageSize)
        #expect(set.memory.pagesImageBytes == 10 * pageSize)
        #expect(set.memory.mappings == 9)
        #expect(set.memory.pageSize == pageSize)

        #expect(set.openFiles == CRIUOpenFiles(total: 5, tables: 2, byType: ["reg": 2, "pipe": 2, "unixsk": 1]))
        #expect(set.inventory == CRIUInventory(imageVersion: 2, plugins: ["amdgpu_plugin"], lsm: "apparmor"))
        #expect(set.dumpStatistics?.frozenTime == 42)
        #expect(set.dumpStatistics?.pagesWritten == 16)
        #expect(set.restoreStatistics == nil)
        #expect(set.fileSizes["dump.log"] == 99)
        #expect(set.fileSizes["pstree.img"] == UInt64(Self.images()["pstree.img"]?.count ?? 0))

        let json = try JSONEncoder().encode(set)
        #expect(try JSONDecoder().decode(CRIUImageSet.self, from: json) == set)
    }

    @Test("stats alone are enough (checkpoint --print-stats)")
    func statsOnly() throws {
        let stats = try #require(Self.images()["stats-dump"])
        let set = try CRIUImageSet(images: ["stats-dump": stats])
        #expect(set.dumpStatistics?.frozenTime == 42)
        #expect(set.processTree.isEmpty)
        #expect(set.memory.pagesImageBytes == nil)
        #expect(set.openFiles == CRIUOpenFiles())
    }

    @Test("a pid without its core image is an error naming that image")
    func missingCore() throws {
        var images = Self.images()
        images["core-11.img"] = nil
        let error = try #require(throws: CRIUImageError.self) { try CRIUImageSet(images: images) }
        #expect(error.code == .missing)
        #expect(error.file == "core-11.img")
    }

    @Test("a thread's core where a process's is expected is an error")
    func threadCoreForProcess() throws {
        var images = Self.images()
        images["core-11.img"] = images["core-13.img"]
        let error = try #require(throws: CRIUImageError.self) { try CRIUImageSet(images: images) }
        #expect(error.code == .malformed)
        #expect(error.file == "core-11.img")
    }

    @Test("a pagemap without its head is an error")
    func pagemapWithoutHead() throws {
        var images = Self.images()
        images["pagemap-12.img"] = imageBytes(.pagemap, [])
        let error = try #require(throws: CRIUImageError.self) { try CRIUImageSet(images: images) }
        #expect(error.code == .malformed)
        #expect(error.file == "pagemap-12.img")
    }

    @Test("a directory reads like the same bytes, sizes included")
    func directory() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let images = Self.images()
        for (name, bytes) in images {
            try Files.writeAtomically(bytes, to: dir.sub(name))
        }
        try Files.writeAtomically([UInt8](repeating: 0, count: 8192), to: dir.sub("pages-1.img"))
        try Files.createDirectory(dir.sub("sub"))
        #expect(symlink("pstree.img", dir.sub("parent")) == 0)

        let fromDirectory = try CRIUImageSet(directory: dir.path)
        let fromBytes = try CRIUImageSet(images: images, fileSizes: ["pages-1.img": 8192])
        #expect(fromDirectory == fromBytes)

        let missing = try #require(throws: CRIUImageError.self) { try CRIUImageSet(directory: dir.sub("absent")) }
        #expect(missing.code == .readFailed(.noSuchFileOrDirectory))
    }
}
