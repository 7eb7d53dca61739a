import Crypto
import FerrySystem
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// The container image formats `ferry image import` reads, from the OCI image-spec
// (image layout, index, manifest, config) and docker's image spec v1.2 (`docker save`'s
// manifest.json). Every file is untrusted: it is opened beneath the layout's directory
// descriptor, its size is bounded, and every blob is checked against its digest.

/// A content descriptor: what a blob is, its digest and size.
public struct OCIDescriptor: Codable, Sendable, Equatable {
    public var mediaType: String?
    public var digest: String
    public var size: Int64
    public var annotations: [String: String]?
    public var platform: OCIPlatform?
}

/// The platform a manifest in an index is for.
public struct OCIPlatform: Codable, Sendable, Equatable {
    public var architecture: String
    public var os: String
    public var variant: String?
}

/// `{}`: the value type of the spec's sets (ExposedPorts, Volumes).
public struct EmptyObject: Codable, Sendable, Equatable {
    public init() {}
}

/// The part of an image config that says how to run it (the OCI config's `config`).
public struct ImageRuntimeConfig: Codable, Sendable, Equatable {
    public var user: String?
    public var exposedPorts: [String: EmptyObject]?
    public var env: [String]?
    public var entrypoint: [String]?
    public var cmd: [String]?
    public var workingDir: String?
    public var labels: [String: String]?
    public var stopSignal: String?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case user = "User"
        case exposedPorts = "ExposedPorts"
        case env = "Env"
        case entrypoint = "Entrypoint"
        case cmd = "Cmd"
        case workingDir = "WorkingDir"
        case labels = "Labels"
        case stopSignal = "StopSignal"
    }
}

/// An image config blob (application/vnd.oci.image.config.v1+json, or docker's).
public struct ImageConfigFile: Codable, Sendable, Equatable {
    public var architecture: String?
    public var os: String?
    public var config: ImageRuntimeConfig?
    public var rootfs: RootFS?

    public struct RootFS: Codable, Sendable, Equatable {
        public var type: String
        public var diffIDs: [String]

        enum CodingKeys: String, CodingKey {
            case type
            case diffIDs = "diff_ids"
        }
    }
}

struct OCIIndex: Codable {
    var manifests: [OCIDescriptor]
}

struct OCIManifest: Codable {
    var mediaType: String?
    var config: OCIDescriptor
    var layers: [OCIDescriptor]
}

/// One entry of docker-archive's manifest.json.
struct DockerManifestEntry: Codable {
    var config: String
    var repoTags: [String]?
    var layers: [String]

    enum CodingKeys: String, CodingKey {
        case config = "Config"
        case repoTags = "RepoTags"
        case layers = "Layers"
    }
}

/// One layer of an image in a layout: where its blob is and what it must hash to.
public struct LayoutLayer: Sendable, Equatable {
    /// The blob's path inside the layout ("blobs/sha256/<hex>", or docker's "<id>/layer.tar").
    public let path: [UInt8]
    /// "sha256:<hex>" of the blob's bytes.
    public let digest: String
    /// The size the descriptor announced, when it did (docker-archive has none).
    public let size: Int64?
}

/// One image found in a layout.
public struct LayoutImage: Sendable, Equatable {
    /// The image's ID: its manifest's digest, or for a docker-archive (which has no
    /// manifest blob) its config's digest, docker's own image ID.
    public let id: String
    /// Names the archive gives it ("busybox:latest", "docker.io/library/busybox:1.36",
    /// or a bare tag "1.36"), as written there.
    public let names: [String]
    public let config: ImageConfigFile
    /// Bottom layer first.
    public let layers: [LayoutLayer]
}

/// Reads an OCI image layout (a directory with `oci-layout` and `index.json`, as
/// `podman save --format oci-dir` writes, or an extracted oci-archive) or a
/// docker-archive (an extracted `docker save` / `podman save` tar, with `manifest.json`).
public enum ImageLayout {
    /// Which format a directory holds, by its content.
    public enum Kind: Sendable, Equatable {
        case oci
        case docker
    }

    /// The most bytes a JSON file of a layout may have: real ones are a few KiB.
    static let maximumJSONBytes: Int64 = 4 << 20
    /// How deep indexes may nest (an index naming a multi-platform index).
    static let maximumIndexDepth = 4
    /// The blob media types a layer may have: tar, plain or compressed.
    static let layerMediaTypes: Set<String> = [
        "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar", "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ]
    static let indexMediaTypes: Set<String> = [
        "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    ]

    /// How blobs are looked up: inside the layout, never through a magic link or onto
    /// another filesystem. Symlinks are followed but stay inside (`docker save` links a
    /// repeated layer.tar to its first copy).
    static let blobResolution: ResolveFlags = [.inRoot, .noMagicLinks, .noMountCrossing]

    /// The layout's kind, or nil for a plain rootfs. An OCI layout wins when both marks
    /// are present (docker 25 writes both).
    public static func detect(_ root: borrowing OwnedFD) -> Kind? {
        func isFile(_ name: String) -> Bool {
            (try? root.status(of: Array(name.utf8)))?.kind == .regular
        }
        if isFile("oci-layout") && isFile("index.json") { return .oci }
        if isFile("manifest.json") { return .docker }
        return nil
    }

    /// Every image the layout at `root` holds.
    public static func images(in root: borrowing OwnedFD, kind: Kind, context: String) throws(ArchiveError) -> [LayoutImage] {
        switch kind {
        case .oci: return try ociImages(in: root, context: context)
        case .docker: return try dockerImages(in: root, context: context)
        }
    }

    /// Opens a layer's blob for reading.
    public static func openBlob(_ layer: LayoutLayer, in root: borrowing OwnedFD, context: String) throws(ArchiveError) -> OwnedFD {
        let file = try openFile(layer.path, in: root, context: context)
        if let size = layer.size {
            let actual = try io("\(context): blob \(layer.digest)") { () throws(Errno) in try file.status() }.size
            guard Int64(actual) == size else {
                throw ArchiveError(.verificationFailed, "\(context): layer \(layer.digest): the descriptor says \(size) bytes, the blob has \(actual)")
            }
        }
        return file
    }

    // MARK: - OCI

    private static func ociImages(in root: borrowing OwnedFD, context: String) throws(ArchiveError) -> [LayoutImage] {
        let layoutData = try readJSON(Array("oci-layout".utf8), in: root, digest: nil, size: nil, context: context)
        struct LayoutFile: Codable { var imageLayoutVersion: String }
        let layout = try decode(LayoutFile.self, layoutData, what: "oci-layout", context: context)
        guard layout.imageLayoutVersion.hasPrefix("1.") else {
            throw ArchiveError(.unreadable, "\(context): unsupported OCI layout version '\(layout.imageLayoutVersion)'")
        }
        let indexData = try readJSON(Array("index.json".utf8), in: root, digest: nil, size: nil, context: context)
        let index = try decode(OCIIndex.self, indexData, what: "index.json", context: context)
        var images: [LayoutImage] = []
        for descriptor in index.manifests {
            let names = [descriptor.annotations?["org.opencontainers.image.ref.name"], descriptor.annotations?["io.containerd.image.name"]]
                .compactMap { $0 }
            if let image = try resolve(descriptor, names: names, in: root, depth: 0, context: context) {
                images.append(image)
            }
        }
        return images
    }

    /// The image a descriptor of an index names: a manifest, or an index whose manifest
    /// for this host's platform is taken. Nil for a descriptor of another kind (an
    /// attestation, a signature) or an index with nothing for this platform.
    private static func resolve(
        _ descriptor: OCIDescriptor, names: [String], in root: borrowing OwnedFD, depth: Int, context: String
    ) throws(ArchiveError) -> LayoutImage? {
        let data = try readBlob(descriptor, in: root, context: context)
        let mediaType = descriptor.mediaType ?? ""
        if indexMediaTypes.contains(mediaType) {
            guard depth < maximumIndexDepth else {
                throw ArchiveError(.unreadable, "\(context): index \(descriptor.digest) nests more than \(maximumIndexDepth) indexes")
            }
            let nested = try decode(OCIIndex.self, data, what: "index \(descriptor.digest)", context: context)
            let host = hostPlatform()
            let candidates = nested.manifests.filter { manifest in
                guard let platform = manifest.platform else { return nested.manifests.count == 1 }
                return platform.os == "linux" && platform.architecture == host
            }
            for candidate in candidates {
                if let image = try resolve(candidate, names: names, in: root, depth: depth + 1, context: context) {
                    return image
                }
            }
            return nil
        }
        let manifest = try decode(OCIManifest.self, data, what: "manifest \(descriptor.digest)", context: context)
        let configData = try readBlob(manifest.config, in: root, context: context)
        let config = try decode(ImageConfigFile.self, configData, what: "config \(manifest.config.digest)", context: context)
        var layers: [LayoutLayer] = []
        for layer in manifest.layers {
            guard let type = layer.mediaType, layerMediaTypes.contains(type) else {
                throw ArchiveError(
                    .unreadable, "\(context): layer \(layer.digest) has media type '\(layer.mediaType ?? "none")', which is not a tar layer")
            }
            layers.append(LayoutLayer(path: try blobPath(layer.digest, context: context), digest: layer.digest, size: layer.size))
        }
        try checkLayerCount(layers.count, config: config, id: descriptor.digest, context: context)
        return LayoutImage(id: descriptor.digest, names: names, config: config, layers: layers)
    }

    // MARK: - docker-archive

    private static func dockerImages(in root: borrowing OwnedFD, context: String) throws(ArchiveError) -> [LayoutImage] {
        let data = try readJSON(Array("manifest.json".utf8), in: root, digest: nil, size: nil, context: context)
        let entries = try decode([DockerManifestEntry].self, data, what: "manifest.json", context: context)
        var images: [LayoutImage] = []
        for entry in entries {
            let configPath = try memberPath(entry.config, context: context)
            let configDigest = digestNamed(by: entry.config)
            let configData = try readJSON(configPath, in: root, digest: configDigest, size: nil, context: context)
            let id = "sha256:" + TreeDigest.hex(SHA256.hash(data: configData))
            let config = try decode(ImageConfigFile.self, configData, what: "config \(entry.config)", context: context)
            let diffIDs = config.rootfs?.diffIDs ?? []
            guard diffIDs.count == entry.layers.count else {
                throw ArchiveError(
                    .unreadable,
                    "\(context): image \(id) lists \(entry.layers.count) layers in manifest.json but \(diffIDs.count) in its config")
            }
            var layers: [LayoutLayer] = []
            for (name, diffID) in zip(entry.layers, diffIDs) {
                // A blob named by its digest is checked against it; docker's "<id>/layer.tar"
                // is an uncompressed tar, whose digest is the config's diff ID.
                let digest = digestNamed(by: name) ?? diffID
                try validateDigest(digest, context: context)
                layers.append(LayoutLayer(path: try memberPath(name, context: context), digest: digest, size: nil))
            }
            images.append(LayoutImage(id: id, names: entry.repoTags ?? [], config: config, layers: layers))
        }
        return images
    }

    /// The digest a docker-archive file name carries: "blobs/sha256/<hex>" or "<hex>.json".
    private static func digestNamed(by name: String) -> String? {
        var last = Substring(name.split(separator: "/").last ?? "")
        if last.hasSuffix(".json") { last = last.dropLast(5) }
        let hex = String(last)
        return isDigestHex(hex) ? "sha256:" + hex : nil
    }

    // MARK: - Files and blobs

    /// "blobs/sha256/<hex>" for a well-formed digest: a descriptor cannot name a path.
    static func blobPath(_ digest: String, context: String) throws(ArchiveError) -> [UInt8] {
        try validateDigest(digest, context: context)
        return Array("blobs/sha256/\(digest.dropFirst("sha256:".count))".utf8)
    }

    static func validateDigest(_ digest: String, context: String) throws(ArchiveError) {
        guard digest.hasPrefix("sha256:"), isDigestHex(String(digest.dropFirst("sha256:".count))) else {
            throw ArchiveError(.unreadable, "\(context): invalid or unsupported digest '\(digest)' (expected sha256: and 64 lowercase hex digits)")
        }
    }

    static func isDigestHex(_ hex: String) -> Bool {
        hex.utf8.count == 64 && hex.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// A docker-archive path, relative and without "..".
    private static func memberPath(_ name: String, context: String) throws(ArchiveError) -> [UInt8] {
        let normalized: [UInt8]
        do {
            normalized = try MemberPath.normalize(Array(name.utf8))
        } catch {
            throw ArchiveError(.unsafeMember, "\(context): manifest.json names '\(name)', which is outside the archive")
        }
        guard !normalized.isEmpty else {
            throw ArchiveError(.unsafeMember, "\(context): manifest.json names '\(name)', which is not a file")
        }
        return normalized
    }

    private static func readBlob(_ descriptor: OCIDescriptor, in root: borrowing OwnedFD, context: String) throws(ArchiveError) -> [UInt8] {
        try readJSON(try blobPath(descriptor.digest, context: context), in: root, digest: descriptor.digest, size: descriptor.size, context: context)
    }

    /// A JSON file of the layout, bounded in size and checked against `digest` and `size`.
    private static func readJSON(_ path: [UInt8], in root: borrowing OwnedFD, digest: String?, size: Int64?, context: String) throws(ArchiveError) -> [UInt8] {
        let name = display(path)
        if let size, size < 0 || size > maximumJSONBytes {
            throw ArchiveError(.unreadable, "\(context): '\(name)' is said to have \(size) bytes, more than a JSON file may")
        }
        let file = try openFile(path, in: root, context: context)
        let length = try io("\(context): '\(name)'") { () throws(Errno) in try file.status() }.size
        guard Int64(length) <= maximumJSONBytes else {
            throw ArchiveError(.unreadable, "\(context): '\(name)' has \(length) bytes, more than a JSON file may")
        }
        let bytes = try io("\(context): read '\(name)'") { () throws(Errno) in try file.read(upTo: Int(maximumJSONBytes) + 1) }
        if let size, Int64(bytes.count) != size {
            throw ArchiveError(.verificationFailed, "\(context): blob \(digest ?? name): the descriptor says \(size) bytes, the blob has \(bytes.count)")
        }
        if let digest {
            let actual = "sha256:" + TreeDigest.hex(SHA256.hash(data: bytes))
            guard actual == digest else {
                throw ArchiveError(.verificationFailed, "\(context): blob \(digest): digest mismatch (its content hashes to \(actual))")
            }
        }
        return bytes
    }

    /// A regular file of the layout, opened without leaving it.
    private static func openFile(_ path: [UInt8], in root: borrowing OwnedFD, context: String) throws(ArchiveError) -> OwnedFD {
        let name = display(path)
        let file = try openBeneath(path, in: root, name: name, context: context)
        let status = try io("\(context): '\(name)'") { () throws(Errno) in try file.status() }
        guard status.kind == .regular else {
            throw ArchiveError(.unsafeMember, "\(context): '\(name)' is not a regular file")
        }
        return file
    }

    private static func openBeneath(_ path: [UInt8], in root: borrowing OwnedFD, name: String, context: String) throws(ArchiveError) -> OwnedFD {
        do throws(Errno) {
            return try root.open(beneath: path, O_RDONLY | O_NOCTTY | O_NONBLOCK, resolve: blobResolution)
        } catch {
            let reason = error == .noSuchFileOrDirectory ? "missing from the image" : "\(error)"
            throw ArchiveError(.unreadable, "\(context): '\(name)': \(reason)")
        }
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ data: [UInt8], what: String, context: String) throws(ArchiveError) -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(data))
        } catch {
            throw ArchiveError(.unreadable, "\(context): \(what) is not valid", cause: error)
        }
    }

    private static func checkLayerCount(_ count: Int, config: ImageConfigFile, id: String, context: String) throws(ArchiveError) {
        if let diffIDs = config.rootfs?.diffIDs, diffIDs.count != count {
            throw ArchiveError(.unreadable, "\(context): image \(id) has \(count) layers but its config lists \(diffIDs.count)")
        }
    }

    /// This host's architecture in the OCI spelling (GOARCH).
    static func hostPlatform() -> String {
        #if arch(x86_64)
            return "amd64"
        #elseif arch(arm64)
            return "arm64"
        #else
            return "unknown"
        #endif
    }
}
