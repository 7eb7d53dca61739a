import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// One thing a confined container must not be able to do. `refused` is a busybox shell
/// snippet that exits 0 when the container was refused (and anything else when it got
/// through). A probe that gets through does no harm: it writes back what is there, sets
/// the clock to the time it is, and so on.
struct Probe: CustomStringConvertible, Sendable {
    let name: String
    let refused: String
    var description: String { name }
}

let isolationProbes: [Probe] = [
    Probe(name: "CapEff is podman's default", refused: #"[ "$(awk '/^CapEff/ {print $2}' /proc/self/status)" = 00000000800405fb ]"#),
    Probe(name: "CapBnd is podman's default", refused: #"[ "$(awk '/^CapBnd/ {print $2}' /proc/self/status)" = 00000000800405fb ]"#),
    Probe(name: "a seccomp filter (Seccomp: 2)", refused: #"[ "$(awk '/^Seccomp:/ {print $2}' /proc/self/status)" = 2 ]"#),
    Probe(name: "mount -t tmpfs", refused: "mkdir -p /tmp/m && ! mount -t tmpfs probe /tmp/m"),
    Probe(name: "mount -t proc", refused: "mkdir -p /tmp/m && ! mount -t proc proc /tmp/m"),
    Probe(name: "mount cgroup2 or a v1 hierarchy", refused: "mkdir -p /tmp/m && ! mount -t cgroup2 none /tmp/m && ! mount -t cgroup -o pids none /tmp/m"),
    Probe(name: "mount -o remount,rw /sys", refused: "! mount -o remount,rw /sys"),
    Probe(name: "mount -o remount,rw /", refused: "! mount -o remount,rw /"),
    Probe(name: "write /proc/sys/kernel/core_pattern", refused: "! sh -c 'cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern'"),
    Probe(name: "write /sys/kernel/mm/ksm/run", refused: "! sh -c 'cat /sys/kernel/mm/ksm/run > /sys/kernel/mm/ksm/run'"),
    Probe(name: "mknod a block device", refused: "! mknod /tmp/probe-disk b 8 0"),
    Probe(name: "read /proc/timer_list (masked)", refused: #"[ "$(cat /proc/timer_list 2>/dev/null | wc -c)" = 0 ]"#),
    Probe(name: "read /proc/keys (masked)", refused: #"[ "$(cat /proc/keys 2>/dev/null | wc -c)" = 0 ]"#),
    Probe(name: "read /proc/kcore (masked or absent)", refused: #"[ "$(head -c 16 /proc/kcore 2>/dev/null | wc -c)" = 0 ]"#),
    Probe(name: "list /sys/firmware (masked)", refused: #"[ -z "$(ls -A /sys/firmware 2>/dev/null)" ]"#),
    Probe(name: "unshare -m (a mount namespace)", refused: "! unshare -m true"),
    Probe(name: "unshare -U (a user namespace: seccomp alone refuses it)", refused: "! unshare -U true"),
    Probe(name: "settimeofday (date -s)", refused: #"date -s "$(date '+%Y-%m-%d %H:%M:%S')" 2>&1 | grep -q "can't set""#),
    Probe(name: "a raw socket (ping)", refused: "! ping -c 1 -W 1 127.0.0.1"),
    Probe(name: "read the kernel log (dmesg)", refused: "dmesg 2>&1 | grep -q 'not permitted'"),
    Probe(name: "real kallsyms addresses", refused: "! grep -qv '^0000000000000000' /proc/kallsyms"),
    Probe(name: "see the host's cgroup tree", refused: #"! grep -qv ':/$' /proc/self/cgroup"#),
]

/// All probes as one script: a line "refused NAME" or "ALLOWED NAME" each, then "END".
func probeScript(_ probes: [Probe]) -> String {
    probes.map { probe in
        let name = probe.name.replacingOccurrences(of: "'", with: "")
        return "if ( \(probe.refused) ) >/dev/null 2>&1; then echo 'refused \(name)'; else echo 'ALLOWED \(name)'; fi"
    }.joined(separator: "\n") + "\necho END"
}

/// The container's init: it runs the probe script each time /tmp/go appears, so the
/// probes run as children of the init itself (after a restore: of the restored init,
/// whose credentials and filter came back from CRIU's images), not of a `ferry exec`.
func probeServer(_ script: String) -> String {
    """
    cat > /tmp/probes.sh <<'PROBES'
    \(script)
    PROBES
    while true; do
        if [ -e /tmp/go ]; then rm -f /tmp/go; sh /tmp/probes.sh > /tmp/result.new 2>&1; mv /tmp/result.new /tmp/result; fi
        sleep 0.1
    done
    """
}

extension Host {
    /// Asks the probe server for a run; returns each probe's verdict by name.
    func serverVerdicts(_ container: String) -> [String: String] {
        _ = self("exec", container, "rm", "-f", "/tmp/result")
        guard self("exec", container, "touch", "/tmp/go").code == 0 else { return [:] }
        var text = ""
        _ = eventually(30) {
            text = self("exec", container, "cat", "/tmp/result").stdout
            return text.contains("END")
        }
        return verdicts(text)
    }

    /// Runs the probe script through `ferry exec`.
    func execVerdicts(_ container: String, _ probes: [Probe]) -> [String: String] {
        verdicts(self("exec", container, "sh", "-c", probeScript(probes)).stdout)
    }

    func verdicts(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            if parts.count == 2 { result[parts[1]] = parts[0] }
        }
        return result
    }
}

/// Every probe refused, or an issue naming each one that was not.
func expectAllRefused(
    _ verdicts: [String: String], _ probes: [Probe], _ moment: String, sourceLocation: SourceLocation = #_sourceLocation
) {
    for probe in probes {
        let name = probe.name.replacingOccurrences(of: "'", with: "")
        #expect(verdicts[name] == "refused", "\(moment): \(probe.name): \(verdicts[name] ?? "no verdict")", sourceLocation: sourceLocation)
    }
}

@Suite("Isolation", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct IsolationTests {
    @Test("a fresh container is refused", arguments: isolationProbes)
    func fresh(_ probe: Probe) {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        let run = host("run", "--name", "probe", "busybox:latest", "sh", "-c", probe.refused)
        #expect(run.code == 0, "the container could: \(probe.name) (\(run.stdout)\(run.stderr))")
    }

    @Test("ferry exec is refused the same")
    func exec() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "probe", "busybox:latest", "sleep", "1000").code == 0)
        expectAllRefused(host.execVerdicts("probe", isolationProbes), isolationProbes, "exec")
    }

    @Test("checkpoint and restore in place keep every refusal, for the init and for exec")
    func checkpointRestore() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "probe", "busybox:latest", "sh", "-c", probeServer(probeScript(isolationProbes))).code == 0)
        expectAllRefused(host.serverVerdicts("probe"), isolationProbes, "before checkpoint")
        let checkpoint = host("checkpoint", "probe")
        #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
        let restore = host("restore", "probe")
        #expect(restore.code == 0, "\(restore.stderr)")
        expectAllRefused(host.serverVerdicts("probe"), isolationProbes, "restored init")
        expectAllRefused(host.execVerdicts("probe", isolationProbes), isolationProbes, "exec after restore")
    }

    @Test("restored from an export on a second state root: every refusal stays")
    func exportedToSecondRoot() throws {
        withHosts { a, b in
            a.importBusybox()
            b.importBusybox()
            #expect(a("run", "-d", "--name", "probe", "busybox:latest", "sh", "-c", probeServer(probeScript(isolationProbes))).code == 0)
            expectAllRefused(a.serverVerdicts("probe"), isolationProbes, "before export")
            let archive = "\(a.root)/probe.tar.zst"
            let export = a("checkpoint", "--export", archive, "probe")
            #expect(export.code == 0, "\(export.stderr)")
            #expect(a("rm", "probe").code == 0)
            let restore = b("restore", "--import", archive)
            #expect(restore.code == 0, "\(restore.stderr)")
            expectAllRefused(b.serverVerdicts("probe"), isolationProbes, "restored init on the second root")
            expectAllRefused(b.execVerdicts("probe", isolationProbes), isolationProbes, "exec on the second root")
        }
    }

    @Test("a snapshot and a rollback to it keep every refusal")
    func snapshotRollback() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "probe", "busybox:latest", "sh", "-c", probeServer(probeScript(isolationProbes))).code == 0)
        let snapshot = host("snapshot", "create", "--tag", "confined", "probe")
        #expect(snapshot.code == 0, "\(snapshot.stderr)")
        expectAllRefused(host.serverVerdicts("probe"), isolationProbes, "after a snapshot")
        let rollback = host("rollback", "--to", "confined", "probe")
        #expect(rollback.code == 0, "\(rollback.stderr)")
        expectAllRefused(host.serverVerdicts("probe"), isolationProbes, "after a rollback")
        expectAllRefused(host.execVerdicts("probe", isolationProbes), isolationProbes, "exec after a rollback")
    }

    @Test("after a migration every refusal stays", arguments: ["stop-copy", "lazy"])
    func migrated(_ mode: String) throws {
        let port = mode == "lazy" ? 17202 : 17201
        try withMigration(port: port) { a, b, token, _ in
            a.importBusybox()
            #expect(a("run", "-d", "--name", "probe", "busybox:latest", "sh", "-c", probeServer(probeScript(isolationProbes))).code == 0)
            expectAllRefused(a.serverVerdicts("probe"), isolationProbes, "before migration")
            let migrate = a("migrate", "probe", "--to", "127.0.0.1:\(port)", "--token-file", token, "--mode", mode)
            #expect(migrate.code == 0, "\(migrate.stderr)")
            #expect(b.status(of: "probe") == "running")
            expectAllRefused(b.serverVerdicts("probe"), isolationProbes, "migrated init (\(mode))")
            expectAllRefused(b.execVerdicts("probe", isolationProbes), isolationProbes, "exec after migration (\(mode))")
        }
    }
}

/// A profile in docker's format that allows everything but mkdir/mkdirat (EPERM): a
/// system call busybox makes on request, which nothing else would refuse in /tmp.
let noMkdirProfile = """
    {"defaultAction": "SCMP_ACT_ALLOW",
     "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
     "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    """

/// What `--read-only --tmpfs /tmp --ulimit --security-opt no-new-privileges,seccomp=FILE`
/// give a root container.
let optionProbes: [Probe] = [
    Probe(name: "NoNewPrivs: 1", refused: #"[ "$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status)" = 1 ]"#),
    Probe(name: "Seccomp: 2 with the file's filter", refused: #"[ "$(awk '/^Seccomp:/ {print $2}' /proc/self/status)" = 2 ]"#),
    Probe(name: "mkdir refused by the file's filter", refused: "mkdir /tmp/probe-dir 2>&1 | grep -q 'not permitted' && [ ! -e /tmp/probe-dir ]"),
    Probe(name: "the root filesystem is read-only", refused: "touch /etc/probe 2>&1 | grep -q 'Read-only'"),
    Probe(name: "the tmpfs on /tmp is writable", refused: "echo x > /tmp/probe-file && [ -s /tmp/probe-file ]"),
    Probe(name: "ulimit -n is 256", refused: #"[ "$(ulimit -n)" = 256 ]"#),
    Probe(name: "ulimit -Hn is 512", refused: #"[ "$(ulimit -Hn)" = 512 ]"#),
    Probe(name: "no raising the hard limit", refused: "! sh -c 'ulimit -Hn 1024'"),
]

/// What `--user app --group-add audio` gives, with app and its groups from the image.
let userProbes: [Probe] = [
    Probe(name: "uid is app's", refused: #"[ "$(id -u)" = 1000 ]"#),
    Probe(name: "gid is app's", refused: #"[ "$(id -g)" = 1000 ]"#),
    Probe(name: "app's groups and --group-add", refused: #"[ "$(id -G)" = "1000 50 63" ]"#),
    Probe(name: "no capabilities as a non-root user", refused: #"[ "$(awk '/^CapEff/ {print $2}' /proc/self/status)" = 0000000000000000 ]"#),
    Probe(name: "the bounding set is still podman's", refused: #"[ "$(awk '/^CapBnd/ {print $2}' /proc/self/status)" = 00000000800405fb ]"#),
    Probe(name: "a seccomp filter", refused: #"[ "$(awk '/^Seccomp:/ {print $2}' /proc/self/status)" = 2 ]"#),
    Probe(name: "cannot write the image's /etc", refused: "! touch /etc/probe"),
]

extension Host {
    /// busybox with a user "app" (1000:1000, also in "staff" 50) and a group "audio" 63.
    func importUsersImage() {
        let tree = "\(root)/users-image"
        #expect(Command.run(["/bin/cp", "-a", Environment.busyboxTree, tree]).code == 0)
        try? "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n".write(toFile: "\(tree)/etc/passwd", atomically: true, encoding: .utf8)
        try? "root:x:0:\napp:x:1000:\nstaff:x:50:app\naudio:x:63:\n".write(toFile: "\(tree)/etc/group", atomically: true, encoding: .utf8)
        let result = self("image", "import", tree, "users:1")
        #expect(result.code == 0, "image import failed: \(result.stderr)")
    }
}

@Suite("Isolation options", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct IsolationOptionTests {
    @Test("--read-only, --tmpfs, --ulimit, no-new-privileges and a seccomp file hold fresh, after export to a second root and for exec")
    func optionsSurviveExport() throws {
        withHosts { a, b in
            a.importBusybox()
            b.importBusybox()
            let profile = "\(a.root)/no-mkdir.json"
            try? noMkdirProfile.write(toFile: profile, atomically: true, encoding: .utf8)
            let run = a(
                "run", "-d", "--name", "opts", "--read-only", "--tmpfs", "/tmp:mode=1777,size=16m", "--ulimit", "nofile=256:512",
                "--security-opt", "no-new-privileges", "--security-opt", "seccomp=\(profile)", "busybox:latest",
                "sh", "-c", probeServer(probeScript(optionProbes)))
            #expect(run.code == 0, "\(run.stderr)")
            expectAllRefused(a.serverVerdicts("opts"), optionProbes, "fresh")
            expectAllRefused(a.execVerdicts("opts", optionProbes), optionProbes, "exec")
            let archive = "\(a.root)/opts.tar.zst"
            let export = a("checkpoint", "--export", archive, "opts")
            #expect(export.code == 0, "\(export.stderr)")
            #expect(a("rm", "opts").code == 0)
            let restore = b("restore", "--import", archive)
            #expect(restore.code == 0, "\(restore.stderr)")
            expectAllRefused(b.serverVerdicts("opts"), optionProbes, "restored init on the second root")
            expectAllRefused(b.execVerdicts("opts", optionProbes), optionProbes, "exec on the second root")
        }
    }

    @Test("the device cgroup: with CAP_MKNOD a block device node can be made but not opened, fresh, after restore and after export")
    func deviceCgroup() throws {
        // A block device of this host: the first one the kernel lists.
        let devices = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/dev/block")) ?? []
        let block = try #require(devices.sorted().first, "no block device on this host")
        let numbers = block.split(separator: ":").map(String.init)
        try #require(numbers.count == 2)
        let probes = [
            Probe(
                name: "open a block device node it made",
                refused: "rm -f /tmp/disk; mknod /tmp/disk b \(numbers[0]) \(numbers[1]) && head -c 1 /tmp/disk 2>&1 | grep -q 'not permitted'"),
            Probe(name: "its own /dev/null and /dev/urandom still work", refused: #"echo x > /dev/null && [ "$(head -c 4 /dev/urandom | wc -c)" = 4 ]"#),
        ]
        withHosts { a, b in
            a.importBusybox()
            b.importBusybox()
            let run = a("run", "-d", "--name", "dev", "--cap-add", "MKNOD", "busybox:latest", "sh", "-c", probeServer(probeScript(probes)))
            #expect(run.code == 0, "\(run.stderr)")
            expectAllRefused(a.serverVerdicts("dev"), probes, "fresh")
            expectAllRefused(a.execVerdicts("dev", probes), probes, "exec")
            #expect(a("checkpoint", "dev").code == 0)
            #expect(a("restore", "dev").code == 0)
            expectAllRefused(a.serverVerdicts("dev"), probes, "restored")
            let archive = "\(a.root)/dev.tar.zst"
            #expect(a("checkpoint", "--export", archive, "dev").code == 0)
            #expect(a("rm", "dev").code == 0)
            let restore = b("restore", "--import", archive)
            #expect(restore.code == 0, "\(restore.stderr)")
            expectAllRefused(b.serverVerdicts("dev"), probes, "restored on the second root")
        }
    }

    @Test("--user NAME and --group-add from the image's files hold fresh, after checkpoint/restore and for exec")
    func userSurvivesRestore() {
        let host = Host()
        defer { host.tearDown() }
        host.importUsersImage()
        let run = host("run", "-d", "--name", "user", "--user", "app", "--group-add", "audio", "users:1", "sh", "-c", probeServer(probeScript(userProbes)))
        #expect(run.code == 0, "\(run.stderr)")
        expectAllRefused(host.serverVerdicts("user"), userProbes, "fresh")
        expectAllRefused(host.execVerdicts("user", userProbes), userProbes, "exec")
        let checkpoint = host("checkpoint", "user")
        guard Environment.rootHoldsSysResource else {
            // CRIU reads a task's rlimits with prlimit(2), which needs CAP_SYS_RESOURCE
            // for a task of another user; a host whose root lacks it cannot dump this
            // container, and the failed dump must leave it running.
            #expect(checkpoint.code != 0)
            #expect(checkpoint.stderr.contains("rlimit"), "\(checkpoint.stderr)")
            #expect(host.status(of: "user") == "running")
            expectAllRefused(host.serverVerdicts("user"), userProbes, "after the refused dump")
            return
        }
        #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
        let restore = host("restore", "user")
        #expect(restore.code == 0, "\(restore.stderr)")
        expectAllRefused(host.serverVerdicts("user"), userProbes, "restored")
        expectAllRefused(host.execVerdicts("user", userProbes), userProbes, "exec after restore")
    }

    @Test("--cap-add, --cap-drop ALL, --privileged and seccomp=unconfined change what the container holds")
    func capabilityFlags() {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        func status(_ field: String, _ flags: [String]) -> String {
            let result = host.ferry(["run", "--name", "caps"] + flags + ["busybox:latest", "awk", "/^\(field):/ {print $2}", "/proc/self/status"])
            _ = host("rm", "caps")
            return result.code == 0 ? result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : "error: \(result.stderr)"
        }
        // NET_RAW is bit 13, SYS_ADMIN bit 21.
        #expect(status("CapEff", ["--cap-add", "NET_RAW"]) == "00000000800425fb")
        #expect(status("CapEff", ["--cap-drop", "ALL"]) == "0000000000000000")
        #expect(status("CapEff", ["--cap-drop", "ALL", "--cap-add", "kill"]) == "0000000000000020")
        #expect(status("CapEff", ["--cap-drop", "CHOWN", "--cap-drop", "SETFCAP"]) == "00000000000405fa")
        let privileged = status("CapEff", ["--privileged"])
        let held = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8))?.split(separator: "\n")
            .first { $0.hasPrefix("CapPrm:") }?.split(separator: "\t").last.map(String.init)
        #expect(privileged == held, "--privileged: every capability ferry holds")
        // A non-root user holds only what --cap-add names (ambient, so exec keeps it).
        #expect(status("CapEff", ["--user", "1000", "--cap-add", "NET_BIND_SERVICE"]) == "0000000000000400")
        #expect(status("CapAmb", ["--user", "1000", "--cap-add", "NET_BIND_SERVICE"]) == "0000000000000400")
        #expect(status("CapEff", ["--user", "1000"]) == "0000000000000000")
        #expect(status("Seccomp", ["--privileged"]) == "0")
        #expect(status("Seccomp", ["--security-opt", "seccomp=unconfined"]) == "0")
        #expect(status("Seccomp", []) == "2")
        // With CAP_SYS_ADMIN the default profile lets mount through, as podman's does.
        let mount = host("run", "--name", "admin", "--cap-add", "SYS_ADMIN", "busybox:latest", "sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs x /tmp/m")
        #expect(mount.code == 0, "\(mount.stderr)")
        let bad = host("run", "--name", "bad", "--cap-add", "FOO", "busybox:latest", "true")
        #expect(bad.code != 0)
        #expect(bad.stderr.contains("cannot run container 'bad': --cap-add FOO: unknown capability"), "\(bad.stderr)")
        let dev = host("run", "--name", "dev", "-v", "\(host.root):/dev", "busybox:latest", "true")
        #expect(dev.code != 0)
        #expect(dev.stderr.contains("/dev belongs to the container's own /dev"), "\(dev.stderr)")
        // Above fs.nr_open no one may raise RLIMIT_NOFILE: the child's report names it.
        let limit = host("run", "--name", "limit", "--ulimit", "nofile=99999999", "busybox:latest", "true")
        #expect(limit.code != 0)
        #expect(limit.stderr.contains("setrlimit RLIMIT_NOFILE=99999999:99999999"), "\(limit.stderr)")
        let list = host("ps", "-a").stdout
        #expect(!list.contains("bad") && !list.contains("limit"), "a refused run leaves no container: \(list)")
    }
}

@Suite("Isolation of OCI bundles", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct BundleIsolationTests {
    @Test("a bundle's capabilities, noNewPrivileges, rlimits, user, seccomp, masked and read-only paths are honoured, also after checkpoint/restore")
    func bundleSecurity() throws {
        let host = Host()
        defer { host.tearDown() }
        let bundle = "\(host.root)/bundle"
        mkdir(bundle, 0o755)
        #expect(Command.run(["/bin/cp", "-a", Environment.busyboxTree, "\(bundle)/rootfs"]).code == 0)
        let probes = [
            // CAP_CHOWN (bit 0) and CAP_KILL (bit 5).
            Probe(name: "CapEff is the bundle's", refused: #"[ "$(awk '/^CapEff/ {print $2}' /proc/self/status)" = 0000000000000021 ]"#),
            Probe(name: "CapBnd is the bundle's", refused: #"[ "$(awk '/^CapBnd/ {print $2}' /proc/self/status)" = 0000000000000021 ]"#),
            Probe(name: "NoNewPrivs: 1", refused: #"[ "$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status)" = 1 ]"#),
            Probe(name: "the bundle's filter refuses mkdir", refused: "mkdir /tmp/probe-dir 2>&1 | grep -q 'not permitted' && [ ! -e /tmp/probe-dir ]"),
            Probe(name: "the bundle's rlimit", refused: #"[ "$(ulimit -n)" = 300 ]"#),
            Probe(name: "the bundle's groups", refused: #"[ "$(id -G)" = "0 44" ]"#),
            Probe(name: "the bundle's masked path", refused: #"[ "$(cat /proc/timer_list 2>/dev/null | wc -c)" = 0 ]"#),
            Probe(name: "the bundle's read-only path", refused: "! sh -c 'cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern'"),
        ]
        let script = probeServer(probeScript(probes)).replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
        let caps = #"["CAP_CHOWN", "CAP_KILL"]"#
        let config = """
            {"ociVersion": "1.0.2-dev",
             "process": {"user": {"uid": 0, "gid": 0, "additionalGids": [44]}, "args": ["sh", "-c", "\(script)"],
                         "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/",
                         "capabilities": {"bounding": \(caps), "effective": \(caps), "permitted": \(caps), "inheritable": [], "ambient": []},
                         "noNewPrivileges": true, "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 300, "soft": 300}]},
             "root": {"path": "rootfs", "readonly": false}, "hostname": "bundle",
             "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}],
             "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
                       "maskedPaths": ["/proc/timer_list"], "readonlyPaths": ["/proc/sys"],
                       "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                                   "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}}}
            """
        try config.write(toFile: "\(bundle)/config.json", atomically: true, encoding: .utf8)
        let run = host("run", "-d", "--name", "oci", "--bundle", bundle)
        #expect(run.code == 0, "\(run.stderr)")
        expectAllRefused(host.serverVerdicts("oci"), probes, "fresh")
        expectAllRefused(host.execVerdicts("oci", probes), probes, "exec")
        let checkpoint = host("checkpoint", "oci")
        #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
        let restore = host("restore", "oci")
        #expect(restore.code == 0, "\(restore.stderr)")
        expectAllRefused(host.serverVerdicts("oci"), probes, "restored")
    }
}

@Suite("Dumped cgroups", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct DumpedCgroupTests {
    @Test("a dump covers only the hierarchies Ferry manages, not a named one the container's task was put in")
    func onlyManagedHierarchies() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "cg", "busybox:latest", "sh", "-c", "while true; do sleep 0.1; done").code == 0)
        let inspect = try #require((try JSONSerialization.jsonObject(with: Data(host("inspect", "cg").stdout.utf8)) as? [[String: Any]])?.first)
        let pid = try #require(((inspect["status"] as? [String: Any])?["running"] as? [String: Any])?["pid"] as? Int)
        // A hierarchy of the host's that Ferry knows nothing of, with the task in a child
        // cgroup of it, as a stray cgroup tool (or CRIU's own ZDTM tests) leaves them.
        // One fixed name: a v1 hierarchy outlives its unmount while every process's
        // cgroup set refers to its root, so a new name per run would add one each time.
        let name = "ferry-it-stray"
        let mountPoint = "/var/tmp/\(name)"
        mkdir(mountPoint, 0o755)
        let mounted = Command.run(["/bin/mount", "-t", "cgroup", "-o", "none,name=\(name)", "cgroup", mountPoint])
        defer {
            // The task may be gone or restored elsewhere: move whatever is left to the root.
            let stray = (try? String(contentsOfFile: "\(mountPoint)/stray/cgroup.procs", encoding: .utf8)) ?? ""
            for task in stray.split(separator: "\n") { try? String(task).write(toFile: "\(mountPoint)/cgroup.procs", atomically: false, encoding: .utf8) }
            rmdir("\(mountPoint)/stray")
            _ = Command.run(["/bin/umount", mountPoint])
            rmdir(mountPoint)
        }
        try #require(mounted.code == 0, "cannot mount a named cgroup hierarchy here: \(mounted.stderr)")
        mkdir("\(mountPoint)/stray", 0o755)
        try "\(pid)".write(toFile: "\(mountPoint)/stray/cgroup.procs", atomically: false, encoding: .utf8)
        let checkpoint = host("checkpoint", "cg")
        #expect(checkpoint.code == 0, "\(checkpoint.stderr)")
        let stateDirectory = try #require(inspect["stateDirectory"] as? String)
        let log = (try? String(contentsOfFile: "\(stateDirectory)/dump.log", encoding: .utf8)) ?? ""
        #expect(log.contains("Skipping controller name=\(name)"), "CRIU was told to dump only Ferry's hierarchies")
        let restore = host("restore", "cg")
        #expect(restore.code == 0, "\(restore.stderr)")
        let after = try #require((try JSONSerialization.jsonObject(with: Data(host("inspect", "cg").stdout.utf8)) as? [[String: Any]])?.first)
        let restored = try #require(((after["status"] as? [String: Any])?["running"] as? [String: Any])?["pid"] as? Int)
        let cgroups = (try? String(contentsOfFile: "/proc/\(restored)/cgroup", encoding: .utf8)) ?? ""
        #expect(cgroups.split(separator: "\n").contains { $0.hasSuffix("name=\(name):/") }, "not put back in the stray cgroup: \(cgroups)")
        #expect(!Files.exists("\(mountPoint)/stray") || ((try? String(contentsOfFile: "\(mountPoint)/stray/cgroup.procs", encoding: .utf8)) ?? "").isEmpty)
    }
}

/// Calls no busybox tool makes, through Python's ctypes (the host's /usr, read-only):
/// each succeeds without any capability, so only the seccomp filter refuses them.
let syscallProbes: [Probe] = [
    // personality(ADDR_NO_RANDOMIZE): turns off ASLR for what the process execs next.
    Probe(
        name: "personality(ADDR_NO_RANDOMIZE)",
        refused: #"python3 -c 'import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); sys.exit(0 if libc.personality(0x0040000) == -1 else 1)'"#),
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): the host's keyrings.
    Probe(
        name: "keyctl",
        refused:
            #"python3 -c 'import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); sys.exit(0 if libc.syscall(250, 0, -3, 0) == -1 and ctypes.get_errno() == 1 else 1)'"#
    ),
    // add_key("user", "probe", "x", 1, KEY_SPEC_PROCESS_KEYRING).
    Probe(
        name: "add_key",
        refused:
            #"python3 -c 'import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); sys.exit(0 if libc.syscall(248, b"user", b"probe", b"x", 1, -2) == -1 and ctypes.get_errno() == 1 else 1)'"#
    ),
    Probe(name: "a seccomp filter (Seccomp: 2)", refused: #"grep -q '^Seccomp:[[:space:]]*2$' /proc/self/status"#),
]

@Suite("Seccomp", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct SeccompTests {
    @Test(
        "calls no capability guards (personality, keyctl, add_key) are refused by the filter, fresh, after export to a second root and after a lazy migration")
    func filterAloneRefuses() throws {
        // The same calls go through with seccomp=unconfined: the filter is what refuses them.
        let host = Host()
        host.importWorkloadImage()
        for probe in syscallProbes.prefix(3) {
            let open = host("run", "--name", "open", "--security-opt", "seccomp=unconfined", "-v", "/usr:/usr:ro", "workload:1", "sh", "-c", probe.refused)
            #expect(open.code != 0, "without a filter \(probe.name) goes through (so the probe can fail): \(open.stderr)")
            _ = host("rm", "open")
        }
        host.tearDown()
        try withMigration(port: 17203) { a, b, token, _ in
            a.importWorkloadImage()
            b.importWorkloadImage()
            let run = a("run", "-d", "--name", "sc", "-v", "/usr:/usr:ro", "workload:1", "sh", "-c", probeServer(probeScript(syscallProbes)))
            #expect(run.code == 0, "\(run.stderr)")
            expectAllRefused(a.serverVerdicts("sc"), syscallProbes, "fresh")
            let archive = "\(a.root)/sc.tar.zst"
            #expect(a("checkpoint", "--export", archive, "--leave-running", "sc").code == 0)
            let migrate = a("migrate", "sc", "--to", "127.0.0.1:17203", "--token-file", token, "--mode", "lazy")
            #expect(migrate.code == 0, "\(migrate.stderr)")
            expectAllRefused(b.serverVerdicts("sc"), syscallProbes, "after a lazy migration")
            expectAllRefused(b.execVerdicts("sc", syscallProbes), syscallProbes, "exec after a lazy migration")
            let restore = b("restore", "--import", archive, "--name", "sc2")
            #expect(restore.code == 0, "\(restore.stderr)")
            expectAllRefused(b.serverVerdicts("sc2"), syscallProbes, "restored from the export on the second root")
        }
    }
}
