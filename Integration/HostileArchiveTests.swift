import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// An export is untrusted input. These archives are made from a real export by a small
/// Python script (tarfile), each changed in one hostile way; every one must be refused
/// with a clear error, leave no container, and write nothing outside the state root.
@Suite("Hostile archives", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct HostileArchiveTests {
    /// Rewrites the plain tar `source` into `target`, changing it as `mutation` says.
    static let mutate = #"""
        import hashlib, io, json, sys, tarfile
        source, target, mutation = sys.argv[1], sys.argv[2], sys.argv[3]
        members = []
        with tarfile.open(source) as tar:
            for m in tar.getmembers():
                members.append((m, tar.extractfile(m).read() if m.isfile() else None))
        def add(out, name, data, **kw):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            for k, v in kw.items(): setattr(info, k, v)
            out.addfile(info, io.BytesIO(data))
        def inner_tar(entries):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
                for info, data in entries:
                    t.addfile(info, io.BytesIO(data) if data is not None else None)
            return buf.getvalue()
        def info(name, **kw):
            i = tarfile.TarInfo(name)
            for k, v in kw.items(): setattr(i, k, v)
            return i
        replaced = {}
        extra = []
        if mutation == "inner-escape":
            replaced["rootfs-diff.tar"] = inner_tar([(info("../../../../escaped-by-ferry-test", size=4), b"evil")])
        elif mutation == "inner-symlink":
            replaced["rootfs-diff.tar"] = inner_tar([
                (info("link", type=tarfile.SYMTYPE, linkname="/tmp"), None),
                (info("link/escaped-by-ferry-test", size=4), b"evil")])
        elif mutation == "inner-device":
            replaced["rootfs-diff.tar"] = inner_tar([(info("dev-null", type=tarfile.CHRTYPE, devmajor=1, devminor=3), None)])
        elif mutation == "deleted-escape":
            replaced["deleted.files"] = json.dumps(["/../../../../tmp"]).encode()
        data_of = {m.name: d for m, d in members}
        data_of.update(replaced)
        if replaced:
            meta = json.loads(data_of["ferry.json"])
            meta["members"].update({k: len(v) for k, v in replaced.items()})
            data_of["ferry.json"] = json.dumps(meta).encode()
            manifest = json.loads(data_of["manifest.json"])
            for entry in manifest["members"]:
                entry["size"] = len(data_of[entry["name"]])
                entry["sha256"] = hashlib.sha256(data_of[entry["name"]]).hexdigest()
            data_of["manifest.json"] = json.dumps(manifest).encode()
        with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as out:
            for m, _ in members:
                if not m.isfile():  # a directory entry (checkpoint/): kept as it is
                    out.addfile(m)
                    continue
                name = m.name
                data = data_of[name]
                if mutation == "absolute" and name == "config.dump": name = "/etc/ferry-test-abs"
                if mutation == "dotdot" and name == "config.dump": name = "../ferry-test-dotdot"
                if mutation == "tamper" and name == "spec.dump": data = data.replace(b"ociVersion", b"ociVersioN")
                if mutation == "symlink-member" and name == "config.dump":
                    out.addfile(info("config.dump", type=tarfile.SYMTYPE, linkname="/etc/passwd"))
                    continue
                if mutation == "duplicate" and name == "spec.dump":
                    add(out, name, data)
                if mutation == "unlisted" and name == "manifest.json":
                    add(out, "checkpoint/extra.img", b"not in the manifest")
                add(out, name, data)
        """#

    func makeExport(_ host: Host) -> String {
        host.importBusybox()
        #expect(host("run", "-d", "--name", "src", "busybox:latest", "sh", "-c", "echo x > /file; sleep 1000").code == 0)
        let archive = "\(host.root)/src.tar"
        #expect(host("checkpoint", "--export", archive, "--compress", "none", "src").code == 0)
        #expect(host("rm", "src").code == 0)
        return archive
    }

    func hostile(_ source: String, _ mutation: String, in dir: String) -> String {
        let script = "\(dir)/mutate.py"
        try? Self.mutate.write(toFile: script, atomically: true, encoding: .utf8)
        let target = "\(dir)/\(mutation).tar"
        let result = Command.run(["/usr/bin/python3", script, source, target, mutation])
        #expect(result.code == 0, "mutate \(mutation): \(result.stderr)")
        return target
    }

    @Test("hostile archives are refused and nothing appears outside")
    func refused() throws {
        let host = Host()
        defer { host.tearDown() }
        let archive = makeExport(host)
        let cases: [(String, String)] = [
            ("absolute", "refus"), ("dotdot", "refus"), ("symlink-member", "refus"), ("duplicate", "duplicate"),
            ("unlisted", "extra.img"), ("tamper", "sha256"), ("inner-escape", "leaves the destination"),
            ("inner-symlink", "refus"), ("inner-device", "device"), ("deleted-escape", "deleted"),
        ]
        for (mutation, expected) in cases {
            let file = hostile(archive, mutation, in: host.root)
            let result = host("restore", "--import", file, "--name", "evil")
            #expect(result.code != 0, "\(mutation) must be refused")
            #expect(result.stderr.lowercased().contains(expected), "\(mutation): \(result.stderr)")
            #expect(host.status(of: "evil") == nil)
            let containers = (try? FileManager.default.contentsOfDirectory(atPath: "\(host.root)/containers")) ?? []
            #expect(containers.isEmpty, "\(mutation) left \(containers)")
        }
        for path in ["/escaped-by-ferry-test", "/tmp/escaped-by-ferry-test", "/etc/ferry-test-abs", "/var/tmp/ferry-test-dotdot"] {
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) was written")
        }
    }

    @Test("a truncated archive, a missing base image, a missing bind source are refused with the reason")
    func refusedWithReason() throws {
        let host = Host()
        defer { host.tearDown() }
        let archive = makeExport(host)
        let size = (try FileManager.default.attributesOfItem(atPath: archive)[.size] as? Int) ?? 0
        let truncated = "\(host.root)/truncated.tar"
        let data = try Data(contentsOf: URL(fileURLWithPath: archive)).prefix(size * 2 / 3)
        try data.write(to: URL(fileURLWithPath: truncated))
        let result = host("restore", "--import", truncated, "--name", "t")
        #expect(result.code != 0)
        #expect(result.stderr.contains(truncated))

        let other = Host("other")
        defer { other.tearDown() }
        let missing = other("restore", "--import", archive)
        #expect(missing.code != 0)
        #expect(missing.stderr.contains("sha256:"), "names the digest: \(missing.stderr)")
        #expect(missing.stderr.contains("ferry image import"), "says how to import it: \(missing.stderr)")

        let bindSource = "\(host.root)/bind-src"
        mkdir(bindSource, 0o755)
        #expect(host("run", "-d", "--name", "b", "-v", "\(bindSource):/mnt", "busybox:latest", "sleep", "1000").code == 0)
        let withBind = "\(host.root)/b.tar.zst"
        #expect(host("checkpoint", "--export", withBind, "b").code == 0)
        #expect(host("rm", "b").code == 0)
        rmdir(bindSource)
        let noBind = host("restore", "--import", withBind)
        #expect(noBind.code != 0)
        #expect(noBind.stderr.contains(bindSource))
        #expect(!FileManager.default.fileExists(atPath: bindSource), "Ferry never creates a host path named by an archive")
    }
}
