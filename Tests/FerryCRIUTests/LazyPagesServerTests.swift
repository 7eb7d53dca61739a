import FerryCRIU
import FerrySystem
import FerryTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

private let page: UInt64 = 4096
private let isRoot = getuid() == 0

@Suite("Missing memory of a lazy restore")
struct LazyRunsTests {
    typealias Run = LazyRuns.Run

    @Test("lazy runs are split where they cross from one mapping into the next")
    func splitAtMappings() {
        let lazy = [CRIULazyRange(id: 1, address: 0x10000, pages: 8)]
        let runs = LazyRuns(lazy: lazy, mappings: [0x14000..<0x20000, 0x8000..<0x14000])
        #expect(runs.runs == [Run(start: 0x10000, end: 0x14000, imageStart: 0x10000), Run(start: 0x14000, end: 0x18000, imageStart: 0x14000)])
        #expect(runs.bytes == 8 * page)
    }

    @Test("taking delivered pages leaves what is still missing, on both sides")
    func take() {
        var runs = LazyRuns(runs: [Run(start: 0x10000, end: 0x20000, imageStart: 0x10000)])
        let pieces = runs.take(imageStart: 0x14000, length: Int(2 * page))
        #expect(pieces == [LazyRuns.Piece(destination: 0x14000, offset: 0, length: Int(2 * page))])
        #expect(runs.runs == [Run(start: 0x10000, end: 0x14000, imageStart: 0x10000), Run(start: 0x16000, end: 0x20000, imageStart: 0x16000)])
        #expect(runs.run(containing: 0x15000) == nil)
        #expect(runs.run(containing: 0x16000)?.start == 0x16000)
        // A delivery that overlaps the missing part only partly.
        let more = runs.take(imageStart: 0xF000, length: Int(2 * page))
        #expect(more == [LazyRuns.Piece(destination: 0x10000, offset: Int(page), length: Int(page))])
        #expect(runs.run(containing: 0x10000) == nil)
    }

    @Test("after mremap the pages go to the new address; after munmap nowhere")
    func remapAndDrop() {
        var runs = LazyRuns(runs: [Run(start: 0x10000, end: 0x18000, imageStart: 0x10000)])
        runs.remap(from: 0x14000, to: 0x90000, length: 0x4000)
        #expect(runs.runs == [Run(start: 0x10000, end: 0x14000, imageStart: 0x10000), Run(start: 0x90000, end: 0x94000, imageStart: 0x14000)])
        #expect(runs.take(imageStart: 0x15000, length: Int(page)) == [LazyRuns.Piece(destination: 0x91000, offset: 0, length: Int(page))])
        runs.drop(start: 0x11000, length: 0x2000)
        #expect(
            runs.runs == [
                Run(start: 0x10000, end: 0x11000, imageStart: 0x10000), Run(start: 0x13000, end: 0x14000, imageStart: 0x13000),
                Run(start: 0x90000, end: 0x91000, imageStart: 0x14000), Run(start: 0x92000, end: 0x94000, imageStart: 0x16000),
            ])
        runs.insert([Run(start: 0x11000, end: 0x12000, imageStart: 0x11000)])
        #expect(runs.run(containing: 0x11000)?.imageStart == 0x11000)
        #expect(runs.bytes == 6 * page)
    }
}

/// Real userfaultfd: this process registers memory of its own and plays CRIU's restore
/// towards the server (pid and descriptor over lazy-pages.socket, then "finished").
@Suite("Ferry's lazy-pages server on a real userfaultfd", .serialized, .enabled(if: isRoot, "needs root (userfaultfd)"))
struct LazyPagesServerTests {
    final class Requests: @unchecked Sendable {
        let condition = NSCondition()
        var seen: [(UInt64, UInt64, UInt32)] = []

        func add(_ request: (UInt64, UInt64, UInt32)) {
            condition.withLock {
                seen.append(request)
                condition.broadcast()
            }
        }

        func waitForFirst(timeout: TimeInterval = 10) -> (UInt64, UInt64, UInt32)? {
            condition.lock()
            defer { condition.unlock() }
            let deadline = Date().addingTimeInterval(timeout)
            while seen.isEmpty && condition.wait(until: deadline) {}
            return seen.first
        }
    }

    static func actAsRestore(_ directory: String, id: Int32, fault: Userfault, finish: Bool) throws -> OwnedFD {
        try actAsLazyRestore(socket: "\(directory)/\(LazyPagesServer.socketName)", processes: [(id, fault)], finish: finish)
    }

    static func pattern(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: index &* 31 &+ 7) }

    @Test("a fault asks for its pages first; pushed pages fill the rest; untracked pages read as zeros")
    func faultPushAndZero() async throws {
        try await onThread("faultPushAndZero") {
            let dir = try TempDir("ferry-lazy")
            defer { dir.cleanup() }
            let pages = 64
            let size = (pages + 8) * Int(page)
            let memory = try #require(mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
            defer { munmap(memory, size) }
            let base = UInt64(UInt(bitPattern: memory))
            let fault = try Userfault.open()
            try fault.registerMissing(start: base, length: UInt64(size))
            // The images knew this memory at another address (as after an mremap).
            let imageBase: UInt64 = 0x7000_0000
            let server = try LazyPagesServer(
                workDirectory: dir.path, missing: [7: LazyRuns(runs: [.init(start: base, end: base + UInt64(pages) * page, imageStart: imageBase)])])
            defer { server.stop() }
            let requests = Requests()
            server.attach { requests.add(($0, $1, $2)) }
            let restore = try Self.actAsRestore(dir.path, id: 7, fault: fault, finish: true)

            var content = [UInt8](repeating: 0, count: pages * Int(page))
            for index in content.indices { content[index] = Self.pattern(index) }

            // A thread touches page 40 and waits in the kernel until it is there.
            let touched = UInt(bitPattern: memory) + 40 * UInt(page) + 5
            let readByte = ThreadRun.start("a read of the faulting page") { UnsafeRawPointer(bitPattern: touched)?.load(as: UInt8.self) ?? 0 }
            let request = try #require(requests.waitForFirst())
            #expect(request.0 == 7)
            #expect(request.1 == imageBase + 40 * page)
            #expect(request.2 == 16)
            try content.withUnsafeBytes { raw in
                let start = 40 * Int(page)
                try server.deliver(id: 7, imageAddress: imageBase + 40 * page, bytes: UnsafeRawBufferPointer(rebasing: raw[start..<(start + 16 * Int(page))]))
            }
            #expect(try readByte.join(timeout: .seconds(10)).get() == Self.pattern(40 * Int(page) + 5))
            #expect(!server.complete)

            // The push: everything, including what the fault brought already.
            try content.withUnsafeBytes { raw in
                try server.deliver(id: 7, imageAddress: imageBase, bytes: UnsafeRawBufferPointer(rebasing: raw[..<(32 * Int(page))]))
                try server.deliver(id: 7, imageAddress: imageBase + 32 * page, bytes: UnsafeRawBufferPointer(rebasing: raw[(32 * Int(page))...]))
            }
            try server.wait()
            #expect(server.bytesCopied == Int64(pages) * Int64(page))
            let filled = UnsafeRawBufferPointer(start: memory, count: pages * Int(page))
            #expect(filled.elementsEqual(content))
            // A page the images did not have (never touched before the dump) reads as zeros.
            let untracked = (UnsafeRawPointer(memory) + (pages + 3) * Int(page)).load(as: UInt8.self)
            #expect(untracked == 0)

            // Pages still on their way once the memory is complete (pushed before the
            // source heard so) are dropped, also after the server is stopped: the
            // migration is done, and failing them made the source report it lost.
            server.stop()
            #expect(throws: Never.self) {
                try content.withUnsafeBytes { raw in
                    try server.deliver(id: 7, imageAddress: imageBase, bytes: UnsafeRawBufferPointer(rebasing: raw[..<(16 * Int(page))]))
                }
            }
            #expect(server.bytesCopied == Int64(pages) * Int64(page))
            #expect(restore.raw >= 0)
        }
    }

    @Test("a stopped server whose memory is not complete refuses pages")
    func stoppedIncomplete() async throws {
        try await onThread("stoppedIncomplete") {
            let dir = try TempDir("ferry-lazy")
            defer { dir.cleanup() }
            let size = Int(page) * 4
            let memory = try #require(mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
            defer { munmap(memory, size) }
            let base = UInt64(UInt(bitPattern: memory))
            let fault = try Userfault.open()
            try fault.registerMissing(start: base, length: UInt64(size))
            let server = try LazyPagesServer(
                workDirectory: dir.path, missing: [5: LazyRuns(runs: [.init(start: base, end: base + 4 * page, imageStart: base)])])
            let restore = try Self.actAsRestore(dir.path, id: 5, fault: fault, finish: true)
            server.stop()
            let content = [UInt8](repeating: 9, count: Int(page))
            #expect(throws: CRIUError.self) {
                try content.withUnsafeBytes { try server.deliver(id: 5, imageAddress: base, bytes: $0) }
            }
            #expect(restore.raw >= 0)
        }
    }

    @Test("a restore that goes away before it finishes fails the wait")
    func restoreGoneEarly() async throws {
        try await onThread("restoreGoneEarly") {
            let dir = try TempDir("ferry-lazy")
            defer { dir.cleanup() }
            let memory = try #require(mmap(nil, Int(page) * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
            defer { munmap(memory, Int(page) * 4) }
            let fault = try Userfault.open()
            let base = UInt64(UInt(bitPattern: memory))
            let server = try LazyPagesServer(
                workDirectory: dir.path, missing: [3: LazyRuns(runs: [.init(start: base, end: base + 4 * page, imageStart: base)])])
            defer { server.stop() }
            do {
                let restore = try Self.actAsRestore(dir.path, id: 3, fault: fault, finish: false)
                _ = consume restore
            }
            #expect(throws: CRIUError.self) { try server.wait() }
        }
    }
}
