import FerrySystem
import FerryTestSupport
import Foundation
import Testing

@testable import FerryArchive

#if canImport(Glibc)
    import Glibc
#endif

@Suite("What an export is read from: a file or a pipe, nothing else, and no endless wait")
struct ExportInputTests {
    func refusal(_ path: String, pipeWriterTimeout: Duration = .seconds(5)) -> String? {
        do {
            _ = try ExportReader.openInput(path, context: "cannot read export '\(path)'", pipeWriterTimeout: pipeWriterTimeout)
            return nil
        } catch {
            return error.description
        }
    }

    @Test("a directory, a device or a missing path is refused by name")
    func notAnArchive() throws {
        #expect(refusal("/tmp") == "cannot read export '/tmp': it is a directory, not an export archive")
        #expect(refusal("/dev/null") == "cannot read export '/dev/null': it is not a regular file or a pipe")
        #expect(refusal("/nonexistent/export.tar") == "cannot read export '/nonexistent/export.tar': No such file or directory")
    }

    @Test("messages name a stream the way the caller says, not by its /proc/self/fd path")
    func displayName() {
        do {
            _ = try ExportReader(path: "/tmp", displayName: "the migration stream from 127.0.0.1:40000", allowing: { _ in true })
            Issue.record("a directory was accepted")
        } catch {
            #expect(error.description == "cannot read export the migration stream from 127.0.0.1:40000: it is a directory, not an export archive")
        }
    }

    @Test("a FIFO nobody writes to is given up on, naming the wait")
    func fifoWithoutWriter() async throws {
        try await onThread("fifoWithoutWriter") {
            let dir = try TempDir()
            defer { dir.cleanup() }
            #expect(mkfifo(dir.sub("fifo"), 0o600) == 0)
            let started = ContinuousClock.now
            let message = refusal(dir.sub("fifo"), pipeWriterTimeout: .milliseconds(300))
            #expect(message == "cannot read export '\(dir.sub("fifo"))': nothing was written to this pipe for 0.3 seconds")
            #expect(ContinuousClock.now - started < .seconds(5))
        }
    }

    @Test("a FIFO whose writer comes later is read in blocking mode, to its end")
    func fifoWithWriter() async throws {
        try await onThread("fifoWithWriter") {
            let dir = try TempDir()
            defer { dir.cleanup() }
            let fifo = dir.sub("fifo")
            #expect(mkfifo(fifo, 0o600) == 0)
            let writer = ThreadRun.start("the FIFO's writer") {
                usleep(200_000)
                let fd = try OwnedFD.open(fifo, O_WRONLY)
                try fd.writeAll(Array("an archive".utf8))
            }
            let input = try ExportReader.openInput(fifo, context: "test", pipeWriterTimeout: .seconds(10))
            try writer.join(timeout: .seconds(10)).get()
            #expect(try input.readAll() == Array("an archive".utf8))
        }
    }
}

@Suite("Partial exports of writers that died")
struct AbandonedExportTests {
    @Test("the next export to the same name removes the partial files nobody holds, and only those")
    func removedWhenUnlocked() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        for name in [".web.tar.tmp-dead", ".web.tar.tmp-live", ".other.tar.tmp-dead", "web.tar.tmp-dead"] {
            try Files.writeAtomically(Array("partial".utf8), to: dir.sub(name))
        }
        // A writer still at work holds the lock on its file (another open file description).
        let live = try OwnedFD.open(dir.sub(".web.tar.tmp-live"), O_RDONLY)
        #expect(try live.tryLockExclusive())
        let writer = try ExportWriter(path: dir.sub("web.tar"), compression: .none)
        writer.abandon()
        let left = try Files.listDirectory(dir.path).sorted()
        #expect(left == [".other.tar.tmp-dead", ".web.tar.tmp-live", "web.tar.tmp-dead"])
    }
}
