import FerryArchive
import FerrySystem
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// One stored image as callers see it.
public struct ImageRecord: Codable, Sendable, Equatable {
    /// "sha256:<64 hex>", the `TreeDigest` of the rootfs tree.
    public var digest: String
    /// Bytes of regular file content in the tree (hardlinked files counted once).
    public var size: UInt64
    /// When this tree was first imported.
    public var created: Date
    /// Every "name:tag" pointing at this image, sorted; empty for an image whose
    /// references all moved elsewhere (see `ImageStore.prune`).
    public var references: [String]
    /// The directory or archive it was first imported from, as an absolute path.
    public var source: String
    /// Its layers' digests, bottom first: a plain rootfs has one, the digest of its
    /// tree; an OCI or docker image has its layers' blob digests.
    public var layers: [String]
    /// How to run it, from the image's config (nil for a plain rootfs).
    public var config: ImageRuntimeConfig?
    /// The architecture and OS the image's config names.
    public var architecture: String?
    public var os: String?

    /// The first 12 hex digits of the digest, as `ferry image ls` shows it.
    public var shortID: String {
        String(digest.dropFirst(ImageStore.digestPrefix.count).prefix(12))
    }
}

/// What `ImageStore.remove` did.
public enum ImageRemoval: Sendable, Equatable {
    /// The reference is gone; other references still keep the image.
    case untagged(reference: String, digest: String)
    /// The reference was the last one: the image's tree was deleted too.
    case deleted(reference: String, digest: String)
}

/// The content-addressed store of read-only base trees ("images") under a state root.
///
/// Layout under `root`:
/// - `images/sha256/<hex>/image.json`: digest, size, created (RFC 3339), source, the
///   layers bottom first, and the image's run config
/// - `images/layers/<hex>/tree/`: one layer, stored once whatever number of images
///   share it, and stacked with the image's others as overlayfs lower directories;
///   `images/layers/<hex>/layer.json` holds its size. Whiteouts are overlayfs's own
///   (character devices 0/0, `trusted.overlay.opaque`), so the stack needs no flattening
/// - `images/sha256/<hex>/rootfs/`: the single tree of an image imported before layers
///   existed (its image.json lists none); still used as its only lower directory
/// - `images/index.json`: references ("name:tag") to digests
/// - `images/tmp/<pid>-<start time>-<random>/`: imports in progress and trees being
///   deleted; entries whose process is gone are removed by the next import or prune
/// - `images/lock`: held around every change of the index or of `images/sha256`
///
/// An image directory appears by one `rename(2)` of a complete staging directory (tree
/// synced, image.json written), and disappears by one rename into `tmp/`; the index is
/// replaced atomically. So a reader needs no lock and a crash leaves at worst garbage in
/// `tmp/` or an unreferenced image, never a half-written one. Staging inside the store
/// keeps it on the same filesystem, which the rename needs.
public struct ImageStore: Sendable {
    /// The state root this store lives in.
    public let root: String
    private let logger: Logger

    static let digestPrefix = "sha256:"

    /// The store under the state root `root` (e.g. /var/lib/ferry). Nothing is created
    /// until the first import.
    public init(root: String, logger: Logger = Logger(label: "ferry.store.images")) {
        self.root = root
        self.logger = logger
    }

    var imagesDirectory: String { "\(root)/images" }
    var digestsDirectory: String { "\(imagesDirectory)/sha256" }
    var temporaryDirectory: String { "\(imagesDirectory)/tmp" }
    var indexPath: String { "\(imagesDirectory)/index.json" }
    var layersDirectory: String { "\(imagesDirectory)/layers" }
    func layerDirectory(hex: String) -> String { "\(layersDirectory)/\(hex)" }
    var lockPath: String { "\(imagesDirectory)/lock" }

    func imageDirectory(hex: String) -> String { "\(digestsDirectory)/\(hex)" }

    /// The overlayfs `lowerdir` value for the image with `digest`: its layers' trees,
    /// top first, joined by ':'. Throws for anything that is not a well-formed digest, so
    /// no caller can turn a digest into a path outside the store.
    public func lowerDirectories(digest: String) throws(StoreError) -> String {
        guard let hex = Self.hex(ofDigest: digest) else {
            throw StoreError(.invalidReference, "invalid image digest '\(digest)': expected sha256: and 64 lowercase hex digits")
        }
        let metadata = try readMetadata(hex: hex)
        return try lowerDirectories(hex: hex, metadata: metadata, asked: digest)
    }

    private func lowerDirectories(hex: String, metadata: ImageMetadata, asked: String) throws(StoreError) -> String {
        guard let layers = metadata.layers else {
            let rootfs = "\(imageDirectory(hex: hex))/rootfs"
            guard Files.isDirectory(rootfs) else {
                throw StoreError(.corrupt, "image '\(asked)' (\(metadata.digest)) has lost its tree (import it again)")
            }
            return rootfs
        }
        var trees: [String] = []
        for layer in layers.reversed() {
            guard let layerHex = Self.hex(ofDigest: layer.digest) else {
                throw StoreError(.corrupt, "image '\(asked)' lists an invalid layer digest '\(layer.digest)'")
            }
            let tree = "\(layerDirectory(hex: layerHex))/tree"
            guard Files.isDirectory(tree) else {
                throw StoreError(.corrupt, "image '\(asked)' (\(metadata.digest)): layer \(layer.digest) is missing (import the image again)")
            }
            trees.append(tree)
        }
        // overlayfs splits lowerdir on ':' and its options on ','.
        if root.contains(":") || root.contains(",") {
            throw StoreError(.invalidArgument, "the state root '\(root)' contains ':' or ',', which overlayfs cannot take in a lower directory")
        }
        return trees.joined(separator: ":")
    }

    // MARK: - Import

    /// The most bytes of file content one import may unpack, all layers together: far
    /// beyond any real image, and a bound for a compression bomb.
    public static let maximumImageBytes: UInt64 = 256 << 30

    /// Imports an image as `reference`, or under the names the archive gives it when
    /// `reference` is nil.
    ///
    /// `source` is recognized by its content, whatever it is called:
    /// - an OCI image layout directory (`oci-layout` and `index.json`), or a tar of one
    ///   (`podman save --format oci-archive`);
    /// - a docker-archive (`docker save`, `podman save`: `manifest.json`), as a tar or
    ///   extracted into a directory;
    /// - otherwise a rootfs: a directory (copied) or a tar stream, plain or compressed
    ///   with gzip, bzip2, xz, zstd or lz4.
    ///
    /// Everything is extracted with `SafeTreeExtractor` (archives and layers are
    /// untrusted). Each blob is checked against its descriptor's digest and size; layers
    /// already in the store are not extracted again. The image appears by one rename,
    /// and its layers before it, all under the lock. An existing reference is moved to
    /// the new image; the image it pointed to stays until `prune` or a `remove` of its
    /// other references.
    ///
    /// On failure nothing is left behind: no staging directory, no index change.
    @discardableResult
    public func importImage(from source: String, as reference: ImageReference?, progress: ProgressSink = .none) throws(StoreError) -> ImageRecord {
        let context = "cannot import image '\(reference.map(\.description) ?? source)'"
        let status: FileStatus
        let sourcePath: String
        do {
            status = try Files.status(source)
            sourcePath = try Files.realPath(source)
        } catch {
            if error.errno == .noSuchFileOrDirectory {
                throw StoreError(.notFound, "no such source '\(source)'", cause: error.errno)
            }
            throw StoreError(.importFailed, "\(context)", cause: error)
        }
        guard status.kind == .directory || status.kind == .regular else {
            throw StoreError(.importFailed, "\(context): '\(source)' is not a directory or an archive")
        }

        try createLayout(context: context)
        try locked(context) { () throws(StoreError) in try removeAbandonedStaging() }
        let staging = try makeStagingDirectory(context: context)
        defer { try? Files.removeUntrustedTree(staging) }
        do {
            // Phases only: the layers' bytes are not counted on their way in.
            progress.report("importing \(source)", total: status.kind == .regular ? status.size : nil)
            let record = try build(in: staging, from: sourcePath, isDirectory: status.kind == .directory, as: reference, context: context)
            progress.finish("imported", done: Int64(record.size))
            return record
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.importFailed, "\(context)", cause: error)
        }
    }

    /// A layer ready to publish: its digest, size, and its staged tree when this import
    /// extracted it (nil when the store already had it).
    struct StagedLayer {
        var record: LayerRecord
        var stagedTree: String?
    }

    private func build(
        in staging: String, from source: String, isDirectory: Bool, as reference: ImageReference?, context: String
    ) throws -> ImageRecord {
        // A directory is read where it is; an archive is unpacked first (it is untrusted
        // like any tar), then recognized by what it holds.
        var layoutPath = source
        if !isDirectory {
            layoutPath = "\(staging)/source"
            try extractTree(
                stream: try OwnedFD.open(source, O_RDONLY | O_NOCTTY), name: "'\(source)'", into: layoutPath,
                whiteouts: .keep, maximumBytes: Self.maximumImageBytes)
        }
        let layoutRoot = try OwnedFD.open(layoutPath, O_RDONLY | O_DIRECTORY)
        let plan: ImagePlan
        if let kind = ImageLayout.detect(layoutRoot) {
            plan = try stageLayout(layoutRoot, kind: kind, staging: staging, reference: reference, context: context)
        } else {
            plan = try stageRootfs(
                layoutPath, isDirectory: isDirectory, staging: staging, reference: reference, source: source, context: context)
        }
        let metadata = ImageMetadata(
            digest: plan.digest, size: plan.layers.reduce(0) { $0 + $1.record.size }, created: Date(), source: source,
            layers: plan.layers.map(\.record), config: plan.config?.config, architecture: plan.config?.architecture,
            os: plan.config?.os)
        let imageStaging = "\(staging)/image"
        try Files.createDirectory(imageStaging, mode: 0o700)
        try write(metadata, to: "\(imageStaging)/image.json", context: context)
        // The renames below publish the trees: make their content durable first.
        Files.syncAll()
        return try locked(context) { () throws(StoreError) in
            try publish(staging: imageStaging, layers: plan.layers, metadata: metadata, as: plan.references, context: context)
        }
    }

    /// What an import will publish.
    private struct ImagePlan {
        var digest: String
        var layers: [StagedLayer]
        var config: ImageConfigFile?
        var references: [ImageReference]
    }

    /// A plain rootfs: one layer, whose digest (the `TreeDigest` of its tree) is also
    /// the image's.
    private func stageRootfs(
        _ path: String, isDirectory: Bool, staging: String, reference: ImageReference?, source: String, context: String
    ) throws -> ImagePlan {
        guard let reference else {
            throw StoreError(.invalidArgument, "\(context): '\(source)' is a root filesystem, which names no image: give NAME[:TAG]")
        }
        var tree = path
        if isDirectory {
            // Copied through a tar so that the one confined extractor writes the tree:
            // the walk never follows a symlink, and what it cannot carry (sockets,
            // device nodes) is left out.
            let tar = "\(staging)/rootfs.tar"
            let summary = try RootfsDiff.create(upperDirectory: path, tarPath: tar)
            for skipped in summary.skipped {
                logger.debug("import: left out", metadata: ["ferry.image": "\(reference)", "ferry.path": "\(skipped)"])
            }
            tree = "\(staging)/source"
            try extractTree(
                stream: try OwnedFD.open(tar, O_RDONLY | O_NOCTTY), name: "the copy of '\(source)'", into: tree,
                whiteouts: .keep, maximumBytes: Self.maximumImageBytes)
            try Files.removeUntrustedTree(tar)
        }
        let summary = try TreeDigest.summarize(root: tree)
        let layerTree = "\(staging)/layer-0"
        try Files.createDirectory(layerTree, mode: 0o700)
        try Files.move(tree, to: "\(layerTree)/tree")
        let layer = StagedLayer(record: LayerRecord(digest: summary.digest, size: summary.size), stagedTree: layerTree)
        return ImagePlan(digest: summary.digest, layers: [layer], config: nil, references: [reference])
    }

    /// An OCI layout or docker-archive: the image chosen, its blobs checked, its new
    /// layers extracted.
    private func stageLayout(
        _ root: borrowing OwnedFD, kind: ImageLayout.Kind, staging: String, reference: ImageReference?, context: String
    ) throws -> ImagePlan {
        let images = try ImageLayout.images(in: root, kind: kind, context: context)
        let (image, references) = try choose(from: images, reference: reference, context: context)
        var layers: [StagedLayer] = []
        var budget = Self.maximumImageBytes
        for (position, layer) in image.layers.enumerated() {
            guard let hex = Self.hex(ofDigest: layer.digest) else {
                throw StoreError(.importFailed, "\(context): invalid layer digest '\(layer.digest)'")
            }
            if let existing = try? readLayer(hex: hex) {
                layers.append(StagedLayer(record: existing, stagedTree: nil))
                continue
            }
            let blob = try ImageLayout.openBlob(layer, in: root, context: context)
            let layerStaging = "\(staging)/layer-\(position)"
            try Files.createDirectory(layerStaging, mode: 0o700)
            let extracted = try extractTree(
                stream: blob, name: "layer \(layer.digest)", into: "\(layerStaging)/tree", whiteouts: .overlay, maximumBytes: budget)
            guard extracted.digest == layer.digest else {
                throw StoreError(.importFailed, "\(context): layer \(layer.digest): digest mismatch (the blob hashes to \(extracted.digest))")
            }
            if let size = layer.size, UInt64(size) != extracted.streamBytes {
                throw StoreError(.importFailed, "\(context): layer \(layer.digest): the descriptor says \(size) bytes, the blob has \(extracted.streamBytes)")
            }
            budget -= extracted.bytes
            layers.append(StagedLayer(record: LayerRecord(digest: layer.digest, size: extracted.bytes), stagedTree: layerStaging))
        }
        return ImagePlan(digest: image.id, layers: layers, config: image.config, references: references)
    }

    /// The image to import and the references to give it: `reference` when given (and
    /// the image it names when the archive holds several), else the archive's names.
    private func choose(
        from images: [LayoutImage], reference: ImageReference?, context: String
    ) throws(StoreError) -> (LayoutImage, [ImageReference]) {
        guard !images.isEmpty else {
            throw StoreError(.importFailed, "\(context): the archive holds no image for this platform")
        }
        if let reference {
            if images.count == 1 { return (images[0], [reference]) }
            let matching = images.filter { image in image.names.contains { Self.reference(fromArchiveName: $0) == reference } }
            guard matching.count == 1 else {
                throw StoreError(.invalidArgument, "\(context): the archive holds \(images.count) images and none is named '\(reference)'")
            }
            return (matching[0], [reference])
        }
        guard images.count == 1 else {
            let names = images.flatMap(\.names).joined(separator: ", ")
            throw StoreError(.invalidArgument, "\(context): the archive holds \(images.count) images (\(names)): name the one to import")
        }
        let references = images[0].names.compactMap(Self.reference(fromArchiveName:))
        guard !references.isEmpty else {
            let names = images[0].names.isEmpty ? "no name" : "only '\(images[0].names.joined(separator: "', '"))'"
            throw StoreError(.invalidArgument, "\(context): the archive gives the image \(names): give NAME[:TAG]")
        }
        return (images[0], Array(Set(references)).sorted { $0.description < $1.description })
    }

    /// A reference from a name an archive gives ("busybox:1.36",
    /// "docker.io/library/busybox:latest"); nil for a bare tag or a name Ferry's grammar
    /// refuses (a registry with a port).
    static func reference(fromArchiveName name: String) -> ImageReference? {
        guard name.contains(":") || name.contains("/") else { return nil }
        return try? ImageReference(name)
    }

    /// Extracts `stream` into the new directory `path`.
    @discardableResult
    private func extractTree(
        stream: consuming OwnedFD, name: String, into path: String, whiteouts: WhiteoutHandling, maximumBytes: UInt64
    ) throws -> (digest: String, streamBytes: UInt64, bytes: UInt64) {
        // The tree's root is 0755 whatever the umask unless the tar describes it ("./"),
        // so that a digest does not depend on who ran the import.
        try Files.createDirectory(path, mode: 0o755)
        try Files.setPermissions(path, 0o755)
        let destination = try OwnedFD.open(path, O_RDONLY | O_DIRECTORY)
        let result = try SafeTreeExtractor.extract(
            stream: stream, name: name, into: destination, policy: .rootfs, whiteouts: whiteouts, maximumBytes: maximumBytes)
        for warning in result.report.warnings {
            logger.debug("import warning", metadata: ["ferry.source": "\(name)", "ferry.warning": "\(warning)"])
        }
        return (result.digest, result.streamBytes, result.report.bytes)
    }

    /// Moves the staged layers and image into place (what the store already has is
    /// dropped) and points the references at the image. Runs under the lock.
    func publish(
        staging: String, layers: [StagedLayer], metadata: ImageMetadata, as references: [ImageReference], context: String
    ) throws(StoreError) -> ImageRecord {
        guard let hex = Self.hex(ofDigest: metadata.digest) else {
            throw StoreError(.importFailed, "\(context): unexpected digest '\(metadata.digest)'")
        }
        var published: [String] = []
        func undo() { for path in published { try? Files.removeUntrustedTree(path) } }
        do {
            try Files.createDirectory(layersDirectory, mode: 0o700)
            for layer in layers {
                guard let layerHex = Self.hex(ofDigest: layer.record.digest) else {
                    throw StoreError(.importFailed, "\(context): unexpected layer digest '\(layer.record.digest)'")
                }
                let final = layerDirectory(hex: layerHex)
                if Files.exists(final) { continue }
                guard let tree = layer.stagedTree else {
                    // Found when the import began, removed since by an `image rm`.
                    throw StoreError(.importFailed, "\(context): layer \(layer.record.digest) was removed during the import: import again")
                }
                try write(layer.record, to: "\(tree)/layer.json", context: context)
                try Files.move(tree, to: final)
                published.append(final)
            }
            Files.syncDirectory(layersDirectory)
        } catch let error as StoreError {
            undo()
            throw error
        } catch {
            undo()
            throw StoreError(.importFailed, "\(context)", cause: error)
        }
        let final = imageDirectory(hex: hex)
        let isNew = !Files.exists(final)
        if isNew {
            do {
                try Files.move(staging, to: final)
            } catch {
                undo()
                throw StoreError(.importFailed, "\(context)", cause: error)
            }
            published.append(final)
            Files.syncDirectory(digestsDirectory)
        }
        var index = try loadIndex()
        var previous: [String] = []
        for reference in references {
            if let old = index.references[reference.description] { previous.append(old) }
            index.references[reference.description] = metadata.digest
        }
        do {
            try saveIndex(index)
        } catch {
            // Leave nothing: an image nobody references would only be garbage.
            undo()
            throw StoreError(.importFailed, "\(context)", cause: error)
        }
        logger.debug(
            "image imported",
            metadata: [
                "ferry.image": "\(references.map(\.description).joined(separator: ","))", "ferry.digest": "\(metadata.digest)",
                "ferry.deduplicated": "\(!isNew)", "ferry.previous": "\(previous.joined(separator: ","))",
            ])
        return try record(hex: hex, index: index)
    }

    // MARK: - Queries

    /// Every image in the store, including ones no reference points at, sorted by their
    /// first reference (unreferenced last), then by digest.
    public func list() throws(StoreError) -> [ImageRecord] {
        let index = try loadIndex()
        let names: [String]
        do {
            names = Files.isDirectory(digestsDirectory) ? try Files.listDirectory(digestsDirectory) : []
        } catch {
            throw StoreError(.io, "cannot list images", cause: error)
        }
        var records: [ImageRecord] = []
        for hex in names where Self.isFullHex(hex) {
            do {
                records.append(try record(hex: hex, index: index))
            } catch {
                // Removed by another process since the listing, or damaged: a listing
                // shows what can be used.
                logger.debug("skipping image", metadata: ["ferry.digest": "\(hex)", "ferry.error": "\(error)"])
            }
        }
        return records.sorted { a, b in
            switch (a.references.first, b.references.first) {
            case let (x?, y?) where x != y: x < y
            case (_?, nil): true
            case (nil, _?): false
            default: a.digest < b.digest
            }
        }
    }

    /// The image `reference` points at, and its rootfs path.
    public func resolve(_ reference: ImageReference) throws(StoreError) -> (record: ImageRecord, lowerDirectories: String) {
        let index = try loadIndex()
        guard let digest = index.references[reference.description] else {
            throw Self.notFound(reference)
        }
        return try resolved(digest: digest, index: index, asked: reference.description)
    }

    /// Resolves what a user typed: "NAME[:TAG]", "sha256:<hex>", or a hex prefix of a
    /// digest of at least 12 digits (with or without "sha256:") that matches one image.
    /// An existing reference wins over a digest prefix that looks the same.
    public func resolve(_ string: String) throws(StoreError) -> (record: ImageRecord, lowerDirectories: String) {
        let index = try loadIndex()
        if string.hasPrefix(Self.digestPrefix) {
            return try resolvePrefix(String(string.dropFirst(Self.digestPrefix.count)), asked: string, index: index)
        }
        var parsed: ImageReference?
        var parseError: StoreError?
        do {
            parsed = try ImageReference(string)
        } catch {
            parseError = error
        }
        if let parsed, let digest = index.references[parsed.description] {
            return try resolved(digest: digest, index: index, asked: parsed.description)
        }
        if string.count >= 12 && Self.isHex(string) {
            return try resolvePrefix(string, asked: string, index: index)
        }
        if let parsed { throw Self.notFound(parsed) }
        throw parseError ?? StoreError(.invalidReference, "invalid image reference '\(string)'")
    }

    private func resolvePrefix(_ prefix: String, asked: String, index: ImageIndex) throws(StoreError) -> (record: ImageRecord, lowerDirectories: String) {
        guard prefix.count >= 12, prefix.count <= 64, Self.isHex(prefix) else {
            throw StoreError(.invalidReference, "invalid image digest '\(asked)': give sha256: and at least 12 of its lowercase hex digits")
        }
        let names = Files.isDirectory(digestsDirectory) ? ((try? Files.listDirectory(digestsDirectory)) ?? []) : []
        let matches = names.filter { Self.isFullHex($0) && $0.hasPrefix(prefix) }
        switch matches.count {
        case 0:
            throw StoreError(.notFound, "no image matches '\(asked)' (see: ferry image ls)")
        case 1:
            return try resolved(digest: Self.digestPrefix + matches[0], index: index, asked: asked)
        default:
            let list = matches.map { Self.digestPrefix + $0.prefix(16) + "…" }.joined(separator: ", ")
            throw StoreError(.invalidArgument, "image ID '\(asked)' is ambiguous: it matches \(list); give more digits")
        }
    }

    private func resolved(digest: String, index: ImageIndex, asked: String) throws(StoreError) -> (record: ImageRecord, lowerDirectories: String) {
        guard let hex = Self.hex(ofDigest: digest) else {
            throw StoreError(.corrupt, "image '\(asked)' has an invalid digest '\(digest)' in \(indexPath)")
        }
        guard Files.exists(imageDirectory(hex: hex)) else {
            throw StoreError(.corrupt, "image '\(asked)' points to \(digest), which is missing (import it again)")
        }
        let metadata = try readMetadata(hex: hex)
        return (record(hex: hex, metadata: metadata, index: index), try lowerDirectories(hex: hex, metadata: metadata, asked: asked))
    }

    // MARK: - Removal

    /// Removes `reference`. When it was the image's last reference the image is deleted
    /// too, with each of its layers that no other image has, unless `isInUse(digest)`
    /// says a container uses it: then nothing changes and the call fails with `.inUse`.
    /// (A container needs its image's layers only through its image, which it keeps.)
    @discardableResult
    public func remove(_ reference: ImageReference, isInUse: (String) -> Bool) throws(StoreError) -> ImageRemoval {
        guard Files.isDirectory(imagesDirectory) else { throw Self.notFound(reference) }
        let context = "cannot remove image '\(reference)'"
        var trash: [String] = []
        let removal = try locked(context) { () throws(StoreError) -> ImageRemoval in
            var index = try loadIndex()
            guard let digest = index.references.removeValue(forKey: reference.description) else {
                throw Self.notFound(reference)
            }
            if index.references.values.contains(digest) {
                try saveIndex(index, context: context)
                return .untagged(reference: reference.description, digest: digest)
            }
            if isInUse(digest) {
                throw StoreError(.inUse, "image '\(reference)' (\(digest)) is in use by a container: remove the container first")
            }
            trash.append(
                try discard(digest: digest, context: context) { () throws(StoreError) in
                    try saveIndex(index, context: context)
                })
            trash += discardUnusedLayers()
            return .deleted(reference: reference.description, digest: digest)
        }
        trash.forEach(deleteTrash)
        return removal
    }

    /// Deletes every image that no reference points at and `isInUse` does not claim, and
    /// what abandoned imports left in `images/tmp`. Returns the deleted digests.
    @discardableResult
    public func prune(isInUse: (String) -> Bool) throws(StoreError) -> [String] {
        guard Files.isDirectory(imagesDirectory) else { return [] }
        let context = "cannot prune images"
        var trash: [String] = []
        let deleted = try locked(context) { () throws(StoreError) -> [String] in
            try removeAbandonedStaging()
            let index = try loadIndex()
            let referenced = Set(index.references.values)
            let names: [String]
            do {
                names = Files.isDirectory(digestsDirectory) ? try Files.listDirectory(digestsDirectory) : []
            } catch {
                throw StoreError(.io, "\(context)", cause: error)
            }
            var deleted: [String] = []
            for hex in names where Self.isFullHex(hex) {
                let digest = Self.digestPrefix + hex
                if referenced.contains(digest) || isInUse(digest) { continue }
                trash.append(try discard(digest: digest, context: context) { () throws(StoreError) in })
                deleted.append(digest)
            }
            trash += discardUnusedLayers()
            return deleted
        }
        trash.forEach(deleteTrash)
        return deleted
    }

    /// Moves an image directory into `tmp/` (one rename, so it is gone from the store at
    /// once), then runs `commit`; if that fails the image is moved back. Returns the
    /// trash path, to be deleted after the lock is released. Runs under the lock.
    private func discard(digest: String, context: String, commit: () throws(StoreError) -> Void) throws(StoreError) -> String {
        guard let hex = Self.hex(ofDigest: digest) else {
            throw StoreError(.corrupt, "\(context): invalid digest '\(digest)' in \(indexPath)")
        }
        let directory = imageDirectory(hex: hex)
        let trash = "\(temporaryDirectory)/\(Self.temporaryName())"
        do {
            try Files.createDirectory(temporaryDirectory, mode: 0o700)
            if Files.exists(directory) { try Files.move(directory, to: trash) }
        } catch {
            throw StoreError(.io, "\(context)", cause: error)
        }
        do {
            try commit()
        } catch {
            if Files.exists(trash) { try? Files.move(trash, to: directory) }
            throw error
        }
        return trash
    }

    /// Moves every layer that no image lists into `tmp/`; returns the trash paths. An
    /// image whose metadata cannot be read keeps every layer: deleting on a guess could
    /// break it. Runs under the lock, after the image removal is committed, so a failure
    /// here only leaves a layer for the next prune.
    private func discardUnusedLayers() -> [String] {
        guard let layerNames = try? Files.listDirectory(layersDirectory) else { return [] }
        var used: Set<String> = []
        let imageNames = (try? Files.listDirectory(digestsDirectory)) ?? []
        for hex in imageNames where Self.isFullHex(hex) {
            guard let metadata = try? readMetadata(hex: hex) else {
                logger.warning("keeping every layer: an image's metadata is unreadable", metadata: ["ferry.digest": "\(hex)"])
                return []
            }
            for layer in metadata.layers ?? [] { used.insert(layer.digest) }
        }
        var trash: [String] = []
        for hex in layerNames where Self.isFullHex(hex) && !used.contains(Self.digestPrefix + hex) {
            let path = "\(temporaryDirectory)/\(Self.temporaryName())"
            do {
                try Files.move(layerDirectory(hex: hex), to: path)
                trash.append(path)
            } catch {
                logger.warning("cannot remove an unused layer", metadata: ["ferry.digest": "\(hex)", "ferry.error": "\(error)"])
            }
        }
        return trash
    }

    private func deleteTrash(_ path: String) {
        do {
            try Files.removeUntrustedTree(path)
        } catch {
            // The image is already gone from the store; the leftover is named after this
            // process, so the next import or prune deletes it once we have exited.
            logger.warning("cannot delete removed image tree", metadata: ["ferry.path": "\(path)", "ferry.error": "\(error)"])
        }
    }

    // MARK: - Layout, index, metadata

    func createLayout(context: String) throws(StoreError) {
        do {
            try Files.createDirectory(imagesDirectory, mode: 0o700)
            try Files.createDirectory(digestsDirectory, mode: 0o700)
            try Files.createDirectory(temporaryDirectory, mode: 0o700)
        } catch {
            throw StoreError(.io, "\(context)", cause: error)
        }
    }

    /// A new directory in `tmp/`, named after this process so that a later run can tell
    /// an abandoned one from one still being filled.
    func makeStagingDirectory(context: String) throws(StoreError) -> String {
        let path = "\(temporaryDirectory)/\(Self.temporaryName())"
        do {
            try Files.createDirectory(path, mode: 0o700)
        } catch {
            throw StoreError(.io, "\(context)", cause: error)
        }
        return path
    }

    /// "<pid>-<start time>-<random>": the start time tells a live process from a new one
    /// that reused the pid.
    private static func temporaryName() -> String {
        let pid = getpid()
        let start = Processes.startTime(of: pid) ?? 0
        return "\(pid)-\(start)-\(String(UInt64.random(in: .min ... .max), radix: 16))"
    }

    /// Deletes staging and trash directories whose process has exited. Runs under the
    /// lock, so two cleaners never race on one directory.
    private func removeAbandonedStaging() throws(StoreError) {
        guard let names = try? Files.listDirectory(temporaryDirectory) else { return }
        for name in names {
            let parts = name.split(separator: "-")
            guard parts.count == 3, let pid = Int32(parts[0]), let start = UInt64(parts[1]) else { continue }
            if Processes.isAlive(pid, startTime: start == 0 ? nil : start) { continue }
            logger.debug("removing abandoned image staging", metadata: ["ferry.path": "\(name)"])
            do {
                try Files.removeUntrustedTree("\(temporaryDirectory)/\(name)")
            } catch {
                throw StoreError(.io, "cannot remove abandoned staging directory", cause: error)
            }
        }
    }

    func locked<T>(_ context: String, _ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        do {
            try Files.createDirectory(imagesDirectory, mode: 0o700)
            return try FileLock.holding(lockPath) { () throws -> T in try body() }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.io, "\(context)", cause: error)
        }
    }

    func loadIndex() throws(StoreError) -> ImageIndex {
        guard Files.exists(indexPath) else { return ImageIndex(references: [:]) }
        do {
            return try JSONDecoder.ferry.decode(ImageIndex.self, from: Data(Files.read(indexPath)))
        } catch {
            throw StoreError(.corrupt, "cannot read the image index \(indexPath)", cause: error)
        }
    }

    private func saveIndex(_ index: ImageIndex, context: String = "cannot update the image index") throws(StoreError) {
        try write(index, to: indexPath, context: context)
    }

    func write(_ value: some Encodable, to path: String, context: String) throws(StoreError) {
        do {
            try Files.writeAtomically(JSONEncoder.ferry.encode(value), to: path)
        } catch {
            throw StoreError(.io, "\(context): cannot write \(path)", cause: error)
        }
    }

    private func record(hex: String, index: ImageIndex) throws(StoreError) -> ImageRecord {
        record(hex: hex, metadata: try readMetadata(hex: hex), index: index)
    }

    private func record(hex: String, metadata: ImageMetadata, index: ImageIndex) -> ImageRecord {
        let digest = Self.digestPrefix + hex
        let references = index.references.filter { $0.value == digest }.map(\.key).sorted()
        return ImageRecord(
            digest: digest, size: metadata.size, created: metadata.created, references: references, source: metadata.source,
            layers: metadata.layers?.map(\.digest) ?? [digest], config: metadata.config, architecture: metadata.architecture,
            os: metadata.os)
    }

    func readMetadata(hex: String) throws(StoreError) -> ImageMetadata {
        let path = "\(imageDirectory(hex: hex))/image.json"
        do {
            return try JSONDecoder.ferry.decode(ImageMetadata.self, from: Data(Files.read(path)))
        } catch {
            throw StoreError(.corrupt, "cannot read image metadata \(path)", cause: error)
        }
    }

    func readLayer(hex: String) throws(StoreError) -> LayerRecord {
        let path = "\(layerDirectory(hex: hex))/layer.json"
        do {
            return try JSONDecoder.ferry.decode(LayerRecord.self, from: Data(Files.read(path)))
        } catch {
            throw StoreError(.corrupt, "cannot read layer metadata \(path)", cause: error)
        }
    }

    /// Whether the layer with `hex` is in the store.
    public func hasLayer(_ digest: String) -> Bool {
        guard let hex = Self.hex(ofDigest: digest) else { return false }
        return (try? readLayer(hex: hex)) != nil && Files.isDirectory("\(layerDirectory(hex: hex))/tree")
    }

    private static func notFound(_ reference: ImageReference) -> StoreError {
        StoreError(.notFound, "image '\(reference)' not found (import it with: ferry image import DIR \(reference))")
    }

    // MARK: - Digests

    /// The 64 hex digits of a well-formed "sha256:<hex>" digest.
    static func hex(ofDigest digest: String) -> String? {
        guard digest.hasPrefix(digestPrefix) else { return nil }
        let hex = String(digest.dropFirst(digestPrefix.count))
        return isFullHex(hex) ? hex : nil
    }

    static func isFullHex(_ string: String) -> Bool {
        string.utf8.count == 64 && isHex(string)
    }

    static func isHex(_ string: String) -> Bool {
        !string.isEmpty && string.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}

/// `images/index.json`.
struct ImageIndex: Codable {
    /// "name:tag" to "sha256:<hex>".
    var references: [String: String]
}

/// `images/sha256/<hex>/image.json`.
struct ImageMetadata: Codable {
    var digest: String
    var size: UInt64
    var created: Date
    var source: String
    /// Bottom first; nil for an image imported before layers, whose tree is `rootfs/`.
    var layers: [LayerRecord]?
    var config: ImageRuntimeConfig?
    var architecture: String?
    var os: String?
}

/// `images/layers/<hex>/layer.json`, and an entry of an image's layer list.
struct LayerRecord: Codable {
    var digest: String
    /// Bytes of file content in the layer.
    var size: UInt64
}
