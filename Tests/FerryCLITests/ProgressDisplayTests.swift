import FerrySystem
import Testing

@testable import FerryCLI

/// The progress line: phase, bytes, percent, rate and ETA as far as they are known.
@Suite struct ProgressDisplayTests {
    @Test func aLineSaysWhereTheWorkIs() {
        let half = ProgressUpdate(phase: "exporting checkpoint/pages-1.img", doneBytes: 512 << 20, totalBytes: 1 << 30)
        #expect(ProgressDisplay.line(half, elapsed: .seconds(2)) == "exporting checkpoint/pages-1.img  512.0 MiB / 1.0 GiB  50%  256.0 MiB/s  ETA 2.0s")
        let done = ProgressUpdate(phase: "exported", doneBytes: 1 << 30, totalBytes: 1 << 30, finished: true)
        #expect(ProgressDisplay.line(done, elapsed: .seconds(4)) == "exported  1.0 GiB / 1.0 GiB  100%  256.0 MiB/s  (4.0s)")
        // Before any byte: the phase and the time so far.
        #expect(ProgressDisplay.line(ProgressUpdate(phase: "checkpointing"), elapsed: .milliseconds(300)) == "checkpointing  (0.3s)")
        // 99% until the last update says done, even when the count reached the total.
        let almost = ProgressUpdate(phase: "exporting volumes/data.tar", doneBytes: 100, totalBytes: 100)
        #expect(ProgressDisplay.line(almost, elapsed: .seconds(1)).contains("99%"))
    }

    @Test func durationsReadShort() {
        #expect(ProgressDisplay.duration(0.42) == "0.4s")
        #expect(ProgressDisplay.duration(12.4) == "12s")
        #expect(ProgressDisplay.duration(185) == "3m05s")
    }

    @Test func noTerminalNoProgress() throws {
        // A pipe is not a terminal: the sink drops everything.
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        defer { fds.forEach { close($0) } }
        #expect(!ProgressDisplay.sink(quiet: false, fd: fds[1]).isActive)
        #expect(!ProgressDisplay.sink(quiet: true, fd: fds[1]).isActive)
    }
}

#if canImport(Glibc)
    import Glibc
#endif
