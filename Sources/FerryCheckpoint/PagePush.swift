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
/// destination copies them into the restored processes as they arrive
/// (`LazyPagesServer`). Pages a process touches before they arrive are asked for with a
/// `pageRequest`, which goes ahead of the push.
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
    /// How far the answer to `inFlight[0]` has been forwarded.
    private var forwardedUpTo: UInt64 = 0
    private var finishing = false
    private var failure: (any Error)?
    private let writeLock = NSLock()
    /// Held through `fail`.
    private let failLock = NSLock()
    private(set) var bytesSent: Int64 = 0
    /// When the destination said every process has its memory.
    private(set) var memoryArrived: ContinuousClock.Instant?

    /// Whether the push may go beyond the destination's requests. Until its restore has
    /// finished, the restored processes' memory is not registered with their
    /// userfaultfds yet (pages could not be copied in); only the pages the restore itself
    /// touches are asked for, and served.
    private var background: Bool

    /// Whether CRIU's page server may be closed properly once the destination has every
    /// page. A proper close lets CRIU end the frozen tree, so until the destination has
    /// taken the container over for good (it has answered the commit) the push holds
    /// the close back: a migration that fails before then must find the tree alive.
    private var closeAllowed: Bool

    init(criu: TCPTransport, channel: MigrationChannel, ranges: [CRIULazyRange], background: Bool = true, closeAllowed: Bool = true) {
        self.criu = criu
        self.channel = channel
        self.ranges = ranges
        self.background = background
        self.closeAllowed = closeAllowed
    }

    /// The destination's restore has finished: push everything.
    func startBackground() {
        condition.lock()
        background = true
        condition.broadcast()
        condition.unlock()
    }

    /// The destination has taken the container over: CRIU's page server may be closed
    /// properly (which ends the frozen tree) once every page has arrived.
    func allowClose() {
        condition.lock()
        closeAllowed = true
        condition.broadcast()
        condition.unlock()
    }

    /// Stops the push because the migration failed: CRIU is told in the way that makes it
    /// keep the tree, unless it was closed properly already.
    func abort(_ error: any Error) {
        fail(error)
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
        // CRIU's page server is closed properly: every page has arrived, as the
        // destination said. Telling it so is a courtesy; the memory is complete whether
        // or not this last frame arrives.
        try? channel.send(.done)
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

    /// Records the first failure and tells CRIU. The failure becomes visible (which lets
    /// `run` return, and its caller end the connection) only once CRIU has been sent
    /// the request it cannot parse: a connection that ended first would mean "all done"
    /// to CRIU, which would then end the tree. A second failure waits for the first.
    private func fail(_ error: any Error) {
        failLock.withLock {
            guard condition.withLock({ failure == nil }) else { return }
            writeLock.withLock { Migrator.failPageServer(criu) }
            criu.close()
            condition.withLock {
                failure = error
                condition.broadcast()
            }
            try? channel.send(.abort(reason: "\(error)"))
            channel.close()
        }
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
                } else if background && next < ranges.count {
                    let range = ranges[next]
                    let count = min(range.pages - offset, Self.pagesPerRequest)
                    request = .some(PageRange(id: range.id, address: range.address + offset * UInt64(PageRange.pageSize), count: UInt32(count)))
                    offset += count
                    if offset == range.pages {
                        next += 1
                        offset = 0
                    }
                } else if finishing && closeAllowed {
                    request = .some(nil)
                } else {
                    condition.wait()
                }
            }
            let chosen = request ?? nil
            inFlight.append(chosen)
            condition.broadcast()
            condition.unlock()
            let iov =
                chosen.map { PageServerIOV(command: PageServerIOV.get, pages: $0.count, address: $0.address, id: $0.id) }
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
                // Pages asked of CRIU and not answered yet are on their way; any other
                // request is served, also for pages pushed already: the destination asks
                // again only when it needs them again (a process forked while they were
                // being copied in, or a mapping moved under the copy).
                if !onItsWay(range) {
                    urgent.append(range)
                    condition.broadcast()
                }
                condition.unlock()
            case .done:
                // Every restored process has all its memory.
                condition.lock()
                finishing = true
                memoryArrived = ContinuousClock.now
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

    /// Under `condition`: whether `range` lies in the part of a request to CRIU that is
    /// not forwarded yet. (Pages forwarded already are asked for again only when the
    /// destination could not copy them in: they must be fetched again.)
    private func onItsWay(_ range: PageRange) -> Bool {
        inFlight.enumerated().contains { index, request in
            guard let request, request.id == range.id else { return false }
            let start = index == 0 ? max(request.address, forwardedUpTo) : request.address
            return start <= range.address && range.end <= request.end
        }
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
                let rest = PageRange(
                    id: request.id, address: request.address + UInt64(header.pages) * UInt64(PageRange.pageSize), count: request.count - header.pages)
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
                // Counted as forwarded before it is sent: the destination may ask for these
                // pages again as soon as it has them, and a request that found them still
                // "on their way" would be dropped.
                condition.withLock { forwardedUpTo = run.end }
                try channel.sendPages(run, payload: payload)
                bytesSent += Int64(payload.count)
                done += count
            }
            condition.lock()
            inFlight.removeFirst()
            forwardedUpTo = 0
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
