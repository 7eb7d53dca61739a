import FerrySystem
import FerryTestSupport
import Testing

@testable import FerryCRIU

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Error lines quoted from CRIU's logs")
struct CRIULogTests {
    @Test("the last error lines, without timestamps or CRIU's harmless RLIMIT_NOFILE complaint")
    func lastErrors() throws {
        let dir = try TempDir("ferry-criu-log")
        defer { dir.cleanup() }
        let log = dir.sub("dump.log")
        let text = """
            (00.000010) Version: 4.1.1
            (00.000020) Error (criu/util.c:100): Can't raise RLIMIT_NOFILE
            (00.100000) Error (criu/mount.c:1234): mnt: first
            (00.200000) Dumping pages
            (00.300000) Error (criu/cr-dump.c:2000): second
            (00.400000) Error (criu/cr-dump.c:2100): Dumping FAILED.

            """
        try Files.writeAtomically(Array(text.utf8), to: log)
        #expect(
            CRIULog.errorExcerpt(log) == [
                "Error (criu/mount.c:1234): mnt: first", "Error (criu/cr-dump.c:2000): second", "Error (criu/cr-dump.c:2100): Dumping FAILED.",
            ])
        #expect(CRIULog.errorExcerpt(dir.sub("missing.log")).isEmpty)
    }

    @Test("a huge log is read from its end only: errors before the tail are not looked for")
    func onlyTheTail() throws {
        let dir = try TempDir("ferry-criu-log")
        defer { dir.cleanup() }
        let log = dir.sub("dump.log")
        let fd = try OwnedFD.open(log, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        try fd.writeAll(Array("(00.000001) Error (criu/early.c:1): long before the tail\n".utf8))
        let filler = Array(String(repeating: "(00.500000) dumping a page of a very busy process\n", count: 20_000).utf8)
        try fd.writeAll(filler)  // about 1 MiB, more than the tail
        try fd.writeAll(Array("(01.000000) Error (criu/late.c:2): at the end\n".utf8))
        #expect(filler.count > CRIULog.tailBytes)
        #expect(CRIULog.errorExcerpt(log) == ["Error (criu/late.c:2): at the end"])
    }
}

@Suite("Ports a restore into the host's network needs free")
struct BoundPortTests {
    @Test("the host's listening TCP ports and bound UDP ports are read from /proc/net")
    func procNet() {
        let tcp = """
              sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
               0: 00000000:42C7 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
               1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
            """
        let udp = """
              sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
              7: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0 0
            """
        // The established connection's local port (8080) is not a listener.
        #expect(CRIUBoundPort.parseProcNet(tcp, transport: .tcp) == [CRIUBoundPort(.tcp, 17095)])
        #expect(CRIUBoundPort.parseProcNet(udp, transport: .udp) == [CRIUBoundPort(.udp, 53)])
        #expect(CRIUBoundPort(.tcp, 17095).description == "TCP port 17095")
    }

    @Test("the ports of a dump are read from files.img; a set without one holds none")
    func filesImage() throws {
        #expect(throws: CRIUImageError.self) { try CRIUBoundPort.held(inFilesImage: [1, 2, 3]) }
    }
}
