import FerrySystem
import FerryTestSupport
import Foundation
import Testing

@testable import FerryCRIU

@Suite("CRIU's image streaming protocol")
struct CRIUImageStreamTests {
    @Test("a request names one file; anything else is refused")
    func requests() {
        // img_streamer_request_entry { filename: "pages-1.img" }
        let name = Array("pages-1.img".utf8)
        #expect(CRIUImageStreaming.fileName(inRequest: [0x0a, UInt8(name.count)] + name) == "pages-1.img")
        // A two-byte varint length.
        let long = Array(String(repeating: "a", count: 200).utf8)
        #expect(CRIUImageStreaming.fileName(inRequest: [0x0a, 0xc8, 0x01] + long) == String(repeating: "a", count: 200))
        #expect(CRIUImageStreaming.fileName(inRequest: []) == nil)
        #expect(CRIUImageStreaming.fileName(inRequest: [0x08, 0x01]) == nil, "a reply, not a request")
        #expect(CRIUImageStreaming.fileName(inRequest: [0x0a, 5] + Array("ab".utf8)) == nil, "truncated")
        #expect(CRIUImageStreaming.fileName(inRequest: [0x0a, 2] + Array("abc".utf8)) == nil, "trailing bytes")
        #expect(CRIUImageStreaming.fileName(inRequest: [0x0a, 1, 0xff]) == nil, "not UTF-8")
    }

    @Test("the streamed dump's command line carries the options libcriu would set")
    func arguments() {
        var request = DumpRequest(pid: 42, imagesDirectory: "/state/c/checkpoint")
        request.workDirectory = "/state/c"
        request.leaveRunning = true
        request.freezeCgroup = "/sys/fs/cgroup/ferry/c"
        request.externalMounts = [(mountPoint: "/data", key: "/data")]
        request.externals = ["net[4026531993]:extRootNetNS"]
        request.cgroupDumpControllers = ["memory", ""]
        let arguments = CRIUSession.streamedDumpArguments(request, binary: "/usr/local/sbin/criu", imagesPath: "/proc/self/fd/3")
        #expect(Array(arguments.prefix(3)) == ["/usr/local/sbin/criu", "dump", "--stream"])
        let joined = arguments.joined(separator: " ")
        for expected in [
            "--images-dir /proc/self/fd/3", "--work-dir /state/c", "--tree 42", "--log-file dump.log", "-v4", "--leave-running",
            "--network-lock skip", "--freeze-cgroup /sys/fs/cgroup/ferry/c", "--external mnt[/data]:/data",
            "--external net[4026531993]:extRootNetNS", "--cgroup-dump-controller memory", "--manage-cgroups=soft",
        ] {
            #expect(joined.contains(expected), "\(expected) in \(joined)")
        }
        #expect(arguments.last == "")
        #expect(!arguments.contains("--tcp-established"))
        #expect(!arguments.contains("--action-script"), "no hook unless this executable answers it")
        let hooked = CRIUSession.streamedDumpArguments(request, binary: "/usr/local/sbin/criu", imagesPath: "/proc/self/fd/3", actionScript: "/usr/bin/ferry")
        #expect(hooked.suffix(2) == ["--action-script", "/usr/bin/ferry"])
    }

    @Test("the post-dump hook succeeds only on Ferry's answer: not when nobody listens, nor when the listener goes away")
    func postDumpHook() throws {
        let directory = try TempDir("ferry-hook")
        defer { directory.cleanup() }
        let socket = "\(directory.path)/\(CRIUPostDumpHook.socketName)"
        #expect(!CRIUPostDumpHook.confirmed(socket: socket), "nobody listens")
        for answers in [true, false] {
            let listener = try UnixListener(directory: directory.path, name: CRIUPostDumpHook.socketName)
            let raw = listener.descriptor.raw
            // The listener's side runs on a thread of its own, not on the test's pool.
            let done = DispatchSemaphore(value: 0)
            let peer = Thread {
                defer { done.signal() }
                var ready = pollfd(fd: raw, events: Int16(POLLIN), revents: 0)
                guard poll(&ready, 1, 10_000) == 1 else { return }
                let connection = OwnedFD(adopting: accept(raw, nil, nil))
                var asked = [UInt8](repeating: 0, count: CRIUPostDumpHook.request.count)
                _ = read(connection.raw, &asked, asked.count)
                if answers, asked == CRIUPostDumpHook.request {
                    _ = CRIUPostDumpHook.answer.withUnsafeBytes { write(connection.raw, $0.baseAddress, $0.count) }
                }
            }
            peer.start()
            #expect(CRIUPostDumpHook.confirmed(socket: socket) == answers)
            #expect(done.wait(timeout: .now() + 15) == .success)
        }
    }
}
