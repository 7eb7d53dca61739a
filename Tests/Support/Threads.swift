import Dispatch
import FerrySystem
import Foundation

// Swift concurrency's cooperative pool has one thread per core (two on the CI machine).
// A test that blocks one of them (a socket read, a condition wait, poll) can starve every
// other test's continuation of a thread to resume on: work of milliseconds then waits
// tens of seconds, and `.timeLimit` cannot interrupt a blocked call. So blocking work in
// tests runs on threads of its own, through these helpers, and every wait has a bound
// that fails naming what it waited for.

/// A test's wait that ran out of time: says what was waited for, and for how long.
public struct TestTimeout: Error, CustomStringConvertible, Equatable {
    public let what: String
    public let limit: Duration

    public init(_ what: String, after limit: Duration) {
        self.what = what
        self.limit = limit
    }

    public var description: String { "timed out after \(limit) waiting for \(what)" }
}

/// The outcome of a body running on a thread of its own: set once, waited for with a bound.
public final class ThreadRun<Value: Sendable>: @unchecked Sendable {
    public let what: String
    private let condition = NSCondition()
    // Guarded by condition.
    private var result: Result<Value, any Error>?

    private init(_ what: String) { self.what = what }

    /// Starts `body` on a new thread; `what` names it in a timeout.
    public static func start(_ what: String, _ body: @escaping @Sendable () throws -> Value) -> ThreadRun {
        let run = ThreadRun(what)
        Thread { run.finish(Result { try body() }) }.start()
        return run
    }

    private func finish(_ outcome: Result<Value, any Error>) {
        condition.withLock {
            result = outcome
            condition.broadcast()
        }
    }

    /// Blocks the calling thread (never a pool thread: call it from a thread of its own)
    /// until the body has returned, for at most `timeout`; a `TestTimeout` naming the
    /// body after that.
    public func join(timeout: Duration = .seconds(120)) -> Result<Value, any Error> {
        let deadline = Date(timeIntervalSinceNow: timeout.seconds)
        condition.lock()
        defer { condition.unlock() }
        while result == nil && condition.wait(until: deadline) {}
        return result ?? .failure(TestTimeout(what, after: timeout))
    }
}

/// Runs the jobs of the tasks that prefer it on one thread of its own, so that a task
/// can block (a socket, a condition) without holding a thread of the cooperative pool,
/// while it stays the test's task: task-locals, and so the test an `#expect` belongs to,
/// go with it.
public final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    // Guarded by condition.
    private var jobs: [UnownedJob] = []
    private var threadRunning = false

    public init() {}

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.withLock {
            jobs.append(job)
            if !threadRunning {
                threadRunning = true
                Thread { [self] in drain() }.start()
            }
            condition.signal()
        }
    }

    /// Runs jobs until none has come for a second; a later job starts a new thread.
    private func drain() {
        while true {
            condition.lock()
            let deadline = Date(timeIntervalSinceNow: 1)
            while jobs.isEmpty && condition.wait(until: deadline) {}
            guard !jobs.isEmpty else {
                threadRunning = false
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}

/// Resumes a continuation once: with the body's result or with a timeout, whichever
/// comes first.
private final class ResumeOnce<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<Value, any Error>?

    init(_ continuation: CheckedContinuation<Value, any Error>) { self.continuation = continuation }

    func resume(with result: Result<Value, any Error>) {
        let pending = lock.withLock {
            defer { continuation = nil }
            return continuation
        }
        pending?.resume(with: result)
    }
}

/// Runs `body`, which may block, on a thread of its own (a `ThreadExecutor`) as a task
/// that keeps the test's context, and waits for it without holding a pool thread. After
/// `timeout` the wait fails with a `TestTimeout` naming `what` (a blocked thread cannot
/// be stopped, but the test no longer waits for it).
public func onThread<T: Sendable>(
    _ what: String = "the test's blocking work",
    timeout: Duration = .seconds(120),
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let task = Task(executorPreference: ThreadExecutor()) { try await body() }
    return try await withCheckedThrowingContinuation { continuation in
        let once = ResumeOnce(continuation)
        Task { once.resume(with: await task.result) }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout.seconds) {
            once.resume(with: .failure(TestTimeout(what, after: timeout)))
        }
    }
}

/// Runs both bodies at the same time, each on a thread of its own, and returns both
/// outcomes once both have returned (each waited for at most `timeout`). For the two
/// ends of one connection, which would deadlock if run one after the other.
public func bothSides<A: Sendable, B: Sendable>(
    timeout: Duration = .seconds(120),
    _ a: @escaping @Sendable () throws -> A,
    _ b: @escaping @Sendable () throws -> B
) async -> (Result<A, any Error>, Result<B, any Error>) {
    async let first = outcome { try await onThread("the first side", timeout: timeout, a) }
    async let second = outcome { try await onThread("the second side", timeout: timeout, b) }
    return await (first, second)
}

/// The outcome of `body` as a value, for checks that want the error itself.
public func outcome<T>(_ body: () async throws -> T) async -> Result<T, any Error> {
    do {
        return .success(try await body())
    } catch {
        return .failure(error)
    }
}
