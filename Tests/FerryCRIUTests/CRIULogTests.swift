import FerryCRIU
import FerrySystem
import FerryTestSupport
import Testing

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
