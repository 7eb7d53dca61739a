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
    }
}
