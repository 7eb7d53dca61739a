import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A shell whose memory holds a marker that appears nowhere else: the script has only the
/// arithmetic, its result is computed inside the container.
let memoryMarkerScript = "M=FERRYCRYPT$((48611*70913))X; " + counterScript
let memoryMarker = Array("FERRYCRYPT\(48611 * 70913)X".utf8)

/// Whether `needle` occurs in the file at `path`.
func fileContains(_ path: String, _ needle: [UInt8]) -> Bool {
    guard let data = FileManager.default.contents(atPath: path), data.count >= needle.count else { return false }
    return data.range(of: Data(needle)) != nil
}

/// Writes 32 random bytes to `path` (mode 0600).
func writeKeyFile(_ path: String) throws {
    var generator = SystemRandomNumberGenerator()
    let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    chmod(path, 0o600)
}

@Suite("Encrypted exports", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct EncryptionTests {
    /// A refused import says one line and leaves no container and no state behind.
    func expectRefused(_ result: CommandResult, _ fragment: String, on host: Host, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.code != 0, sourceLocation: sourceLocation)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains(fragment), "\(result.stderr)", sourceLocation: sourceLocation)
        #expect(host.status(of: "counter") == nil, sourceLocation: sourceLocation)
        let containers = (try? FileManager.default.contentsOfDirectory(atPath: "\(host.root)/containers")) ?? []
        #expect(containers.isEmpty, "left \(containers)", sourceLocation: sourceLocation)
    }

    @Test("an encrypted streamed export hides memory, refuses no key, a wrong key and damage, and restores with its key")
    func streamedRoundTrip() throws {
        try withHosts { a, b in
            a.importBusybox()
            b.importBusybox()
            #expect(a("run", "-d", "--name", "counter", "busybox:latest", "sh", "-c", memoryMarkerScript).code == 0)
            #expect(a.eventually { (a.counter("counter") ?? 0) >= 3 })
            let key = "\(a.root)/archive.key"
            let wrong = "\(a.root)/wrong.key"
            try writeKeyFile(key)
            try writeKeyFile(wrong)
            // The control: a clear, uncompressed export shows the marker, so its absence
            // below means something.
            let clear = "\(a.root)/clear.tar"
            let control = a("checkpoint", "--leave-running", "--export", clear, "--compress", "none", "counter")
            #expect(control.code == 0, "\(control.stderr)")
            #expect(fileContains(clear, memoryMarker), "the marker is not in the container's memory: the test would prove nothing")

            let archive = "\(a.root)/counter.enc"
            let checkpoint = a("checkpoint", "--export", archive, "--compress", "none", "--key-file", key, "counter")
            #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
            #expect(FileManager.default.contents(atPath: archive)?.prefix(8) == Data("FERRYENC".utf8))
            #expect(!fileContains(archive, memoryMarker), "the encrypted export shows the container's memory")
            #expect(!fileContains(archive, Array("ferry.json".utf8)), "the encrypted export shows its member names")
            let saved = try #require(Int(a("logs", "counter").stdout.split(separator: "\n").last?.split(separator: " ").last ?? ""))
            #expect(a("rm", "counter").code == 0)

            expectRefused(b("restore", "--import", archive), "it is encrypted; give its key with --key-file", on: b)
            expectRefused(b("restore", "--import", archive, "--key-file", wrong), "the key does not open this archive", on: b)
            expectRefused(b("restore", "--import", clear, "--key-file", key), "it is not encrypted", on: b)
            let inspectNoKey = b("archive", "inspect", archive)
            #expect(inspectNoKey.code != 0 && inspectNoKey.stderr.contains("encrypted"), "\(inspectNoKey.stderr)")

            // Damage: a byte flipped in the middle, and the last chunk cut off.
            var bytes = try Data(contentsOf: URL(fileURLWithPath: archive))
            let original = bytes
            bytes[bytes.count / 2] ^= 0x20
            let flipped = "\(a.root)/flipped.enc"
            try bytes.write(to: URL(fileURLWithPath: flipped))
            expectRefused(b("restore", "--import", flipped, "--key-file", key), "fails authentication", on: b)
            let cut = "\(a.root)/cut.enc"
            try original.prefix(original.count - 100).write(to: URL(fileURLWithPath: cut))
            expectRefused(b("restore", "--import", cut, "--key-file", key), "cut.enc", on: b)

            let inspect = b("archive", "inspect", "--format", "json", "--key-file", key, archive)
            #expect(inspect.code == 0, "\(inspect.stderr)")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any])
            #expect(report["encrypted"] as? Bool == true)
            #expect((report["metadata"] as? [String: Any])?["containerName"] as? String == "counter")
            #expect(b("archive", "inspect", "--verify", "--key-file", key, archive).code == 0)

            let restore = b("restore", "--import", archive, "--key-file", key)
            #expect(restore.code == 0, "\(restore.stderr)")
            let value = try #require(b.counter("counter"))
            #expect(value >= saved && value < saved + 30, "continued from \(saved), not restarted: \(value)")
            #expect(b.eventually { (b.counter("counter") ?? 0) > value })
        }
    }

    @Test("a two-pass encrypted export (--leave-running, zstd) and an encrypted snapshot export restore with their key")
    func twoPassAndSnapshot() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "orig", "busybox:latest", "sh", "-c", memoryMarkerScript).code == 0)
        #expect(host.eventually { (host.counter("orig") ?? 0) >= 3 })
        let key = "\(host.root)/archive.key"
        try writeKeyFile(key)
        let archive = "\(host.root)/orig.tar.zst.enc"
        let checkpoint = host("checkpoint", "--leave-running", "--export", archive, "--key-file", key, "orig")
        #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
        #expect(FileManager.default.contents(atPath: archive)?.prefix(8) == Data("FERRYENC".utf8))
        let restore = host("restore", "--import", archive, "--key-file", key, "--name", "copy")
        #expect(restore.code == 0, "\(restore.stderr)")
        let copy = try #require(host.counter("copy"))
        #expect(host.eventually { (host.counter("copy") ?? 0) > copy })

        #expect(host("snapshot", "create", "--tag", "s1", "orig").code == 0)
        let snapshot = "\(host.root)/snap.enc"
        let export = host("snapshot", "export", "--compress", "none", "--key-file", key, "orig", "s1", snapshot)
        #expect(export.code == 0, "\(export.stderr)")
        #expect(!fileContains(snapshot, memoryMarker), "the encrypted snapshot export shows the container's memory")
        let verify = host("archive", "inspect", "--verify", "--format", "json", "--key-file", key, snapshot)
        #expect(verify.code == 0, "\(verify.stderr)")
        let fromSnapshot = host("restore", "--import", snapshot, "--key-file", key, "--name", "fromsnap")
        #expect(fromSnapshot.code == 0, "\(fromSnapshot.stderr)")
        #expect(host.eventually { (host.counter("fromsnap") ?? 0) > 0 })

        let short = "\(host.root)/short.key"
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: short))
        let refused = host("checkpoint", "--leave-running", "--export", "\(host.root)/never.enc", "--key-file", short, "orig")
        #expect(refused.code != 0 && refused.stderr.contains("fewer than the 32"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(host.root)/never.enc"))
        #expect(host.status(of: "orig") == "running")
    }
}
