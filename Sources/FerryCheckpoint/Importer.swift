import FerryArchive
import FerryCRIU
import FerryRuntime
import FerryStore
import FerrySystem
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// What `ferry restore --import` asks for.
public struct ImportOptions: Sendable {
    public var path: String
    /// The new container's name (default: the name in the archive).
    public var name: String?
    /// Replace named volumes that already exist here.
    public var force = false
    /// Refuse a container of the host's network whose sockets hold ports that are in use
    /// here (its original still running, most likely). Off for a migration: there the
    /// source holds them, frozen, until the destination takes over.
    public var checkHostPorts = true
    /// How messages name the archive, when its path means nothing to the user (a
    /// migration reads the stream through /proc/self/fd/N).
    public var displayName: String?
    /// Refuse an archive whose checkpoint was taken without `--tcp-established`: the
    /// user expects the connections back (podman's `restore --tcp-established`).
    public var requireTCPEstablished = false
    /// Where the import reports how far it is.
    public var progress: ProgressSink = .none
    /// A container of a bridge network gets a new address (MAC) here instead of the one
    /// it had (podman's `--ignore-static-ip`, `--ignore-static-mac`): for restoring a copy
    /// while the original still holds them.
    public var ignoreStaticIP = false
    public var ignoreStaticMAC = false
    /// The key of an encrypted archive.
    public var key: ArchiveKey?

    /// The archive as messages name it: "'web.tar.zst'", or the display name.
    var described: String { displayName ?? "'\(path)'" }

    public init(path: String) {
        self.path = path
    }
}

/// Brings an export archive in as a new, checkpointed container (then restored).
///
/// The archive is untrusted. Its head (ferry.json, config.dump, spec.dump) is checked
/// before anything is written: format version, base image present, bind-mount sources
/// present, no name conflict, CRIU version and CPU compatible. Then everything is staged
/// inside the new container's own directory, the manifest is verified, and only then is
/// the container committed (its name claimed, its volumes moved into place).
struct Importer {
    let runtime: ContainerRuntime
    let logger: Logger

    static let headMemberLimit = 16 << 20

    /// Which member names an export may have: docs/archive-format.md.
    static func isAllowed(_ name: String) -> Bool {
        switch name {
        case ExportMetadata.memberName, "config.dump", "spec.dump", "deleted.files", "stats-dump", "rootfs-diff.tar",
            NetworkStatusDump.memberName:
            return true
        default:
            let parts = name.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[1].isEmpty, parts[1] != ".", parts[1] != ".." else { return false }
            if parts[0] == "checkpoint" { return true }
            if parts[0] == "volumes", parts[1].hasSuffix(".tar") {
                return (try? Names.validate(String(parts[1].dropLast(4)), kind: "volume")) != nil
            }
            return false
        }
    }

    func importArchive(_ options: ImportOptions) throws -> ContainerRecord {
        let reader = try ExportReader(path: options.path, displayName: options.displayName, key: options.key, allowing: Self.isAllowed)
        func fail(_ message: String) -> CheckpointError {
            CheckpointError(.invalidArchive, "cannot import \(options.described): \(message)")
        }

        // The head: metadata first, checked before anything is written.
        guard let first = try reader.next(), first.name == ExportMetadata.memberName else {
            throw fail("it does not start with \(ExportMetadata.memberName); is it a Ferry export?")
        }
        let metadata: ExportMetadata
        do {
            metadata = try JSONDecoder.ferry.decode(ExportMetadata.self, from: Data(try reader.data(max: Self.headMemberLimit)))
        } catch let error as ArchiveError {
            throw error
        } catch {
            throw fail("\(ExportMetadata.memberName) is not valid: \(error)")
        }
        guard metadata.formatVersion == ExportMetadata.formatVersion else {
            throw CheckpointError(
                .incompatible,
                "cannot import \(options.described): format version \(metadata.formatVersion) is not supported (this Ferry reads \(ExportMetadata.formatVersion))"
            )
        }
        if options.requireTCPEstablished, !metadata.tcpEstablished {
            throw CheckpointError(
                .incompatible,
                "cannot import \(options.described) with --tcp-established: its checkpoint was taken without --tcp-established")
        }
        try reader.expect(sizes: metadata.members)
        let name = options.name ?? metadata.containerName
        try Names.validate(name, kind: "container")
        let base = try checkCompatibility(metadata, name: name, options: options)

        let id = ContainerStore.newID()
        let store = runtime.containers
        let directory = store.directory(id)
        var committed = false
        try Files.createDirectory(directory, mode: 0o700)
        defer { if !committed { try? Files.removeTree(directory) } }
        // Killed before the commit, this process leaves a directory no command shows:
        // the lease lets the next `ps` (ContainerStore.removeAbandonedImports) remove it.
        let lease = try OperationLease(path: store.operationPath(id), kind: "import")
        defer { lease.release() }
        try reader.ensureSpace(directory: directory)

        let images = "\(directory)/\(CheckpointMetadata.imagesDirectory)"
        let staging = "\(directory)/import-volumes"
        for path in [images, staging, store.upperPath(id), store.workPath(id), store.rootfsPath(id)] {
            try Files.createDirectory(path, mode: 0o700)
        }
        let imagesFD = try OwnedFD.open(images, O_RDONLY | O_DIRECTORY)
        var specData: Data?
        var deleted: [String]?
        var sawDiff = false
        var tally = ProgressTally(metadata.members, sink: options.progress, verb: "importing")
        while let member = try reader.next() {
            tally.starting(member.name, bytes: member.size)
            switch member.name {
            case "config.dump":
                _ = try reader.data(max: Self.headMemberLimit)
            case "spec.dump":
                specData = Data(try reader.data(max: Self.headMemberLimit))
            case "deleted.files":
                deleted = try JSONDecoder().decode([String].self, from: Data(try reader.data(max: Self.headMemberLimit)))
            case "stats-dump":
                let fd = try imagesFD.openAt("stats-dump", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
                try reader.copy(to: fd)
            case "rootfs-diff.tar":
                guard let deleted else { throw fail("rootfs-diff.tar comes before deleted.files") }
                _ = try RootfsDiff.apply(from: reader, deleted: deleted, intoUpper: store.upperPath(id))
                sawDiff = true
            default:
                if member.name.hasPrefix("checkpoint/") {
                    let file = String(member.name.dropFirst("checkpoint/".count))
                    let fd = try imagesFD.openAt(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
                    try reader.copy(to: fd)
                } else if member.name.hasPrefix("volumes/") {
                    let volume = String(member.name.dropFirst("volumes/".count).dropLast(4))
                    let target = "\(staging)/\(volume)"
                    try Files.createDirectory(target, mode: 0o755)
                    let fd = try OwnedFD.open(target, O_RDONLY | O_DIRECTORY)
                    _ = try reader.extractTar(into: fd, policy: .volume)
                } else {
                    try reader.skip()
                }
            }
        }
        _ = try reader.finish()
        tally.finish("imported")
        guard let specData, sawDiff else { throw fail("spec.dump or rootfs-diff.tar is missing") }
        var spec: OCISpec
        do {
            spec = try JSONDecoder().decode(OCISpec.self, from: specData)
        } catch {
            throw fail("spec.dump is not a valid OCI runtime spec: \(error)")
        }

        if options.checkHostPorts, metadata.network == .host {
            let files = "\(images)/files.img"
            let held = Files.exists(files) ? try CRIUBoundPort.held(inFilesImage: try Files.read(files)) : []
            let busy = held.filter(CRIUBoundPort.heldOnHost().contains)
            if !busy.isEmpty {
                throw CheckpointError(
                    .incompatible,
                    "cannot restore container '\(name)': it shares the host's network and holds \(busy.map(\.description).joined(separator: ", ")), already in use on this host (is the original still running?)"
                )
            }
        }

        // Commit: volumes into place, then the container's state and name.
        var volumes: [VolumeMount] = metadata.bindMounts.map { VolumeMount(kind: .bind, source: $0.source, destination: $0.destination, readOnly: $0.readOnly) }
        var created: [String] = []
        for volume in metadata.volumes {
            volumes.append(VolumeMount(kind: .named, source: volume.name, destination: volume.destination, readOnly: volume.readOnly))
            let staged = "\(staging)/\(volume.name)"
            guard Files.exists(staged) else { continue }  // exported with --ignore-volumes
            if (try? runtime.volumes.inspect(volume.name)) == nil {
                try runtime.volumes.create(volume.name)
                created.append(volume.name)
            }
            let data = runtime.volumes.dataPath(volume.name)
            try Files.removeTree(data)
            try Files.move(staged, to: data)
        }
        spec.linux?.cgroupsPath = "\(runtime.root.cgroupParent)/\(id)"
        spec.mounts = spec.mounts.map { mount in
            var mount = mount
            if let volume = metadata.volumes.first(where: { $0.destination == mount.destination }) {
                mount.source = runtime.volumes.dataPath(volume.name)
            }
            return mount
        }
        try Files.removeTree(staging)
        try CheckpointMetadata(
            stdio: metadata.stdio, network: metadata.network, checkpointedAt: metadata.checkpointedAt,
            frozenMilliseconds: metadata.frozenMilliseconds, tcpEstablished: metadata.tcpEstablished, fileLocks: metadata.fileLocks,
            lazyPages: metadata.lazyPages
        ).save(in: directory)
        var record = ContainerRecord(
            id: id, name: name, image: metadata.image, imageDigest: metadata.imageDigest, lowerDirectory: base,
            command: spec.process.args, created: Date(), network: metadata.network, volumes: volumes,
            status: .checkpointed(CheckpointState(checkpointedAt: metadata.checkpointedAt, imagesDirectory: CheckpointMetadata.imagesDirectory))
        )
        record.createdVolumes = created.isEmpty ? nil : created
        record.imageSettings = metadata.imageSettings
        do {
            let config = try JSONEncoder.ferry.encode(spec)
            if let request = Self.networkRequest(metadata, options: options) {
                record = try runtime.createOnNetwork(record, config: config, request: request)
            } else {
                try store.create(record, config: config)
            }
        } catch {
            for volume in created { try? runtime.volumes.remove(volume, usedBy: []) }
            throw error
        }
        committed = true
        return record
    }

    /// The checks made before anything is written. Returns the base image's rootfs.
    func checkCompatibility(_ metadata: ExportMetadata, name: String, options: ImportOptions) throws -> String {
        func incompatible(_ message: String) -> CheckpointError {
            CheckpointError(.incompatible, "cannot import \(options.described): \(message)")
        }
        if (try? runtime.containers.resolve(name)) != nil, Files.exists("\(runtime.root.namesDirectory)/\(name)") {
            throw CheckpointError(.conflict, "cannot import \(options.described): the container name '\(name)' is already in use (choose another with --name)")
        }
        guard let digest = metadata.imageDigest else {
            throw incompatible("it was made from a bundle, not an image; only image-based containers can be imported")
        }
        let base: String
        do {
            base = try ImageStore(root: runtime.root.path).resolve(digest).lowerDirectories
        } catch {
            throw incompatible(
                "its base image \(metadata.image) (\(digest)) is not on this host: import the same tree with `ferry image import DIR \(metadata.image)`")
        }
        for bind in metadata.bindMounts where !Files.exists(bind.source) {
            throw incompatible(
                "bind-mount source \(bind.source) (for \(bind.destination)) does not exist on this host; Ferry never creates host paths for an archive")
        }
        if !options.force {
            for volume in metadata.volumes where (try? runtime.volumes.inspect(volume.name)) != nil {
                throw CheckpointError(
                    .conflict, "cannot import \(options.described): volume '\(volume.name)' already exists here (use --force to replace its content)")
            }
        }
        let criu = try CRIUSession()
        let version = try criu.checkVersion()
        if version < metadata.criuVersion / 100 * 100 {
            throw incompatible("it was made with CRIU \(CRIUSession.formatVersion(metadata.criuVersion)), this host has \(CRIUSession.formatVersion(version))")
        }
        let missing = CPUDescription.current().missingFlags(from: metadata.cpu)
        if !missing.isEmpty {
            throw incompatible("this CPU lacks features the source CPU had (\(missing.prefix(8).joined(separator: ", ")))")
        }
        try checkNetwork(metadata, name: name, options: options)
        return base
    }

    /// What the archive's endpoint asks of this host's network: its address and MAC as
    /// they were, unless the user lets them change.
    static func networkRequest(_ metadata: ExportMetadata, options: ImportOptions) -> NetworkRequest? {
        guard let endpoint = metadata.endpoint else { return nil }
        return NetworkRequest(
            network: endpoint.network, address: options.ignoreStaticIP ? nil : endpoint.address, mac: options.ignoreStaticMAC ? nil : endpoint.mac,
            ports: endpoint.ports, dns: endpoint.dns ?? [], addHosts: endpoint.addHosts ?? [])
    }

    /// The preflight of a bridge container: a network of the same name here, its address,
    /// MAC and ports free, checked before anything is written (the same allocation runs
    /// again, under the network lock, when the record is written).
    func checkNetwork(_ metadata: ExportMetadata, name: String, options: ImportOptions) throws {
        guard let request = Self.networkRequest(metadata, options: options) else { return }
        let network: NetworkRecord
        do {
            network = try runtime.networks.load(request.network)
        } catch {
            throw CheckpointError(
                .incompatible,
                "cannot import \(options.described): its network '\(request.network)' does not exist on this host (create it with: ferry network create \(request.network))"
            )
        }
        do {
            _ = try NetworkStore.allocate(request, on: network, others: runtime.containers.list().compactMap(\.endpoint), container: name)
        } catch {
            let hint = options.ignoreStaticIP ? nil : "restore with --ignore-static-ip for a new address"
            throw CheckpointError(.conflict, "cannot import \(options.described)", cause: error, hint: hint)
        }
    }
}

extension Checkpointer {
    /// `ferry restore --import`: import the archive as a new container and restore it.
    /// If the restore fails, everything the import made is removed again.
    public func restore(importing options: ImportOptions) throws -> ContainerRecord {
        let record = try Importer(runtime: runtime, logger: logger).importArchive(options)
        options.progress.report("restoring")
        // On failure the supervisor removes the container and the volumes it created; its
        // error already names the container and keeps CRIU's cause.
        try runtime.startDetached(id: record.id, removeOnFailure: true, restore: true)
        return try runtime.load(record.id)
    }
}
