import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Runs a bash script (-euo pipefail); its trimmed stdout, or the test fails.
private func shell(_ script: String) throws -> String {
    let result = Command.run(["/bin/bash", "-euo", "pipefail", "-c", script])
    try #require(result.code == 0, "\(script): \(result.stderr)")
    return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// Copies the file at `path` into the OCI layout's blobs under its digest; its descriptor.
private func addBlob(_ path: String, to layout: String) throws -> (digest: String, size: Int) {
    let hex = try shell("sha256sum '\(path)' | cut -d' ' -f1")
    let size = try Files.status(path).size
    _ = try shell("mkdir -p '\(layout)/blobs/sha256' && cp '\(path)' '\(layout)/blobs/sha256/\(hex)'")
    return ("sha256:\(hex)", Int(size))
}

/// A two-layer OCI layout built with tar and sha256sum, as `podman save --format oci-dir`
/// writes one: busybox below; above it a layer that adds /etc/greeting, deletes /etc/group
/// (a whiteout) and replaces /var (opaque). Its config runs a counter by default;
/// `script` replaces the counter, `extraConfig` adds fields to the config's `config`.
private func makeLayeredImage(at layout: String, work: String, script: String? = nil, extraConfig: String = "") throws -> String {
    func blob(_ path: String) throws -> (digest: String, size: Int) { try addBlob(path, to: layout) }
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
    let script = script ?? #"i=0; while true; do echo \"$(cat /etc/greeting) $i\"; i=$((i+1)); sleep 0.2; done"#
    let config =
        #"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["\#(script)"],"Env":["GREETING=image"],"WorkingDir":"/etc"\#(extraConfig)},"rootfs":{"type":"layers","diff_ids":["\#(bottom.digest)","\#(top.digest)"]}}"#
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

/// A one-layer OCI layout at `layout` whose only layer is the bottom layer (busybox)
/// that `makeLayeredImage` wrote into `work`: an image that shares a layer with it.
private func makeBaseImage(at layout: String, work: String, reference: String) throws {
    func blob(_ path: String) throws -> (digest: String, size: Int) { try addBlob(path, to: layout) }
    let bottom = try blob("\(work)/bottom.tar.gz")
    let config =
        #"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["\#(bottom.digest)"]}}"#
    try Files.writeAtomically(Array(config.utf8), to: "\(work)/base-config.json")
    let configBlob = try blob("\(work)/base-config.json")
    let manifest =
        #"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(configBlob.digest)","size":\#(configBlob.size)},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"\#(bottom.digest)","size":\#(bottom.size)}]}"#
    try Files.writeAtomically(Array(manifest.utf8), to: "\(work)/base-manifest.json")
    let manifestBlob = try blob("\(work)/base-manifest.json")
    let index =
        #"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"\#(manifestBlob.digest)","size":\#(manifestBlob.size),"annotations":{"org.opencontainers.image.ref.name":"\#(reference)"}}]}"#
    try Files.writeAtomically(Array(index.utf8), to: "\(layout)/index.json")
    try Files.writeAtomically(Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8), to: "\(layout)/oci-layout")
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

    /// `ferry inspect NAME` (an array of one, as podman prints) as a dictionary.
    private func inspect(_ host: Host, _ name: String) throws -> [String: Any] {
        let result = host("inspect", name)
        try #require(result.code == 0, "\(result.stderr)")
        let documents = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]])
        return try #require(documents.first)
    }

    /// The exit code of an exited container, from `ferry inspect`.
    private func exitCode(_ host: Host, _ name: String) throws -> Int? {
        ((try inspect(host, name)["status"] as? [String: Any])?["exited"] as? [String: Any])?["exitCode"] as? Int
    }

    @Test("stop sends the image's StopSignal (--stop-signal overrides); Labels and ExposedPorts show in inspect and survive export/import-restore")
    func stopSignalLabelsPorts() throws {
        try withHosts { a, b in
            let layout = "\(a.root)/layout"
            let work = "\(a.root)/image-work"
            // PID 1 of a pid namespace gets only the signals it handles: SIGTERM is
            // ignored here, so a stop that sent SIGTERM would end in SIGKILL (137) after
            // the timeout, never in the trap's exit 0.
            let script = #"trap 'echo got-usr1; exit 0' USR1; trap 'echo got-hup; exit 0' HUP; trap '' TERM; echo ready; while true; do sleep 0.1; done"#
            let extra = #","StopSignal":"SIGUSR1","Labels":{"org.example.role":"web"},"ExposedPorts":{"8080/tcp":{},"53/udp":{}}"#
            _ = try makeLayeredImage(at: layout, work: work, script: script, extraConfig: extra)
            #expect(a("image", "import", "\(work)/app.oci.tar", "sig/app:1").code == 0)
            let image = try #require(try JSONSerialization.jsonObject(with: Data(a("image", "inspect", "sig/app:1").stdout.utf8)) as? [String: Any])
            let imageConfig = try #require(image["config"] as? [String: Any])
            #expect(imageConfig["StopSignal"] as? String == "SIGUSR1")
            #expect((imageConfig["Labels"] as? [String: String]) == ["org.example.role": "web"])
            #expect(Set((imageConfig["ExposedPorts"] as? [String: Any])?.keys.map { $0 } ?? []) == ["8080/tcp", "53/udp"])

            // The image's StopSignal.
            #expect(a("run", "-d", "--name", "usr1", "sig/app:1").code == 0)
            #expect(a.eventually { a("logs", "usr1").stdout.contains("ready") })
            let shown = try inspect(a, "usr1")
            #expect(shown["stopSignal"] as? String == "SIGUSR1")
            #expect((shown["labels"] as? [String: String]) == ["org.example.role": "web"])
            #expect((shown["exposedPorts"] as? [String]) == ["53/udp", "8080/tcp"])
            let started = Date()
            #expect(a("stop", "-t", "30", "usr1").code == 0)
            #expect(Date().timeIntervalSince(started) < 15, "stopped by the trap, not by SIGKILL after the timeout")
            #expect(a("logs", "usr1").stdout.contains("got-usr1"))
            #expect(try exitCode(a, "usr1") == 0)

            // --stop-signal overrides it.
            #expect(a("run", "-d", "--name", "hup", "--stop-signal", "HUP", "sig/app:1").code == 0)
            #expect(a.eventually { a("logs", "hup").stdout.contains("ready") })
            #expect(try inspect(a, "hup")["stopSignal"] as? String == "HUP")
            #expect(a("stop", "-t", "30", "hup").code == 0)
            #expect(a("logs", "hup").stdout.contains("got-hup"))
            #expect(!a("logs", "hup").stdout.contains("got-usr1"))
            #expect(try exitCode(a, "hup") == 0)
            #expect(a("run", "--stop-signal", "SIGNOPE", "sig/app:1").code != 0, "an unknown signal is refused")

            // Checkpointed, exported, and restored on another root: the settings came along.
            #expect(a("run", "-d", "--name", "moved", "sig/app:1").code == 0)
            #expect(a.eventually { a("logs", "moved").stdout.contains("ready") })
            let archive = "\(a.root)/moved.tar.zst"
            let checkpoint = a("checkpoint", "--export", archive, "moved")
            #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
            #expect(b("image", "import", layout, "sig/app:1").code == 0)
            let restore = b("restore", "--import", archive)
            #expect(restore.code == 0, "\(restore.stderr)")
            let restored = try inspect(b, "moved")
            #expect(restored["stopSignal"] as? String == "SIGUSR1")
            #expect((restored["labels"] as? [String: String]) == ["org.example.role": "web"])
            #expect((restored["exposedPorts"] as? [String]) == ["53/udp", "8080/tcp"])
            #expect(b("stop", "-t", "30", "moved").code == 0)
            #expect(b.eventually { b("logs", "moved").stdout.contains("got-usr1") }, "\(b("logs", "moved").stdout.suffix(200))")
            #expect(try exitCode(b, "moved") == 0)
        }
    }

    @Test("exec --user UID[:GID]|NAME takes the identity from the container's /etc/passwd (live), --workdir and --env apply; by default the container's user")
    func execUser() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importUsersImage()
        #expect(host("run", "-d", "--name", "asroot", "users:1", "sh", "-c", "while true; do sleep 0.1; done").code == 0)
        func exec(_ container: String, _ arguments: String...) -> String {
            let result = host.ferry(["exec"] + arguments.prefix { $0 != "--" } + [container] + arguments.drop { $0 != "--" }.dropFirst())
            #expect(result.code == 0, "exec \(arguments): \(result.stderr)")
            return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(exec("asroot", "--", "id", "-u") == "0")
        #expect(exec("asroot", "--user", "app", "--", "sh", "-c", "echo $(id -u) $(id -g)") == "1000 1000")
        #expect(exec("asroot", "--user", "app", "--", "id", "-G").split(separator: " ").contains("50"), "staff, from /etc/group")
        #expect(exec("asroot", "--user", "1234:77", "--", "sh", "-c", "echo $(id -u) $(id -g)") == "1234 77")
        #expect(exec("asroot", "--user", "app", "--", "grep", "CapEff", "/proc/self/status") == "CapEff:\t0000000000000000")
        #expect(exec("asroot", "--user", "app", "--workdir", "/tmp", "--env", "X=from-exec", "--", "sh", "-c", "echo $(pwd) $X") == "/tmp from-exec")
        // An account made inside the running container counts: the lookup reads its root.
        _ = exec("asroot", "--", "sh", "-c", "echo bob:x:2000:2000::/tmp:/bin/sh >> /etc/passwd")
        #expect(exec("asroot", "--user", "bob", "--", "id", "-u") == "2000")
        let unknown = host("exec", "--user", "nobody-here", "asroot", "id", "-u")
        #expect(unknown.code != 0 && unknown.stderr.contains("nobody-here"), "\(unknown.stderr)")

        #expect(host("run", "-d", "--name", "asapp", "--user", "app", "users:1", "sh", "-c", "while true; do sleep 0.1; done").code == 0)
        #expect(exec("asapp", "--", "id", "-u") == "1000", "exec defaults to the container's user")
        #expect(exec("asapp", "--user", "0", "--", "id", "-u") == "0")
    }

    @Test("a stop-copy migration carries StopSignal, Labels and ExposedPorts: the destination stops it with SIGUSR1")
    func settingsSurviveMigration() throws {
        try withMigration(port: 18201) { a, b, token, agent in
            let layout = "\(a.root)/layout"
            let work = "\(a.root)/image-work"
            let script = #"trap 'echo got-usr1; exit 0' USR1; trap '' TERM; echo ready; while true; do sleep 0.1; done"#
            let extra = #","StopSignal":"SIGUSR1","Labels":{"org.example.role":"web"},"ExposedPorts":{"8080/tcp":{}}"#
            _ = try makeLayeredImage(at: layout, work: work, script: script, extraConfig: extra)
            #expect(a("image", "import", layout, "sig/app:1").code == 0)
            #expect(b("image", "import", layout, "sig/app:1").code == 0)
            #expect(a("run", "-d", "--name", "mover", "sig/app:1").code == 0)
            #expect(a.eventually { a("logs", "mover").stdout.contains("ready") })
            let result = a("migrate", "mover", "--to", "127.0.0.1:18201", "--token-file", token, "--mode", "stop-copy")
            #expect(result.code == 0, "\(result.stderr)\nagent: \((try? String(contentsOfFile: agent.log, encoding: .utf8)) ?? "")")
            #expect(b.status(of: "mover") == "running")
            let shown = try inspect(b, "mover")
            #expect(shown["stopSignal"] as? String == "SIGUSR1")
            #expect((shown["labels"] as? [String: String]) == ["org.example.role": "web"])
            #expect((shown["exposedPorts"] as? [String]) == ["8080/tcp"])
            #expect(b("stop", "-t", "30", "mover").code == 0)
            #expect(b.eventually { b("logs", "mover").stdout.contains("got-usr1") }, "\(b("logs", "mover").stdout.suffix(200))")
            #expect(try exitCode(b, "mover") == 0)
        }
    }

    /// The destination lacks the image: only the layers it lacks cross, and the image
    /// arrives whole (same ID, its whiteout and opaque directory intact).
    @Test(
        "a migration to a host without the layered image sends it, only the layers missing there: the container runs on the same image",
        arguments: [false, true])
    func missingLayersTravel(destinationHasBase: Bool) throws {
        try withMigration(port: destinationHasBase ? 18203 : 18202) { a, b, token, agent in
            let layout = "\(a.root)/layout"
            let work = "\(a.root)/image-work"
            let manifest = try makeLayeredImage(at: layout, work: work)
            #expect(a("image", "import", layout, "layered/app:1").code == 0)
            if destinationHasBase {
                let base = "\(b.root)/base-layout"
                try makeBaseImage(at: base, work: work, reference: "base/only:1")
                let imported = b("image", "import", base)
                #expect(imported.code == 0, "\(imported.stderr)")
            }
            #expect(b("image", "inspect", "layered/app:1").code != 0, "the destination lacks the image")
            #expect(a("run", "-d", "--name", "mover", "layered/app:1").code == 0)
            #expect(a.eventually { a("logs", "mover").stdout.contains("hello-from-layer-2 3") })
            // The counter's last value here: the copy there must go on from it.
            func lastCount(_ logs: String) -> Int {
                logs.split(separator: "\n").compactMap { line in line.hasPrefix("hello-from-layer-2 ") ? Int(line.split(separator: " ").last ?? "") : nil }.last
                    ?? -1
            }
            let before = lastCount(a("logs", "mover").stdout)
            let result = a("migrate", "mover", "--to", "127.0.0.1:\(destinationHasBase ? 18203 : 18202)", "--token-file", token, "--mode", "stop-copy")
            let log = (try? String(contentsOfFile: agent.log, encoding: .utf8)) ?? ""
            #expect(result.code == 0, "\(result.stderr)\nagent: \(log)")
            #expect(log.contains("received image layered/app:1 from"), "\(log)")
            #expect(log.contains(destinationHasBase ? "1 of 2 layers sent" : "2 of 2 layers sent"), "\(log)")
            #expect(b.status(of: "mover") == "running")
            #expect(a.status(of: "mover") == nil, "the source's copy is gone")
            let image = try #require(try JSONSerialization.jsonObject(with: Data(b("image", "inspect", "layered/app:1").stdout.utf8)) as? [String: Any])
            #expect(image["digest"] as? String == manifest, "the same image ID as on the source")
            #expect((image["layers"] as? [String])?.count == 2)
            // The counter goes on, over the layers as they were: the upper layer's
            // whiteout still hides /etc/group and its opaque /var hides busybox's.
            #expect(b.eventually(20) { lastCount(b("logs", "mover").stdout) > before + 3 }, "from \(before): \(b("logs", "mover").stdout.suffix(200))")
            let probe = b("exec", "mover", "sh", "-c", "test ! -e /etc/group && test -z \"$(ls /var)\" && cat /etc/greeting")
            #expect(probe.code == 0 && probe.stdout.contains("hello-from-layer-2"), "\(probe.stdout) \(probe.stderr)")
            #expect(b("rm", "-f", "mover").code == 0)
            // A fresh container on the received image sees the same tree.
            let fresh = b("run", "--name", "fresh", "layered/app:1", "--", "test ! -e /etc/group && test -z \"$(ls /var)\" && cat /etc/greeting")
            #expect(fresh.code == 0 && fresh.stdout.contains("hello-from-layer-2"), "\(fresh.stdout) \(fresh.stderr)")
            #expect(b("rm", "fresh").code == 0)
            #expect(((try? Files.listDirectory("\(b.root)/images/tmp")) ?? []).isEmpty, "no staging left")
            #expect(((try? Files.listDirectory("\(b.root)/migrations")) ?? []).isEmpty, "no migration staging left")
        }
    }
}
