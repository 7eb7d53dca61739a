import FerryCRIU
import FerryMigration
import FerrySystem
import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The memory of a post-copy migration, pushed rather than pulled.
///
/// CRIU's lazy-pages daemon fetches memory one request at a time (growing from 64 KiB to
/// 4 MiB), which over a network runs at a fraction of what the link carries. Instead,
/// Ferry's source asks CRIU's page server (on 127.0.0.1) for every lazy run itself, with
/// several requests in flight, and streams the pages over the page channel; the
/// destination keeps what arrives and answers the daemon's requests (on 127.0.0.1) from
/// it. A request for pages that have not arrived yet (a fault) is sent to the source,
/// which asks CRIU for those first.
final class SourcePagePush: @unchecked Sendable {
    /// Requests sent to CRIU and not yet answered, at most; each is at most 4 MiB.
    static let requestsInFlight = 4
    static let pagesPerRequest: UInt64 = 1024
    /// Pages per `pages` frame (1 MiB: a frame holds at most 4 MiB).
    static let pagesPerFrame = 256

    private let criu: TCPTransport
    private let channel: MigrationChannel
    private let ranges: [CRIULazyRange]

    private let condition = NSCondition()
    // Guarded by condition.
    private var next = 0
    private var offset: UInt64 = 0
    private var urgent: [PageRange] = []
    private var inFlight: [PageRange?] = []  // nil: the closing request
    private var finishing = false
    private var failure: (any Error)?
    private let writeLock = NSLock()
    private(set) var bytesSent: Int64 = 0

    init(criu: TCPTransport, channel: MigrationChannel, ranges: [CRIULazyRange]) {
        self.criu = criu
        self.channel = channel
        self.ranges = ranges
    }

    /// Pushes every lazy page, serves the destination's urgent requests, and once the
    /// destination says its daemon has everything, ends CRIU's page server properly
    /// (which lets the dump finish and end the frozen tree). On failure CRIU is told in a
    /// way that makes it keep the tree.
    func run() throws {
        let writer = Thread { [self] in guard catching({ try writeRequests() }) else { return } }
        let listener = Thread { [self] in guard catching({ try receiveRequests() }) else { return } }
        writer.start()
        listener.start()
        _ = catching { try readResponses() }
        condition.lock()
        let failed = failure
        condition.unlock()
        if let failed { throw failed }
        try channel.send(.done)
    }

    /// Runs `body`; on failure records it, stops everything, returns false.
    private func catching(_ body: () throws -> Void) -> Bool {
        do {
            try body()
            return true
        } catch {
            fail(error)
            return false
        }
    }

    private func fail(_ error: any Error) {
        condition.lock()
        let first = failure == nil
        if first { failure = error }
        condition.broadcast()
        condition.unlock()
        guard first else { return }
        // A closed connection means "all done" to CRIU, which would then end the tree;
        // a request it cannot parse makes it fail and keep the tree instead.
        writeLock.withLock { Migrator.failPageServer(criu) }
        criu.close()
        try? channel.send(.abort(reason: "\(error)"))
        channel.close()
    }

    private var stopped: Bool { failure != nil }

    private func writeRequests() throws {
        while true {
            condition.lock()
            var request: PageRange??
            while request == nil {
                if stopped {
                    condition.unlock()
                    return
                }
                if inFlight.count >= Self.requestsInFlight {
                    condition.wait()
                } else if !urgent.isEmpty {
                    request = .some(urgent.removeFirst())
                } else if next < ranges.count {
                    let range = ranges[next]
                    let count = min(range.pages - offset, Self.pagesPerRequest)
                    request = .some(PageRange(id: range.id, address: range.address + offset * UInt64(PageRange.pageSize), count: UInt32(count)))
                    offset += count
                    if offset == range.pages {
                        next += 1
                        offset = 0
                    }
                } else if finishing {
                    request = .some(nil)
                } else {
                    condition.wait()
                }
            }
            let chosen = request ?? nil
            inFlight.append(chosen)
            condition.broadcast()
            condition.unlock()
            let iov = chosen.map { PageServerIOV(command: PageServerIOV.get, pages: $0.count, address: $0.address, id: $0.id) }
                ?? PageServerIOV(command: PageServerIOV.close, pages: 0, address: 0, id: 0)
            try writeLock.withLock { try iov.bytes.withUnsafeBytes { try criu.write(all: $0, timeout: .seconds(60)) } }
            if chosen == nil { return }
        }
    }

    private func receiveRequests() throws {
        while true {
            switch try channel.receive(timeout: .seconds(600)) {
            case .pageRequest(let range):
                condition.lock()
                // Pages the push has already asked CRIU for are on their way: fetching
                // them again would only slow the push down.
                if !alreadyRequested(range) {
                    urgent.append(range)
                    condition.broadcast()
                }
                condition.unlock()
            case .done:
                // The destination's daemon has every page and has exited cleanly.
                condition.lock()
                finishing = true
                condition.broadcast()
                condition.unlock()
                return
            case .abort(let reason), .error(let reason):
                throw CheckpointError(.restoreFailed, "the destination stopped the page transfer: \(reason)")
            case let other:
                throw CheckpointError(.restoreFailed, "unexpected \(other.kind) on the page channel")
            }
        }
    }

    /// Under `condition`: whether the push has passed `range`'s start already.
    private func alreadyRequested(_ range: PageRange) -> Bool {
        guard let index = ranges.firstIndex(where: { $0.id == range.id && $0.address <= range.address && range.address < $0.address + $0.pages * UInt64(PageRange.pageSize) }) else {
            return false
        }
        if index < next { return true }
        return index == next && range.address < ranges[index].address + offset * UInt64(PageRange.pageSize)
    }

    private func readResponses() throws {
        let frameBytes = PageRange.encodedSize + Self.pagesPerFrame * PageRange.pageSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: frameBytes, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            condition.lock()
            while inFlight.isEmpty && !stopped { condition.wait() }
            if stopped {
                condition.unlock()
                return
            }
            let head = inFlight[0]
            condition.unlock()
            guard let request = head else {
                // The answer to the closing request, then CRIU waits for our end.
                let status = try readExactly(4, into: buffer)
                guard status.load(as: Int32.self) == 0 else {
                    throw CheckpointError(.restoreFailed, "CRIU's page server ended with status \(status.load(as: Int32.self))")
                }
                criu.close()
                return
            }
            let header = PageServerIOV(bytes: try readExactly(PageServerIOV.size, into: buffer))
            guard header.baseCommand == PageServerIOV.addWithFlags, header.id == request.id, header.address == request.address,
                header.pages > 0, header.pages <= request.count
            else {
                throw CheckpointError(.restoreFailed, "CRIU's page server answered \(header) to a request for \(request)")
            }
            if header.pages < request.count {
                // CRIU stops at the end of one of its buffers: ask for the rest first.
                let rest = PageRange(id: request.id, address: request.address + UInt64(header.pages) * UInt64(PageRange.pageSize), count: request.count - header.pages)
                condition.lock()
                urgent.insert(rest, at: 0)
                condition.unlock()
            }
            var done: UInt32 = 0
            while done < header.pages {
                let count = min(UInt32(Self.pagesPerFrame), header.pages - done)
                let bytes = Int(count) * PageRange.pageSize
                let payload = UnsafeMutableRawBufferPointer(rebasing: buffer[..<(PageRange.encodedSize + bytes)])
                _ = try readExactly(bytes, into: UnsafeMutableRawBufferPointer(rebasing: payload[PageRange.encodedSize...]))
                let run = PageRange(id: request.id, address: request.address + UInt64(done) * UInt64(PageRange.pageSize), count: count)
                try channel.sendPages(run, payload: payload)
                bytesSent += Int64(payload.count)
                done += count
            }
            condition.lock()
            inFlight.removeFirst()
            condition.broadcast()
            condition.unlock()
        }
    }

    private func readExactly(_ count: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer {
        var got = 0
        while got < count {
            let n = try criu.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[got..<count]), timeout: .seconds(120))
            if n == 0 { throw CheckpointError(.restoreFailed, "CRIU's page server closed the connection") }
            got += n
        }
        return UnsafeRawBufferPointer(rebasing: buffer[..<count])
    }
}

/// The destination's end: stands in for CRIU's page server towards the lazy-pages
/// daemon, answering its requests, in order, from the pages the source pushed. Pages
/// wait in memory up to `memoryBudget` (the daemon usually takes them at once, and
/// memory that is reused costs far less than fresh page cache on a VM); beyond that in an
/// unlinked file in the container's directory, so that a slow daemon never grows Ferry's
/// own memory.
final class DestinationPageStore: @unchecked Sendable {
    private struct Stored {
        var address: UInt64
        var count: UInt64
        /// The pages while they wait in memory; nil when they are in the cache file.
        var memory: [UInt8]?
        /// Where they are in the cache file (memory == nil).
        var offset: Int64
        /// Pages the daemon has been sent; a run held in memory goes once all have been.
        var served: UInt64 = 0
        var end: UInt64 { address + count * UInt64(PageRange.pageSize) }
    }

    static let memoryBudget = 64 << 20

    private let daemon: TCPTransport
    private let channel: MigrationChannel
    /// Waits for the daemon to exit; throws unless it exited cleanly.
    private let daemonFinished: @Sendable () throws -> Void
    private let cache: OwnedFD

    private let lock = NSLock()
    // Guarded by lock.
    private var stored: [UInt64: [Stored]] = [:]
    private var cacheEnd: Int64 = 0
    private var memoryHeld = 0
    private var queue: [PageServerIOV] = []
    private var wanted: Set<PageRange> = []
    private var buffer = [UInt8](repeating: 0, count: Int(SourcePagePush.pagesPerRequest) * PageRange.pageSize)
    private(set) var bytesReceived: Int64 = 0

    init(daemon: TCPTransport, channel: MigrationChannel, directory: String, daemonFinished: @escaping @Sendable () throws -> Void) throws {
        self.daemon = daemon
        self.channel = channel
        self.daemonFinished = daemonFinished
        let path = "\(directory)/lazy-pages.cache"
        cache = try OwnedFD.open(path, O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
        unlink(path)
    }

    /// Runs until the daemon has every page and has exited cleanly, then tells the
    /// source, and waits for the source's end.
    func run() throws {
        let requests = ThreadOutcome.start { [self] in
            do {
                try serveDaemon()
            } catch {
                channel.close()
                throw error
            }
        }
        var failure: (any Error)?
        do {
            try receivePages()
        } catch {
            failure = error
            daemon.close()
        }
        if let error = requests.error ?? failure { throw error }
    }

    private func receivePages() throws {
        while true {
            switch try channel.receive(timeout: .seconds(600)) {
            case .pages(let run):
                let inMemory = lock.withLock { () -> Bool in
                    guard memoryHeld + run.bytes.count <= Self.memoryBudget else { return false }
                    memoryHeld += run.bytes.count
                    return true
                }
                var piece = Stored(address: run.range.address, count: UInt64(run.range.count), memory: inMemory ? run.bytes : nil, offset: 0)
                if !inMemory {
                    piece.offset = lock.withLock { () -> Int64 in
                        defer { cacheEnd += Int64(run.bytes.count) }
                        return cacheEnd
                    }
                    try writeCache(run.bytes, at: piece.offset)
                }
                try lock.withLock {
                    bytesReceived += Int64(run.bytes.count)
                    insert(piece, id: run.range.id)
                    try answerReady()
                }
            case .done:
                // The source has ended CRIU's page server: the transfer is over.
                return
            case .abort(let reason), .error(let reason):
                throw CheckpointError(.restoreFailed, "the source stopped the page transfer: \(reason)")
            case let other:
                throw CheckpointError(.restoreFailed, "unexpected \(other.kind) on the page channel")
            }
        }
    }

    /// Reads the daemon's requests; answers what can be answered, asks the source for the
    /// rest. Ends when the daemon closes after its final request.
    private func serveDaemon() throws {
        var raw = [UInt8](repeating: 0, count: PageServerIOV.size)
        while true {
            guard try readRequest(into: &raw) else {
                // The daemon closed: only a clean exit means every page arrived.
                try daemonFinished()
                try channel.send(.done)
                return
            }
            let iov = raw.withUnsafeBytes { PageServerIOV(bytes: $0) }
            switch iov.baseCommand {
            case PageServerIOV.get:
                try lock.withLock {
                    queue.append(iov)
                    try answerReady()
                }
            case PageServerIOV.close, PageServerIOV.forceClose:
                var status: Int32 = 0
                try lock.withLock {
                    try withUnsafeBytes(of: &status) { try daemon.write(all: $0, timeout: .seconds(60)) }
                }
            default:
                throw CheckpointError(.restoreFailed, "the lazy-pages daemon sent command \(iov.command)")
            }
        }
    }

    private func readRequest(into raw: inout [UInt8]) throws -> Bool {
        var got = 0
        while got < raw.count {
            let n = try raw.withUnsafeMutableBytes { buffer in
                try daemon.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[got...]), timeout: nil)
            }
            if n == 0 {
                if got == 0 { return false }
                throw CheckpointError(.restoreFailed, "the lazy-pages daemon closed mid-request")
            }
            got += n
        }
        return true
    }

    private func writeCache(_ bytes: [UInt8], at offset: Int64) throws {
        do {
            try bytes.withUnsafeBytes { raw in try cache.writeAll(raw, at: offset) }
        } catch let error as Errno {
            throw error.with("write", path: "lazy-pages.cache")
        }
    }

    /// Under `lock`: answers queued requests, oldest first, while their pages are here
    /// (the daemon matches answers to requests by order); asks the source for the pages
    /// of the oldest one otherwise.
    private func answerReady() throws {
        while let head = queue.first {
            let range = PageRange(id: head.id, address: head.address, count: head.pages)
            guard let pieces = locate(range) else {
                if wanted.insert(range).inserted { try channel.send(.pageRequest(range)) }
                return
            }
            queue.removeFirst()
            wanted.remove(range)
            let reply = PageServerIOV.pagesFollow(pages: head.pages, address: head.address, id: head.id)
            try reply.bytes.withUnsafeBytes { try daemon.write(all: $0, timeout: .seconds(60)) }
            var list = stored[range.id] ?? []
            for piece in pieces {
                let run = list[piece.index]
                if let memory = run.memory {
                    try memory.withUnsafeBytes { raw in
                        try daemon.write(all: UnsafeRawBufferPointer(rebasing: raw[piece.start..<(piece.start + piece.length)]), timeout: .seconds(60))
                    }
                } else {
                    try readCache(length: piece.length, at: run.offset + Int64(piece.start))
                    try buffer.withUnsafeBytes { try daemon.write(all: UnsafeRawBufferPointer(rebasing: $0[..<piece.length]), timeout: .seconds(60)) }
                }
                list[piece.index].served += UInt64(piece.length / PageRange.pageSize)
            }
            // Runs held in memory that the daemon has had in full are not needed again
            // (it never asks twice for a page it has).
            for index in Set(pieces.map(\.index)).sorted(by: >) where list[index].memory != nil && list[index].served >= list[index].count {
                memoryHeld -= list[index].memory?.count ?? 0
                list.remove(at: index)
            }
            stored[range.id] = list
        }
    }

    private func readCache(length: Int, at offset: Int64) throws {
        if buffer.count < length { buffer = [UInt8](repeating: 0, count: length) }
        do {
            try buffer.withUnsafeMutableBytes { raw in
                try cache.readExactly(into: UnsafeMutableRawBufferPointer(rebasing: raw[..<length]), at: offset)
            }
        } catch let error as Errno {
            throw error.with("read", path: "lazy-pages.cache")
        }
    }

    private func insert(_ piece: Stored, id: UInt64) {
        var list = stored[id, default: []]
        // Sorted by address; pushes arrive mostly in order, so search from the end.
        var index = list.count
        while index > 0 && list[index - 1].address > piece.address { index -= 1 }
        list.insert(piece, at: index)
        stored[id] = list
    }

    /// Which stored runs hold the pages of `range`, in order (the run's index, the byte
    /// where the part starts in it, its length); nil when some have not arrived.
    private func locate(_ range: PageRange) -> [(index: Int, start: Int, length: Int)]? {
        guard let list = stored[range.id] else { return nil }
        var pieces: [(index: Int, start: Int, length: Int)] = []
        var at = range.address
        while at < range.end {
            // The last stored run starting at or before `at`.
            var low = 0
            var high = list.count
            while low < high {
                let mid = (low + high) / 2
                if list[mid].address <= at { low = mid + 1 } else { high = mid }
            }
            var found: Int?
            var candidate = low - 1
            while candidate >= 0 {
                if list[candidate].end > at {
                    found = candidate
                    break
                }
                // Runs may overlap (a fault's pages can arrive twice); look further back
                // only a little.
                if low - candidate > 8 { break }
                candidate -= 1
            }
            guard let index = found else { return nil }
            let until = min(list[index].end, range.end)
            pieces.append((index, Int(at - list[index].address), Int(until - at)))
            at = until
        }
        return pieces
    }
}
