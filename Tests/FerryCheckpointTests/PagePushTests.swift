import FerryCRIU
import FerryMigration
import FerryTestSupport
import Foundation
import Synchronization
import Testing

@testable import FerryCheckpoint

/// The post-copy page push between a stand-in for CRIU's page server (source side) and a
/// stand-in for CRIU's lazy-pages daemon (destination side), over a real channel.
@Suite("Page push")
struct PagePushTests {
    static let ranges = [
        CRIULazyRange(id: 1, address: 0x1000_0000, pages: 1000),
        CRIULazyRange(id: 1, address: 0x2000_0000, pages: 50),
        CRIULazyRange(id: 7, address: 0x3000_0000, pages: 2100),
    ]

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
        var garbage = false
    }

    /// Answers GET requests like CRIU's page server, stopping short at every 300th page
    /// (as CRIU does at the end of one of its buffers); answers CLOSE with status 0 and
    /// waits for the end of the connection.
    static func servePages(_ connection: TCPTransport, log: ServerLog) {
        var raw = [UInt8](repeating: 0, count: PageServerIOV.size)
        while true {
            guard (try? readAll(connection, &raw)) == true else { return }
            let iov = raw.withUnsafeBytes { PageServerIOV(bytes: $0) }
            switch iov.baseCommand {
            case PageServerIOV.get:
                log.lock.withLock { log.requests += 1 }
                let first = (iov.address >> 12) % 300
                let count = min(UInt64(iov.pages), 300 - first)
                var reply = PageServerIOV.pagesFollow(pages: UInt32(count), address: iov.address, id: iov.id).bytes
                for i in 0..<count { reply += page(id: iov.id, address: iov.address + i * 4096) }
                guard (try? reply.withUnsafeBytes { try connection.write(all: $0, timeout: .seconds(10)) }) != nil else { return }
            case PageServerIOV.close:
                var status: Int32 = 0
                _ = try? withUnsafeBytes(of: &status) { try connection.write(all: $0, timeout: .seconds(10)) }
                let end = (try? readAll(connection, &raw)) == false
                log.lock.withLock { log.closedProperly = end }
                return
            default:
                log.lock.withLock { log.garbage = true }
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

    /// Asks like the lazy-pages daemon: a fault near the end first, then everything in
    /// order in runs of 64 pages; checks every page; then CLOSE. Returns the pages that
    /// were right.
    static func fetchAll(_ connection: TCPTransport) throws -> Int {
        var wanted = [PageRange(id: 7, address: 0x3000_0000 + 2000 * 4096, count: 1)]
        for range in ranges {
            var at: UInt64 = 0
            while at < range.pages {
                let count = min(64, range.pages - at)
                wanted.append(PageRange(id: range.id, address: range.address + at * 4096, count: UInt32(count)))
                at += count
            }
        }
        var checked = 0
        for want in wanted {
            let request = PageServerIOV(command: PageServerIOV.get, pages: want.count, address: want.address, id: want.id)
            try request.bytes.withUnsafeBytes { try connection.write(all: $0, timeout: .seconds(10)) }
            var header = [UInt8](repeating: 0, count: PageServerIOV.size)
            guard try readAll(connection, &header) else { return checked }
            let answer = header.withUnsafeBytes { PageServerIOV(bytes: $0) }
            guard answer == PageServerIOV.pagesFollow(pages: want.count, address: want.address, id: want.id) else { return checked }
            var data = [UInt8](repeating: 0, count: Int(want.count) * 4096)
            guard try readAll(connection, &data) else { return checked }
            for i in 0..<Int(want.count) where Array(data[(i * 4096)..<((i + 1) * 4096)]) == page(id: want.id, address: want.address + UInt64(i) * 4096) {
                checked += 1
            }
        }
        let close = PageServerIOV(command: PageServerIOV.close, pages: 0, address: 0, id: 0)
        try close.bytes.withUnsafeBytes { try connection.write(all: $0, timeout: .seconds(10)) }
        var status = [UInt8](repeating: 1, count: 4)
        _ = try readAll(connection, &status)
        connection.close()
        return status == [0, 0, 0, 0] ? checked : -1
    }

    struct Outcome {
        var source: Result<Void, any Error>
        var destination: Result<Void, any Error>
        var checked: Int
        var log: ServerLog
    }

    /// Runs a push end to end; `daemonExit` stands for the check of the daemon's exit.
    static func run(daemonExit: @escaping @Sendable () throws -> Void) async throws -> Outcome {
        let directory = TempDir("ferry-page-push")
        defer { directory.cleanup() }
        let (a, b) = MemoryTransport.pair()
        let source = MigrationChannel(transport: a)
        let destination = MigrationChannel(transport: b)
        let token = Array("a-shared-secret-of-enough-length".utf8)
        async let s: Void = onThread { try source.handshake(role: .source, token: token) }
        async let d: Void = onThread { try destination.handshake(role: .destination, token: token) }
        _ = try await (s, d)

        let criuListener = try TCPListener(host: "127.0.0.1", port: 0)
        let daemonListener = try TCPListener(host: "127.0.0.1", port: 0)
        let log = ServerLog()
        Thread { if let connection = try? criuListener.accept(timeout: .seconds(10)) { servePages(connection, log: log) } }.start()
        let checked = Mutex(0)
        let daemonPort = daemonListener.address.port
        Thread {
            if let connection = try? TCPTransport.connect(host: "127.0.0.1", port: daemonPort, timeout: .seconds(10)) {
                let count = (try? fetchAll(connection)) ?? 0
                checked.withLock { $0 = count }
            }
        }.start()
        let criu = try TCPTransport.connect(host: "127.0.0.1", port: criuListener.address.port, timeout: .seconds(10))
        let daemon = try daemonListener.accept(timeout: .seconds(10))
        let push = SourcePagePush(criu: criu, channel: source, ranges: ranges)
        let store = try DestinationPageStore(daemon: daemon, channel: destination, directory: directory.path, daemonFinished: daemonExit)
        async let pushed = outcome { try await onThread { try push.run() } }
        async let stored = outcome { try await onThread { try store.run() } }
        let (sourceResult, destinationResult) = await (pushed, stored)
        criuListener.close()
        daemonListener.close()
        // Give the stand-ins a moment to record how their connections ended.
        for _ in 0..<200 where !log.lock.withLock({ log.closedProperly || log.garbage }) { usleep(10_000) }
        usleep(50_000)
        return Outcome(source: sourceResult, destination: destinationResult, checked: checked.withLock { $0 }, log: log)
    }

    @Test("every page arrives intact, in the daemon's order, and CRIU's page server is closed properly")
    func everyPage() async throws {
        let result = try await Self.run(daemonExit: {})
        #expect(throws: Never.self) { try result.source.get() }
        #expect(throws: Never.self) { try result.destination.get() }
        let total = Self.ranges.reduce(0) { $0 + Int($1.pages) } + 1
        #expect(result.checked == total, "pages the stand-in daemon found right")
        let (closed, garbage) = result.log.lock.withLock { (result.log.closedProperly, result.log.garbage) }
        #expect(closed, "CLOSE, then the end of the connection")
        #expect(!garbage)
    }

    @Test("a daemon that did not exit cleanly fails the push, and CRIU is told with a request it cannot parse")
    func daemonFailed() async throws {
        let result = try await Self.run(daemonExit: { throw CheckpointError(.restoreFailed, "criu lazy-pages failed (exit 1)") })
        #expect(throws: (any Error).self) { try result.source.get() }
        #expect(throws: (any Error).self) { try result.destination.get() }
        let (closed, garbage) = result.log.lock.withLock { (result.log.closedProperly, result.log.garbage) }
        #expect(garbage, "CRIU must fail, which keeps the tree")
        #expect(!closed)
    }
}

/// Runs blocking `body` on its own thread, off Swift concurrency's small pool.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

func outcome<T>(_ body: () async throws -> T) async -> Result<T, any Error> {
    do {
        return .success(try await body())
    } catch {
        return .failure(error)
    }
}
