import FerryCRIU
import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

private let criuBinary = "/usr/local/sbin/criu"
private let canDump = getuid() == 0 && access(criuBinary, X_OK) == 0

/// Tier 3: a real `criu dump` of a small tree this test starts, read back by
/// `CRIUImageSet`. Needs root and CRIU; cleans up its processes and images.
@Suite("CRIU images of a real dump", .enabled(if: canDump, "needs root and \(criuBinary)"))
struct CRIUDumpImageTests {
    @Test("sh with two sleeps: tree, commands, memory, files and stats")
    func dumpAndRead() async throws {
        try await onThread("dumpAndRead") {
            let dir = try TempDir("ferry-criu-dump")
            defer { dir.cleanup() }
            let null = try OwnedFD.open("/dev/null", O_RDWR)
            let stdio: [Int32: Int32] = [0: null.raw, 1: null.raw, 2: null.raw]

            // setsid execs in place (a posix_spawn child is never a group leader), so the pid
            // is the shell's; its own session keeps the tree free of our terminal, which CRIU
            // would otherwise need --shell-job for.
            let shell = try Processes.spawn(
                "/usr/bin/setsid", arguments: ["setsid", "/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"],
                environment: ["PATH=/usr/bin:/bin"], descriptors: stdio
            )
            var children: [Int32] = []
            var dumped = false
            defer {
                // After a dump CRIU has killed the tree and only the shell's zombie is left to
                // reap; after a failure, the tree is still running: stop it, by its pids.
                if !dumped {
                    for pid in children { try? Processes.signal(pid, SIGKILL) }
                    try? Processes.signal(shell, SIGKILL)
                }
                _ = try? Processes.wait(shell)
                for pid in children where Processes.isAlive(pid, startTime: nil) {
                    try? Processes.signal(pid, SIGKILL)
                }
            }

            // Wait for the shell to have started both sleeps.
            for _ in 0..<500 {
                children = Self.children(of: shell)
                if children.count == 2, children.allSatisfy({ Self.command(of: $0) == "sleep" }) { break }
                usleep(10_000)
            }
            try #require(children.count == 2, "the shell did not start its two sleeps")

            let criu = try Processes.spawn(
                criuBinary, arguments: ["criu", "dump", "-t", "\(shell)", "-D", dir.path, "-o", "dump.log", "-v4"],
                environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], descriptors: stdio
            )
            let status = try Processes.wait(criu)
            if status != 0 {
                let log = (try? Files.readString(dir.sub("dump.log"))) ?? "(no dump.log)"
                let excerpt = log.split(separator: "\n").filter { $0.contains("Error") || $0.contains("Warn") }.suffix(8).joined(separator: "\n")
                Issue.record("criu dump exited \(status):\n\(excerpt)")
                return
            }
            dumped = true

            let set = try CRIUImageSet(directory: dir.path)

            // The tree: the shell as root, both sleeps as its children, one session.
            #expect(set.processTree.count == 3)
            let root = try #require(set.root)
            #expect(root.pid == shell)
            #expect(root.parentPid == 0)
            #expect(root.command == "sh")
            #expect(root.sid == shell && root.pgid == shell)
            let sleeps = set.children(of: shell)
            #expect(Set(sleeps.map(\.pid)) == Set(children))
            for process in set.processTree {
                #expect(process.threads == [process.pid])
                #expect(process.state == .alive)
                #expect(process.sid == shell)
                // stdin, stdout and stderr at least.
                #expect((process.openFiles ?? 0) >= 3, "\(process.pid) has \(String(describing: process.openFiles)) files")
                #expect((process.mappings ?? 0) > 0)
                #expect((process.pages?.present ?? 0) > 0)
            }
            #expect(sleeps.allSatisfy { $0.command == "sleep" })

            // Memory: pages were dumped, and the pages images hold exactly them.
            #expect(set.memory.processPages.present > 0)
            #expect(set.memory.processPages.inParent == 0)
            #expect(set.memory.processPages.lazy == 0)
            #expect(set.memory.processPages.total == set.memory.processPages.present)
            #expect(set.memory.dumpedBytes > 0)
            #expect(set.memory.pagesImageBytes == set.memory.dumpedBytes)
            #expect(set.openFiles.total >= 9)
            #expect(set.openFiles.tables == 3)

            // Statistics.
            let stats = try #require(set.dumpStatistics)
            #expect(stats.frozenTime > 0)
            #expect(stats.pagesWritten > 0)
            #expect(stats.pagesWritten == set.memory.processPages.present + set.memory.sharedPages.present)
            #expect(set.inventory?.imageVersion == 2)

            // Every image of a kind Ferry knows has the right magic and framing, including
            // those the set does not decode (files.img).
            for name in try Files.listDirectory(dir.path) where CRIUImageKind(fileName: name) != nil {
                #expect(throws: Never.self, "\(name)") { _ = try CRIUImageFile(name: name, bytes: try Files.read(dir.sub(name))) }
            }
        }
    }

    /// The pids in /proc/PID/task/PID/children.
    static func children(of pid: Int32) -> [Int32] {
        guard let text = try? Files.readString("/proc/\(pid)/task/\(pid)/children") else { return [] }
        return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    static func command(of pid: Int32) -> String? {
        (try? Files.readString("/proc/\(pid)/comm"))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
