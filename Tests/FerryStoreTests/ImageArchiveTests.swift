import CArchive
import Crypto
import FerryArchive
import FerryStore
import FerrySystem
import FerryTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Builds OCI layouts and docker-archives by hand, as `podman save` would write them.
private struct ImageBuilder {
    let base: String
    let root: String
    let store: ImageStore

    init() throws {
        base = try TempDir("ferry-oci-test").path
        root = "\(base)/state"
        store = ImageStore(root: root)
    }

    func cleanup() { try? Files.removeUntrustedTree(base) }

    static func sha256(_ bytes: [UInt8]) -> String {
        "sha256:" + SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    /// A tar of the directory `tree`, with tar's compression flags.
    func tar(_ tree: String, _ flags: [String] = []) throws -> [UInt8] {
        let path = "\(base)/tmp-\(UInt64.random(in: 0 ... .max)).tar"
        try shell(["tar", "--create", "--file", path, "--directory", tree, "--numeric-owner"] + flags + ["."])
        defer { try? Files.removeUntrustedTree(path) }
        return try Files.read(path)
    }

    func shell(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "\(arguments.joined(separator: " ")) failed")
    }

    func tree(_ name: String, files: [String: String]) throws -> String {
        let tree = "\(base)/\(name)"
        try Files.createDirectory(tree)
        for (path, content) in files {
            try Files.createDirectory(Files.parent(of: "\(tree)/\(path)"))
            try Files.writeAtomically(Array(content.utf8), to: "\(tree)/\(path)")
        }
        return tree
    }

    /// Writes an OCI layout at `layout` holding one image of `layers` (bytes, media
    /// type); returns the manifest digest.
    @discardableResult
    func ociLayout(
        at layout: String, layers: [(bytes: [UInt8], mediaType: String)], config: String, refName: String?,
        tamper: ((String) throws -> Void)? = nil
    ) throws -> String {
        try Files.createDirectory("\(layout)/blobs/sha256")
        func blob(_ bytes: [UInt8]) throws -> (String, Int) {
            let digest = Self.sha256(bytes)
            try Files.writeAtomically(bytes, to: "\(layout)/blobs/sha256/\(digest.dropFirst(7))")
            return (digest, bytes.count)
        }
        var descriptors: [String] = []
        var diffIDs: [String] = []
        for layer in layers {
            let (digest, size) = try blob(layer.bytes)
            descriptors.append(#"{"mediaType":"\#(layer.mediaType)","digest":"\#(digest)","size":\#(size)}"#)
            diffIDs.append("\"\(digest)\"")
        }
        // swift-format-ignore: LineLength
        let configJSON =
            #"{"architecture":"amd64","os":"linux","config":\#(config),"rootfs":{"type":"layers","diff_ids":[\#(diffIDs.joined(separator: ","))]}}"#
        let (configDigest, configSize) = try blob(Array(configJSON.utf8))
        // swift-format-ignore: LineLength
        let manifest =
            #"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(configDigest)","size":\#(configSize)},"layers":[\#(descriptors.joined(separator: ","))]}"#
        let (manifestDigest, manifestSize) = try blob(Array(manifest.utf8))
        let annotations = refName.map { #","annotations":{"org.opencontainers.image.ref.name":"\#($0)"}"# } ?? ""
        // swift-format-ignore: LineLength
        let index =
            #"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"\#(manifestDigest)","size":\#(manifestSize)\#(annotations)}]}"#
        try Files.writeAtomically(Array(index.utf8), to: "\(layout)/index.json")
        try Files.writeAtomically(Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8), to: "\(layout)/oci-layout")
        try tamper?(layout)
        return manifestDigest
    }

    /// A docker-archive directory (docker save's old layout: <id>/layer.tar).
    func dockerLayout(at layout: String, layers: [[UInt8]], repoTags: [String], layerNames: [String]? = nil) throws -> String {
        try Files.createDirectory(layout)
        var names: [String] = []
        var diffIDs: [String] = []
        for (position, bytes) in layers.enumerated() {
            let name = layerNames?[position] ?? "layer\(position)/layer.tar"
            if layerNames == nil {
                try Files.createDirectory("\(layout)/layer\(position)")
                try Files.writeAtomically(bytes, to: "\(layout)/\(name)")
            }
            names.append("\"\(name)\"")
            diffIDs.append("\"\(Self.sha256(bytes))\"")
        }
        // swift-format-ignore: LineLength
        let config =
            #"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[\#(diffIDs.joined(separator: ","))]}}"#
        let configDigest = Self.sha256(Array(config.utf8))
        try Files.writeAtomically(Array(config.utf8), to: "\(layout)/\(configDigest.dropFirst(7)).json")
        let tags = repoTags.map { "\"\($0)\"" }.joined(separator: ",")
        let manifest = #"[{"Config":"\#(configDigest.dropFirst(7)).json","RepoTags":[\#(tags)],"Layers":[\#(names.joined(separator: ","))]}]"#
        try Files.writeAtomically(Array(manifest.utf8), to: "\(layout)/manifest.json")
        return configDigest
    }

    func staging() -> [String] { (try? Files.listDirectory("\(root)/images/tmp")) ?? [] }
    func layerDirectories() -> [String] { (try? Files.listDirectory("\(root)/images/layers")) ?? [] }
    func imageDirectories() -> [String] { (try? Files.listDirectory("\(root)/images/sha256")) ?? [] }
}

/// A tar with exactly `members` (name, type, content or link target), for the hostile
/// layers tar itself would not write.
private func hostileTar(_ members: [(String, mode_t, String)]) -> [UInt8] {
    guard let archive = archive_write_new() else { preconditionFailure("libarchive: no memory") }
    defer { archive_write_free(archive) }
    archive_write_set_format_pax_restricted(archive)
    var output = [UInt8](repeating: 0, count: 1 << 20)
    var used = 0
    let opened = output.withUnsafeMutableBytes { buffer in
        archive_write_open_memory(archive, buffer.baseAddress, buffer.count, &used)
    }
    precondition(opened == ARCHIVE_OK)
    for (name, type, value) in members {
        guard let entry = archive_entry_new() else { preconditionFailure("libarchive: no memory") }
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname(entry, name)
        archive_entry_set_filetype(entry, UInt32(type))
        archive_entry_set_perm(entry, 0o644)
        var content: [UInt8] = []
        switch type {
        case S_IFLNK: archive_entry_set_symlink(entry, value)
        case S_IFCHR: archive_entry_set_rdev(entry, dev_t((8 << 8) | 0))
        case S_IFREG where value.hasPrefix("link:"): archive_entry_set_hardlink(entry, String(value.dropFirst(5)))
        default: content = Array(value.utf8)
        }
        archive_entry_set_size(entry, la_int64_t(content.count))
        precondition(archive_write_header(archive, entry) == ARCHIVE_OK)
        if !content.isEmpty { _ = content.withUnsafeBytes { archive_write_data(archive, $0.baseAddress, $0.count) } }
    }
    precondition(archive_write_close(archive) == ARCHIVE_OK)
    return Array(output[0..<used])
}

private let gzipLayer = "application/vnd.oci.image.layer.v1.tar+gzip"
private let zstdLayer = "application/vnd.oci.image.layer.v1.tar+zstd"
private let plainLayer = "application/vnd.oci.image.layer.v1.tar"

@Suite("OCI and docker image import", .enabled(if: getuid() == 0, "overlay whiteouts need root"))
struct ImageArchiveTests {
    /// Two layers: the second deletes etc/motd (a whiteout) and replaces opt/ (opaque).
    private func twoLayers(_ builder: ImageBuilder) throws -> [(bytes: [UInt8], mediaType: String)] {
        let bottom = try builder.tree("bottom", files: ["etc/motd": "hello\n", "opt/old": "old\n", "bin/app": "app\n"])
        let top = try builder.tree("top", files: ["etc/.wh.motd": "", "opt/.wh..wh..opq": "", "opt/new": "new\n"])
        return [(try builder.tar(bottom, ["--gzip"]), gzipLayer), (try builder.tar(top, ["--zstd"]), zstdLayer)]
    }

    @Test("an oci-archive imports as stacked layers with whiteouts, its tag and its config")
    func ociArchive() throws {
        let builder = try ImageBuilder()
        defer { builder.cleanup() }
        let layout = "\(builder.base)/layout"
        let manifest = try builder.ociLayout(
            at: layout, layers: try twoLayers(builder),
            // swift-format-ignore: LineLength
            config:
                #"{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["PATH=/bin","A=1"],"WorkingDir":"/opt","User":"1000:1000","StopSignal":"SIGINT","ExposedPorts":{"80/tcp":{}},"Labels":{"k":"v"}}"#,
            refName: "example.com/app:1.0")
        let archive = "\(builder.base)/app.oci"
        try builder.shell(["tar", "--create", "--file", archive, "--directory", layout, "."])

        let record = try builder.store.importImage(from: archive, as: nil)
        #expect(record.digest == manifest)
        #expect(record.references == ["example.com/app:1.0"])
        #expect(record.layers.count == 2)
        #expect(record.config?.entrypoint == ["/bin/app"])
        #expect(record.config?.cmd == ["--serve"])
        #expect(record.config?.env == ["PATH=/bin", "A=1"])
        #expect(record.config?.workingDir == "/opt")
        #expect(record.config?.user == "1000:1000")
        #expect(record.config?.stopSignal == "SIGINT")
        #expect(record.config?.exposedPorts?.keys.sorted() == ["80/tcp"])
        #expect(record.config?.labels == ["k": "v"])

        let lower = try builder.store.resolve("example.com/app:1.0").lowerDirectories.split(separator: ":").map(String.init)
        #expect(lower.count == 2)
        let (top, bottom) = (lower[0], lower[1])
        #expect(try Files.readString("\(bottom)/etc/motd") == "hello\n")
        let whiteout = try Files.status("\(top)/etc/motd", followSymlinks: false)
        #expect(whiteout.kind == .characterDevice)
        #expect(!Files.exists("\(top)/etc/.wh.motd"))
        #expect(!Files.exists("\(top)/opt/.wh..wh..opq"))
        let opt = try OwnedFD.open("\(top)/opt", O_RDONLY | O_DIRECTORY)
        #expect(try opt.extendedAttribute("trusted.overlay.opaque") == [UInt8(ascii: "y")])
        #expect(builder.staging().isEmpty)
    }

    @Test("an OCI layout directory imports; NAME[:TAG] overrides the archive's tag")
    func ociDirectoryOverride() throws {
        let builder = try ImageBuilder()
        defer { builder.cleanup() }
        let layout = "\(builder.base)/layout"
        try builder.ociLayout(at: layout, layers: try twoLayers(builder), config: "{}", refName: "app:1.0")
        let record = try builder.store.importImage(from: layout, as: try ImageReference("mine:2"))
        #expect(record.references == ["mine:2"])
        #expect(throws: StoreError.self) { try builder.store.resolve("app:1.0") }
    }

    @Test("a docker-archive imports with its RepoTags; layers are shared between images and freed with the last")
    func dockerArchiveSharing() throws {
        let builder = try ImageBuilder()
        defer { builder.cleanup() }
        let shared = try builder.tar(try builder.tree("shared", files: ["bin/sh": "sh\n"]))
        let extra = try builder.tar(try builder.tree("extra", files: ["etc/app": "app\n"]))
        let one = "\(builder.base)/one"
        let id = try builder.dockerLayout(at: one, layers: [shared], repoTags: ["busybox:latest"])
        let archive = "\(builder.base)/one.tar"
        try builder.shell(["tar", "--create", "--file", archive, "--directory", one, "."])
        let first = try builder.store.importImage(from: archive, as: nil)
        #expect(first.digest == id)
        #expect(first.references == ["busybox:latest"])
        #expect(first.config?.cmd == ["/bin/sh"])

        let two = "\(builder.base)/two"
        try builder.dockerLayout(at: two, layers: [shared, extra], repoTags: ["docker.io/library/app:1"])
        let second = try builder.store.importImage(from: two, as: nil)
        #expect(second.references == ["docker.io/library/app:1"])
        #expect(builder.layerDirectories().count == 2)

        try builder.store.remove(try ImageReference("busybox"), isInUse: { _ in false })
        #expect(builder.layerDirectories().count == 2)
        #expect(try Files.readString("\(builder.store.resolve("docker.io/library/app:1").lowerDirectories.split(separator: ":")[1])/bin/sh") == "sh\n")
        try builder.store.remove(try ImageReference("docker.io/library/app:1"), isInUse: { _ in false })
        #expect(builder.layerDirectories().isEmpty)
        #expect(builder.imageDirectories().isEmpty)
    }

    @Test(
        "an image sent to another store (only the layers it lacks) arrives with its ID, whiteouts and opaque directory; a layer changed on the way is refused, leaving nothing"
    )
    func transfer() throws {
        let builder = try ImageBuilder()
        defer { builder.cleanup() }
        let layout = "\(builder.base)/layout"
        let layers = try twoLayers(builder)
        let manifest = try builder.ociLayout(at: layout, layers: layers, config: #"{"Cmd":["/bin/app"]}"#, refName: "app:1")
        let sent = try builder.store.importImage(from: layout, as: nil)
        // The receiver has the bottom layer already, through another image.
        let receiver = ImageStore(root: "\(builder.base)/receiver")
        let baseLayout = "\(builder.base)/base-layout"
        try builder.ociLayout(at: baseLayout, layers: [layers[0]], config: "{}", refName: "base:1")
        _ = try receiver.importImage(from: baseLayout, as: nil)
        let missing = receiver.missingLayers(sent.layers)
        #expect(missing == [sent.layers[1]])

        let work = "\(builder.base)/work"
        try Files.createDirectory(work)
        let transfer = try builder.store.prepareTransfer(of: sent.digest, sending: Set(missing), into: work)
        #expect(transfer.layers.map(\.isSent) == [false, true])
        let archive = "\(work)/\(ImageTransfer.archiveName(ofLayer: sent.layers[1]))"
        #expect(Set(transfer.layers[1].deleted ?? []) == ["/etc/motd", "/opt"])

        // Tampered: a file added to the layer's tar on the way.
        let tampered = "\(builder.base)/tampered.tar"
        try builder.shell(["cp", archive, tampered])
        let extra = try builder.tree("extra", files: ["etc/evil": "x\n"])
        try builder.shell(["tar", "--append", "--file", tampered, "--directory", extra, "./etc/evil"])
        #expect {
            try receiver.receiveTransfer(transfer, archives: [sent.layers[1]: tampered], as: try ImageReference("app:1"), source: "test")
        } throws: { error in
            "\(error)".contains("arrived as a tree with digest")
        }
        #expect(throws: StoreError.self) { try receiver.resolve("app:1") }
        #expect(((try? Files.listDirectory("\(receiver.root)/images/layers")) ?? []).count == 1, "only the base's layer")
        #expect(((try? Files.listDirectory("\(receiver.root)/images/tmp")) ?? []).isEmpty)

        let received = try receiver.receiveTransfer(transfer, archives: [sent.layers[1]: archive], as: try ImageReference("app:1"), source: "test")
        #expect(received.digest == manifest)
        #expect(received.layers == sent.layers)
        #expect(received.config?.cmd == ["/bin/app"])
        let lower = try receiver.resolve("app:1").lowerDirectories.split(separator: ":").map(String.init)
        #expect(try Files.status("\(lower[0])/etc/motd", followSymlinks: false).kind == .characterDevice)
        let opt = try OwnedFD.open("\(lower[0])/opt", O_RDONLY | O_DIRECTORY)
        #expect(try opt.extendedAttribute("trusted.overlay.opaque") == [UInt8(ascii: "y")])
        #expect(try Files.readString("\(lower[0])/opt/new") == "new\n")
        #expect(try Files.readString("\(lower[1])/etc/motd") == "hello\n")
        #expect(((try? Files.listDirectory("\(receiver.root)/images/tmp")) ?? []).isEmpty)
    }

    @Test("a layer whose blob does not match its digest is refused and nothing is left")
    func digestMismatch() throws {
        let builder = try ImageBuilder()
        defer { builder.cleanup() }
        let layout = "\(builder.base)/layout"
        let layers = try twoLayers(builder)
        try builder.ociLayout(at: layout, layers: layers, config: "{}", refName: "app:1") { layout in
            // Same size, other content: only the digest can tell.
            var bytes = layers[0].bytes
            bytes[bytes.count - 1] ^= 0xff
            try Files.writeAtomically(bytes, to: "\(layout)/blobs/sha256/\(ImageBuilder.sha256(layers[0].bytes).dropFirst(7))")
        }
        #expect {
            try builder.store.importImage(from: layout, as: nil)
        } throws: { error in
            "\(error)".contains("digest mismatch") || "\(error)".contains("cannot extract")
        }
        #expect(builder.staging().isEmpty)
        #expect(builder.layerDirectories().isEmpty)
        #expect(builder.imageDirectories().isEmpty)
    }

    @Test(
        "hostile layers are refused",
        arguments: [
            ("traversal", [("../evil", S_IFREG, "x")], "leaves the destination"),
            ("absolute", [("/etc/evil", S_IFREG, "x")], "absolute path"),
            ("symlink escape", [("escape", S_IFLNK, "/etc"), ("escape/passwd", S_IFREG, "x")], "symlink"),
            ("hardlink out", [("link", S_IFREG, "link:/etc/shadow")], "hardlink"),
            ("device node", [("sda", S_IFCHR, "")], "device nodes"),
        ] as [(String, [(String, mode_t, String)], String)])
    func hostileLayer(name: String, members: [(String, mode_t, String)], reason: String) throws {
        let builder = try ImageBuilder()
        defer { builder.cleanup() }
        let layout = "\(builder.base)/layout"
        try builder.ociLayout(at: layout, layers: [(hostileTar(members), plainLayer)], config: "{}", refName: "evil:1")
        #expect {
            try builder.store.importImage(from: layout, as: nil)
        } throws: { error in
            "\(error)".contains(reason)
        }
        #expect(builder.staging().isEmpty)
        #expect(builder.layerDirectories().isEmpty)
        #expect(!Files.exists("\(builder.base)/evil"))
    }

    @Test("a docker manifest naming a file outside the archive is refused")
    func manifestOutside() throws {
        let builder = try ImageBuilder()
        defer { builder.cleanup() }
        try Files.writeAtomically(Array("secret".utf8), to: "\(builder.base)/outside.tar")
        let layout = "\(builder.base)/layout"
        try builder.dockerLayout(at: layout, layers: [[]], repoTags: ["x:1"], layerNames: ["../outside.tar"])
        #expect {
            try builder.store.importImage(from: layout, as: nil)
        } throws: { error in
            "\(error)".contains("outside the archive")
        }
        #expect(builder.imageDirectories().isEmpty)
    }

    @Test("an absurd descriptor size is refused before anything is read")
    func absurdSize() throws {
        let builder = try ImageBuilder()
        defer { builder.cleanup() }
        let layout = "\(builder.base)/layout"
        try builder.ociLayout(at: layout, layers: try twoLayers(builder), config: "{}", refName: "app:1") { layout in
            let index = try Files.readString("\(layout)/index.json")
            let patched = index.replacingOccurrences(of: #""size":"#, with: #""size":1"#)
            try Files.writeAtomically(Array(patched.utf8), to: "\(layout)/index.json")
        }
        #expect(throws: StoreError.self) { try builder.store.importImage(from: layout, as: nil) }
        #expect(builder.imageDirectories().isEmpty)
    }

    @Test("a layer declaring more than the size limit is refused")
    func sizeLimit() throws {
        let builder = try ImageBuilder()
        defer { builder.cleanup() }
        let directory = "\(builder.base)/dest"
        try Files.createDirectory(directory)
        let tar = "\(builder.base)/big.tar"
        try Files.writeAtomically(hostileTar([("a", S_IFREG, String(repeating: "x", count: 4096))]), to: tar)
        let destination = try OwnedFD.open(directory, O_RDONLY | O_DIRECTORY)
        #expect {
            _ = try SafeTreeExtractor.extract(
                stream: try OwnedFD.open(tar, O_RDONLY), name: "big", into: destination, policy: .rootfs, whiteouts: .overlay,
                maximumBytes: 1000)
        } throws: { error in
            "\(error)".contains("exceed the limit")
        }
    }
}
