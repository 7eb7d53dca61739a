import Foundation
import Testing

/// The README's tour works as written: its block runs, command by command, with ferry on
/// PATH, from a directory holding the source tree's scripts.
@Suite("README tour", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct ReadmeTourTests {
    /// The shell block that follows the `<!-- tour -->` marker.
    static func tour() throws -> String {
        let readme = try String(contentsOfFile: "\(Environment.packageRoot)/README.md", encoding: .utf8)
        let marker = try #require(readme.range(of: "<!-- tour -->\n```sh\n"), "README.md has no tour block")
        let rest = readme[marker.upperBound...]
        let end = try #require(rest.range(of: "\n```"))
        return String(rest[..<end.lowerBound])
    }

    @Test("every command of the tour succeeds, and it reads what it wrote")
    func tourRunsAsWritten() throws {
        let script = try Self.tour()
        #expect(script.contains("busybox-rootfs.sh ./rootfs"))
        let host = Host()
        defer { host.tearDown() }
        let work = "\(host.root)/tour"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: "\(work)/scripts", withDestinationPath: "\(Environment.packageRoot)/scripts")
        let bin = URL(fileURLWithPath: Environment.ferryBinary).deletingLastPathComponent().path
        let path = bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let run = Command.run(
            ["/usr/bin/env", "-C", work, "PATH=\(path)", "FERRY_ROOT=\(host.root)", "/bin/bash", "-euxo", "pipefail", "-c", script],
            timeout: .seconds(600))
        #expect(run.code == 0, "the tour stopped at: \(run.stderr.split(separator: "\n").suffix(6).joined(separator: "\n"))")
        let lines = run.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("hi"))
        #expect(lines.contains("/usr/bin/env"), "the host's /usr, bind-mounted")
        #expect(lines.filter { $0 == "prod" }.count == 2, "web and its imported copy web2 read the state web wrote: \(lines)")
        #expect(lines.contains { $0.hasPrefix("tick ") }, "logs --tail 1")
        #expect(!FileManager.default.fileExists(atPath: "\(work)/rootfs"), "the tour cleans up after itself")
        #expect(host("ps", "-a", "-q").stdout.isEmpty)
    }

    @Test("the shell completions complete container, image and volume names from the state root")
    func completions() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "--name", "done1", "busybox:latest", "true").code == 0)
        #expect(host("run", "--name", "other", "busybox:latest", "true").code == 0)
        #expect(host("volume", "create", "vol1").code == 0)
        for shell in ["bash", "zsh", "fish"] {
            let script = host("--generate-completion-script", shell)
            #expect(script.code == 0)
            #expect(script.stdout.contains("---completion"), "\(shell): names come from ferry itself")
        }
        // What the scripts call: ferry ---completion VERB -- ARG CWORD CURSOR WORDS...
        func complete(_ verb: [String], _ words: [String]) -> [String] {
            let index = String(words.count - 1)
            let cursor = String(words.last?.count ?? 0)
            let run = host.ferry(["---completion"] + verb + ["--", "positional@0", index, cursor] + words)
            return run.stdout.split(separator: "\n").map(String.init)
        }
        #expect(complete(["logs"], ["ferry", "logs", ""]) == ["done1", "other"])
        #expect(complete(["rm"], ["ferry", "rm", "do"]) == ["done1"])
        #expect(complete(["image", "rm"], ["ferry", "image", "rm", ""]) == ["busybox:latest"])
        #expect(complete(["volume", "rm"], ["ferry", "volume", "rm", ""]) == ["vol1"])
        #expect(host("rm", "done1", "other").code == 0)
        #expect(host("volume", "rm", "vol1").code == 0)
    }
}
