import FerryCRIU
import FerryMigration
import FerryRuntime
import FerryStore
import FerrySystem
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// Post-copy (lazy) migration. The source dumps everything but anonymous memory, sends
/// it, and keeps the frozen tree's memory behind CRIU's page server; the destination
/// restores at once, and Ferry's LazyPagesServer fills the memory from what the source
/// pushes, asking first for pages that are touched. CRIU's page-server protocol has no
/// authentication, so its socket stays on 127.0.0.1 at the source and the bytes cross
/// between hosts through a second authenticated channel (PagePush.swift).
///
/// Exactly one copy runs: the destination restores frozen and says so; the source then
/// marks its copy as one that may never run again (it stays frozen while serving
/// memory); only then does the destination thaw. Until that mark any failure resumes
/// the source, and CRIU's page server is closed properly (which ends the tree) only
/// once the destination has answered the commit and has every page. After the mark the
/// container depends on the source until its memory has arrived: if the transfer
/// breaks, the source copy stays frozen rather than run twice.
extension Migrator {
    // MARK: Source

    func postCopy(_ session: SourceSession) throws -> MigrationReport {
        let (record, channel) = (session.record, session.channel)
        do {
            try HostProbe.ensurePipeMaxSizeForLazyDump()
        } catch {
            throw CheckpointError(
                .incompatible,
                "cannot migrate with lazy pages: CRIU keeps the memory in 4 MiB pipes and fs.pipe-max-size is lower: \(error); run: sysctl -w fs.pipe-max-size=\(HostProbe.lazyDumpPipeSize)"
            )
        }
        let port = try Self.freeLocalPort()
        let handoff = LazyHandoff()
        var options = CheckpointOptions()
        options.tcpEstablished = session.tcpEstablished
        options.lazy = LazyDump(port: port, imagesWritten: { handoff.imagesWritten($0) }, mayResume: { !handoff.committed })
        let freeze = FreezeMark()
        options.freezeMark = freeze
        let checkpointer = Checkpointer(runtime: runtime, logger: logger)
        session.progress("freezing and dumping (memory stays here)")
        let started = session.clock.now
        // Where the downtime goes, for the report: milliseconds since the freeze.
        var phases: [String: Double] = [:]
        func mark(_ phase: String) { phases[phase] = (session.clock.now - freeze.value(or: started)).milliseconds }
        let dumpOptions = options
        let dump = ThreadOutcome.start {
            defer { handoff.dumpEnded() }
            _ = try checkpointer.dump(record.id, options: dumpOptions) { _ in }
        }

        var bytesSent = session.bytesSent
        var push: ThreadOutcome<(bytes: Int64, arrived: ContinuousClock.Instant?)>?
        var pages: MigrationChannel?
        defer { pages?.close() }
        let control = PushControl()
        do {
            guard let dumped = handoff.waitForImages() else {
                throw dump.error ?? CheckpointError(.dumpFailed, "the dump ended early")
            }
            mark("imagesWritten")
            let captured = try Exporter(runtime: runtime, logger: logger).capture(dumped, ignoreVolumes: false)
            mark("rootfsCaptured")
            session.progress("sending the checkpoint without its memory")
            bytesSent += try sendCheckpoint(dumped, captured: captured, over: channel)
            mark("checkpointSent")
            // The destination's restore already touches memory (CRIU's restorer does):
            // the page server and the push must be up before it can finish.
            let opened = try Self.openChannel(to: session.address, token: session.token)
            pages = opened
            guard case .lazyPagesReady(let endpoint) = try channel.receive(expecting: .lazyPagesReady, timeout: .seconds(300)) else {
                throw CheckpointError(.restoreFailed, "the destination is not ready for pages")
            }
            mark("destinationImported")
            try opened.send(.lazyPagesReady(endpoint))
            let ranges = try CRIUImageSet.lazyRanges(directory: "\(runtime.containers.directory(record.id))/\(CheckpointMetadata.imagesDirectory)")
            handoff.decide(true)
            push = ThreadOutcome.start {
                let local = try Self.connectLocal(port: port)
                defer { local.close() }
                let pages = SourcePagePush(criu: local, channel: opened, ranges: ranges, background: false, closeAllowed: false)
                control.attach(pages)
                try pages.run()
                return (pages.bytesSent, pages.memoryArrived)
            }
            guard case .restored = try channel.receive(expecting: .restored, timeout: .seconds(300)) else {
                throw CheckpointError(.restoreFailed, "the destination did not restore the container")
            }
            control.open()
            mark("destinationRestored")
        } catch {
            try? channel.send(.abort(reason: "\(error)"))
            if handoff.decide(false) {
                // CRIU starts its page server even after a refused post-dump: one
                // connection that ends at once lets it finish and resume the tree.
                Self.poke(port: port)
            } else if pages != nil {
                // The push tells CRIU the transfer failed, which resumes the tree. It
                // must be told even when the destination has every page already: a
                // restore that failed after its memory had come would otherwise let
                // CRIU end the tree.
                control.abort(error)
                pages?.close()
                _ = push?.wait()
            }
            _ = dump.wait()
            throw CheckpointError(.restoreFailed, "cannot migrate container '\(record.name)'", cause: error, hint: "it keeps running here")
        }

        // The destination holds a frozen copy. From here on ours never runs again.
        handoff.commit()
        session.progress("letting the destination run it; memory follows")
        func brokeAfterTakeover(_ error: any Error) -> CheckpointError {
            CheckpointError(
                .restoreFailed, "migration of '\(record.name)' broke after the destination took over", cause: error,
                hint: "this copy stays frozen (remove it with ferry rm -f \(record.name) once the destination's copy runs)")
        }
        do {
            try channel.send(.commit)
        } catch {
            // The push must not close CRIU's page server properly now (that would end
            // the tree); a failed one keeps it, frozen.
            control.abort(error)
            pages?.close()
            _ = dump.wait()
            throw brokeAfterTakeover(error)
        }
        // The destination says `done` on the page channel only once the container runs
        // there with all its memory, so CRIU may end the frozen tree when it comes. The
        // answer on the control channel is then only news: when it is lost the page
        // channel still settles the migration, and until it does this copy stays whole.
        control.commit()
        var warnings: [String] = []
        var answered = true
        do {
            _ = try channel.receive(expecting: .committed, timeout: .seconds(60))
        } catch {
            answered = false
            warnings.append("the destination's answer to the commit was lost (\(error)); its page channel confirmed that the container runs there")
            session.progress("the destination's answer to the commit was lost; waiting for its page channel")
        }
        let downtime = session.clock.now - freeze.value(or: started)

        // The source is needed until every page has arrived.
        let pushed = push?.wait() ?? .failure(CheckpointError(.restoreFailed, "the page push never started"))
        _ = dump.wait()
        // The pagemaps mark the pages left out of the images: those the destination
        // received from the push.
        let images = "\(runtime.containers.directory(record.id))/\(CheckpointMetadata.imagesDirectory)"
        let lazyPages = (try? CRIUImageSet(directory: images)).map { Int64($0.memory.processPages.lazy + $0.memory.sharedPages.lazy) }
        let pushFailure: (any Error)? = if case .failure(let error) = pushed { error } else { nil }
        if !answered, let error = dump.error ?? pushFailure {
            // Neither channel says what became of the destination's copy.
            throw brokeAfterTakeover(error)
        }
        if let error = dump.error {
            throw CheckpointError(.restoreFailed, "the memory of '\(record.name)' did not all reach the destination", cause: error)
        }
        if let error = pushFailure {
            throw CheckpointError(.restoreFailed, "the memory of '\(record.name)' did not all reach the destination", cause: error)
        }
        if answered { _ = try? channel.receive(expecting: .done, timeout: .seconds(60)) }
        if session.tcpEstablished {
            // CRIU ended the tree with its connections still locked: drop rules that the
            // destination's restore removes only when it shares this network namespace.
            // For a container with a network namespace of its own, the rules went with it.
            Checkpointer(runtime: runtime, logger: logger).forgetLockedConnections(imagesDirectory: images, log: logger)
        }
        try? runtime.remove(record.id, force: true)
        session.progress("every page has arrived; the source is free")
        if case .success(let outcome) = pushed {
            bytesSent += outcome.bytes
            if let arrived = outcome.arrived { phases["memoryArrived"] = (arrived - freeze.value(or: started)).milliseconds }
        }
        return MigrationReport(
            mode: MigrationMode.lazy.displayName, downtimeMs: downtime.milliseconds, totalMs: (session.clock.now - session.start).milliseconds,
            bytesSent: bytesSent, pagesTransferredLazily: lazyPages, destination: "", container: record.name,
            phasesMs: phases, warnings: warnings.isEmpty ? nil : warnings
        )
    }

    /// A free TCP port on 127.0.0.1 for CRIU's page server (CRIU binds it itself).
    static func freeLocalPort() throws -> UInt16 {
        let listener = try TCPListener(host: CRIUSession.pageServerAddress, port: 0)
        defer { listener.close() }
        return listener.address.port
    }

    /// Connects to CRIU's page server, which starts listening only once the images are
    /// written and the post-dump answer is in.
    static func connectLocal(port: UInt16) throws -> TCPTransport {
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            do {
                return try TCPTransport.connect(host: CRIUSession.pageServerAddress, port: port, timeout: .seconds(5))
            } catch {
                if ContinuousClock.now > deadline { throw error }
                usleep(2_000)
            }
        }
    }

    static func poke(port: UInt16) {
        (try? connectLocal(port: port))?.close()
    }

    /// To CRIU's page server a closed connection means "every page fetched", after which
    /// it ends the tree. A request it cannot parse makes it fail instead, which keeps the
    /// tree (frozen by Ferry).
    @Sendable static func failPageServer(_ local: any MigrationTransport) {
        let garbage = [UInt8](repeating: 0xFF, count: 24)
        garbage.withUnsafeBytes { try? local.write(all: $0, timeout: .seconds(5)) }
    }

    // MARK: Destination

    /// After the import: listens for the restore's userfaultfds (LazyPagesServer, in place
    /// of `criu lazy-pages`) in the container's directory. The page channel, which the
    /// source opens once the checkpoint is sent, is joined to it by `receivePages`.
    func prepareLazyRestore(_ record: ContainerRecord, registry: PageChannels) throws -> LazyRestore {
        let directory = runtime.containers.directory(record.id)
        let missing = try CRIUImageSet.lazyRuns(directory: "\(directory)/\(CheckpointMetadata.imagesDirectory)")
        let restore = LazyRestore(
            id: String(ContainerStore.newID().prefix(24)), server: try LazyPagesServer(workDirectory: directory, missing: missing), takeover: Takeover())
        registry.add(restore)
        return restore
    }

    /// A page channel from the source: copies what it brings into the restored
    /// processes, asks for what they touch first, and says `done` once all is there.
    func receivePages(_ channel: MigrationChannel, endpoint: LazyPagesEndpoint, registry: PageChannels) {
        guard let id = endpoint.details["pages"], let restore = registry.take(id) else {
            try? channel.send(.abort(reason: "no migration here is waiting for pages"))
            return
        }
        let server = restore.server
        do {
            let received = try Self.receivePages(from: channel, into: server, takeover: restore.takeover)
            FileHandle.standardError.write(
                Data(
                    "ferry serve: memory of migration \(id) complete: \(received >> 20) MiB received, \(server.bytesCopied >> 20) MiB copied in, \(server.forksFollowed) forks followed\n"
                        .utf8))
        } catch {
            FileHandle.standardError.write(Data("ferry serve: page transfer from \(channel.peerName) failed: \(error)\n".utf8))
        }
    }

    /// The destination's end of a page channel: copies the pages the source pushes into
    /// the restored processes, sends their faults ahead as `pageRequest`s, says `done`
    /// once every process has its memory and the container runs here, and returns at the
    /// source's `done` (it has ended CRIU's page server). Returns the bytes received. On
    /// failure the server fails too (its waiters learn the memory will not come) and the
    /// channel closes.
    ///
    /// `done` is the source's licence to end its frozen tree, so it waits for the
    /// takeover: a copy here that was removed before it ran (the commit never came) must
    /// never let the source end its own, even when all the memory had arrived.
    static func receivePages(from channel: MigrationChannel, into server: LazyPagesServer, takeover: Takeover) throws -> Int64 {
        server.attach { processID, address, pages in
            try? channel.send(.pageRequest(PageRange(id: processID, address: address, count: pages)))
        }
        let finished = ThreadOutcome.start {
            do {
                try server.wait()
                try takeover.wait(timeout: .seconds(300))
                try channel.send(.done)
            } catch {
                // The main loop may be waiting for the source, which waits for `done`:
                // the abort and the closed channel end both.
                try? channel.send(.abort(reason: "\(error)"))
                channel.close()
                throw error
            }
        }
        // A transfer that stops moving says what it waits for.
        Thread {
            var last: Int64 = -1
            while finished.wait(timeout: 10) == nil {
                let copied = server.bytesCopied
                if copied == last {
                    FileHandle.standardError.write(
                        Data("ferry serve: the page transfer from \(channel.peerName) has not moved for 10 s: \(server.pendingDescription)\n".utf8))
                }
                last = copied
            }
        }.start()
        do {
            var received: Int64 = 0
            var failure: CRIUError?
            while true {
                let message: MigrationMessage? = try channel.receive(timeout: .seconds(600)) { range, bytes in
                    guard failure == nil else { return }
                    received += Int64(bytes.count)
                    do throws(CRIUError) {
                        try server.deliver(id: range.id, imageAddress: range.address, bytes: bytes)
                    } catch {
                        failure = error
                    }
                }
                if let failure { throw failure }
                switch message {
                case nil:
                    continue
                case .done:
                    try finished.wait().get()
                    return received
                case .abort(let reason), .error(let reason):
                    throw CheckpointError(.restoreFailed, "the source stopped the page transfer: \(reason)")
                case let other?:
                    throw CheckpointError(.restoreFailed, "unexpected \(other.kind) on the page channel")
                }
            }
        } catch {
            server.fail(CRIUError(.communicationFailed, "the page transfer from \(channel.peerName) failed", cause: error))
            try? channel.send(.abort(reason: "\(error)"))
            channel.close()
            _ = finished.wait()
            throw error
        }
    }
}

/// A lazy restore on the destination: the server that fills the memory of its restored
/// processes, and whether the container has been let run here.
struct LazyRestore: Sendable {
    let id: String
    let server: LazyPagesServer
    let takeover: Takeover
}

/// Whether a lazily restored container runs here: set once by the control channel (the
/// thaw after `commit`, or the removal of a copy that was never committed), waited for
/// by the page channel before it says `done`.
final class Takeover: @unchecked Sendable {
    private let condition = NSCondition()
    private var outcome: Bool?

    func ran() { settle(true) }
    func abandon() { settle(false) }

    private func settle(_ value: Bool) {
        condition.withLock {
            if outcome == nil { outcome = value }
            condition.broadcast()
        }
    }

    /// Returns once the container runs here; throws if it was removed instead, or if
    /// neither happened within `timeout`.
    func wait(timeout: Duration) throws(CheckpointError) {
        let deadline = Date().addingTimeInterval(Double(timeout.components.seconds))
        let settled: Bool? = condition.withLock {
            while outcome == nil, condition.wait(until: deadline) {}
            return outcome
        }
        switch settled {
        case true?: return
        case false?: throw CheckpointError(.restoreFailed, "the copy here was removed before it ran (the source never committed)")
        case nil: throw CheckpointError(.restoreFailed, "the source did not commit within \(timeout)")
        }
    }
}

/// The page channels a `ferry serve` waits for: migration id -> its lazy restore.
final class PageChannels: @unchecked Sendable {
    private let lock = NSLock()
    private var waiting: [String: LazyRestore] = [:]

    func add(_ restore: LazyRestore) {
        lock.withLock { waiting[restore.id] = restore }
    }

    func take(_ id: String) -> LazyRestore? {
        lock.withLock { waiting.removeValue(forKey: id) }
    }

    /// Forgets a migration that ended without its page channel.
    func discard(_ id: String) {
        _ = take(id)
    }

    /// Runs `expired` if no page channel has claimed `id` within `timeout`: the restore
    /// waits on memory that only the page channel brings, so a source that never opens it
    /// must not leave the restore hanging.
    func expire(_ id: String, after timeout: Duration, _ expired: @escaping @Sendable () -> Void) {
        let deadline = ContinuousClock.now + timeout
        Thread { [self] in
            while ContinuousClock.now < deadline {
                if lock.withLock({ waiting[id] == nil }) { return }
                usleep(100_000)
            }
            if take(id) != nil { expired() }
        }.start()
    }
}

/// What the migration tells the page push, whether the push has been set up by then or
/// not: start the background push (the destination has restored), allow CRIU's page
/// server to be closed properly (the destination has taken over), or abort.
final class PushControl: @unchecked Sendable {
    private let lock = NSLock()
    private var push: SourcePagePush?
    private var isOpen = false
    private var isCommitted = false
    private var failure: (any Error)?

    func attach(_ push: SourcePagePush) {
        let (open, committed, failure) = lock.withLock {
            self.push = push
            return (isOpen, isCommitted, self.failure)
        }
        if let failure { push.abort(failure) }
        if open { push.startBackground() }
        if committed { push.allowClose() }
    }

    func open() {
        lock.withLock { isOpen = true }
        withPush { $0.startBackground() }
    }

    func commit() {
        lock.withLock { isCommitted = true }
        withPush { $0.allowClose() }
    }

    func abort(_ error: any Error) {
        lock.withLock { if failure == nil { failure = error } }
        withPush { $0.abort(error) }
    }

    private func withPush(_ body: (SourcePagePush) -> Void) {
        if let push = lock.withLock({ push }) { body(push) }
    }
}

/// The meeting point of the dump thread (inside CRIU's post-dump notification) and the
/// migration: the images are written, then the migration decides whether CRIU goes on to
/// serve memory, and later marks the point after which the source may never run again.
final class LazyHandoff: @unchecked Sendable {
    private let condition = NSCondition()
    private var written: ContainerRecord?
    private var ended = false
    private var decision: Bool?
    private var isCommitted = false

    /// Called by CRIU's post-dump notification: waits for the migration's decision.
    func imagesWritten(_ record: ContainerRecord) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        written = record
        condition.broadcast()
        while decision == nil { condition.wait() }
        return decision ?? false
    }

    func dumpEnded() {
        condition.lock()
        ended = true
        condition.broadcast()
        condition.unlock()
    }

    /// The container once its images are written; nil when the dump ended first.
    func waitForImages() -> ContainerRecord? {
        condition.lock()
        defer { condition.unlock() }
        while written == nil && !ended { condition.wait() }
        return written
    }

    /// Answers the post-dump notification; returns whether it was waiting for one.
    @discardableResult
    func decide(_ proceed: Bool) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let waiting = written != nil && decision == nil
        if decision == nil { decision = proceed }
        condition.broadcast()
        return waiting
    }

    func commit() {
        condition.lock()
        isCommitted = true
        condition.unlock()
    }

    var committed: Bool {
        condition.lock()
        defer { condition.unlock() }
        return isCommitted
    }
}
