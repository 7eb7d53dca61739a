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
/// - `images/sha256/<hex>/rootfs/`: the tree, used as an overlayfs lower layer
/// - `images/sha256/<hex>/image.json`: digest, size, created (RFC 3339), source
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
    var lockPath: String { "\(imagesDirectory)/lock" }

    func imageDirectory(hex: String) -> String { "\(digestsDirectory)/\(hex)" }

    /// The rootfs directory of the image with `digest` ("sha256:<64 hex>"); the image
    /// need not exist. Throws for anything that is not a well-formed digest, so no caller
    /// can turn a digest into a path outside the store.
    public func rootfsPath(digest: String) throws(StoreError) -> String {
        guard let hex = Self.hex(ofDigest: digest) else {
            throw StoreError(.invalidReference, "invalid image digest '\(digest)': expected sha256: and 64 lowercase hex digits")
        }
        return "\(imageDirectory(hex: hex))/rootfs"
    }

    // MARK: - Import

    /// Imports a tree as `reference`.
    ///
    /// `source` is a directory (copied) or a file holding a tar stream, plain or
    /// compressed with gzip, bzip2, xz, zstd or lz4 (detected from the content, so .tar,
    /// .tar.gz, .tgz, .tar.zst and .tar.xz all work, whatever the name). The tree is
    /// built in a private staging directory, digested, and published by a rename; if an
    /// image with that digest exists the copy is dropped and only the reference added. An
    /// existing `reference` is moved to the new image; the image it pointed to stays
    /// (containers may use it) until `prune` or a `remove` of its other references.
    ///
    /// On failure nothing is left behind: no staging directory, no index change.
    @discardableResult
    public func importImage(from source: String, as reference: ImageReference) throws(StoreError) -> ImageRecord {
        let context = "cannot import '\(source)' as '\(reference)'"
        let status: FileStatus
        let sourcePath: String
        do {
            status = try Files.status(source)
            sourcePath = try Files.realPath(source)
        } catch {
            if error.errno == .noSuchFileOrDirectory {
                throw StoreError(.notFound, "no such source '\(source)': \(error.errno)")
            }
            throw StoreError(.importFailed, "\(context): \(error)")
        }
        guard status.kind == .directory || status.kind == .regular else {
            throw StoreError(.importFailed, "\(context): not a directory or a tar archive")
        }

        try createLayout(context: context)
        try locked(context) { () throws(StoreError) in try removeAbandonedStaging() }
        let staging = try makeStagingDirectory(context: context)
        do {
            let record = try build(
                in: staging, from: sourcePath, isDirectory: status.kind == .directory,
                as: reference, context: context)
            // After a dedupe the staging copy is still here; after a publish it is gone.
            try? Files.removeUntrustedTree(staging)
            return record
        } catch {
            try? Files.removeUntrustedTree(staging)
            throw error
        }
    }

    private func build(
        in staging: String, from source: String, isDirectory: Bool, as reference: ImageReference, context: String
    ) throws(StoreError) -> ImageRecord {
        let rootfs = "\(staging)/rootfs"
        let summary: TreeSummary
        do {
            // The tree's root gets the source's mode when the source describes it (a
            // directory, or a tar with a "./" member); otherwise 0755 whatever the umask,
            // so that the digest does not depend on who ran the import.
            try Files.createDirectory(rootfs, mode: 0o755)
            try Files.setPermissions(rootfs, 0o755)
            let report =
                isDirectory
                ? try TreeExtractor.copy(directory: source, into: rootfs)
                : try TreeExtractor.extract(archive: source, into: rootfs)
            for warning in report.warnings {
                logger.debug("import warning", metadata: ["ferry.image": "\(reference)", "ferry.warning": "\(warning)"])
            }
            summary = try TreeDigest.summarize(root: rootfs)
        } catch {
            throw StoreError(.importFailed, "\(context): \(error)")
        }
        let metadata = ImageMetadata(digest: summary.digest, size: summary.size, created: Date(), source: source)
        try write(metadata, to: "\(staging)/image.json", context: context)
        // The rename below publishes the tree: make its content durable first.
        Files.syncAll()

        return try locked(context) { () throws(StoreError) in
            try publish(staging: staging, metadata: metadata, as: reference, context: context)
        }
    }

    /// Moves the staging directory into place (unless the digest exists) and points the
    /// reference at it. Runs under the lock.
    private func publish(
        staging: String, metadata: ImageMetadata, as reference: ImageReference, context: String
    ) throws(StoreError) -> ImageRecord {
        guard let hex = Self.hex(ofDigest: metadata.digest) else {
            throw StoreError(.importFailed, "\(context): unexpected digest '\(metadata.digest)'")
        }
        let final = imageDirectory(hex: hex)
        let isNew = !Files.exists(final)
        if isNew {
            do {
                try Files.move(staging, to: final)
            } catch {
                throw StoreError(.importFailed, "\(context): \(error)")
            }
            Files.syncDirectory(digestsDirectory)
        }
        var index = try loadIndex()
        let previous = index.references[reference.description]
        index.references[reference.description] = metadata.digest
        do {
            try saveIndex(index)
        } catch {
            // Leave nothing: an image nobody references would only be garbage.
            if isNew { try? Files.removeUntrustedTree(final) }
            throw StoreError(.importFailed, "\(context): \(error)")
        }
        logger.debug(
            "image imported",
            metadata: [
                "ferry.image": "\(reference)", "ferry.digest": "\(metadata.digest)",
                "ferry.deduplicated": "\(!isNew)", "ferry.previous": "\(previous ?? "none")",
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
            throw StoreError(.io, "cannot list images: \(error)")
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
    public func resolve(_ reference: ImageReference) throws(StoreError) -> (record: ImageRecord, rootfsPath: String) {
        let index = try loadIndex()
        guard let digest = index.references[reference.description] else {
            throw Self.notFound(reference)
        }
        return try resolved(digest: digest, index: index, asked: reference.description)
    }

    /// Resolves what a user typed: "NAME[:TAG]", "sha256:<hex>", or a hex prefix of a
    /// digest of at least 12 digits (with or without "sha256:") that matches one image.
    /// An existing reference wins over a digest prefix that looks the same.
    public func resolve(_ string: String) throws(StoreError) -> (record: ImageRecord, rootfsPath: String) {
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

    private func resolvePrefix(_ prefix: String, asked: String, index: ImageIndex) throws(StoreError) -> (record: ImageRecord, rootfsPath: String) {
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

    private func resolved(digest: String, index: ImageIndex, asked: String) throws(StoreError) -> (record: ImageRecord, rootfsPath: String) {
        guard let hex = Self.hex(ofDigest: digest) else {
            throw StoreError(.corrupt, "image '\(asked)' has an invalid digest '\(digest)' in \(indexPath)")
        }
        let rootfs = "\(imageDirectory(hex: hex))/rootfs"
        guard Files.isDirectory(rootfs) else {
            throw StoreError(.corrupt, "image '\(asked)' points to \(digest), whose tree is missing (import it again)")
        }
        return (try record(hex: hex, index: index), rootfs)
    }

    // MARK: - Removal

    /// Removes `reference`. When it was the image's last reference the tree is deleted
    /// too, unless `isInUse(digest)` says a container uses it: then nothing changes and
    /// the call fails with `.inUse`.
    @discardableResult
    public func remove(_ reference: ImageReference, isInUse: (String) -> Bool) throws(StoreError) -> ImageRemoval {
        guard Files.isDirectory(imagesDirectory) else { throw Self.notFound(reference) }
        let context = "cannot remove image '\(reference)'"
        var trash: String?
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
            trash = try discard(digest: digest, context: context) { () throws(StoreError) in
                try saveIndex(index, context: context)
            }
            return .deleted(reference: reference.description, digest: digest)
        }
        if let trash { deleteTrash(trash) }
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
                throw StoreError(.io, "\(context): \(error)")
            }
            var deleted: [String] = []
            for hex in names where Self.isFullHex(hex) {
                let digest = Self.digestPrefix + hex
                if referenced.contains(digest) || isInUse(digest) { continue }
                trash.append(try discard(digest: digest, context: context) { () throws(StoreError) in })
                deleted.append(digest)
            }
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
            throw StoreError(.io, "\(context): \(error)")
        }
        do {
            try commit()
        } catch {
            if Files.exists(trash) { try? Files.move(trash, to: directory) }
            throw error
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

    private func createLayout(context: String) throws(StoreError) {
        do {
            try Files.createDirectory(imagesDirectory, mode: 0o700)
            try Files.createDirectory(digestsDirectory, mode: 0o700)
            try Files.createDirectory(temporaryDirectory, mode: 0o700)
        } catch {
            throw StoreError(.io, "\(context): \(error)")
        }
    }

    /// A new directory in `tmp/`, named after this process so that a later run can tell
    /// an abandoned one from one still being filled.
    private func makeStagingDirectory(context: String) throws(StoreError) -> String {
        let path = "\(temporaryDirectory)/\(Self.temporaryName())"
        do {
            try Files.createDirectory(path, mode: 0o700)
        } catch {
            throw StoreError(.io, "\(context): \(error)")
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
                throw StoreError(.io, "cannot remove abandoned staging directory: \(error)")
            }
        }
    }

    private func locked<T>(_ context: String, _ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        do {
            try Files.createDirectory(imagesDirectory, mode: 0o700)
            return try FileLock.holding(lockPath) { () throws -> T in try body() }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.io, "\(context): \(error)")
        }
    }

    func loadIndex() throws(StoreError) -> ImageIndex {
        guard Files.exists(indexPath) else { return ImageIndex(references: [:]) }
        do {
            return try JSONDecoder.ferry.decode(ImageIndex.self, from: Data(Files.read(indexPath)))
        } catch {
            throw StoreError(.corrupt, "cannot read the image index \(indexPath): \(error)")
        }
    }

    private func saveIndex(_ index: ImageIndex, context: String = "cannot update the image index") throws(StoreError) {
        try write(index, to: indexPath, context: context)
    }

    private func write(_ value: some Encodable, to path: String, context: String) throws(StoreError) {
        do {
            try Files.writeAtomically(JSONEncoder.ferry.encode(value), to: path)
        } catch {
            throw StoreError(.io, "\(context): cannot write \(path): \(error)")
        }
    }

    private func record(hex: String, index: ImageIndex) throws(StoreError) -> ImageRecord {
        let path = "\(imageDirectory(hex: hex))/image.json"
        let metadata: ImageMetadata
        do {
            metadata = try JSONDecoder.ferry.decode(ImageMetadata.self, from: Data(Files.read(path)))
        } catch {
            throw StoreError(.corrupt, "cannot read image metadata \(path): \(error)")
        }
        let digest = Self.digestPrefix + hex
        let references = index.references.filter { $0.value == digest }.map(\.key).sorted()
        return ImageRecord(
            digest: digest, size: metadata.size, created: metadata.created,
            references: references, source: metadata.source)
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
}
