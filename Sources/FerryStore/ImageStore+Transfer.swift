import FerryArchive
import FerrySystem
import Foundation

/// An image as one store hands it to another (a migration's destination that lacks it):
/// what its `image.json` says, and for each layer the receiver lacks, the layer's tree
/// as a tar with its deleted paths.
///
/// A layer is named by the digest of the blob it was extracted from, which its tree
/// cannot reproduce; so each layer sent carries its tree's `TreeDigest` as the sender
/// has it, and the receiver checks the tree it extracted against that. The image's own
/// digest (an OCI manifest's) cannot be recomputed either: it is taken from the sender,
/// whom the migration channel has authenticated.
public struct ImageTransfer: Codable, Sendable, Equatable {
    public struct Layer: Codable, Sendable, Equatable {
        /// "sha256:…", as in `ImageRecord.layers`.
        public var digest: String
        /// For a layer sent: its tree's `TreeDigest`, and its deleted paths (whiteouts
        /// and opaque directories, which a tar cannot carry: see `RootfsDiff`). Nil for a
        /// layer the receiver has.
        public var treeDigest: String?
        public var deleted: [String]?

        public var isSent: Bool { treeDigest != nil }
    }

    public var digest: String
    /// Bottom first, every layer of the image.
    public var layers: [Layer]
    public var config: ImageRuntimeConfig?
    public var architecture: String?
    public var os: String?

    /// The file name a sent layer's tar travels under.
    public static func archiveName(ofLayer digest: String) -> String {
        "layer-\(digest.dropFirst(ImageStore.digestPrefix.count)).tar"
    }
}

extension ImageStore {
    /// The layers of `digest`'s image that this store lacks, of those listed.
    public func missingLayers(_ layers: [String]) -> [String] {
        layers.filter { !hasLayer($0) }
    }

    /// Prepares `digest`'s image for a store that lacks the layers in `sending`: writes
    /// a tar of each of those layers' trees into `directory` (named by
    /// `ImageTransfer.archiveName`) and returns what the receiver needs besides.
    public func prepareTransfer(of digest: String, sending: Set<String>, into directory: String) throws(StoreError) -> ImageTransfer {
        let context = "cannot send image \(digest)"
        guard let hex = Self.hex(ofDigest: digest) else {
            throw StoreError(.invalidArgument, "\(context): invalid digest")
        }
        let metadata = try readMetadata(hex: hex)
        guard let layers = metadata.layers else {
            throw StoreError(.invalidArgument, "\(context): it is a plain rootfs, sent as one tree")
        }
        var sent: [ImageTransfer.Layer] = []
        for layer in layers {
            guard sending.contains(layer.digest) else {
                sent.append(ImageTransfer.Layer(digest: layer.digest, treeDigest: nil, deleted: nil))
                continue
            }
            guard let layerHex = Self.hex(ofDigest: layer.digest) else {
                throw StoreError(.corrupt, "\(context): invalid layer digest '\(layer.digest)'")
            }
            let tree = "\(layerDirectory(hex: layerHex))/tree"
            do {
                let tar = "\(directory)/\(ImageTransfer.archiveName(ofLayer: layer.digest))"
                let summary = try RootfsDiff.create(upperDirectory: tree, tarPath: tar)
                guard summary.skipped.isEmpty else {
                    throw StoreError(
                        .invalidArgument,
                        "\(context): layer \(layer.digest) holds what a tar cannot carry: \(summary.skipped.prefix(3).joined(separator: ", "))")
                }
                let treeDigest = try TreeDigest.compute(root: tree)
                sent.append(ImageTransfer.Layer(digest: layer.digest, treeDigest: treeDigest, deleted: summary.deleted))
            } catch let error as StoreError {
                throw error
            } catch {
                throw StoreError(.io, "\(context): layer \(layer.digest)", cause: error)
            }
        }
        return ImageTransfer(digest: metadata.digest, layers: sent, config: metadata.config, architecture: metadata.architecture, os: metadata.os)
    }

    /// Adds an image another store sent (`prepareTransfer`) as `reference`: each layer
    /// sent is extracted from its tar in `archives` (digest -> path) with the confined
    /// extractor and checked against its tree digest; every other layer must be here
    /// already. Published as an import is: layers, then the image, by renames under the
    /// lock; on failure nothing is left.
    @discardableResult
    public func receiveTransfer(
        _ transfer: ImageTransfer, archives: [String: String], as reference: ImageReference, source: String
    ) throws(StoreError) -> ImageRecord {
        let context = "cannot receive image '\(reference)'"
        guard Self.hex(ofDigest: transfer.digest) != nil, !transfer.layers.isEmpty else {
            throw StoreError(.importFailed, "\(context): invalid digest '\(transfer.digest)' or no layers")
        }
        try createLayout(context: context)
        let staging = try makeStagingDirectory(context: context)
        defer { try? Files.removeUntrustedTree(staging) }
        var layers: [StagedLayer] = []
        for (position, layer) in transfer.layers.enumerated() {
            guard let hex = Self.hex(ofDigest: layer.digest) else {
                throw StoreError(.importFailed, "\(context): invalid layer digest '\(layer.digest)'")
            }
            guard layer.isSent else {
                guard let existing = try? readLayer(hex: hex) else {
                    throw StoreError(.importFailed, "\(context): layer \(layer.digest) was neither sent nor is it here")
                }
                layers.append(StagedLayer(record: existing, stagedTree: nil))
                continue
            }
            guard let archive = archives[layer.digest] else {
                throw StoreError(.importFailed, "\(context): layer \(layer.digest) was announced but not sent")
            }
            let layerStaging = "\(staging)/layer-\(position)"
            let tree = "\(layerStaging)/tree"
            do {
                try Files.createDirectory(layerStaging, mode: 0o700)
                try Files.createDirectory(tree, mode: 0o755)
                _ = try RootfsDiff.apply(tarPath: archive, deleted: layer.deleted ?? [], intoUpper: tree)
                let summary = try TreeDigest.summarize(root: tree)
                guard summary.digest == layer.treeDigest else {
                    throw StoreError(
                        .importFailed, "\(context): layer \(layer.digest) arrived as a tree with digest \(summary.digest), not \(layer.treeDigest ?? "")")
                }
                layers.append(StagedLayer(record: LayerRecord(digest: layer.digest, size: summary.size), stagedTree: layerStaging))
            } catch let error as StoreError {
                throw error
            } catch {
                throw StoreError(.importFailed, "\(context): layer \(layer.digest)", cause: error)
            }
        }
        let metadata = ImageMetadata(
            digest: transfer.digest, size: layers.reduce(0) { $0 + $1.record.size }, created: Date(), source: source,
            layers: layers.map(\.record), config: transfer.config, architecture: transfer.architecture, os: transfer.os)
        let imageStaging = "\(staging)/image"
        do {
            try Files.createDirectory(imageStaging, mode: 0o700)
        } catch {
            throw StoreError(.io, "\(context)", cause: error)
        }
        try write(metadata, to: "\(imageStaging)/image.json", context: context)
        Files.syncAll()
        return try locked(context) { () throws(StoreError) in
            try publish(staging: imageStaging, layers: layers, metadata: metadata, as: [reference], context: context)
        }
    }
}
