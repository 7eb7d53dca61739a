import FerryTestSupport
import Foundation
import Testing

@Suite("Blocking work in tests runs off the cooperative pool, with bounded waits")
struct ThreadsTests {
    /// A barrier that opens once `parties` threads wait at it, or fails after 10 s.
    final class Barrier: @unchecked Sendable {
        private let condition = NSCondition()
        private let parties: Int
        private var arrived = 0

        init(parties: Int) { self.parties = parties }

        func arriveAndWait() -> Bool {
            condition.lock()
            defer { condition.unlock() }
            arrived += 1
            condition.broadcast()
            let deadline = Date(timeIntervalSinceNow: 10)
            while arrived < parties && condition.wait(until: deadline) {}
            return arrived >= parties
        }
    }

    @Test("more blocking bodies than the pool has threads all run at once")
    func moreThanThePool() async throws {
        // On the pool (one thread per core) the first bodies would block every thread and
        // the rest would never start: the barrier would time out.
        let parties = ProcessInfo.processInfo.activeProcessorCount * 2 + 2
        let barrier = Barrier(parties: parties)
        let opened = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<parties {
                group.addTask { (try? await onThread("party \(index)") { barrier.arriveAndWait() }) ?? false }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(opened == [Bool](repeating: true, count: parties))
    }

    @Test("a body that does not return in time fails the wait, naming what it waited for")
    func timeout() async {
        let result = await outcome { try await onThread("a stuck read", timeout: .milliseconds(200)) { usleep(1_500_000) } }
        #expect(throws: TestTimeout("a stuck read", after: .milliseconds(200))) { try result.get() }
        #expect(TestTimeout("a stuck read", after: .milliseconds(200)).description == "timed out after 0.2 seconds waiting for a stuck read")
    }

    @Test("a thread's outcome: its value, its error, or a timeout naming it")
    func threadRun() throws {
        #expect(try ThreadRun.start("seven") { 7 }.join().get() == 7)
        struct Failure: Error, Equatable {}
        #expect(throws: Failure()) { try ThreadRun.start("a failure") { () throws -> Int in throw Failure() }.join().get() }
        let slow = ThreadRun.start("a slow body") { usleep(1_500_000) }
        #expect(throws: TestTimeout("a slow body", after: .milliseconds(100))) { try slow.join(timeout: .milliseconds(100)).get() }
    }

    @Test("both sides of a connection run at the same time")
    func bothSidesMeet() async throws {
        let barrier = Barrier(parties: 2)
        let (a, b) = await bothSides({ barrier.arriveAndWait() }, { barrier.arriveAndWait() })
        #expect(try a.get())
        #expect(try b.get())
    }
}
