import FerrySystem
import FerryTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The pod's JSON record from `pod inspect`.
private func podInspect(_ host: Host, _ name: String) -> [String: Any]? {
    let data = Data(host("pod", "inspect", name).stdout.utf8)
    return ((try? JSONSerialization.jsonObject(with: data)) as? [[String: Any]])?.first
}

/// Everything of `root` still mounted (the pods' pinned namespaces are bind mounts).
private func mounts(under root: String) -> [String] {
    ((try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init).filter { $0.contains(root) }
}

/// A shell command serving the container's hostname at /name on `port`.
private func serveHostname(port: Int) -> String {
    "mkdir -p /www && hostname > /www/name && exec httpd -f -p \(port) -h /www"
}

@Suite("Pods", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct PodTests {
    @Test(
        "a pod on a bridge network: shared loopback, hostname and ipc, a published port, bad input refused, single checkpoint refused, nothing left after pod rm -f"
    )
    func bridgePod() throws {
        try withTestNamespace("pod") { ns in
            let host = Host("pod", prefix: inNetwork(ns))
            defer { host.tearDown() }
            // Runs before tearDown: a failed expectation must not leave the pod's mounts.
            defer { host("pod", "rm", "-f", "pw") }
            host.importBusybox()
            try #require(host("network", "create", "--subnet", "10.89.41.0/24", "podnet").code == 0)
            let create = host("pod", "create", "--name", "pw", "--network", "podnet", "--ip", "10.89.41.7", "-p", "18091:80", "--hostname", "podhost")
            try #require(create.code == 0, "\(create.stderr)")
            #expect(create.stdout == "pw\n")
            let again = host("pod", "create", "--name", "pw")
            #expect(again.code != 0 && again.stderr.contains("already in use"), "\(again.stderr)")

            // Bad input: one line, and nothing made.
            for (arguments, words) in [
                (["run", "--pod", "nope", "busybox:latest", "true"], "no such pod: nope"),
                (["run", "--pod", "pw", "--network", "podnet", "busybox:latest", "true"], "--network cannot go with --pod"),
                (["run", "--pod", "pw", "-p", "8081:80", "busybox:latest", "true"], "-p cannot go with --pod"),
                (["run", "--pod", "pw", "--ip", "10.89.41.9", "busybox:latest", "true"], "--ip cannot go with --pod"),
            ] {
                let result = host.ferry(arguments)
                let line = result.stderr.split(separator: "\n").first.map(String.init) ?? ""
                #expect(result.code != 0 && line.contains(words), "\(arguments): \(result.stderr)")
            }
            #expect(host("ps", "-a", "-q").stdout.isEmpty, "a refused run made a container")

            let web = host("run", "-d", "--name", "pa", "--pod", "pw", "busybox:latest", "sh", "-c", serveHostname(port: 80))
            try #require(web.code == 0, "\(web.stderr)")
            let side = host("run", "-d", "--name", "pb", "--pod", "pw", "busybox:latest", "sleep", "1000")
            try #require(side.code == 0, "\(side.stderr)")

            for name in ["pa", "pb"] {
                #expect(host("exec", name, "hostname").stdout == "podhost\n", "hostname of \(name)")
            }
            for type in ["net", "ipc", "uts"] {
                let a = host("exec", "pa", "readlink", "/proc/self/ns/\(type)").stdout
                let b = host("exec", "pb", "readlink", "/proc/self/ns/\(type)").stdout
                #expect(!a.isEmpty && a == b, "\(type) namespace: \(a) vs \(b)")
            }
            let pids = (host("exec", "pa", "readlink", "/proc/self/ns/pid").stdout, host("exec", "pb", "readlink", "/proc/self/ns/pid").stdout)
            #expect(pids.0 != pids.1, "each container keeps its own pid namespace")
            // pb reaches pa's server on the pod's loopback.
            let local = host("exec", "pb", "wget", "-q", "-O", "-", "http://127.0.0.1:80/name")
            #expect(local.code == 0 && local.stdout.contains("podhost"), "loopback: \(local.stdout) \(local.stderr)")
            // The pod's published port reaches pa from the host's 127.0.0.1.
            let published = host.eventually { fetch(ns, "http://127.0.0.1:18091/name") != nil } ? fetch(ns, "http://127.0.0.1:18091/name") : nil
            #expect(published?.contains("podhost") == true, "published port: \(published ?? "nothing")")
            #expect(host("exec", "pa", "ip", "-4", "addr", "show", "eth0").stdout.contains("10.89.41.7/24"))

            let pod = try #require(podInspect(host, "pw"))
            #expect(pod["address"] as? String == "10.89.41.7" && pod["status"] as? String == "running", "\(pod)")
            #expect(pod["containers"] as? [String] == ["pa", "pb"], "\(pod)")
            #expect(host("pod", "ls", "-q").stdout == "pw\n")
            #expect(host("ps", "--pod").stdout.contains("pw"))
            let taken = host("run", "--network", "podnet", "--ip", "10.89.41.7", "busybox:latest", "true")
            #expect(taken.code != 0 && taken.stderr.contains("already in use"), "the pod's address is taken: \(taken.stderr)")

            // One container of a pod is not checkpointed alone.
            let checkpoint = host("checkpoint", "pa")
            #expect(checkpoint.code != 0 && checkpoint.stderr.contains("belong to pod 'pw'"), "\(checkpoint.stderr)")
            #expect(host.status(of: "pa") == "running")

            let refused = host("pod", "rm", "pw")
            #expect(refused.code != 0 && refused.stderr.contains("has containers pa, pb"), "\(refused.stderr)")
            let netRm = host("network", "rm", "podnet")
            #expect(netRm.code != 0 && netRm.stderr.contains("pod pw"), "\(netRm.stderr)")
            let rm = host("pod", "rm", "-f", "pw")
            #expect(rm.code == 0, "\(rm.stderr)")
            #expect(host("ps", "-a", "-q").stdout.isEmpty)
            #expect(host("pod", "ls", "-q").stdout.isEmpty)
            #expect(mounts(under: host.root).isEmpty, "mounts left: \(mounts(under: host.root))")
            #expect(ferryLinks(ns).isEmpty, "links left: \(ferryLinks(ns))")
            #expect(ferryTables(ns).isEmpty, "tables left: \(ferryTables(ns))")
            #expect(host("network", "rm", "podnet").code == 0)
        }
    }

    @Test("a pod without a network: stop and start keep the shared namespaces; pod rm of an empty pod leaves nothing")
    func loopbackPod() throws {
        let host = Host("podlo")
        defer { host.tearDown() }
        defer { host("pod", "rm", "-f", "lo") }
        host.importBusybox()
        try #require(host("pod", "create", "--name", "lo").code == 0)
        #expect(podInspect(host, "lo")?["status"] as? String == "created")
        try #require(host("run", "-d", "--name", "la", "--pod", "lo", "busybox:latest", "sh", "-c", serveHostname(port: 8080)).code == 0)
        try #require(host("run", "-d", "--name", "lb", "--pod", "lo", "busybox:latest", "sleep", "1000").code == 0)
        #expect(host("exec", "lb", "hostname").stdout == "lo\n")
        #expect(host("exec", "lb", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/name").stdout.contains("lo"))
        let before = host("exec", "la", "readlink", "/proc/self/ns/net").stdout

        let stop = host("pod", "stop", "-t", "1", "lo")
        #expect(stop.code == 0, "\(stop.stderr)")
        #expect(host.status(of: "la") == "exited" && host.status(of: "lb") == "exited")
        #expect(podInspect(host, "lo")?["status"] as? String == "exited")
        let start = host("pod", "start", "lo")
        #expect(start.code == 0, "\(start.stderr)")
        #expect(host("exec", "la", "readlink", "/proc/self/ns/net").stdout == before, "the pod's network namespace outlives its containers")
        #expect(host.eventually { host("exec", "lb", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/name").stdout.contains("lo") })

        #expect(host("rm", "-f", "la", "lb").code == 0)
        #expect(host("pod", "rm", "lo").code == 0, "an empty pod is removed without -f")
        #expect(mounts(under: host.root).isEmpty, "mounts left: \(mounts(under: host.root))")
        let missing = host("pod", "rm", "lo")
        #expect(missing.code != 0 && missing.stderr.contains("no such pod: lo"), "\(missing.stderr)")
    }
}
