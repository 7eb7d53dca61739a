import Foundation
import Testing

/// Progress of long work: shown on a terminal (phase, bytes, percent, rate), never on a
/// pipe, and silenced by -q.
@Suite("Progress", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct ProgressTests {
    @Test("export, import, snapshot and image import show progress on a terminal, nothing on a pipe or with -q")
    func terminalOnly() throws {
        let host = Host()
        defer { host.tearDown() }
        let image = host.ferry(terminal: "image", "import", Environment.busyboxTree, "busybox:latest")
        #expect(image.code == 0, "\(image.stderr)")
        #expect(image.stderr.contains("importing"), "\(image.stderr)")
        #expect(image.stderr.contains("imported"), "\(image.stderr)")
        #expect(host("run", "-d", "--name", "p", "-v", "pdata:/data", "busybox:latest", "sh", "-c", counterScript).code == 0)
        #expect(host.eventually { (host.counter("p") ?? 0) >= 2 })

        let archive = "\(host.root)/p.tar.zst"
        let export = host.ferry(terminal: "checkpoint", "-R", "--export", archive, "p")
        #expect(export.code == 0, "\(export.stderr)")
        #expect(export.stdout == "p\n", "progress goes to stderr only")
        for phase in ["checkpointing", "exporting checkpoint/", "exporting rootfs-diff.tar", "exported", "100%", "/s"] {
            #expect(export.stderr.contains(phase), "'\(phase)' in \(export.stderr.debugDescription)")
        }
        // The percentages only grow, and the last is 100%.
        let percents = export.stderr.matches(of: /(\d+)%/).compactMap { Int($0.1) }
        #expect(percents.last == 100, "\(percents)")
        #expect(percents == percents.sorted(), "\(percents)")

        let piped = host("checkpoint", "-R", "--export", "\(host.root)/p2.tar.zst", "p")
        #expect(piped.code == 0, "\(piped.stderr)")
        #expect(piped.stderr.isEmpty, "nothing on a pipe: \(piped.stderr.debugDescription)")
        let quiet = host.ferry(terminal: "checkpoint", "-R", "-q", "--export", "\(host.root)/p3.tar.zst", "p")
        #expect(quiet.code == 0, "\(quiet.stderr)")
        #expect(quiet.stderr.isEmpty, "-q: \(quiet.stderr.debugDescription)")

        let restore = host.ferry(terminal: "restore", "--import", archive, "--name", "p2", "--force")
        #expect(restore.code == 0, "\(restore.stderr)")
        for phase in ["importing checkpoint/", "imported", "100%", "restoring"] {
            #expect(restore.stderr.contains(phase), "'\(phase)' in \(restore.stderr.debugDescription)")
        }
        #expect(host.status(of: "p2") == "running")

        let snapshot = host.ferry(terminal: "snapshot", "create", "--tag", "s1", "p")
        #expect(snapshot.code == 0, "\(snapshot.stderr)")
        #expect(snapshot.stderr.contains("storing") && snapshot.stderr.contains("100%"), "\(snapshot.stderr.debugDescription)")
        let snapshotExport = host.ferry(terminal: "snapshot", "export", "p", "s1", "\(host.root)/s1.tar.zst")
        #expect(snapshotExport.code == 0, "\(snapshotExport.stderr)")
        #expect(snapshotExport.stderr.contains("exporting") && snapshotExport.stderr.contains("100%"), "\(snapshotExport.stderr.debugDescription)")

        // A failure after progress began still ends in one readable error line.
        let failed = host.ferry(terminal: "restore", "--import", archive, "--name", "p2")
        #expect(failed.code == 125)
        #expect(failed.stderr.split(separator: "\n").last?.contains("p2") == true, "\(failed.stderr.debugDescription)")
        #expect(host("rm", "-f", "p", "p2").code == 0)
        #expect(host("volume", "rm", "pdata").code == 0)
    }
}
