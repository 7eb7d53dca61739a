import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP relay between the hosts: it forwards every connection to the agent, writes what
/// the source sends into a capture file, and can flip one byte of that direction.
final class Relay: @unchecked Sendable {
    static let script = #"""
        import socket, sys, threading
        listen, target, capture, flip = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", listen))
        server.listen(8)
        out = open(capture, "wb")
        lock = threading.Lock()
        total = [0]
        def pump(src, dst, record):
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if record:
                    with lock:
                        start = total[0]
                        total[0] += len(data)
                        if 0 <= flip - start < len(data):
                            data = bytearray(data)
                            data[flip - start] ^= 0x01
                            data = bytes(data)
                        out.write(data)
                        out.flush()
                try:
                    dst.sendall(data)
                except OSError:
                    break
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        print("relaying", flush=True)
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection(("127.0.0.1", target))
            threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()
        """#

    let pid: Int32
    let capture: String
    private let files: [String]

    /// Listens on `port`, forwarding to `target`; flips the byte at offset `flip` of the
    /// source's stream (counted over all connections) when given.
    init(root: String, port: Int, target: Int, flip: Int? = nil) throws {
        let scriptPath = "\(root).relay.py"
        capture = "\(root).relay.capture"
        let log = "\(root).relay.log"
        files = [scriptPath, capture, log]
        try Self.script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        let out = try OwnedFD.open(log, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        let null = try OwnedFD.open("/dev/null", O_RDWR)
        pid = try Processes.spawn(
            "/usr/bin/python3", arguments: ["/usr/bin/python3", scriptPath, "\(port)", "\(target)", capture, "\(flip ?? -1)"],
            environment: ["PATH=/usr/bin:/bin"], descriptors: [0: null.raw, 1: out.raw, 2: out.raw])
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, !((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("relaying") { usleep(20_000) }
    }

    /// How many bytes the source sent through the relay.
    var capturedBytes: Int { (try? FileManager.default.attributesOfItem(atPath: capture)[.size] as? Int) ?? 0 }

    func stop() {
        kill(pid, SIGKILL)
        _ = try? Processes.wait(pid, timeout: .seconds(10))
        for file in files { unlink(file) }
    }
}

@Suite("Encrypted migration channel", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct ChannelEncryptionTests {
    @Test("a relay between the hosts sees none of the container's memory, and the migration goes through it")
    func relaySeesNoMemory() throws {
        try withMigration(port: 17363) { a, b, token, _ in
            let relay = try Relay(root: a.root, port: 17361, target: 17363)
            defer { relay.stop() }
            a.importBusybox()
            #expect(a("run", "-d", "--name", "secret", "busybox:latest", "sh", "-c", memoryMarkerScript).code == 0)
            #expect(a.eventually { (a.counter("secret") ?? 0) >= 3 })
            // The control: the marker is in the container's memory as it would be sent.
            let clear = "\(a.root)/control.tar"
            #expect(a("checkpoint", "--leave-running", "--export", clear, "--compress", "none", "secret").code == 0)
            #expect(fileContains(clear, memoryMarker), "the marker is not in the container's memory: the test would prove nothing")
            let pagesBytes = (try? FileManager.default.attributesOfItem(atPath: clear)[.size] as? Int) ?? 0

            let result = a("migrate", "secret", "--to", "127.0.0.1:17361", "--token-file", token, "--mode", "stop-copy")
            #expect(result.code == 0, "\(result.stderr)")
            #expect(b.status(of: "secret") == "running")
            let value = try #require(b.counter("secret"))
            #expect(b.eventually { (b.counter("secret") ?? 0) > value })
            // Everything crossed the relay (the whole checkpoint, at least), and none of it in clear.
            #expect(relay.capturedBytes > pagesBytes / 2, "the relay saw \(relay.capturedBytes) bytes of a \(pagesBytes)-byte checkpoint")
            #expect(!fileContains(relay.capture, memoryMarker), "the relay saw the container's memory in clear")
            #expect(!fileContains(relay.capture, Array("checkpoint/pages-".utf8)), "the relay saw member names in clear")
        }
    }

    @Test("a byte flipped by the relay ends the migration: the source keeps running, the destination stays empty")
    func tamperedFrame() throws {
        try withMigration(port: 17364) { a, b, token, agent in
            // Well past the handshake (two frames of under 300 bytes), inside the checkpoint.
            let relay = try Relay(root: a.root, port: 17362, target: 17364, flip: 40_000)
            defer { relay.stop() }
            a.importBusybox()
            #expect(a("run", "-d", "--name", "stay", "busybox:latest", "sh", "-c", memoryMarkerScript).code == 0)
            #expect(a.eventually { (a.counter("stay") ?? 0) >= 3 })
            let result = a("migrate", "stay", "--to", "127.0.0.1:17362", "--token-file", token, "--mode", "stop-copy")
            #expect(result.code != 0)
            // The source sees the destination hang up (a write or a read fails, as timing
            // has it) and says so in one line; the destination's log says why.
            #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
            let log = (try? String(contentsOfFile: agent.log, encoding: .utf8)) ?? ""
            #expect(log.contains("failed its integrity check"), "\(log)")
            #expect(relay.capturedBytes > 40_000, "the flipped byte was sent")
            #expect(a.status(of: "stay") == "running")
            let value = try #require(a.counter("stay"))
            #expect(a.eventually { (a.counter("stay") ?? 0) > value })
            #expect(b.eventually { b.status(of: "stay") == nil })
            let containers = (try? FileManager.default.contentsOfDirectory(atPath: "\(b.root)/containers")) ?? []
            #expect(b.eventually { ((try? FileManager.default.contentsOfDirectory(atPath: "\(b.root)/containers")) ?? []).isEmpty }, "\(containers)")
        }
    }
}
