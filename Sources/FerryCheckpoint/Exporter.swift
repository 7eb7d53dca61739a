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

    func export(
        _ record: ContainerRecord, metadata: CheckpointMetadata, captured: Captured, to path: String, compression: ExportCompression
    ) throws -> ExportResult {
        let clock = ContinuousClock()
        let start = clock.now
        let store = runtime.containers
        let images = "\(store.directory(record.id))/\(CheckpointMetadata.imagesDirectory)"
        defer { try? Files.removeTree(captured.directory) }

        let spec = try store.loadConfig(id: record.id)
        let config = ConfigDump(
            id: record.id, name: record.name, rootfsImageName: record.image, rootfsImageRef: record.imageDigest,
            runtime: "ferry", createdTime: record.created, checkpointedTime: metadata.checkpointedAt
        )
        let small: [(String, [UInt8])] = [
            ("config.dump", Array(try JSONEncoder.ferry.encode(config))),
            ("spec.dump", Array(spec)),
            ("deleted.files", Array(try JSONEncoder.ferry.encode(captured.deleted))),
        ]
        var files: [(String, String)] = []
        let imageNames = try Files.listDirectory(images)
        // CRIU writes stats-dump into its work directory, the container's own.
        let stats = "\(store.directory(record.id))/stats-dump"
        if Files.exists(stats) { files.append(("stats-dump", stats)) }
        // Memory pages last: `archive inspect` then finds every small image (process
        // tree, mappings) before the bulk of the stream.
        for name in imageNames.sorted(by: { ($0.hasPrefix("pages-") ? 1 : 0, $0) < ($1.hasPrefix("pages-") ? 1 : 0, $1) }) {
            files.append(("checkpoint/\(name)", "\(images)/\(name)"))
        }
        files.append(("rootfs-diff.tar", "\(captured.directory)/rootfs-diff.tar"))
        for volume in captured.volumes { files.append(("volumes/\(volume.name).tar", volume.tar)) }

        var sizes: [String: Int64] = [:]
        for (name, bytes) in small { sizes[name] = Int64(bytes.count) }
        for (name, file) in files { sizes[name] = try Files.status(file, followSymlinks: false).size }

        let ferry = ExportMetadata(
            formatVersion: ExportMetadata.formatVersion, containerName: record.name, containerID: record.id,
            image: record.image, imageDigest: record.imageDigest, checkpointedAt: metadata.checkpointedAt,
            sourceKernel: (try? HostProbe.kernelRelease()) ?? "unknown",
            criuVersion: (try? CRIUSession().version()) ?? 0, cpu: CPUDescription.current(), network: record.network,
            volumes: record.volumes.filter { $0.kind == .named }.map { .init(name: $0.source, destination: $0.destination, readOnly: $0.readOnly) },
            bindMounts: record.volumes.filter { $0.kind == .bind }.map { .init(source: $0.source, destination: $0.destination, readOnly: $0.readOnly) },
            stdio: metadata.stdio, frozenMilliseconds: metadata.frozenMilliseconds,
            tcpEstablished: metadata.tcpEstablished, fileLocks: metadata.fileLocks, members: sizes
        )

        let writer = try ExportWriter(path: path, compression: compression)
        do {
            try writer.add(name: ExportMetadata.memberName, bytes: Array(try JSONEncoder.ferry.encode(ferry)))
            for (name, bytes) in small { try writer.add(name: name, bytes: bytes) }
            for (name, file) in files {
                if Interruption.requested { throw CheckpointError(.exportFailed, "interrupted") }
                try writer.add(name: name, file: file)
            }
            let summary = try writer.finish()
            return ExportResult(path: summary.path, bytes: summary.size, duration: clock.now - start)
        } catch {
            writer.abandon()
            throw error
        }
    }
}
