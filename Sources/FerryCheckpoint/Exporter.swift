import FerryArchive
import FerryCRIU
import FerryRuntime
import FerryStore
import FerrySystem
import Foundation
import Logging

/// What an export measured.
public struct ExportResult: Sendable {
    public var path: String
    public var bytes: Int64
    public var duration: Duration
}

/// Packs a checkpoint (CRIU images, rootfs diff, volumes, config) into one export archive
/// (docs/archive-format.md). The archive appears only when complete: ExportWriter writes
/// a temporary file beside it and renames it at the end.
struct Exporter {
    let runtime: ContainerRuntime
    let logger: Logger

    /// The rootfs diff and volume tars, made while the container cannot change them.
    struct Captured {
        var directory: String
        var deleted: [String]
        var volumes: [(name: String, tar: String)]
    }

    /// Writes the rootfs diff and the volume tars into the container's `export-tmp/`.
    func capture(_ record: ContainerRecord, ignoreVolumes: Bool) throws -> Captured {
        let store = runtime.containers
        let directory = "\(store.directory(record.id))/export-tmp"
        try Files.removeTree(directory)
        try Files.createDirectory(directory, mode: 0o700)
        let diff = try RootfsDiff.create(upperDirectory: store.upperPath(record.id), tarPath: "\(directory)/rootfs-diff.tar")
        var volumes: [(String, String)] = []
        if !ignoreVolumes {
            for volume in record.volumes where volume.kind == .named {
                let tar = "\(directory)/volume-\(volume.source).tar"
                _ = try RootfsDiff.create(upperDirectory: runtime.volumes.dataPath(volume.source), tarPath: tar)
                volumes.append((volume.source, tar))
            }
        }
        return Captured(directory: directory, deleted: diff.deleted, volumes: volumes)
    }

    /// One member of an export, in stream order.
    struct Member {
        enum Source {
            case bytes([UInt8])
            case file(String)
        }

        var name: String
        var source: Source
    }

    /// The members of the export of `record`'s checkpoint, `ferry.json` first
    /// (docs/archive-format.md). Archives and snapshots are both made from this list.
    /// For a streamed export, `streamedSizes` are the members already in the archive
    /// (CRIU's images), which `ferry.json` declares too, and the images are left out.
    func plan(
        _ record: ContainerRecord, metadata: CheckpointMetadata, captured: Captured, streamedSizes: [String: Int64]? = nil
    ) throws -> [Member] {
        let store = runtime.containers
        let images = "\(store.directory(record.id))/\(CheckpointMetadata.imagesDirectory)"
        let spec = try Self.specDump(try store.loadConfig(id: record.id))
        let config = ConfigDump(
            id: record.id, name: record.name, rootfsImageName: record.image, rootfsImageRef: record.imageDigest,
            runtime: "ferry", createdTime: record.created, checkpointedTime: metadata.checkpointedAt
        )
        var members: [Member] = [
            Member(name: "config.dump", source: .bytes(Array(try JSONEncoder.ferry.encode(config)))),
            Member(name: "spec.dump", source: .bytes(Array(spec))),
            Member(name: "deleted.files", source: .bytes(Array(try JSONEncoder.ferry.encode(captured.deleted)))),
            Member(name: NetworkStatusDump.memberName, source: .bytes(try networkStatus(record))),
        ]
        // CRIU writes stats-dump into its work directory, the container's own.
        let stats = "\(store.directory(record.id))/stats-dump"
        if Files.exists(stats) { members.append(Member(name: "stats-dump", source: .file(stats))) }
        // Memory pages last: `archive inspect` then finds every small image (process
        // tree, mappings) before the bulk of the stream.
        let imageNames = streamedSizes == nil ? try Files.listDirectory(images) : []
        for name in imageNames.sorted(by: { ($0.hasPrefix("pages-") ? 1 : 0, $0) < ($1.hasPrefix("pages-") ? 1 : 0, $1) }) {
            members.append(Member(name: "checkpoint/\(name)", source: .file("\(images)/\(name)")))
        }
        members.append(Member(name: "rootfs-diff.tar", source: .file("\(captured.directory)/rootfs-diff.tar")))
        for volume in captured.volumes { members.append(Member(name: "volumes/\(volume.name).tar", source: .file(volume.tar))) }

        var sizes = streamedSizes ?? [:]
        for member in members {
            switch member.source {
            case .bytes(let bytes): sizes[member.name] = Int64(bytes.count)
            case .file(let path): sizes[member.name] = try Files.status(path, followSymlinks: false).size
            }
        }
        var ferry = ExportMetadata(
            formatVersion: ExportMetadata.formatVersion, containerName: record.name, containerID: record.id,
            image: record.image, imageDigest: record.imageDigest, checkpointedAt: metadata.checkpointedAt,
            sourceKernel: (try? HostProbe.kernelRelease()) ?? "unknown",
            criuVersion: (try? CRIUSession().version()) ?? 0, cpu: CPUDescription.current(), network: record.network,
            volumes: record.volumes.filter { $0.kind == .named }.map { .init(name: $0.source, destination: $0.destination, readOnly: $0.readOnly) },
            bindMounts: record.volumes.filter { $0.kind == .bind }.map { .init(source: $0.source, destination: $0.destination, readOnly: $0.readOnly) },
            stdio: metadata.stdio, frozenMilliseconds: metadata.frozenMilliseconds,
            tcpEstablished: metadata.tcpEstablished, fileLocks: metadata.fileLocks, lazyPages: metadata.lazyPages,
            imageSettings: record.imageSettings, members: sizes
        )
        ferry.endpoint = record.endpoint
        return [Member(name: ExportMetadata.memberName, source: .bytes(Array(try JSONEncoder.ferry.encode(ferry))))] + members
    }

    /// The annotation by which checkpointctl chooses how to read an archive, and the value
    /// podman gives it. Only with it does checkpointctl take the container's name from
    /// `config.dump` and its addresses from `network.status`, which Ferry writes as podman
    /// does (its other readers take them from CRI-O's or containerd's annotations).
    static let managerAnnotation = (key: "io.container.manager", value: "libpod")

    /// `spec.dump`: the container's runtime spec with `managerAnnotation` added.
    static func specDump(_ config: Data) throws -> Data {
        var spec = try JSONDecoder().decode(OCISpec.self, from: config)
        spec.annotations = (spec.annotations ?? [:]).merging([managerAnnotation.key: managerAnnotation.value]) { _, new in new }
        return try JSONEncoder.ferry.encode(spec)
    }

    /// `network.status` for `record`: its bridge network's interface, or `null` (as podman
    /// writes it for a container without one).
    func networkStatus(_ record: ContainerRecord) throws -> [UInt8] {
        // Only shown by other tools: a network that cannot be read leaves it out rather
        // than failing the export.
        guard let endpoint = record.endpoint, let network = try? NetworkStore(root: runtime.root).load(endpoint.network) else {
            return Array("null".utf8)
        }
        let status = NetworkStatusDump(network: network, endpoint: endpoint)
        return Array(try JSONEncoder.ferry.encode(status.networks))
    }

    /// Streams `members` into an archive at `path`; the file appears only when complete.
    static func write(
        _ members: [Member], to path: String, compression: ExportCompression, key: ArchiveKey? = nil, progress: ProgressSink = .none
    ) throws -> ExportResult {
        try write(members, with: try ExportWriter(path: path, compression: compression, key: key), progress: progress)
    }

    /// Streams `members` through `writer` (a file, or a pipe for a migration).
    static func write(_ members: [Member], with writer: ExportWriter, progress: ProgressSink = .none) throws -> ExportResult {
        let clock = ContinuousClock()
        let start = clock.now
        var tally = ProgressTally(members, sink: progress, verb: "exporting")
        do {
            for member in members {
                tally.starting(member)
                if Interruption.requested { throw CheckpointError(.exportFailed, "interrupted") }
                switch member.source {
                case .bytes(let bytes): try writer.add(name: member.name, bytes: bytes)
                case .file(let file): try writer.add(name: member.name, file: file)
                }
            }
            let summary = try writer.finish()
            tally.finish("exported")
            return ExportResult(path: summary.path, bytes: summary.size, duration: clock.now - start)
        } catch {
            writer.abandon()
            throw error
        }
    }

    /// Completes a streamed export whose images `writer` already holds: the other
    /// members, then `ferry.json` (reserved first) with every size, then the manifest.
    func finishStreamed(
        _ record: ContainerRecord, metadata: CheckpointMetadata, captured: Captured, writer: StreamedExportWriter
    ) throws -> ExportResult {
        defer { try? Files.removeTree(captured.directory) }
        let clock = ContinuousClock()
        let start = clock.now
        do {
            let members = try plan(record, metadata: metadata, captured: captured, streamedSizes: writer.memberSizes)
            for member in members.dropFirst() {
                if Interruption.requested { throw CheckpointError(.exportFailed, "interrupted") }
                switch member.source {
                case .bytes(let bytes): try writer.add(name: member.name, bytes: bytes)
                case .file(let file): try writer.add(name: member.name, file: file)
                }
            }
            guard let head = members.first, case .bytes(let bytes) = head.source else {
                throw CheckpointError(.exportFailed, "no \(ExportMetadata.memberName) planned")
            }
            try writer.fill(name: head.name, bytes: bytes)
            let summary = try writer.finish()
            return ExportResult(path: summary.path, bytes: summary.size, duration: clock.now - start)
        } catch {
            writer.abandon()
            throw error
        }
    }

    func export(
        _ record: ContainerRecord, metadata: CheckpointMetadata, captured: Captured, to path: String, compression: ExportCompression,
        key: ArchiveKey? = nil, progress: ProgressSink = .none
    ) throws -> ExportResult {
        defer { try? Files.removeTree(captured.directory) }
        return try Self.write(
            try plan(record, metadata: metadata, captured: captured), to: path, compression: compression, key: key, progress: progress)
    }
}
