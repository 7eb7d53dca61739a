import FerryStore
import FerrySystem
import FerryTestSupport
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A temporary state root and source trees for one test, removed by `cleanup()`.
private struct ImageFixture {
    let base: String
    let root: String
    let store: ImageStore

    init() throws {
        base = try TempDir("ferry-image-test").path
        root = "\(base)/state"
        store = ImageStore(root: root)
    }

    func cleanup() { try? Files.removeUntrustedTree(base) }

    /// A tiny rootfs: a file, an executable, a symlink, a nested directory.
    func makeTree(_ name: String, motd: String = "hello\n") throws -> String {
        let tree = "\(base)/\(name)"
        try Files.createDirectory("\(tree)/bin")
        try Files.createDirectory("\(tree)/etc/ferry")
        try Files.setPermissions(tree, 0o755)
        try Files.writeAtomically(Array(motd.utf8), to: "\(tree)/etc/motd")
        try Files.writeAtomically(Array("#!/bin/sh\necho hi\n".utf8), to: "\(tree)/bin/hello")
        try Files.setPermissions("\(tree)/bin/hello", 0o755)
        precondition(symlink("hello", "\(tree)/bin/hi") == 0)
        return tree
    }

    func tar(_ tree: String, to name: String, _ compression: [String]) throws -> String {
        let archive = "\(base)/\(name)"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["tar", "--create", "--file", archive, "--directory", tree] + compression + ["."]
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0)
        return archive
    }

    /// Entries left in images/tmp: must be none once an import has returned.
    func staging() -> [String] {
        (try? Files.listDirectory("\(root)/images/tmp")) ?? []
    }

    func digestDirectories() -> [String] {
        (try? Files.listDirectory("\(root)/images/sha256")) ?? []
    }

    func layerDirectories() -> [String] {
        (try? Files.listDirectory("\(root)/images/layers")) ?? []
    }

    func index() throws -> String {
        try Files.readString("\(root)/images/index.json")
    }
}

private func ref(_ string: String) throws -> ImageReference {
    try ImageReference(string)
}

@Suite("ImageReference")
struct ImageReferenceTests {
    @Test(
        "valid references parse, with tag defaulting to latest",
        arguments: [
            ("busybox", "busybox", "latest"),
            ("busybox:1.36", "busybox", "1.36"),
            ("library/debian:bookworm-slim", "library/debian", "bookworm-slim"),
            ("a.b_c-d/e:_T.1-x", "a.b_c-d/e", "_T.1-x"),
            ("0abc", "0abc", "latest"),
        ])
    func valid(input: String, name: String, tag: String) throws {
        let reference = try ImageReference(input)
        #expect(reference.name == name)
        #expect(reference.tag == tag)
        #expect(reference.description == "\(name):\(tag)")
    }

    @Test(
        "invalid references are refused with a message naming the culprit",
        arguments: [
            ("", "invalid image reference ''"),
            ("Foo!", "invalid image name 'Foo!'"),
            ("Busybox", "invalid image name 'Busybox'"),
            ("-x", "invalid image name '-x'"),
            ("/x", "invalid image name '/x'"),
            (".x", "invalid image name '.x'"),
            ("a..b", "invalid image name 'a..b'"),
            ("a//b", "invalid image name 'a//b'"),
            ("a/", "invalid image name 'a/'"),
            ("sha256", "invalid image name 'sha256'"),
            ("localhost:5000/x", "invalid image name 'localhost:5000/x'"),
            (String(repeating: "a", count: 129), "invalid image name 'aaaa"),
            ("busybox:", "invalid image tag ''"),
            ("busybox:.x", "invalid image tag '.x'"),
            ("busybox:a b", "invalid image tag 'a b'"),
            ("busybox:a:b", "invalid image name 'busybox:a'"),
            ("busybox:" + String(repeating: "t", count: 129), "invalid image tag 'tttt"),
        ])
    func invalid(input: String, prefix: String) {
        #expect {
            try ImageReference(input)
        } throws: { error in
            guard let error = error as? StoreError else { return false }
            return error.code == .invalidReference && error.description.hasPrefix(prefix)
        }
    }

    @Test("the longest valid name and tag are accepted")
    func limits() throws {
        let reference = try ImageReference(String(repeating: "a", count: 128) + ":" + String(repeating: "t", count: 128))
        #expect(reference.name.count == 128)
        #expect(reference.tag.count == 128)
    }

    @Test("references encode as one string and decoding validates")
    func codable() throws {
        let data = try JSONEncoder().encode([try ref("busybox:1")])
        #expect(String(decoding: data, as: UTF8.self) == #"["busybox:1"]"#)
        #expect(try JSONDecoder().decode([ImageReference].self, from: data) == [try ref("busybox:1")])
        #expect(throws: (any Error).self) {
            try JSONDecoder().decode([ImageReference].self, from: Data(#"["Bad!"]"#.utf8))
        }
    }
}

@Suite("ImageStore")
struct ImageStoreTests {
    @Test("importing a directory stores the tree, its metadata and the reference")
    func importDirectory() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let tree = try fixture.makeTree("tree")

        let record = try fixture.store.importImage(from: tree, as: ref("busybox"))
        #expect(record.digest.hasPrefix("sha256:") && record.digest.count == 71)
        #expect(record.references == ["busybox:latest"])
        #expect(record.size == UInt64("hello\n".utf8.count + "#!/bin/sh\necho hi\n".utf8.count))
        #expect(record.source == tree)
        #expect(abs(record.created.timeIntervalSinceNow) < 60)
        #expect(record.shortID.count == 12)

        let (resolved, rootfs) = try fixture.store.resolve(ref("busybox:latest"))
        #expect(resolved == record)
        #expect(rootfs == "\(fixture.root)/images/layers/\(record.digest.dropFirst(7))/tree")
        #expect(record.layers == [record.digest])
        #expect(rootfs == (try fixture.store.lowerDirectories(digest: record.digest)))
        #expect(try Files.readString("\(rootfs)/etc/motd") == "hello\n")
        #expect(try Files.status("\(rootfs)/bin/hello").permissions == 0o755)
        #expect(try Files.status("\(rootfs)/bin/hi", followSymlinks: false).kind == .symlink)

        let metadata = try Files.readString("\(fixture.root)/images/sha256/\(record.digest.dropFirst(7))/image.json")
        #expect(metadata.contains(record.digest))
        #expect(metadata.contains("\"source\""))
        #expect(metadata.range(of: #""created" : "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ""#, options: .regularExpression) != nil)
        #expect(try fixture.index().contains("\"busybox:latest\" : \"\(record.digest)\""))
        #expect(fixture.staging().isEmpty)
        #expect(try fixture.store.list() == [record])
    }

    @Test("the same tree imported under two names shares one digest directory")
    func dedupe() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let first = try fixture.store.importImage(from: try fixture.makeTree("one"), as: ref("one"))
        let second = try fixture.store.importImage(from: try fixture.makeTree("two"), as: ref("two:v1"))
        #expect(first.digest == second.digest)
        #expect(second.references == ["one:latest", "two:v1"])
        #expect(fixture.digestDirectories().count == 1)
        #expect(fixture.staging().isEmpty)
        let list = try fixture.store.list()
        #expect(list.count == 1)
        #expect(list.first?.references == ["one:latest", "two:v1"])
    }

    @Test("a tar.zst and the directory it was made from give the same image")
    func importTarZst() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let tree = try fixture.makeTree("tree")
        let archive = try fixture.tar(tree, to: "tree.tar.zst", ["--zstd"])
        let fromTar = try fixture.store.importImage(from: archive, as: ref("zst"))
        #expect(fixture.staging().isEmpty)
        let fromDir = try fixture.store.importImage(from: tree, as: ref("dir"))
        #expect(fromTar.digest == fromDir.digest)
        #expect(fromTar.source == archive)
        #expect(fixture.digestDirectories().count == 1)
        let (_, rootfs) = try fixture.store.resolve("zst")
        #expect(try Files.readString("\(rootfs)/etc/motd") == "hello\n")
    }

    @Test(
        "tar, tar.gz and tar.xz import, detected by content",
        arguments: [
            ("plain.tar", [String]()), ("gz.tgz", ["--gzip"]), ("xz.tar.xz", ["--xz"]), ("misnamed.tar", ["--zstd"]),
        ])
    func importCompressed(name: String, compression: [String]) throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let tree = try fixture.makeTree("tree")
        let expected = try fixture.store.importImage(from: tree, as: ref("dir"))
        let archive = try fixture.tar(tree, to: name, compression)
        #expect(try fixture.store.importImage(from: archive, as: ref("tar")).digest == expected.digest)
    }

    @Test("re-importing a reference to a different tree moves it; the old image stays until pruned")
    func moveReference() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let old = try fixture.store.importImage(from: try fixture.makeTree("v1"), as: ref("app"))
        let new = try fixture.store.importImage(from: try fixture.makeTree("v2", motd: "v2\n"), as: ref("app"))
        #expect(old.digest != new.digest)
        #expect(try fixture.store.resolve(ref("app")).record.digest == new.digest)
        let list = try fixture.store.list()
        #expect(list.map(\.digest) == [new.digest, old.digest])
        #expect(list.last?.references == [])
        // Still reachable by digest, e.g. by a container created from it.
        #expect(try fixture.store.resolve(old.digest).record.digest == old.digest)

        #expect(try fixture.store.prune(isInUse: { $0 == old.digest }) == [])
        #expect(try fixture.store.prune(isInUse: { _ in false }) == [old.digest])
        #expect(try fixture.store.list().map(\.digest) == [new.digest])
        #expect(fixture.staging().isEmpty)
    }

    @Test("removing the first reference keeps the tree; removing the last deletes it")
    func removeReferences() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let tree = try fixture.makeTree("tree")
        let record = try fixture.store.importImage(from: tree, as: ref("a"))
        try fixture.store.importImage(from: tree, as: ref("b"))
        let rootfs = try fixture.store.lowerDirectories(digest: record.digest)

        let first = try fixture.store.remove(ref("a"), isInUse: { _ in true })
        #expect(first == .untagged(reference: "a:latest", digest: record.digest))
        #expect(Files.isDirectory(rootfs))
        #expect(try fixture.store.list().first?.references == ["b:latest"])

        let last = try fixture.store.remove(ref("b"), isInUse: { _ in false })
        #expect(last == .deleted(reference: "b:latest", digest: record.digest))
        #expect(!Files.exists(rootfs))
        #expect(fixture.digestDirectories().isEmpty)
        #expect(fixture.layerDirectories().isEmpty)
        #expect(fixture.staging().isEmpty)
        #expect(try fixture.store.list().isEmpty)
        #expect(try !fixture.index().contains("sha256:"))
    }

    @Test("removing an image deletes odd trees completely and follows no symlink out")
    func removeOddTree() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let tree = try fixture.makeTree("tree")
        let outside = "\(fixture.base)/outside"
        try Files.createDirectory(outside)
        try Files.writeAtomically(Array("keep".utf8), to: "\(outside)/keep")
        precondition(symlink(outside, "\(tree)/escape") == 0)
        // A read-only file inside a read-only directory. (A directory's copy goes
        // through a pax tar, whose names must be UTF-8.)
        try Files.createDirectory("\(tree)/ro")
        let ro = try OwnedFD.open("\(tree)/ro", O_RDONLY | O_DIRECTORY)
        _ = try ro.openAt(Array("read-only".utf8), O_WRONLY | O_CREAT | O_EXCL, mode: 0o444)
        try Files.setPermissions("\(tree)/ro", 0o555)

        let record = try fixture.store.importImage(from: tree, as: ref("odd"))
        let rootfs = try fixture.store.lowerDirectories(digest: record.digest)
        #expect(try Files.status("\(rootfs)/ro").permissions == 0o555)
        try fixture.store.remove(ref("odd"), isInUse: { _ in false })
        #expect(!Files.exists(rootfs))
        #expect(fixture.digestDirectories().isEmpty)
        #expect(fixture.layerDirectories().isEmpty)
        #expect(fixture.staging().isEmpty)
        #expect(try Files.readString("\(outside)/keep") == "keep")
    }

    @Test("the last reference of an image in use cannot be removed")
    func inUse() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let record = try fixture.store.importImage(from: try fixture.makeTree("tree"), as: ref("busybox"))
        var asked: [String] = []
        #expect {
            try fixture.store.remove(
                ref("busybox"),
                isInUse: {
                    asked.append($0); return true
                })
        } throws: { error in
            guard let error = error as? StoreError else { return false }
            return error.code == .inUse && error.description.hasPrefix("image 'busybox:latest'")
                && error.description.contains("is in use by a container")
        }
        #expect(asked == [record.digest])
        // Nothing changed.
        #expect(try fixture.store.resolve(ref("busybox")).record == record)
    }

    @Test("resolving by name, digest and digest prefix")
    func resolveStrings() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let record = try fixture.store.importImage(from: try fixture.makeTree("tree"), as: ref("busybox:1"))
        let hex = String(record.digest.dropFirst(7))
        for input in ["busybox:1", record.digest, "sha256:" + hex.prefix(12), String(hex.prefix(12)), hex] {
            #expect(try fixture.store.resolve(input).record.digest == record.digest, "\(input)")
        }
        let cases: [(String, StoreError.Code, String)] = [
            ("busybox", .notFound, "image 'busybox:latest' not found (import it with: ferry image import DIR busybox:latest)"),
            (String(hex.prefix(11)), .notFound, "image '\(hex.prefix(11)):latest' not found"),
            ("sha256:" + hex.prefix(11), .invalidReference, "invalid image digest"),
            ("sha256:" + String(repeating: "0", count: 64), .notFound, "no image matches"),
            ("Bad!", .invalidReference, "invalid image name 'Bad!'"),
        ]
        for (input, code, prefix) in cases {
            #expect {
                try fixture.store.resolve(input)
            } throws: { error in
                guard let error = error as? StoreError else { return false }
                return error.code == code && error.description.hasPrefix(prefix)
            }
        }
    }

    @Test("an ambiguous digest prefix is refused")
    func ambiguousPrefix() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let record = try fixture.store.importImage(from: try fixture.makeTree("tree"), as: ref("x"))
        let hex = String(record.digest.dropFirst(7))
        // A second image directory sharing the first 12 digits (the store trusts its own
        // layout, so a hand-made copy stands in for a collision).
        let twin = String(hex.prefix(12)) + String(repeating: "0", count: 52)
        try Files.createDirectory("\(fixture.root)/images/sha256/\(twin)")
        let metadata = try Files.read("\(fixture.root)/images/sha256/\(hex)/image.json")
        try Files.writeAtomically(metadata, to: "\(fixture.root)/images/sha256/\(twin)/image.json")
        try Files.createDirectory("\(fixture.root)/images/sha256/\(twin)/rootfs")
        #expect {
            try fixture.store.resolve(String(hex.prefix(12)))
        } throws: { error in
            "\(error)".contains("ambiguous")
        }
        #expect(try fixture.store.resolve(hex).record.digest == record.digest)
    }

    @Test("lowerDirectories refuses anything but a digest")
    func rootfsPathValidation() {
        let store = ImageStore(root: "/var/lib/ferry")
        for bad in ["sha256:../../etc", "sha256:ABC", "md5:" + String(repeating: "0", count: 64), ""] {
            #expect(throws: StoreError.self) { try store.lowerDirectories(digest: bad) }
        }
    }

    @Test("importing a missing path fails and leaves nothing")
    func missingSource() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let missing = "\(fixture.base)/x"
        #expect {
            try fixture.store.importImage(from: missing, as: ref("x"))
        } throws: { error in
            guard let error = error as? StoreError else { return false }
            return error.code == .notFound && error.description == "no such source '\(missing)': No such file or directory"
        }
        #expect(fixture.staging().isEmpty)
        #expect(fixture.digestDirectories().isEmpty)
        #expect(!Files.exists("\(fixture.root)/images/index.json"))
    }

    @Test("a failed import leaves no staging directory and no index change")
    func failedImport() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let good = try fixture.store.importImage(from: try fixture.makeTree("tree"), as: ref("good"))
        let indexBefore = try fixture.index()

        let archive = try fixture.tar(try fixture.makeTree("other", motd: "other\n"), to: "other.tar.gz", ["--gzip"])
        let bytes = try Files.read(archive)
        let truncated = "\(fixture.base)/truncated.tar.gz"
        try Files.writeAtomically(bytes.prefix(bytes.count - 40), to: truncated)
        let garbage = "\(fixture.base)/garbage.tar"
        try Files.writeAtomically(Array(repeating: 0x41, count: 2048), to: garbage)

        for source in [truncated, garbage] {
            #expect {
                try fixture.store.importImage(from: source, as: ref("good"))
            } throws: { error in
                guard let error = error as? StoreError else { return false }
                return error.code == .importFailed && error.description.hasPrefix("cannot import image 'good:latest': cannot extract '\(source)': ")
            }
            #expect(fixture.staging().isEmpty)
            #expect(try fixture.index() == indexBefore)
            #expect(fixture.digestDirectories() == [String(good.digest.dropFirst(7))])
        }
    }

    @Test("concurrent imports of one tree under several names all land, sharing one directory")
    func concurrentImports() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        let tree = try fixture.makeTree("tree")
        let references = try (0..<4).map { try ref("name\($0)") }
        let digests = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: references.count) { i in
            // Each import opens the lock file itself, so flock serializes them even
            // within one process.
            if let record = try? fixture.store.importImage(from: tree, as: references[i]) {
                digests.withLock { $0.append(record.digest) }
            }
        }
        let all = digests.withLock { $0 }
        #expect(all.count == 4)
        #expect(Set(all).count == 1)
        #expect(fixture.digestDirectories().count == 1)
        #expect(fixture.staging().isEmpty)
        #expect(try fixture.store.list().first?.references == references.map(\.description))
    }

    @Test("staging left by a dead process is cleaned up by the next import")
    func abandonedStaging() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        try Files.createDirectory("\(fixture.root)/images/tmp/999999999-1-abc/rootfs/etc")
        let alive = "\(getpid())-\(Processes.startTime(of: getpid()) ?? 0)-def"
        try Files.createDirectory("\(fixture.root)/images/tmp/\(alive)")
        try fixture.store.importImage(from: try fixture.makeTree("tree"), as: ref("x"))
        // Only the dead process's directory is gone; a live one may still be importing.
        #expect(fixture.staging() == [alive])
    }

    @Test("an empty store lists nothing and resolves nothing, without creating files")
    func emptyStore() throws {
        let fixture = try ImageFixture()
        defer { fixture.cleanup() }
        #expect(try fixture.store.list().isEmpty)
        #expect(throws: StoreError.self) { try fixture.store.resolve("busybox") }
        #expect(throws: StoreError.self) { try fixture.store.remove(ref("busybox"), isInUse: { _ in false }) }
        #expect(try fixture.store.prune(isInUse: { _ in false }).isEmpty)
        #expect(!Files.exists(fixture.root))
    }
}
