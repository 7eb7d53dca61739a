import FerrySystem
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Ferry's own lazy-pages daemon, in place of `criu lazy-pages`.
///
/// `criu restore --lazy-pages` connects to lazy-pages.socket in its work directory and
/// sends, for each restored process, its pid as a 32-bit integer and then its
/// userfaultfd (one byte with SCM_RIGHTS); a zombie sends its negated pid alone; once the
/// restore is over it sends 0x52535446 ("RSTF") and closes (criu/uffd.c). From then on
/// the memory CRIU left out (the lazy runs of the pagemaps) is filled here: pages the
/// source pushes are copied into every process that still misses them straight from the
/// buffer they arrived in (`deliver`), and a thread that touches a missing page makes the
/// server ask the source for it first (`Request`).
///
/// Why not CRIU's daemon: it fetches one request at a time (64 KiB growing to 4 MiB) over
/// a socket, copies every page once more on the way, and polls without sleeping while it
/// waits, which on a small machine takes a core from the processes bringing the pages.
public final class LazyPagesServer: @unchecked Sendable {
    /// Asks the source for `pages` pages of process `id` at image address `address`.
    public typealias Request = @Sendable (_ id: UInt64, _ address: UInt64, _ pages: UInt32) -> Void

    public static let socketName = "lazy-pages.socket"
    static let restoreFinished: UInt32 = 0x5253_5446
    /// At a fault: the faulting page and the rest of its run, up to this many pages.
    static let pagesPerFault: UInt64 = 16
    /// The most pages one request for a refetch asks for.
    static let pagesPerRefetch: UInt64 = 1024
    static let pageSize = UInt64(CRIUImageSet.pageSize)
    /// Attempts to copy the same pages in, at most.
    static let maximumRefetches = 16
    /// Milliseconds one copy waits, at most, for a fork or remap to be done.
    static let maximumWaits = 500

    private final class Process {
        let id: UInt64
        let fault: Userfault
        var missing: LazyRuns
        /// Runs being copied right now, by ticket; they move with remaps and shrink
        /// with unmaps like `missing` does.
        var copying: [Int: LazyRuns] = [:]
        /// Image pages already asked for after a fault.
        var requested: Set<UInt64> = []
        /// How often each image address had to be fetched again (a copy that could not
        /// be done); bounded, so that a range that can never be filled fails the
        /// migration instead of looping.
        var refetches: [UInt64: Int] = [:]
        var exited = false

        init(id: UInt64, fault: Userfault, missing: LazyRuns) {
            self.id = id
            self.fault = fault
            self.missing = missing
        }

        var complete: Bool { exited || (missing.isEmpty && copying.isEmpty) }

        func beingCopied(_ address: UInt64) -> Bool {
            copying.values.contains { $0.run(containing: address) != nil }
        }
    }

    private let listener: UnixListener
    private let wake: OwnedPipe
    private let condition = NSCondition()
    // Guarded by condition.
    private var template: [UInt64: LazyRuns]
    private var processes: [Process] = []
    private var restoreDone = false
    private var failure: CRIUError?
    private var stopping = false
    private var loopEnded = false
    private var requester: Request?
    private var queued: [(UInt64, UInt64, UInt32)] = []
    private var nextTicket = 0
    private var copied: Int64 = 0
    private var forks = 0

    /// Listens on `workDirectory`/lazy-pages.socket for the restore, for the memory
    /// `missing` describes (per process id in the images; see `CRIUImageSet.lazyRuns`).
    public init(workDirectory: String, missing: [UInt64: LazyRuns]) throws(CRIUError) {
        do {
            listener = try UnixListener(directory: workDirectory, name: Self.socketName)
            wake = try OwnedPipe()
        } catch {
            throw CRIUError(.connectionFailed, "cannot listen for the lazy restore", cause: error)
        }
        template = missing
        Thread { [self] in run() }.start()
    }

    /// Bytes copied into the restored processes so far.
    public var bytesCopied: Int64 { condition.withLock { copied } }

    /// Processes that forked while their memory was still being filled.
    public var forksFollowed: Int { condition.withLock { forks } }

    /// From here on, requests go to `request`; those made before are sent now.
    public func attach(_ request: @escaping Request) {
        let pending = condition.withLock {
            requester = request
            defer { queued = [] }
            return queued
        }
        for (id, address, pages) in pending { request(id, address, pages) }
    }

    /// Pages of process `id` from image address `imageAddress`: copied into every
    /// process that still misses them. Waits until the restore has registered that
    /// process (pages can arrive before it does). Once every process has all its memory,
    /// pages are dropped.
    /// A restore that has not registered the process within `registrationLimit` fails
    /// the delivery (CRIU's restore registers each process as it creates it).
    public func deliver(
        id: UInt64, imageAddress: UInt64, bytes: UnsafeRawBufferPointer, registrationLimit: Duration = .seconds(120)
    ) throws(CRIUError) {
        let deadline = Date(timeIntervalSinceNow: registrationLimit.seconds)
        condition.lock()
        while !processes.contains(where: { $0.id == id }) && !restoreDone && failure == nil && !stopping {
            guard condition.wait(until: deadline) else {
                condition.unlock()
                throw CRIUError(
                    .communicationFailed, "the lazy restore did not register process \(id) within \(registrationLimit) (\(processes.count) registered)")
            }
        }
        if let failure {
            condition.unlock()
            throw failure
        }
        if completeLocked {
            // Every process has all its memory: pages still on their way (pushed before
            // the source heard so, or asked for twice) are not needed, even once the
            // server has been stopped. Failing them would fail a migration that is done.
            condition.unlock()
            return
        }
        if stopping {
            condition.unlock()
            throw CRIUError(.communicationFailed, "the lazy restore was stopped")
        }
        var work: [(process: Process, ticket: Int, piece: LazyRuns.Piece)] = []
        for process in processes where process.id == id && !process.exited {
            for piece in process.missing.take(imageStart: imageAddress, length: bytes.count) {
                let ticket = nextTicket
                nextTicket += 1
                let image = imageAddress + UInt64(piece.offset)
                process.copying[ticket] = LazyRuns(runs: [.init(start: piece.destination, end: piece.destination + UInt64(piece.length), imageStart: image)])
                work.append((process, ticket, piece))
            }
        }
        condition.unlock()
        for item in work {
            copy(into: item.process, ticket: item.ticket, piece: item.piece, from: bytes, imageAddress: imageAddress + UInt64(item.piece.offset))
        }
        condition.withLock { condition.broadcast() }
    }

    /// Waits until every restored process has all its memory (or has exited). The wait
    /// is bounded by progress, not by size: it fails once nothing has moved (no process
    /// registered, no byte copied, the restore not finished) for `stallLimit`, saying what
    /// is still missing.
    public func wait(stallLimit: Duration = .seconds(300)) throws(CRIUError) {
        condition.lock()
        defer { condition.unlock() }
        var progress = progressLocked
        var deadline = Date(timeIntervalSinceNow: stallLimit.seconds)
        while !completeLocked && failure == nil && !stopping {
            if condition.wait(until: deadline) { continue }
            let now = progressLocked
            guard now != progress else {
                throw CRIUError(.communicationFailed, "the lazy restore's memory has not moved for \(stallLimit): \(pendingDescriptionLocked)")
            }
            progress = now
            deadline = Date(timeIntervalSinceNow: stallLimit.seconds)
        }
        if let failure { throw failure }
        if !completeLocked { throw CRIUError(.communicationFailed, "the lazy restore was stopped before its memory arrived") }
    }

    /// What is still missing, for a log line when the transfer stalls.
    public var pendingDescription: String { condition.withLock { pendingDescriptionLocked } }

    private var pendingDescriptionLocked: String {
        var parts: [String] = []
        if !restoreDone { parts.append("the restore has not finished (\(processes.count) processes registered)") }
        for process in processes where !process.complete {
            parts.append(
                "process \(process.id): \(process.missing.bytes / Self.pageSize) pages missing in \(process.missing.runs.count) runs, \(process.copying.count) copies under way, \(process.requested.count) pages asked for"
            )
        }
        if let failure { parts.append("failed: \(failure)") }
        return parts.isEmpty ? "nothing missing" : parts.joined(separator: "; ")
    }

    /// What changes whenever the restore moves on: registrations, its end, copied bytes.
    private var progressLocked: [Int64] { [Int64(processes.count), restoreDone ? 1 : 0, copied] }

    /// Whether every page has arrived.
    public var complete: Bool { condition.withLock { completeLocked } }

    /// Gives up: wakes every waiter with an error, and ends the event thread. The
    /// userfaultfds close when the server goes: a process still missing memory must be
    /// ended before, or its missing pages read as zeros.
    public func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
        var byte: UInt8 = 1
        _ = withUnsafeBytes(of: &byte) { Glibc.write(wake.writeEnd.raw, $0.baseAddress, 1) }
        // The event thread ends at its next poll; a copy it is in the middle of is bounded.
        let deadline = Date(timeIntervalSinceNow: 30)
        condition.lock()
        while !loopEnded && condition.wait(until: deadline) {}
        condition.unlock()
    }

    /// Records the first failure and wakes every waiter.
    public func fail(_ error: CRIUError) {
        condition.lock()
        if failure == nil { failure = error }
        condition.broadcast()
        condition.unlock()
    }

    private var completeLocked: Bool {
        restoreDone && processes.allSatisfy(\.complete)
    }

    // MARK: Copying

    private func copy(into process: Process, ticket: Int, piece: LazyRuns.Piece, from bytes: UnsafeRawBufferPointer, imageAddress: UInt64) {
        var done = 0
        var waits = 0
        while done < piece.length {
            let source = UnsafeRawBufferPointer(rebasing: bytes[(piece.offset + done)..<(piece.offset + piece.length)])
            do throws(Userfault.PartialCopy) {
                try process.fault.copy(to: piece.destination + UInt64(done), from: source)
                done = piece.length
            } catch {
                done += error.copied
                switch error.errno {
                case .fileExists:
                    // The page is there already (a fork's child has its parent's pages).
                    done += Int(Self.pageSize)
                case .noSuchProcess, .noSpace:
                    markExited(process)
                    return
                case .resourceTemporarilyUnavailable where waits < Self.maximumWaits:
                    // The process is forking, remapping or unmapping, and the event
                    // thread has not read that event yet: try again in a moment.
                    waits += 1
                    usleep(1_000)
                case .resourceTemporarilyUnavailable, .noSuchFileOrDirectory:
                    // The mapping is gone or keeps changing: the rest goes back to
                    // missing and is fetched again (an unmap event drops it instead).
                    refetch(process, ticket: ticket, copiedUpTo: imageAddress + UInt64(done), after: error.errno)
                    return
                default:
                    fail(CRIUError(.communicationFailed, "cannot fill the memory of restored process \(process.id): UFFDIO_COPY", cause: error.errno))
                    return
                }
            }
        }
        condition.withLock {
            process.copying[ticket] = nil
            copied += Int64(piece.length)
        }
    }

    private func refetch(_ process: Process, ticket: Int, copiedUpTo: UInt64, after errno: Errno) {
        let requests: [(UInt64, UInt64, UInt32)]? = condition.withLock {
            guard var rest = process.copying.removeValue(forKey: ticket) else { return [] }
            // Drop what was copied: image addresses below `copiedUpTo`.
            if let first = rest.runs.map(\.imageStart).min(), first < copiedUpTo {
                _ = rest.take(imageStart: first, length: Int(copiedUpTo - first))
            }
            for run in rest.runs {
                process.refetches[run.imageStart, default: 0] += 1
                if process.refetches[run.imageStart, default: 0] > Self.maximumRefetches { return nil }
            }
            process.missing.insert(rest.runs)
            return Self.requests(for: rest.runs, id: process.id)
        }
        guard let requests else {
            fail(
                CRIUError(
                    .communicationFailed,
                    "cannot fill the memory of restored process \(process.id): its pages could not be copied in after \(Self.maximumRefetches) attempts (UFFDIO_COPY: \(errno))"
                ))
            return
        }
        send(requests)
    }

    private func markExited(_ process: Process) {
        condition.withLock {
            process.exited = true
            process.missing = LazyRuns()
            process.copying = [:]
            condition.broadcast()
        }
    }

    private static func requests(for runs: [LazyRuns.Run], id: UInt64) -> [(UInt64, UInt64, UInt32)] {
        var result: [(UInt64, UInt64, UInt32)] = []
        for run in runs {
            var at = run.imageStart
            while at < run.imageEnd {
                let pages = min((run.imageEnd - at) / pageSize, pagesPerRefetch)
                result.append((id, at, UInt32(pages)))
                at += pages * pageSize
            }
        }
        return result
    }

    private func send(_ requests: [(UInt64, UInt64, UInt32)]) {
        guard !requests.isEmpty else { return }
        let target: Request? = condition.withLock {
            if requester == nil { queued += requests }
            return requester
        }
        if let target {
            for (id, address, pages) in requests { target(id, address, pages) }
        }
    }

    // MARK: The event thread

    /// Accepts the restore's connection, takes its userfaultfds, and answers their
    /// events, until stopped.
    private func run() {
        var client: OwnedFD?
        var listening = true
        defer {
            condition.lock()
            loopEnded = true
            condition.broadcast()
            condition.unlock()
        }
        while true {
            let watched: [Process] = condition.withLock { processes.filter { !$0.exited } }
            var fds = [pollfd(fd: wake.readEnd.raw, events: Int16(POLLIN), revents: 0)]
            let control: Int32 = client?.raw ?? (listening ? listener.descriptor.raw : -1)
            fds.append(pollfd(fd: control, events: Int16(POLLIN), revents: 0))
            fds += watched.map { pollfd(fd: $0.fault.descriptor.raw, events: Int16(POLLIN), revents: 0) }
            let ready = fds.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), -1) }
            if ready < 0 {
                if errno == EINTR { continue }
                fail(CRIUError(.communicationFailed, "poll: \(Errno(rawValue: errno))"))
                return
            }
            if condition.withLock({ stopping }) { return }
            if fds[1].revents != 0 {
                if client == nil {
                    do {
                        client = try listener.accept()
                    } catch {
                        fail(CRIUError(.connectionFailed, "cannot accept the lazy restore on \(listener.path)", cause: error))
                        return
                    }
                } else if let connection = client.take() {
                    switch readControl(connection) {
                    case .keep: client = consume connection
                    case .closed: listening = false
                    case .failed: return
                    }
                }
            }
            for (index, process) in watched.enumerated() where fds[index + 2].revents != 0 {
                guard handleEvents(of: process) else { return }
            }
        }
    }

    private enum ControlResult { case keep, closed, failed }

    /// One message from the restore: a pid and its userfaultfd, a zombie, or the end.
    private func readControl(_ connection: borrowing OwnedFD) -> ControlResult {
        var value: Int32 = 0
        let got = withUnsafeMutableBytes(of: &value) { raw in Glibc.recv(connection.raw, raw.baseAddress, 4, Int32(MSG_WAITALL)) }
        if got == 0 {
            let finished = condition.withLock { restoreDone }
            if finished { return .closed }
            fail(CRIUError(.communicationFailed, "the restore closed \(Self.socketName) before it finished"))
            return .failed
        }
        guard got == 4 else {
            fail(CRIUError(.communicationFailed, "cannot read from the restore on \(Self.socketName): \(got < 0 ? "\(Errno(rawValue: errno))" : "short read")"))
            return .failed
        }
        if UInt32(bitPattern: value) == Self.restoreFinished {
            condition.withLock {
                restoreDone = true
                condition.broadcast()
            }
            return .keep
        }
        // A zombie has no memory: its negated pid comes alone.
        guard value > 0 else { return .keep }
        let descriptor: OwnedFD
        do {
            guard let received = try connection.receiveDescriptor() else {
                fail(CRIUError(.communicationFailed, "the restore closed \(Self.socketName) before sending the userfaultfd of \(value)"))
                return .failed
            }
            descriptor = received
        } catch {
            fail(CRIUError(.communicationFailed, "cannot receive the userfaultfd of \(value)", cause: error))
            return .failed
        }
        let id = UInt64(value)
        let fault = Userfault(adopting: descriptor)
        condition.withLock {
            processes.append(Process(id: id, fault: fault, missing: template[id] ?? LazyRuns()))
            condition.broadcast()
        }
        return .keep
    }

    /// Answers every pending event of one process; false after a fatal error.
    private func handleEvents(of process: Process) -> Bool {
        while true {
            let event: Userfault.Event?
            do {
                event = try process.fault.readEvent()
            } catch {
                fail(CRIUError(.communicationFailed, "cannot read the userfaultfd of restored process \(process.id)", cause: error))
                return false
            }
            guard let event else { return true }
            switch event {
            case .pageFault(let address):
                pageFault(process, at: address & ~(Self.pageSize - 1))
            case .fork(let raw):
                let child = Userfault(adopting: OwnedFD(adopting: raw))
                // The child has what its parent had at the fork; what the parent is
                // being copied right now the child must fetch again.
                let requests: [(UInt64, UInt64, UInt32)] = condition.withLock {
                    let inFlight = process.copying.values.flatMap(\.runs)
                    var missing = process.missing
                    missing.insert(inFlight)
                    processes.append(Process(id: process.id, fault: child, missing: missing))
                    forks += 1
                    return Self.requests(for: inFlight, id: process.id)
                }
                send(requests)
            case .remap(let from, let to, let length):
                condition.withLock {
                    process.missing.remap(from: from, to: to, length: length)
                    for key in process.copying.keys { process.copying[key]?.remap(from: from, to: to, length: length) }
                }
            case .remove(let start, let length), .unmap(let start, let length):
                if case .remove = event {
                    // The range reads as zeros now; it must not fault here any more.
                    try? process.fault.unregister(start: start, length: length)
                }
                condition.withLock {
                    process.missing.drop(start: start, length: length)
                    for key in process.copying.keys { process.copying[key]?.drop(start: start, length: length) }
                    condition.broadcast()
                }
            case .other:
                break
            }
        }
    }

    private func pageFault(_ process: Process, at page: UInt64) {
        enum Answer { case ask([(UInt64, UInt64, UInt32)]), wait, zero }
        let answer: Answer = condition.withLock {
            if let run = process.missing.run(containing: page) {
                let image = run.imageStart + (page - run.start)
                guard !process.requested.contains(image) else { return .wait }
                let pages = min(Self.pagesPerFault, (run.end - page) / Self.pageSize)
                for index in 0..<pages { process.requested.insert(image + index * Self.pageSize) }
                return .ask([(process.id, image, UInt32(pages))])
            }
            return process.beingCopied(page) ? .wait : .zero
        }
        switch answer {
        case .ask(let requests):
            send(requests)
        case .wait:
            // The copy under way wakes the thread.
            break
        case .zero:
            // Not memory CRIU left out (never touched before the dump), or already here.
            do {
                try process.fault.zeroPages(start: page, length: Self.pageSize)
            } catch .fileExists, .resourceTemporarilyUnavailable, .noSuchFileOrDirectory {
                try? process.fault.wake(start: page, length: Self.pageSize)
            } catch .noSuchProcess, .noSpace {
                markExited(process)
            } catch {
                fail(CRIUError(.communicationFailed, "cannot map a zero page in restored process \(process.id)", cause: error))
            }
        }
    }
}
