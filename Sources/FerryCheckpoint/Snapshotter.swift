import FerryArchive
import FerryRuntime
import FerryStore
import FerrySystem
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// Snapshots of running containers and rollback to them.
///
/// A snapshot is a checkpoint with --leave-running semantics whose memory, rootfs diff
/// and volumes are captured at the same frozen instant; the container is thawed right
/// after, and the members are then cut into shared chunks (SnapshotStore), so the job's
/// pause is only the dump.
public struct Snapshotter: Sendable {
    let runtime: ContainerRuntime
    let logger: Logger
    let store: SnapshotStore

    public init(runtime: ContainerRuntime, logger: Logger) {
        self.runtime = runtime
        self.logger = logger
        self.store = SnapshotStore(root: runtime.root)
    }

    /// Takes a snapshot; with `keep`, prunes to the newest `keep` afterwards. A failed
    /// snapshot leaves the job running and the older snapshots intact.
    public func create(_ nameOrID: String, tag: String?, keep: Int? = nil, progress: ProgressSink = .none) throws -> SnapshotUsage {
        let record = try runtime.load(nameOrID)
        let tag = tag ?? Self.defaultTag()
        try SnapshotStore.validateTag(tag)
        if (try? store.load(record.id, tag)) != nil {
            throw CheckpointError(.conflict, "cannot snapshot container '\(record.name)': snapshot '\(tag)' already exists")
        }
        let checkpointer = Checkpointer(runtime: runtime, logger: logger)
        let exporter = Exporter(runtime: runtime, logger: logger)
        var options = CheckpointOptions()
        options.leaveRunning = true
        var captured: Exporter.Captured?
        progress.report("checkpointing")
        let result = try Interruption.guarding {
            try checkpointer.dump(record.id, options: options) { current in
                captured = try exporter.capture(current, ignoreVolumes: false)
            }
        }
        guard let captured else { throw CheckpointError(.dumpFailed, "cannot snapshot container '\(record.name)': nothing was captured") }
        defer { try? Files.removeTree(captured.directory) }
        do {
            let metadata = try CheckpointMetadata.load(from: runtime.containers.directory(record.id))
            let planned = try exporter.plan(result.record, metadata: metadata, captured: captured)
            var tally = ProgressTally(planned, sink: progress, verb: "storing")
            let members = try planned.map { member in
                tally.starting(member)
                return switch member.source {
                case .bytes(let bytes): try store.ingest(name: member.name, bytes: bytes)
                case .file(let file): try store.ingest(name: member.name, file: file)
                }
            }
            let manifest = SnapshotManifest(
                tag: tag, containerID: record.id, containerName: record.name, created: Date(),
                frozenMilliseconds: result.frozen.milliseconds, members: members
            )
            try store.save(manifest)
            tally.finish("stored")
        } catch {
            store.discardUnreferenced()
            throw CheckpointError(.exportFailed, "cannot snapshot container '\(record.name)'", cause: error)
        }
        if let keep, keep > 0 {
            let all = store.list(record.id)
            if all.count > keep { try store.remove(record.id, tags: all.prefix(all.count - keep).map(\.tag)) }
        }
        guard let usage = store.usage(record.id).first(where: { $0.manifest.tag == tag }) else {
            throw CheckpointError(.exportFailed, "snapshot '\(tag)' vanished")
        }
        return usage
    }

    static func defaultTag() -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd-HHmmss.SSS"
        return "snap-\(formatter.string(from: Date()))"
    }

    public func list(_ nameOrID: String) throws -> [SnapshotUsage] {
        let record = try runtime.load(nameOrID)
        return store.usage(record.id)
    }

    public func remove(_ nameOrID: String, tag: String) throws {
        let record = try runtime.load(nameOrID)
        _ = try store.load(record.id, tag)
        try store.remove(record.id, tags: [tag])
    }

    /// Writes a snapshot as a normal export archive, encrypted with `key` if given.
    public func export(
        _ nameOrID: String, tag: String, to path: String, compression: ExportCompression = .zstd, key: ArchiveKey? = nil,
        progress: ProgressSink = .none
    ) throws -> ExportResult {
        let record = try runtime.load(nameOrID)
        let manifest = try store.load(record.id, tag)
        let staging = "\(runtime.containers.directory(record.id))/snapshot-export-tmp"
        try Files.removeTree(staging)
        try Files.createDirectory(staging, mode: 0o700)
        defer { try? Files.removeTree(staging) }
        var members: [Exporter.Member] = []
        for (index, member) in manifest.members.enumerated() {
            let file = "\(staging)/\(index)"
            try store.materialize(member, to: file)
            members.append(Exporter.Member(name: member.name, source: .file(file)))
        }
        return try Exporter.write(members, to: path, compression: compression, key: key, progress: progress)
    }

    /// Brings the container back to a snapshot (default: the newest): memory, rootfs and
    /// volumes as they were. The snapshot is staged first; a running container is then
    /// checkpointed as a safety net, so a failed rollback puts it back as it was.
    public func rollback(_ nameOrID: String, to tag: String?) throws -> ContainerRecord {
        let record = try runtime.load(nameOrID)
        let snapshots = store.list(record.id)
        guard let manifest = tag.map({ t in snapshots.first { $0.tag == t } }) ?? snapshots.last else {
            throw CheckpointError(
                .invalidState, tag.map { "container '\(record.name)' has no snapshot '\($0)'" } ?? "container '\(record.name)' has no snapshots")
        }
        let directory = runtime.containers.directory(record.id)
        let staging = "\(directory)/rollback-staging"
        let previous = "\(directory)/rollback-previous"
        try Files.removeTree(staging)
        try Files.removeTree(previous)
        defer { try? Files.removeTree(staging) }
        try stage(manifest, record: record, into: staging)

        let wasRunning: Bool
        switch record.status {
        case .running:
            var options = CheckpointOptions()
            options.leaveRunning = false
            _ = try Checkpointer(runtime: runtime, logger: logger).checkpoint(record.id, options: options)
            wasRunning = true
        case .checkpointing:
            throw CheckpointError(.invalidState, "cannot roll back container '\(record.name)': a checkpoint is in progress")
        default:
            wasRunning = false
        }

        // Swap the staged state in, keeping what was there until the restore worked.
        let swaps = swapPairs(record: record, staging: staging)
        try Files.createDirectory(previous, mode: 0o700)
        var moved: [(current: String, saved: String)] = []
        func swapBack() {
            for (current, saved) in moved.reversed() {
                try? Files.removeTree(current)
                try? Files.move(saved, to: current)
            }
        }
        do {
            for (index, pair) in swaps.enumerated() {
                let saved = "\(previous)/\(index)"
                if Files.exists(pair.current) { try Files.move(pair.current, to: saved) }
                moved.append((pair.current, saved))
                try Files.move(pair.staged, to: pair.current)
            }
            try Files.removeTree(runtime.containers.workPath(record.id))
            try Files.createDirectory(runtime.containers.workPath(record.id), mode: 0o755)
            try setCheckpointed(record.id)
            try runtime.startDetached(id: record.id, removeOnFailure: false, restore: true)
        } catch {
            swapBack()
            try? setCheckpointed(record.id)
            if wasRunning { try? runtime.startDetached(id: record.id, removeOnFailure: false, restore: true) }
            try? Files.removeTree(previous)
            throw CheckpointError(.restoreFailed, "cannot roll back container '\(record.name)' to '\(manifest.tag)'", cause: error)
        }
        try? Files.removeTree(previous)
        return try runtime.load(record.id)
    }

    /// What a rollback replaces: (the live path, its staged replacement).
    private func swapPairs(record: ContainerRecord, staging: String) -> [(current: String, staged: String)] {
        let directory = runtime.containers.directory(record.id)
        var pairs: [(String, String)] = [
            ("\(directory)/\(CheckpointMetadata.imagesDirectory)", "\(staging)/checkpoint"),
            (runtime.containers.upperPath(record.id), "\(staging)/upper"),
            ("\(directory)/\(CheckpointMetadata.fileName)", "\(staging)/\(CheckpointMetadata.fileName)"),
        ]
        for volume in record.volumes where volume.kind == .named && Files.exists("\(staging)/volumes/\(volume.source)") {
            pairs.append((runtime.volumes.dataPath(volume.source), "\(staging)/volumes/\(volume.source)"))
        }
        return pairs
    }

    /// Rebuilds a snapshot's images, rootfs diff and volumes under `staging`.
    private func stage(_ manifest: SnapshotManifest, record: ContainerRecord, into staging: String) throws {
        let images = "\(staging)/checkpoint"
        try Files.createDirectory(images, mode: 0o700)
        try Files.createDirectory("\(staging)/upper", mode: 0o755)
        var deleted: [String] = []
        var metadata: ExportMetadata?
        for member in manifest.members {
            switch member.name {
            case ExportMetadata.memberName:
                metadata = try JSONDecoder.ferry.decode(ExportMetadata.self, from: Data(try store.read(member)))
            case "deleted.files":
                deleted = try JSONDecoder().decode([String].self, from: Data(try store.read(member)))
            case "rootfs-diff.tar":
                let tar = "\(staging)/rootfs-diff.tar"
                try store.materialize(member, to: tar)
                _ = try RootfsDiff.apply(tarPath: tar, deleted: deleted, intoUpper: "\(staging)/upper")
                try Files.removeTree(tar)
            default:
                if member.name.hasPrefix("checkpoint/") {
                    try store.materialize(member, to: "\(images)/\(member.name.dropFirst("checkpoint/".count))")
                } else if member.name.hasPrefix("volumes/") {
                    let name = String(member.name.dropFirst("volumes/".count).dropLast(4))
                    let tar = "\(staging)/volume.tar"
                    let target = "\(staging)/volumes/\(name)"
                    try Files.createDirectory(target, mode: 0o755)
                    try store.materialize(member, to: tar)
                    let fd = try OwnedFD.open(target, O_RDONLY | O_DIRECTORY)
                    _ = try SafeTreeExtractor.extract(archive: tar, into: fd, policy: .volume)
                    try Files.removeTree(tar)
                }
            }
        }
        guard let metadata else { throw CheckpointError(.invalidState, "snapshot '\(manifest.tag)' has no \(ExportMetadata.memberName)") }
        try CheckpointMetadata(
            stdio: metadata.stdio, network: metadata.network, checkpointedAt: metadata.checkpointedAt,
            frozenMilliseconds: metadata.frozenMilliseconds, tcpEstablished: metadata.tcpEstablished, fileLocks: metadata.fileLocks
        ).save(in: staging)
    }

    private func setCheckpointed(_ id: String) throws {
        try runtime.containers.withLock(id) {
            var current = try runtime.containers.load(id: id)
            current.status = try current.status.after(
                .rolledBack(CheckpointState(checkpointedAt: Date(), imagesDirectory: CheckpointMetadata.imagesDirectory)), container: current.name)
            try runtime.containers.save(current)
        }
    }
}
