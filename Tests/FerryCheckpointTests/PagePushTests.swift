import FerryCRIU
import FerryMigration
import FerrySystem
import FerryTestSupport
import Foundation
import SystemPackage
import Testing

@testable import FerryCheckpoint

#if canImport(Glibc)
    import Glibc
#endif

private let isRoot = getuid() == 0

/// The post-copy page push from a stand-in for CRIU's page server (source side), over a
/// real channel, into Ferry's lazy-pages server filling real userfaultfd-registered memory
/// of this process (destination side), which plays CRIU's restore towards the server.
@Suite("Page push", .serialized, .enabled(if: isRoot, "needs root (userfaultfd)"))
struct PagePushTests {
    /// Three lazy runs of two "processes": 1000 and 50 pages of process 1, 2100 of 7.
    static let layout: [(id: UInt64, pages: Int)] = [(1, 1000), (1, 50), (7, 2100)]

    /// The contents every page has: a function of its process and address.
    static func page(id: UInt64, address: UInt64) -> [UInt8] {
        let seed = UInt8(truncatingIfNeeded: id &* 31 &+ (address >> 12))
        return (0..<PageRange.pageSize).map { UInt8(truncatingIfNeeded: $0) &+ seed }
    }

    /// What the stand-in page server saw.
    final class ServerLog: @unchecked Sendable {
        let lock = NSLock()
        var requests = 0
        var closedProperly = false
        /// Pause 300 ms after the first MiB of the first answer (keeps that request in
        /// flight while its first pages are already forwarded).
        var pauseFirstAnswer = false
        /// Ended the way CRIU treats as a failure (which keeps the tree): a request it
        /// cannot parse, or the connection broken while it sends pages.
        var failed = false
        /// The connection ended with no request pending: to CRIU, "every page fetched",
        /// after which it ends the tree.
        var endedCleanly = false
    }

    /// Answers GET requests like CRIU's page server, stopping short at every 300th page
    /// (as CRIU does at the end of one of its buffers); answers CLOSE with status 0 and
    /// waits for the end of the connection.
    static func servePages(_ connection: TCPTransport, log: ServerLog) {
        var raw = [UInt8](repeating: 0, count: PageServerIOV.size)
        while true {
            switch Result(catching: { try readAll(connection, &raw) }) {
            case .success(true): break
            case .success(false):
                log.lock.withLock { log.endedCleanly = true }
                return
            case .failure:
                log.lock.withLock { log.failed = true }
                return
            }
            let iov = raw.withUnsafeBytes { PageServerIOV(bytes: $0) }
            switch iov.baseCommand {
            case PageServerIOV.get:
                log.lock.withLock { log.requests += 1 }
                let first = (iov.address >> 12) % 300
                let count = min(UInt64(iov.pages), 300 - first)
                var reply = PageServerIOV.pagesFollow(pages: UInt32(count), address: iov.address, id: iov.id).bytes
                for i in 0..<count { reply += page(id: iov.id, address: iov.address + i * 4096) }
                let pause = log.lock.withLock { () -> Int in
                    defer { log.pauseFirstAnswer = false }
                    return log.pauseFirstAnswer ? min(reply.count, PageServerIOV.size + 256 * 4096) : 0
                }
                if pause > 0 {
                    _ = try? reply.withUnsafeBytes { try connection.write(all: UnsafeRawBufferPointer(rebasing: $0[..<pause]), timeout: .seconds(10)) }
                    usleep(300_000)
                    reply.removeFirst(pause)
                }
                guard (try? reply.withUnsafeBytes { try connection.write(all: $0, timeout: .seconds(10)) }) != nil else {
                    log.lock.withLock { log.failed = true }
                    return
                }
            case PageServerIOV.close:
                var status: Int32 = 0
                _ = try? withUnsafeBytes(of: &status) { try connection.write(all: $0, timeout: .seconds(10)) }
                let end = (try? readAll(connection, &raw)) == false
                log.lock.withLock { log.closedProperly = end }
                return
            default:
                log.lock.withLock { log.failed = true }
                return
            }
        }
    }

    /// Reads exactly `buffer.count` bytes; false at a clean end of stream.
    static func readAll(_ connection: TCPTransport, _ buffer: inout [UInt8]) throws -> Bool {
        var got = 0
        while got < buffer.count {
            let n = try buffer.withUnsafeMutableBytes { try connection.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[got...]), timeout: .seconds(20)) }
            if n == 0 { return false }
            got += n
        }
        return true
    }

    /// Memory standing in for restored processes: one mapping per run, registered
    /// with one userfaultfd per process.
    final class Memory: @unchecked Sendable {
        var mappings: [(id: UInt64, base: UInt64, pages: Int)] = []
        var faults: [UInt64: Userfault] = [:]

        init() throws {
            for (id, pages) in PagePushTests.layout {
                let size = pages * PageRange.pageSize
                let raw = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                guard let raw, raw != MAP_FAILED else { throw Errno(rawValue: errno) }
                let base = UInt64(UInt(bitPattern: raw))
                mappings.append((id, base, pages))
                if faults[id] == nil { faults[id] = try Userfault.open() }
                try faults[id]?.registerMissing(start: base, length: UInt64(size))
            }
        }

        var ranges: [CRIULazyRange] { mappings.map { CRIULazyRange(id: $0.id, address: $0.base, pages: UInt64($0.pages)) } }

        var runs: [UInt64: LazyRuns] {
            var result: [UInt64: LazyRuns] = [:]
            for mapping in mappings {
                let run = LazyRuns.Run(start: mapping.base, end: mapping.base + UInt64(mapping.pages * PageRange.pageSize), imageStart: mapping.base)
                result[mapping.id, default: LazyRuns()].insert([run])
            }
            return result
        }

        /// Pages whose contents are what the page server sent.
        func correctPages() -> Int {
            var correct = 0
            for mapping in mappings {
                for index in 0..<mapping.pages {
                    let address = mapping.base + UInt64(index * PageRange.pageSize)
                    let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: UInt(address)), count: PageRange.pageSize)
                    if bytes.elementsEqual(PagePushTests.page(id: mapping.id, address: address)) { correct += 1 }
                }
            }
            return correct
        }

        deinit {
            for mapping in mappings {
                munmap(UnsafeMutableRawPointer(bitPattern: UInt(mapping.base)), mapping.pages * PageRange.pageSize)
            }
        }
    }

    /// Two channels joined in memory, past their handshake.
    static func connectedChannels() async throws -> (source: MigrationChannel, destination: MigrationChannel) {
        let (a, b) = MemoryTransport.pair()
        let source = MigrationChannel(transport: a)
        let destination = MigrationChannel(transport: b)
        let token = Array("a-shared-secret-of-enough-length".utf8)
        let (s, d) = await bothSides(
            { try source.handshake(role: .source, token: token) },
            { try destination.handshake(role: .destination, token: token) })
        try s.get()
        try d.get()
        return (source, destination)
    }

    struct Outcome {
        var source: Result<Void, any Error>
        var destination: Result<Int64, any Error>
        var correct: Int
        var faultSaw: Bool
        var log: ServerLog
    }

    /// Runs a push end to end. A thread touches a page near the end of the last run
    /// (before the push gets there), which must come first.
    /// `takeover`: what the destination's control channel decided (the container ran here,
    /// or it was removed before it ran); nil leaves it undecided until the memory is in.
    static func run(restoreFinishes: Bool, ran: Bool = true) async throws -> Outcome {
        let directory = try TempDir("ferry-page-push")
        defer { directory.cleanup() }
        let memory = try Memory()
        let (source, destination) = try await connectedChannels()

        let server = try LazyPagesServer(workDirectory: directory.path, missing: memory.runs)
        defer { server.stop() }
        // The restore's end of the socket; a restore that died has closed it.
        let processes = memory.faults.sorted { $0.key < $1.key }.map { (pid: Int32($0.key), fault: $0.value) }
        let restore = try actAsLazyRestore(socket: "\(directory.path)/\(LazyPagesServer.socketName)", processes: processes, finish: restoreFinishes).take()
        if !restoreFinishes { Glibc.close(restore) }
        let criuListener = try TCPListener(host: "127.0.0.1", port: 0)
        let log = ServerLog()
        _ = ThreadRun.start("the stand-in page server") {
            if let connection = try? criuListener.accept(timeout: .seconds(10)) { servePages(connection, log: log) }
        }
        let last = try #require(memory.mappings.last)
        let touched = last.base + UInt64((last.pages - 3) * PageRange.pageSize)
        let toucher = ThreadRun.start("a read of a page ahead of the push") { () -> Bool in
            guard restoreFinishes else { return false }
            let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: UInt(touched)), count: PageRange.pageSize)
            return bytes.elementsEqual(PagePushTests.page(id: last.id, address: touched))
        }
        let criu = try TCPTransport.connect(host: "127.0.0.1", port: criuListener.address.port, timeout: .seconds(10))
        let push = SourcePagePush(criu: criu, channel: source, ranges: memory.ranges)
        let takeover = Takeover()
        if ran { takeover.ran() } else { takeover.abandon() }
        async let pushed = outcome { try await onThread { try push.run() } }
        async let stored = outcome { try await onThread { try Migrator.receivePages(from: destination, into: server, takeover: takeover) } }
        let (sourceResult, destinationResult) = await (pushed, stored)
        criuListener.close()
        // Give the stand-in a moment to record how its connection ended.
        for _ in 0..<200 where !log.lock.withLock({ log.closedProperly || log.failed }) { usleep(10_000) }
        usleep(50_000)
        if restoreFinishes { Glibc.close(restore) }
        let correct = restoreFinishes ? memory.correctPages() : 0
        return Outcome(
            source: sourceResult, destination: destinationResult, correct: correct, faultSaw: (try? toucher.join(timeout: .seconds(10)).get()) ?? false,
            log: log)
    }

    @Test("every page lands in the processes' memory, a thread touching a page ahead of the push sees it, and CRIU's page server is closed properly")
    func everyPage() async throws {
        try await onThread("everyPage") {
            let result = try await Self.run(restoreFinishes: true)
            #expect(throws: Never.self) { try result.source.get() }
            #expect(throws: Never.self) { try result.destination.get() }
            let total = Self.layout.reduce(0) { $0 + $1.pages }
            #expect(result.correct == total, "pages with the page server's contents")
            #expect(result.faultSaw, "the thread that touched a page saw its contents")
            let (closed, failed) = result.log.lock.withLock { (result.log.closedProperly, result.log.failed) }
            #expect(closed, "CLOSE, then the end of the connection")
            #expect(!failed)
        }
    }

    @Test("a copy removed before it ran never says done, even with every page in: the push fails and CRIU is told to keep the tree")
    func removedBeforeItRan() async throws {
        try await onThread("removedBeforeItRan") {
            let result = try await Self.run(restoreFinishes: true, ran: false)
            #expect(throws: (any Error).self) { try result.source.get() }
            #expect(throws: (any Error).self) { try result.destination.get() }
            let (closed, failed) = result.log.lock.withLock { (result.log.closedProperly, result.log.failed) }
            #expect(!closed, "CRIU's page server must not be closed properly: that would end the source's tree")
            #expect(failed, "CRIU was sent the request that makes it keep the tree")
        }
    }

    @Test("pages the destination asks for again after they were pushed are sent again")
    func refetch() async throws {
        try await onThread("refetch") {
            let (source, destination) = try await Self.connectedChannels()
            let criuListener = try TCPListener(host: "127.0.0.1", port: 0)
            defer { criuListener.close() }
            let log = ServerLog()
            log.pauseFirstAnswer = true
            _ = ThreadRun.start("the stand-in page server") {
                if let connection = try? criuListener.accept(timeout: .seconds(10)) { Self.servePages(connection, log: log) }
            }
            let criu = try TCPTransport.connect(host: "127.0.0.1", port: criuListener.address.port, timeout: .seconds(10))
            // Starts at a multiple of 300 pages: the first answer has 300 pages, two frames.
            let range = CRIULazyRange(id: 7, address: 0x300C_0000, pages: 2100)
            let push = SourcePagePush(criu: criu, channel: source, ranges: [range])
            async let pushed = outcome { try await onThread { try push.run() } }
            // The destination: as soon as the first page has come, asks for it again (as
            // after a copy that could not be done), then waits for it and for the rest.
            let again = PageRange(id: 7, address: range.address, count: 1)
            let received: Result<(Int, Int), any Error> = await outcome {
                try await onThread {
                    var pages = 0
                    var copiesOfFirst = 0
                    // A destination that gives up ends the source's wait too.
                    defer { destination.close() }
                    while true {
                        let message = try destination.receive(timeout: .seconds(20)) { run, bytes in
                            pages += Int(run.count)
                            if run.address <= again.address && again.end <= run.end {
                                copiesOfFirst += 1
                                if copiesOfFirst == 1 { try? destination.send(.pageRequest(again)) }
                            }
                        }
                        if message == .done { return (pages, copiesOfFirst) }
                        if pages >= Int(range.pages) + 1 && copiesOfFirst == 2 { try destination.send(.done) }
                    }
                }
            }
            let (sourceResult, counts) = await (pushed, received)
            #expect(throws: Never.self) { try sourceResult.get() }
            let (pages, copiesOfFirst) = try counts.get()
            #expect(copiesOfFirst == 2, "the first page, pushed and then asked for again")
            #expect(pages == Int(range.pages) + 1)
        }
    }

    @Test(
        "a push whose destination has every page closes CRIU's page server only once allowed (the commit answered); an abort before makes CRIU fail, which keeps the tree",
        arguments: [true, false])
    func closeWaitsForCommit(committed: Bool) async throws {
        try await onThread("closeWaitsForCommit") {
            let (source, destination) = try await Self.connectedChannels()
            let criuListener = try TCPListener(host: "127.0.0.1", port: 0)
            defer { criuListener.close() }
            let log = ServerLog()
            _ = ThreadRun.start("the stand-in page server") {
                if let connection = try? criuListener.accept(timeout: .seconds(10)) { Self.servePages(connection, log: log) }
            }
            let criu = try TCPTransport.connect(host: "127.0.0.1", port: criuListener.address.port, timeout: .seconds(10))
            let range = CRIULazyRange(id: 3, address: 0x4000_0000, pages: 600)
            let push = SourcePagePush(criu: criu, channel: source, ranges: [range], closeAllowed: false)
            async let pushed = outcome { try await onThread { try push.run() } }
            // The destination: says `done` once every page has come, then waits for the end.
            let received: Result<Int, any Error> = await outcome {
                try await onThread {
                    defer { destination.close() }
                    var pages = 0
                    while true {
                        let message = try destination.receive(timeout: .seconds(20)) { run, _ in pages += Int(run.count) }
                        if message == nil && pages == Int(range.pages) {
                            try destination.send(.done)
                            // Every page is here: CRIU must still hold the tree.
                            usleep(300_000)
                            let early = log.lock.withLock { log.closedProperly || log.failed }
                            #expect(!early, "CRIU's page server was ended before the commit was answered")
                            if committed { push.allowClose() } else { push.abort(CheckpointError(.restoreFailed, "the commit was lost")) }
                        }
                        if message == .done || message?.kind == .abort { return pages }
                    }
                }
            }
            let (sourceResult, pages) = await (pushed, received)
            #expect(try pages.get() == Int(range.pages))
            for _ in 0..<200 where !log.lock.withLock({ log.closedProperly || log.failed }) { usleep(10_000) }
            let (closed, failed) = log.lock.withLock { (log.closedProperly, log.failed) }
            if committed {
                #expect(throws: Never.self) { try sourceResult.get() }
                #expect(closed && !failed, "CLOSE once allowed")
            } else {
                #expect(throws: (any Error).self) { try sourceResult.get() }
                #expect(failed && !closed, "CRIU must fail, which keeps the tree")
            }
        }
    }

    @Test("a restore that died fails the push, and CRIU is told with a request it cannot parse")
    func restoreFailed() async throws {
        try await onThread("restoreFailed") {
            let result = try await Self.run(restoreFinishes: false)
            #expect(throws: (any Error).self) { try result.source.get() }
            #expect(throws: (any Error).self) { try result.destination.get() }
            let (closed, failed) = result.log.lock.withLock { (result.log.closedProperly, result.log.failed) }
            #expect(failed, "CRIU must fail, which keeps the tree")
            #expect(!closed)
        }
    }

    /// What `postCopy` does: the caller ends its connection to CRIU as soon as the push
    /// returns. A destination that stops the transfer must make CRIU fail, never find
    /// the connection ended first (a clean end is "every page fetched" to CRIU, which
    /// then ends the tree: a lazy migration whose destination failed once lost its
    /// source that way). Repeated, as the two used to race.
    @Test("a destination that aborts while the push holds the close back: CRIU is told to fail before its connection ends, every time")
    func abortBeforeClose() async throws {
        try await onThread("abortBeforeClose") {
            for round in 0..<40 {
                let (source, destination) = try await Self.connectedChannels()
                let criuListener = try TCPListener(host: "127.0.0.1", port: 0)
                defer { criuListener.close() }
                let log = ServerLog()
                let server = ThreadRun.start("the stand-in page server") {
                    if let connection = try? criuListener.accept(timeout: .seconds(10)) { Self.servePages(connection, log: log) }
                }
                let criu = try TCPTransport.connect(host: "127.0.0.1", port: criuListener.address.port, timeout: .seconds(10))
                let range = CRIULazyRange(id: 5, address: 0x5000_0000, pages: 64)
                let push = SourcePagePush(criu: criu, channel: source, ranges: [range], background: false, closeAllowed: false)
                async let pushed = outcome {
                    try await onThread {
                        defer { criu.close() }
                        try push.run()
                    }
                }
                // The destination's restore asks for one page, then fails.
                let aborted: Result<Void, any Error> = await outcome {
                    try await onThread {
                        defer { destination.close() }
                        try destination.send(.pageRequest(PageRange(id: 5, address: range.address, count: 1)))
                        var pages = 0
                        let first = try destination.receive(timeout: .seconds(20)) { run, _ in pages += Int(run.count) }
                        #expect(first == nil && pages == 1, "the page asked for, first")
                        try destination.send(.abort(reason: "the restore failed"))
                    }
                }
                let sourceResult = await pushed
                #expect(throws: Never.self) { try aborted.get() }
                #expect(throws: (any Error).self) { try sourceResult.get() }
                _ = server.join(timeout: .seconds(20))
                let (failed, clean, closed) = log.lock.withLock { (log.failed, log.endedCleanly, log.closedProperly) }
                #expect(failed && !clean && !closed, "round \(round): CRIU must fail, which keeps the tree (clean end: \(clean))")
                if !failed || clean || closed { break }
            }
        }
    }
}
