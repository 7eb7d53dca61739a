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

/// The result of work run on a thread of its own (the export writer, the receiver, a
/// dump, the page push), waited for by the thread that started it.
final class ThreadOutcome<Value: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    // Guarded by condition.
    private var result: Result<Value, any Error>?

    /// Runs `body` on a new thread.
    static func start(_ body: @escaping @Sendable () throws -> Value) -> ThreadOutcome {
        let outcome = ThreadOutcome()
        Thread { outcome.finish(Result { try body() }) }.start()
        return outcome
    }

    private func finish(_ result: Result<Value, any Error>) {
        condition.lock()
        self.result = result
        condition.broadcast()
        condition.unlock()
    }

    /// Waits for the thread's result.
    func wait() -> Result<Value, any Error> {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let result { return result }
            condition.wait()
        }
    }

    /// Waits at most `timeout` for the thread's result; nil if it is still running.
    func wait(timeout: TimeInterval) -> Result<Value, any Error>? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while result == nil && condition.wait(until: deadline) {}
        return result
    }

    /// The failure, once the thread has finished; nil when it succeeded.
    var error: (any Error)? {
        if case .failure(let error) = wait() { return error }
        return nil
    }
}

/// What `ferry migrate --format json` prints (docs/json.md): camelCase keys with the
/// unit in the name, as every report of the CLI.
public struct MigrationReport: Codable, Sendable {
    public var mode: String
    /// From the freeze on the source to the container running on the destination.
    public var downtimeMs: Double
    public var totalMs: Double
    public var bytesSent: Int64
    /// Lazy mode only.
    public var pagesTransferredLazily: Int64?
    public var destination: String
    public var container: String
    /// Milliseconds from the freeze to the end of each step before the switch (lazy
    /// mode): where the downtime goes. Keys are camelCase too ("imagesWritten").
    public var phasesMs: [String: Double]? = nil
    /// What went wrong without failing the migration (a lost answer that the page
    /// channel made up for), one sentence each.
    public var warnings: [String]? = nil
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
            throw CheckpointError(.invalidState, "cannot read the token file", cause: error)
        }
        // A trailing newline from `echo` is not part of the secret.
        var token = bytes
        while let last = token.last, last == 10 || last == 13 { token.removeLast() }
        return token
    }

    // MARK: Source

    /// Moves a running container to `destination`. `mode` nil is auto: post-copy when
    /// both hosts can (the shortest downtime this kernel allows, pre-copy needing dirty
    /// tracking), stop-and-copy otherwise.
    public func migrate(
        _ nameOrID: String, to destination: String, token: [UInt8], mode requested: MigrationMode?, tcpEstablished: Bool = false,
        progress: @escaping (String) -> Void = { _ in }
    ) throws -> MigrationReport {
        let localModes = try Self.localModes(requested: requested)
        // A peer that goes away must be an error on a pipe or socket, not a signal.
        signal(SIGPIPE, SIG_IGN)
        let clock = ContinuousClock()
        let start = clock.now
        let record = try runtime.load(nameOrID)
        try Checkpointer.refusePodMember(record, verb: "migrate")
        guard case .running = record.status else {
            throw CheckpointError(.invalidState, "cannot migrate container '\(record.name)': it is \(record.status.name), not running")
        }
        guard let digest = record.imageDigest else {
            throw CheckpointError(.incompatible, "cannot migrate container '\(record.name)': it runs from a bundle, not an image")
        }
        let address = try MigrationAddress(parsing: destination, defaultPort: MigrationProtocol.defaultPort)
        progress("connecting to \(destination)")
        let channel = try Self.openChannel(to: address, token: token)
        defer { channel.close() }

        let images = ImageStore(root: runtime.root.path)
        let layers = (try? images.resolve(digest).record.layers) ?? []
        var request = PreflightRequest(
            containerName: record.name, imageDigest: digest, imageReference: record.image,
            criuVersion: (try? CRIUSession().version()) ?? 0, kernelRelease: (try? HostProbe.kernelRelease()) ?? "",
            cpuFlags: CPUDescription.current().flags, neededBytes: try estimateBytes(record), mode: requested ?? localModes[0],
            imageLayers: layers.isEmpty ? nil : layers
        )
        request.endpoint = record.endpoint.map { endpoint in
            PreflightEndpoint(
                network: endpoint.network, address: endpoint.address.description, mac: endpoint.mac.description,
                ports: endpoint.ports.map { "\($0.hostIP?.description ?? ""):\($0.hostPort):\($0.containerPort)/\($0.proto.rawValue)" })
        }
        try channel.send(.preflightRequest(request))
        guard case .preflightResponse(let answer) = try channel.receive(expecting: .preflightResponse) else {
            throw CheckpointError(.conflict, "cannot migrate: unexpected answer to the preflight")
        }
        guard answer.ok else {
            throw CheckpointError(.conflict, "cannot migrate container '\(record.name)' to \(destination): " + answer.reasons.joined(separator: "; "))
        }
        guard let mode = localModes.first(where: answer.supportedModes.contains) else {
            let wanted = localModes.map(\.displayName).joined(separator: " or ")
            throw CheckpointError(
                .incompatible,
                "cannot migrate container '\(record.name)' to \(destination): it cannot receive \(wanted) (it supports \(answer.supportedModes.map(\.displayName).joined(separator: ", ")))"
            )
        }
        let work = "\(runtime.containers.directory(record.id))/migrate-tmp"
        try Files.removeTree(work)
        try Files.createDirectory(work, mode: 0o700)
        defer { try? Files.removeTree(work) }
        var session = SourceSession(
            record: record, channel: channel, token: token, address: address, clock: clock, start: start, bytesSent: 0, tcpEstablished: tcpEstablished,
            progress: progress)
        if answer.needsImage {
            session.bytesSent += try sendImage(
                record, digest: digest, layers: layers, missing: answer.missingLayers, work: work, over: channel, progress: progress)
        }
        var report =
            switch mode {
            case .lazy: try postCopy(session)
            default: try stopAndCopy(session)
            }
        report.destination = destination
        return report
    }

    /// Sends the image a destination lacks; returns the bytes sent. A plain rootfs
    /// travels as one tree, which the destination imports as a rootfs (its digest is its
    /// tree's). A layered image travels as its metadata and the layers the destination
    /// named as missing, each checked there against its tree digest: an OCI or docker
    /// image's ID is its manifest's, which a copied tree cannot reproduce.
    func sendImage(
        _ record: ContainerRecord, digest: String, layers: [String], missing: [String]?, work: String, over channel: MigrationChannel,
        progress: (String) -> Void
    ) throws -> Int64 {
        if layers == [digest] {
            progress("sending base image \(record.image)")
            let tar = "\(work)/image.tar"
            _ = try RootfsDiff.create(upperDirectory: record.lowerDirectory, tarPath: tar)
            return try channel.sendFile(name: "image.tar", path: tar).size
        }
        guard let missing, !layers.isEmpty else {
            throw CheckpointError(
                .incompatible,
                "cannot migrate container '\(record.name)': the destination lacks its image \(record.image) (\(digest)) and cannot receive image layers; import the same image archive there first"
            )
        }
        let sending = Set(missing).intersection(layers)
        progress("sending image \(record.image): \(sending.count) of \(layers.count) layers (the destination has the others)")
        let transfer = try ImageStore(root: runtime.root.path).prepareTransfer(of: digest, sending: sending, into: work)
        let description = "\(work)/image.json"
        try Files.writeAtomically(JSONEncoder().encode(transfer), to: description)
        var bytes = try channel.sendFile(name: "image.json", path: description).size
        for layer in transfer.layers where layer.isSent {
            bytes += try channel.sendFile(
                name: ImageTransfer.archiveName(ofLayer: layer.digest), path: "\(work)/\(ImageTransfer.archiveName(ofLayer: layer.digest))"
            ).size
        }
        return bytes
    }

    /// A channel to the destination's agent, its handshake done (a failed handshake
    /// closes the connection).
    static func openChannel(to address: MigrationAddress, token: [UInt8]) throws -> MigrationChannel {
        let channel = MigrationChannel(transport: try TCPTransport.connect(to: address, timeout: .seconds(10)))
        try channel.handshake(role: .source, token: token)
        return channel
    }

    /// The modes this host can send, best first; for a requested mode, that mode alone
    /// (or an error saying why it cannot be).
    static func localModes(requested: MigrationMode?) throws -> [MigrationMode] {
        let features = try? CRIUSession().features()
        let lazyProblem: String? =
            if features?.lazyPages != true { "CRIU reports no lazy-pages support on this kernel (userfaultfd; see ferry check)" } else { nil }
        switch requested {
        case .preCopy:
            // Iterative pre-dumps need the kernel to track dirty memory; without it CRIU's
            // pre-dump fails half-way and leaves its memfd mapped in the target, so it is
            // never attempted here.
            guard features?.memTrack == true else {
                throw CheckpointError(
                    .incompatible,
                    "cannot migrate with pre-copy: it needs memory dirty tracking (soft-dirty), which this kernel lacks (see ferry check); use --mode lazy or stop-copy"
                )
            }
            throw CheckpointError(.incompatible, "cannot migrate with pre-copy: not implemented yet; use --mode lazy or stop-copy")
        case .lazy:
            if let lazyProblem { throw CheckpointError(.incompatible, "cannot migrate with lazy pages: \(lazyProblem); use --mode stop-copy") }
            return [.lazy]
        case .stopCopy:
            return [.stopCopy]
        case nil:
            return lazyProblem == nil ? [.lazy, .stopCopy] : [.stopCopy]
        }
    }

    /// What both modes of the source share once the destination has agreed.
    struct SourceSession {
        let record: ContainerRecord
        let channel: MigrationChannel
        let token: [UInt8]
        let address: MigrationAddress
        let clock: ContinuousClock
        let start: ContinuousClock.Instant
        var bytesSent: Int64
        let tcpEstablished: Bool
        let progress: (String) -> Void
    }

    /// Streams the checkpoint (images, rootfs diff, volumes) as an export archive that
    /// never lands on disk: a writer thread packs it into a pipe and the channel sends
    /// what comes out, as it comes. Returns the bytes sent.
    func sendCheckpoint(_ record: ContainerRecord, captured: Exporter.Captured, over channel: MigrationChannel) throws -> Int64 {
        let exporter = Exporter(runtime: runtime, logger: logger)
        defer { try? Files.removeTree(captured.directory) }
        let metadata = try CheckpointMetadata.load(from: runtime.containers.directory(record.id))
        let members = try exporter.plan(record, metadata: metadata, captured: captured)
        let pipe = try OwnedPipe()
        let readEnd = pipe.readEnd
        let writerFD = pipe.writeEnd.take()
        let writer = ThreadOutcome.start {
            _ = try Exporter.write(members, with: try ExportWriter(streamingTo: OwnedFD(adopting: writerFD), compression: .none))
        }
        let sent = Result { () throws(MigrationError) in try channel.sendStream(name: "export.tar", from: readEnd) }
        _ = consume readEnd
        try writer.wait().get()
        return try sent.get().size
    }

    /// Stop-and-copy: everything moves while the container is frozen.
    func stopAndCopy(_ session: SourceSession) throws -> MigrationReport {
        let (record, channel) = (session.record, session.channel)
        // From here the container is frozen: every failure must thaw it.
        session.progress("freezing and dumping")
        var options = CheckpointOptions()
        options.leaveRunning = true
        options.keepFrozen = true
        options.tcpEstablished = session.tcpEstablished
        let exporter = Exporter(runtime: runtime, logger: logger)
        var captured: Exporter.Captured?
        let freeze = FreezeMark()
        options.freezeMark = freeze
        let started = session.clock.now
        let dumped = try Interruption.guarding {
            try Checkpointer(runtime: runtime, logger: logger).dump(record.id, options: options) { current in
                captured = try exporter.capture(current, ignoreVolumes: false)
            }
        }
        let cgroup = try runtime.cgroup(for: record.id)
        var bytesSent = session.bytesSent
        do {
            guard let captured else { throw CheckpointError(.dumpFailed, "nothing was captured") }
            session.progress("sending the checkpoint")
            bytesSent += try sendCheckpoint(dumped.record, captured: captured, over: channel)
            guard case .restored = try channel.receive(expecting: .restored, timeout: .seconds(300)) else {
                throw CheckpointError(.restoreFailed, "the destination did not restore the container")
            }
        } catch {
            try? channel.send(.abort(reason: "\(error)"))
            try? cgroup.thaw()
            throw CheckpointError(.restoreFailed, "cannot migrate container '\(record.name)'", cause: error, hint: "it keeps running here")
        }

        // The destination holds a frozen copy: end ours for good, then let it run.
        session.progress("ending the source copy")
        try? runtime.remove(record.id, force: true)
        try? cgroup.thaw()
        try channel.send(.commit)
        _ = try channel.receive(expecting: .committed, timeout: .seconds(60))
        let now = session.clock.now
        return MigrationReport(
            mode: MigrationMode.stopCopy.displayName, downtimeMs: (now - freeze.value(or: started)).milliseconds, totalMs: (now - session.start).milliseconds,
            bytesSent: bytesSent, pagesTransferredLazily: nil, destination: "", container: record.name
        )
    }

    /// What the destination needs: the memory the container uses plus its rootfs diff.
    func estimateBytes(_ record: ContainerRecord) throws -> Int64 {
        let cgroup = try runtime.cgroup(for: record.id)
        let memory =
            cgroup.paths.flatMap { ["\($0)/memory.usage_in_bytes", "\($0)/memory.current"] }
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
                Double(status.modificationSeconds) < Date().timeIntervalSince1970 - 600
            {
                try? Files.removeTree(containers.directory(id))
            }
        }
        logger.notice("listening on \(listener.address)")
        FileHandle.standardError.write(Data("ferry: serving migrations on \(listen) (root \(runtime.root.path))\n".utf8))
        let pageChannels = PageChannels()
        let handshakes = PendingHandshakes(limit: Self.maximumPendingHandshakes)
        while true {
            let transport: TCPTransport
            do {
                transport = try listener.accept()
            } catch {
                logger.error("accept: \(error)")
                continue
            }
            // Peers that have not proved the token yet get a thread each only up to the
            // limit; beyond it the next accept waits for a slot, and further connections
            // wait in the kernel's backlog (a flood costs no memory, and a real source
            // is served once a slot frees: every handshake ends within its timeout).
            handshakes.enter()
            let server = self
            Thread.detachNewThread {
                server.receive(MigrationChannel(transport: transport), token: token, pageChannels: pageChannels) {
                    handshakes.leave()
                }
            }
        }
    }

    /// Handshakes in progress at once, at most: each holds a thread and a few KiB until
    /// its peer proves the token or the handshake timeout (10 s) ends it.
    static let maximumPendingHandshakes = 32

    /// One incoming migration (or the page channel of one). Everything it made is removed
    /// unless the source commits. `handshakeDone` is called once the handshake has ended,
    /// either way.
    func receive(_ channel: MigrationChannel, token: [UInt8], pageChannels: PageChannels, handshakeDone: () -> Void = {}) {
        defer { channel.close() }
        let peer = channel.peerName
        do {
            defer { handshakeDone() }
            try channel.handshake(role: .destination, token: token)
        } catch {
            FileHandle.standardError.write(Data("ferry serve: refused \(peer): \(error)\n".utf8))
            return
        }
        var created: ContainerRecord?
        var lazy: LazyRestore?
        defer {
            if let lazy {
                // A copy that never ran here must not let the page channel say `done`.
                lazy.takeover.abandon()
                lazy.server.stop()
                pageChannels.discard(lazy.id)
            }
        }
        let staging = "\(runtime.root.path)/migrations/\(ContainerStore.newID().prefix(16))"
        defer { try? Files.removeTree(staging) }
        do {
            let first = try channel.receive(expecting: .preflightRequest, .lazyPagesReady)
            if case .lazyPagesReady(let endpoint) = first {
                return receivePages(channel, endpoint: endpoint, registry: pageChannels)
            }
            guard case .preflightRequest(let request) = first else { return }
            let answer = preflight(request)
            try channel.send(.preflightResponse(answer))
            guard answer.ok else {
                FileHandle.standardError.write(
                    Data("ferry serve: refused '\(request.containerName)' from \(peer): \(answer.reasons.joined(separator: "; "))\n".utf8))
                return
            }
            try Files.createDirectory(staging, mode: 0o700)
            if answer.needsImage {
                try receiveImage(request, missing: answer.missingLayers, staging: staging, over: channel, peer: peer)
            }
            // The checkpoint streams from the channel through a pipe straight into the
            // importer, which stages and checks it as for any untrusted archive.
            let pipe = try OwnedPipe()
            let readEnd = pipe.readEnd
            let readerPath = "/proc/self/fd/\(readEnd.raw)"
            let writerFD = pipe.writeEnd.take()
            let limit = max(request.neededBytes * 4, 1 << 30)
            let receiver = ThreadOutcome.start {
                // The pipe's write end closes when this returns: the importer sees the end.
                let fd = OwnedFD(adopting: writerFD)
                _ = try channel.receiveFile(expectedName: "export.tar", into: fd, limit: limit)
            }
            var importOptions = ImportOptions(path: readerPath)
            importOptions.checkHostPorts = false
            importOptions.displayName = "the migration stream from \(peer)"
            let imported = Result { try Importer(runtime: runtime, logger: logger).importArchive(importOptions) }
            _ = consume readEnd
            try receiver.wait().get()
            let record = try imported.get()
            created = record
            if try CheckpointMetadata.load(from: runtime.containers.directory(record.id)).lazyPages == true {
                let prepared = try prepareLazyRestore(record, registry: pageChannels)
                lazy = prepared
                try channel.send(
                    .lazyPagesReady(LazyPagesEndpoint(address: CRIUSession.pageServerAddress, port: 0, details: ["pages": prepared.id])))
                pageChannels.expire(prepared.id, after: .seconds(60)) {
                    prepared.server.fail(CRIUError(.communicationFailed, "the source never opened the page channel"))
                }
            }
            try runtime.startDetached(id: record.id, removeOnFailure: true, restore: true, frozen: true)
            created = try? runtime.load(record.id)
            let pid: Int32 = if case .running(let state) = created?.status { state.pid } else { 0 }
            try channel.send(.restored(RestoredInfo(pid: pid)))
            _ = try channel.receive(expecting: .commit, timeout: .seconds(120))
            try runtime.cgroup(for: record.id).thaw()
            // From the thaw on this copy is the container, whatever becomes of the
            // control channel: the source has ended its own (stop-copy) or hands its
            // memory over on the page channel, which now may say `done` (lazy).
            created = nil
            lazy?.takeover.ran()
            if FaultInjection.isArmed(.loseCommitted) {
                channel.close()
            } else {
                try? channel.send(.committed)
            }
            if let server = lazy?.server {
                FileHandle.standardError.write(Data("ferry serve: '\(record.name)' from \(peer) runs here; its memory follows from the source\n".utf8))
                do {
                    try server.wait()
                } catch {
                    // Memory that never came would read as zeros once the server lets go
                    // of the userfaultfds: the copy here must end first.
                    try? runtime.remove(record.id, force: true)
                    throw error
                }
                try? channel.send(.done)
            }
            FileHandle.standardError.write(Data("ferry serve: received '\(record.name)' from \(peer); it runs here now\n".utf8))
        } catch {
            FileHandle.standardError.write(Data("ferry serve: migration from \(peer) failed: \(error)\n".utf8))
            try? channel.send(.abort(reason: "\(error)"))
        }
        if let created {
            // Not committed: the source runs on, so this copy must go, and the page
            // channel must not say `done` for it.
            lazy?.takeover.abandon()
            try? runtime.remove(created.id, force: true)
        }
    }

    /// The destination's end of `sendImage`.
    func receiveImage(_ request: PreflightRequest, missing: [String]?, staging: String, over channel: MigrationChannel, peer: String) throws {
        let reference = try ImageReference(request.imageReference)
        let store = ImageStore(root: runtime.root.path)
        guard let missing, request.imageLayers != [request.imageDigest] else {
            let tar = "\(staging)/image.tar"
            _ = try channel.receiveFile(expectedName: "image.tar", path: tar, limit: 64 << 30)
            let tree = "\(staging)/image"
            try Files.createDirectory(tree, mode: 0o755)
            let fd = try OwnedFD.open(tree, O_RDONLY | O_DIRECTORY)
            _ = try SafeTreeExtractor.extract(archive: tar, into: fd, policy: .rootfs)
            let record = try store.importImage(from: tree, as: reference)
            guard record.digest == request.imageDigest else {
                throw CheckpointError(.incompatible, "the image sent has digest \(record.digest), not \(request.imageDigest)")
            }
            return
        }
        let description = "\(staging)/image.json"
        _ = try channel.receiveFile(expectedName: "image.json", path: description, limit: 16 << 20)
        let transfer = try JSONDecoder().decode(ImageTransfer.self, from: Data(Files.read(description)))
        // What arrives must be what the preflight was about: the image, its layers, and
        // exactly the layers named as missing here.
        let sent = transfer.layers.filter(\.isSent).map(\.digest)
        guard transfer.digest == request.imageDigest, transfer.layers.map(\.digest) == request.imageLayers, Set(sent) == Set(missing) else {
            throw CheckpointError(.incompatible, "the image sent is not the one the preflight named (\(transfer.digest), \(sent.count) layers sent)")
        }
        var archives: [String: String] = [:]
        for digest in sent {
            let name = ImageTransfer.archiveName(ofLayer: digest)
            let path = "\(staging)/\(name)"
            _ = try channel.receiveFile(expectedName: name, path: path, limit: 64 << 30)
            archives[digest] = path
        }
        try store.receiveTransfer(transfer, archives: archives, as: reference, source: "migrated from \(peer)")
        for path in archives.values { try? Files.removeTree(path) }
        FileHandle.standardError.write(
            Data("ferry serve: received image \(reference) from \(peer): \(sent.count) of \(transfer.layers.count) layers sent, the others were here\n".utf8))
    }

    /// Why a bridge container cannot come here (no network of its name, or its address,
    /// MAC or a port taken), or nil: the import's allocation, tried without writing.
    func networkPreflight(_ endpoint: PreflightEndpoint, container: String) -> String? {
        guard let address = IPv4Address(endpoint.address), let mac = MACAddress(endpoint.mac) else {
            return "the container's address \(endpoint.address) or MAC \(endpoint.mac) is not valid"
        }
        let network: NetworkRecord
        do {
            network = try runtime.networks.load(endpoint.network)
        } catch {
            return "the destination has no network '\(endpoint.network)' (create it there with: ferry network create \(endpoint.network))"
        }
        do {
            let ports = try endpoint.ports.map { spec throws in try PortMapping.parse(spec) }
            let request = NetworkRequest(network: endpoint.network, address: address, mac: mac, ports: ports)
            _ = try NetworkStore.allocate(request, on: network, others: runtime.containers.list().compactMap(\.endpoint), container: container)
        } catch {
            return "on the destination, \(error)"
        }
        return nil
    }

    func preflight(_ request: PreflightRequest) -> PreflightResponse {
        var reasons: [String] = []
        if (try? runtime.containers.resolve(request.containerName)) != nil {
            reasons.append("the container name '\(request.containerName)' is already in use on the destination")
        }
        if let version = try? CRIUSession().version() {
            if version < request.criuVersion / 100 * 100 {
                reasons.append(
                    "the destination's CRIU \(CRIUSession.formatVersion(version)) is older than the source's \(CRIUSession.formatVersion(request.criuVersion))")
            }
        } else {
            reasons.append("CRIU does not work on the destination (run ferry check there)")
        }
        let mine = Set(CPUDescription.current().flags)
        let missing = request.cpuFlags.filter { !mine.contains($0) }
        if !missing.isEmpty {
            reasons.append("the destination CPU lacks \(missing.prefix(8).joined(separator: ", "))")
        }
        var st = statvfs()
        let free = statvfs(runtime.root.path, &st) == 0 ? Int64(st.f_bavail) * Int64(st.f_frsize) : 0
        if free < request.neededBytes * 2 {
            reasons.append("not enough free space on the destination (\(free) bytes free, about \(request.neededBytes * 2) needed)")
        }
        if let endpoint = request.endpoint, let reason = networkPreflight(endpoint, container: request.containerName) {
            reasons.append(reason)
        }
        let store = ImageStore(root: runtime.root.path)
        let hasImage = (try? store.resolve(request.imageDigest)) != nil
        let lazy = (try? CRIUSession().features().lazyPages) == true
        return PreflightResponse(
            reasons: reasons, needsImage: !hasImage, freeBytes: free, supportedModes: lazy ? [.lazy, .stopCopy] : [.stopCopy],
            missingLayers: hasImage ? nil : request.imageLayers.map(store.missingLayers))
    }
}

/// Counts the connections of `ferry serve` still in their handshake.
final class PendingHandshakes: @unchecked Sendable {
    private let condition = NSCondition()
    private let limit: Int
    // Guarded by condition.
    private var count = 0

    init(limit: Int) { self.limit = limit }

    /// Counts one more, once fewer than the limit are pending. Each pending handshake
    /// ends within the handshake timeout, so the wait is bounded by it.
    func enter() {
        condition.withLock {
            while count >= limit { condition.wait() }
            count += 1
        }
    }

    func leave() {
        condition.withLock {
            count -= 1
            condition.signal()
        }
    }
}
