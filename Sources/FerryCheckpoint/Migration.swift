import FerryArchive
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

extension MigrationMode {
    /// The spelling of `--mode`.
    public var displayName: String {
        switch self {
        case .stopCopy: "stop-copy"
        case .lazy: "lazy"
        case .preCopy: "pre-copy"
        }
    }
}

/// The result of a helper thread (the export writer, the receiver), waited for once.
final class WriterOutcome: @unchecked Sendable {
    private let condition = NSCondition()
    private var finished = false
    private(set) var error: (any Error)?

    func set(_ error: any Error) {
        condition.lock()
        self.error = error
        condition.unlock()
    }

    func done() {
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    func wait() {
        condition.lock()
        while !finished { condition.wait() }
        condition.unlock()
    }
}

/// What `ferry migrate --format json` prints.
public struct MigrationReport: Codable, Sendable {
    public var mode: String
    /// From the freeze on the source to the container running on the destination.
    public var downtime_ms: Double
    public var total_ms: Double
    public var bytes_sent: Int64
    /// Lazy mode only.
    public var pages_transferred_lazily: Int64?
    public var destination: String
    public var container: String
}

/// Moving a running container to another host (stop-and-copy), with exactly one copy
/// running at any time: the destination restores the container frozen and says so, the
/// source ends its copy for good, and only then does the destination thaw it. Until the
/// source ends its copy, any failure (refusal, lost connection, failed restore) thaws the
/// source, which runs on, and the destination removes what it made.
/// docs/migration-protocol.md describes the messages.
public struct Migrator: Sendable {
    let runtime: ContainerRuntime
    let logger: Logger

    public init(runtime: ContainerRuntime, logger: Logger) {
        self.runtime = runtime
        self.logger = logger
    }

    public static func readToken(_ path: String) throws -> [UInt8] {
        let bytes: [UInt8]
        do {
            bytes = try Files.read(path)
        } catch {
            throw CheckpointError(.invalidState, "cannot read the token file: \(error)")
        }
        // A trailing newline from `echo` is not part of the secret.
        var token = bytes
        while let last = token.last, last == 10 || last == 13 { token.removeLast() }
        return token
    }

    // MARK: Source

    public func migrate(
        _ nameOrID: String, to destination: String, token: [UInt8], mode: MigrationMode, tcpEstablished: Bool = false,
        progress: @escaping (String) -> Void = { _ in }
    ) throws -> MigrationReport {
        switch mode {
        case .stopCopy:
            break
        case .preCopy:
            // Iterative pre-dumps need the kernel to track dirty memory; without it CRIU's
            // pre-dump fails half-way and leaves its memfd mapped in the target, so it is
            // never attempted here.
            let tracking = (try? CRIUSession().features().memTrack) ?? false
            guard tracking else {
                throw CheckpointError(.incompatible, "cannot migrate with pre-copy: it needs memory dirty tracking (soft-dirty), which this kernel lacks (see ferry check); use --mode stop-copy")
            }
            throw CheckpointError(.incompatible, "cannot migrate with pre-copy: not implemented yet; use --mode stop-copy")
        case .lazy:
            throw CheckpointError(.incompatible, "cannot migrate with lazy pages: not implemented yet; use --mode stop-copy")
        }
        // A peer that goes away must be an error on a pipe or socket, not a signal.
        signal(SIGPIPE, SIG_IGN)
        let clock = ContinuousClock()
        let start = clock.now
        let record = try runtime.load(nameOrID)
        guard case .running = record.status else {
            throw CheckpointError(.invalidState, "cannot migrate container '\(record.name)': it is \(record.status.name), not running")
        }
        guard let digest = record.imageDigest else {
            throw CheckpointError(.incompatible, "cannot migrate container '\(record.name)': it runs from a bundle, not an image")
        }
        let address = try MigrationAddress(parsing: destination, defaultPort: MigrationProtocol.defaultPort)
        progress("connecting to \(destination)")
        let channel = MigrationChannel(transport: try TCPTransport.connect(to: address, timeout: .seconds(10)))
        defer { channel.close() }
        try channel.handshake(role: .source, token: token)

        let directory = runtime.containers.directory(record.id)
        let request = PreflightRequest(
            containerName: record.name, imageDigest: digest, imageReference: record.image,
            criuVersion: (try? CRIUSession().version()) ?? 0, kernelRelease: (try? HostProbe.kernelRelease()) ?? "",
            cpuFlags: CPUDescription.current().flags, neededBytes: try estimateBytes(record), mode: mode
        )
        try channel.send(.preflightRequest(request))
        guard case .preflightResponse(let answer) = try channel.receive(expecting: .preflightResponse) else {
            throw CheckpointError(.conflict, "cannot migrate: unexpected answer to the preflight")
        }
        guard answer.ok else {
            throw CheckpointError(.conflict, "cannot migrate container '\(record.name)' to \(destination): " + answer.reasons.joined(separator: "; "))
        }
        var bytesSent: Int64 = 0
        let work = "\(directory)/migrate-tmp"
        try Files.removeTree(work)
        try Files.createDirectory(work, mode: 0o700)
        defer { try? Files.removeTree(work) }
        if answer.needsImage {
            progress("sending base image \(record.image)")
            let tar = "\(work)/image.tar"
            _ = try RootfsDiff.create(upperDirectory: record.lowerDirectory, tarPath: tar)
            bytesSent += try channel.sendFile(name: "image.tar", path: tar).size
        }

        // From here the container is frozen: every failure must thaw it.
        progress("freezing and dumping")
        var options = CheckpointOptions()
        options.leaveRunning = true
        options.keepFrozen = true
        options.tcpEstablished = tcpEstablished
        let exporter = Exporter(runtime: runtime, logger: logger)
        var captured: Exporter.Captured?
        let frozenAt = clock.now
        let dumped = try Interruption.guarding {
            try Checkpointer(runtime: runtime, logger: logger).dump(record.id, options: options) { current in
                captured = try exporter.capture(current, ignoreVolumes: false)
            }
        }
        let cgroup = try runtime.cgroup(for: record.id)
        do {
            guard let captured else { throw CheckpointError(.dumpFailed, "nothing was captured") }
            let metadata = try CheckpointMetadata.load(from: directory)
            let members = try exporter.plan(dumped.record, metadata: metadata, captured: captured)
            progress("sending the checkpoint")
            // The archive never lands on disk: a writer thread streams it into a pipe and
            // the channel sends what comes out, as it comes.
            let pipe = try OwnedPipe()
            let readEnd = pipe.readEnd
            let writerFD = pipe.writeEnd.take()
            let outcome = WriterOutcome()
            let writer = Thread {
                do {
                    _ = try Exporter.write(members, with: try ExportWriter(streamingTo: OwnedFD(adopting: writerFD), compression: .none))
                } catch {
                    outcome.set(error)
                }
                outcome.done()
            }
            writer.start()
            let sent = Result { () throws(MigrationError) in try channel.sendStream(name: "export.tar", from: readEnd) }
            _ = consume readEnd
            outcome.wait()
            try? Files.removeTree(captured.directory)
            if let error = outcome.error { throw error }
            bytesSent += try sent.get().size
            guard case .restored = try channel.receive(expecting: .restored, timeout: .seconds(300)) else {
                throw CheckpointError(.restoreFailed, "the destination did not restore the container")
            }
        } catch {
            try? channel.send(.abort(reason: "\(error)"))
            try? cgroup.thaw()
            throw CheckpointError(.restoreFailed, "cannot migrate container '\(record.name)' to \(destination): \(error); it keeps running here")
        }

        // The destination holds a frozen copy: end ours for good, then let it run.
        progress("ending the source copy")
        try? runtime.remove(record.id, force: true)
        try? cgroup.thaw()
        try channel.send(.commit)
        _ = try channel.receive(expecting: .committed, timeout: .seconds(60))
        let now = clock.now
        return MigrationReport(
            mode: mode.displayName, downtime_ms: (now - frozenAt).milliseconds, total_ms: (now - start).milliseconds,
            bytes_sent: bytesSent, pages_transferred_lazily: nil, destination: destination, container: record.name
        )
    }

    /// What the destination needs: the memory the container uses plus its rootfs diff.
    func estimateBytes(_ record: ContainerRecord) throws -> Int64 {
        let cgroup = try runtime.cgroup(for: record.id)
        let memory = cgroup.paths.flatMap { ["\($0)/memory.usage_in_bytes", "\($0)/memory.current"] }
            .compactMap { try? Files.readString($0) }
            .compactMap { Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }.max() ?? 0
        return memory
    }

    // MARK: Destination

    /// The receiving agent: one thread per connection, each handling one migration.
    public func serve(listen: String, token: [UInt8]) throws -> Never {
        signal(SIGPIPE, SIG_IGN)
        let address = try MigrationAddress(parsing: listen, defaultPort: MigrationProtocol.defaultPort)
        let listener = try TCPListener(address: address)
        // Staging left by an agent that was killed mid-transfer: its migrations/ scratch
        // space, and container directories that never got a state.json (an import still
        // running would have touched its directory within the last minutes).
        try? Files.removeTree("\(runtime.root.path)/migrations")
        let containers = runtime.containers
        for id in (try? Files.listDirectory(containers.root.containersDirectory)) ?? [] where !Files.exists(containers.statePath(id)) {
            if let status = try? Files.status(containers.directory(id), followSymlinks: false),
               Double(status.modificationSeconds) < Date().timeIntervalSince1970 - 600 {
                try? Files.removeTree(containers.directory(id))
            }
        }
        logger.notice("listening on \(listener.address)")
        FileHandle.standardError.write(Data("ferry: serving migrations on \(listen) (root \(runtime.root.path))\n".utf8))
        while true {
            let transport: TCPTransport
            do {
                transport = try listener.accept()
            } catch {
                logger.error("accept: \(error)")
                continue
            }
            let server = self
            Thread.detachNewThread {
                server.receive(MigrationChannel(transport: transport), token: token)
            }
        }
    }

    /// One incoming migration. Everything it made is removed unless the source commits.
    func receive(_ channel: MigrationChannel, token: [UInt8]) {
        defer { channel.close() }
        let peer = channel.peerName
        do {
            try channel.handshake(role: .destination, token: token)
        } catch {
            FileHandle.standardError.write(Data("ferry serve: refused \(peer): \(error)\n".utf8))
            return
        }
        var created: ContainerRecord?
        let staging = "\(runtime.root.path)/migrations/\(ContainerStore.newID().prefix(16))"
        defer { try? Files.removeTree(staging) }
        do {
            guard case .preflightRequest(let request) = try channel.receive(expecting: .preflightRequest) else { return }
            let answer = preflight(request)
            try channel.send(.preflightResponse(answer))
            guard answer.ok else {
                FileHandle.standardError.write(Data("ferry serve: refused '\(request.containerName)' from \(peer): \(answer.reasons.joined(separator: "; "))\n".utf8))
                return
            }
            try Files.createDirectory(staging, mode: 0o700)
            if answer.needsImage {
                let tar = "\(staging)/image.tar"
                _ = try channel.receiveFile(expectedName: "image.tar", path: tar, limit: 64 << 30)
                let tree = "\(staging)/image"
                try Files.createDirectory(tree, mode: 0o755)
                let fd = try OwnedFD.open(tree, O_RDONLY | O_DIRECTORY)
                _ = try SafeTreeExtractor.extract(archive: tar, into: fd, policy: .rootfs)
                let record = try ImageStore(root: runtime.root.path).importImage(from: tree, as: try ImageReference(request.imageReference))
                guard record.digest == request.imageDigest else {
                    throw CheckpointError(.incompatible, "the image sent has digest \(record.digest), not \(request.imageDigest)")
                }
            }
            // The checkpoint streams from the channel through a pipe straight into the
            // importer, which stages and checks it as for any untrusted archive.
            let pipe = try OwnedPipe()
            let readEnd = pipe.readEnd
            let readerPath = "/proc/self/fd/\(readEnd.raw)"
            let writerFD = pipe.writeEnd.take()
            let limit = max(request.neededBytes * 4, 1 << 30)
            let outcome = WriterOutcome()
            let receiver = Thread {
                let fd = OwnedFD(adopting: writerFD)
                do {
                    _ = try channel.receiveFile(expectedName: "export.tar", into: fd, limit: limit)
                } catch {
                    outcome.set(error)
                }
                _ = consume fd
                outcome.done()
            }
            receiver.start()
            let imported = Result { try Importer(runtime: runtime, logger: logger).importArchive(ImportOptions(path: readerPath)) }
            _ = consume readEnd
            outcome.wait()
            if let error = outcome.error { throw error }
            let record = try imported.get()
            created = record
            try runtime.startDetached(id: record.id, removeOnFailure: true, restore: true, frozen: true)
            created = try? runtime.load(record.id)
            let pid: Int32 = if case .running(let state) = created?.status { state.pid } else { 0 }
            try channel.send(.restored(RestoredInfo(pid: pid)))
            _ = try channel.receive(expecting: .commit, timeout: .seconds(120))
            try runtime.cgroup(for: record.id).thaw()
            try channel.send(.committed)
            FileHandle.standardError.write(Data("ferry serve: received '\(record.name)' from \(peer); it runs here now\n".utf8))
            created = nil
        } catch {
            FileHandle.standardError.write(Data("ferry serve: migration from \(peer) failed: \(error)\n".utf8))
            try? channel.send(.abort(reason: "\(error)"))
        }
        if let created {
            // Not committed: the source runs on, so this copy must go.
            try? runtime.remove(created.id, force: true)
        }
    }

    func preflight(_ request: PreflightRequest) -> PreflightResponse {
        var reasons: [String] = []
        if (try? runtime.containers.resolve(request.containerName)) != nil {
            reasons.append("the container name '\(request.containerName)' is already in use on the destination")
        }
        if let version = try? CRIUSession().version() {
            if version < request.criuVersion / 100 * 100 {
                reasons.append("the destination's CRIU \(CRIUSession.formatVersion(version)) is older than the source's \(CRIUSession.formatVersion(request.criuVersion))")
            }
        } else {
            reasons.append("CRIU does not work on the destination (run ferry check there)")
        }
        let mine = Set(CPUDescription.current().flags)
        let missing = request.cpuFlags.filter { !mine.contains($0) }
        if !missing.isEmpty {
            reasons.append("the destination CPU lacks \(missing.prefix(8).joined(separator: ", "))")
        }
        if request.mode != .stopCopy {
            reasons.append("mode \(request.mode.rawValue) is not supported yet")
        }
        var st = statvfs()
        let free = statvfs(runtime.root.path, &st) == 0 ? Int64(st.f_bavail) * Int64(st.f_frsize) : 0
        if free < request.neededBytes * 2 {
            reasons.append("not enough free space on the destination (\(free) bytes free, about \(request.neededBytes * 2) needed)")
        }
        let hasImage = (try? ImageStore(root: runtime.root.path).resolve(request.imageDigest)) != nil
        return PreflightResponse(reasons: reasons, needsImage: !hasImage, freeBytes: free, supportedModes: [.stopCopy])
    }
}
