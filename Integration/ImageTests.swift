import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A two-layer OCI layout built with tar and sha256sum, as `podman save --format oci-dir`
/// writes one: busybox below; above it a layer that adds /etc/greeting, deletes /etc/group
/// (a whiteout) and replaces /var (opaque). Its config runs a counter by default.
private func makeLayeredImage(at layout: String, work: String) throws -> String {
    func shell(_ script: String) throws -> String {
        let result = Command.run(["/bin/bash", "-euo", "pipefail", "-c", script])
        try #require(result.code == 0, "\(script): \(result.stderr)")
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    func blob(_ path: String) throws -> (digest: String, size: Int) {
        let hex = try shell("sha256sum '\(path)' | cut -d' ' -f1")
        let size = try Files.status(path).size
        _ = try shell("mkdir -p '\(layout)/blobs/sha256' && cp '\(path)' '\(layout)/blobs/sha256/\(hex)'")
        return ("sha256:\(hex)", Int(size))
    }
    _ = try shell(
        """
        rm -rf '\(work)' '\(layout)'; mkdir -p '\(work)/top/etc' '\(work)/top/var' '\(layout)'
        echo hello-from-layer-2 > '\(work)/top/etc/greeting'
        touch '\(work)/top/etc/.wh.group' '\(work)/top/var/.wh..wh..opq'
        tar --create --gzip --file '\(work)/bottom.tar.gz' --directory '\(Environment.busyboxTree)' --numeric-owner .
        tar --create --zstd --file '\(work)/top.tar.zst' --directory '\(work)/top' --numeric-owner .
        """)
    let bottom = try blob("\(work)/bottom.tar.gz")
    let top = try blob("\(work)/top.tar.zst")
    let script = #"i=0; while true; do echo \"$(cat /etc/greeting) $i\"; i=$((i+1)); sleep 0.2; done"#
    let config =
        #"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["\#(script)"],"Env":["GREETING=image"],"WorkingDir":"/etc"},"rootfs":{"type":"layers","diff_ids":["\#(bottom.digest)","\#(top.digest)"]}}"#
    try Files.writeAtomically(Array(config.utf8), to: "\(work)/config.json")
    let configBlob = try blob("\(work)/config.json")
    let layer = "application/vnd.oci.image.layer.v1.tar"
    let manifest =
        #"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(configBlob.digest)","size":\#(configBlob.size)},"layers":[{"mediaType":"\#(layer)+gzip","digest":"\#(bottom.digest)","size":\#(bottom.size)},{"mediaType":"\#(layer)+zstd","digest":"\#(top.digest)","size":\#(top.size)}]}"#
    try Files.writeAtomically(Array(manifest.utf8), to: "\(work)/manifest.json")
    let manifestBlob = try blob("\(work)/manifest.json")
    let index =
        #"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"\#(manifestBlob.digest)","size":\#(manifestBlob.size),"annotations":{"org.opencontainers.image.ref.name":"layered/app:1"}}]}"#
    try Files.writeAtomically(Array(index.utf8), to: "\(layout)/index.json")
    try Files.writeAtomically(Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8), to: "\(layout)/oci-layout")
    _ = try shell("tar --create --file '\(work)/app.oci.tar' --directory '\(layout)' .")
    return manifestBlob.digest
}

@Suite("Layered OCI images", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct ImageTests {
    @Test("a 2-layer oci-archive runs its Entrypoint+Cmd on stacked layers, and checkpoints, exports and restores on another root")
    func layeredImage() throws {
        try withHosts { a, b in
            let layout = "\(a.root)/layout"
            let work = "\(a.root)/image-work"
            let manifest = try makeLayeredImage(at: layout, work: work)
            let imported = a("image", "import", "\(work)/app.oci.tar")
            #expect(imported.code == 0, "\(imported.stderr)")
            #expect(imported.stdout.contains(manifest))
            let inspect = try #require(try JSONSerialization.jsonObject(with: Data(a("image", "inspect", "layered/app:1").stdout.utf8)) as? [String: Any])
            #expect((inspect["layers"] as? [String])?.count == 2)
            #expect(inspect["digest"] as? String == manifest)

            // Whiteout, opaque directory, Env and WorkingDir, seen from inside.
            let probe = a(
                "run", "--name", "probe", "layered/app:1", "--", "test ! -e /etc/group && test -z \"$(ls /var)\" && echo $GREETING $(pwd) $(cat greeting)")
            #expect(probe.code == 0, "\(probe.stderr)")
            #expect(probe.stdout.contains("image /etc hello-from-layer-2"), "\(probe.stdout)")
            #expect(a("rm", "probe").code == 0)

            #expect(a("run", "-d", "--name", "layered", "layered/app:1").code == 0)
            #expect(a.eventually { a("logs", "layered").stdout.contains("hello-from-layer-2 5") })
            #expect(a("exec", "layered", "sh", "-c", "echo changed > /etc/greeting").code == 0)
            let archive = "\(a.root)/layered.tar.zst"
            let checkpoint = a("checkpoint", "--export", archive, "layered")
            #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
            #expect(a("rm", "layered").code == 0)

            // The other root has the same image, found by its manifest digest.
            #expect(b("image", "import", layout, "other/name:2").code == 0)
            let restore = b("restore", "--import", archive)
            #expect(restore.code == 0, "\(restore.stderr)")
            #expect(b.status(of: "layered") == "running")
            #expect(
                b.eventually { b("logs", "layered").stdout.contains("changed ") }, "the rootfs change came along: \(b("logs", "layered").stdout.suffix(200))")
            #expect(b("rm", "-f", "layered").code == 0)
            #expect(b("image", "rm", "other/name:2").code == 0)
            #expect(((try? Files.listDirectory("\(b.root)/images/layers")) ?? []).isEmpty, "the last image took its layers along")
        }
    }
}
