import Foundation
import Testing

/// What scripts read: `--format json` on every verb that reports, one key style, and
/// errors as one JSON object on stderr (docs/json.md).
@Suite("JSON output", .serialized, .enabled(if: Environment.isRoot, "needs root"))
struct JSONOutputTests {
    func object(_ text: String) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
    }

    @Test("logs, snapshot export and rollback print JSON; errors are JSON with --format json")
    func reportsAndErrors() throws {
        let host = Host()
        defer { host.tearDown() }
        host.importBusybox()
        #expect(host("run", "-d", "--name", "j", "busybox:latest", "sh", "-c", "echo one; echo two; sleep 100000").code == 0)
        #expect(host.eventually { host("logs", "j").stdout == "one\ntwo\n" })

        let logs = host("logs", "--format", "json", "--tail", "1", "j")
        #expect(logs.code == 0, "\(logs.stderr)")
        let lines = try #require((try? JSONSerialization.jsonObject(with: Data(logs.stdout.utf8))) as? [[String: Any]], "\(logs.stdout)")
        #expect(lines.count == 1)
        #expect(lines.first?["line"] as? String == "two")
        #expect(lines.first?["complete"] as? Bool == true)
        let time = try #require(lines.first?["time"] as? String)
        #expect(time.hasSuffix("Z") && time.contains("T"), "RFC 3339: \(time)")
        #expect(host("logs", "--format", "json", "-f", "j").code == 125, "json does not go with --follow")

        #expect(host("snapshot", "create", "--tag", "s1", "j").code == 0)
        let archive = "\(host.root)/s1.tar.zst"
        let export = host("snapshot", "export", "--format", "json", "j", "s1", archive)
        #expect(export.code == 0, "\(export.stderr)")
        let exported = try #require(object(export.stdout), "\(export.stdout)")
        #expect(exported["path"] as? String == archive)
        #expect((exported["bytes"] as? Int ?? 0) > 0)
        #expect(exported["durationMs"] is Double || exported["durationMs"] is Int)

        let rollback = host("rollback", "--format", "json", "j")
        #expect(rollback.code == 0, "\(rollback.stderr)")
        let rolled = try #require(object(rollback.stdout), "\(rollback.stdout)")
        #expect(rolled["container"] as? String == "j")
        #expect(rolled["snapshot"] as? String == "s1", "the newest snapshot")
        #expect(rolled["status"] as? String == "running")

        let check = host("check", "--format", "json")
        let checks = (object(check.stdout)?["checks"] as? [[String: Any]]) ?? []
        #expect(!checks.isEmpty, "\(check.stdout)")
        #expect(checks.allSatisfy { ["ok", "warn", "missing"].contains($0["status"] as? String ?? "") }, "the table's words: \(checks)")

        // An error, as JSON on stderr when JSON was asked for; the usual line otherwise.
        let missing = host("checkpoint", "--format", "json", "nosuch")
        #expect(missing.code == 125)
        #expect(missing.stdout.isEmpty)
        let error = try #require(object(missing.stderr), "\(missing.stderr)")
        #expect((error["error"] as? String ?? "").contains("nosuch"))
        #expect(error["exitCode"] as? Int == 125)
        // A layered error keeps every layer, down to the system's own words, and the
        // container it was about keeps running.
        let unwritable = host("checkpoint", "--format", "json", "--export", "/nonexistent/j.tar.zst", "j")
        #expect(unwritable.code == 125)
        let layered = try #require(object(unwritable.stderr), "\(unwritable.stderr)")
        let causes = layered["causes"] as? [String] ?? []
        #expect(causes.first == "cannot export container 'j' to /nonexistent/j.tar.zst", "\(causes)")
        #expect(causes.last == "No such file or directory", "\(causes)")
        #expect((layered["error"] as? String ?? "").hasSuffix(causes.last ?? "-"))
        #expect(host("inspect", "--format", "{{.State}}", "j").stdout == "running\n")
        let usage = host("ps", "--format", "json", "--bogus")
        #expect(usage.code == 125)
        #expect((object(usage.stderr)?["error"] as? String ?? "").contains("--bogus"), "\(usage.stderr)")
        let plain = host("checkpoint", "nosuch")
        #expect(object(plain.stderr) == nil)
        #expect(plain.stderr.contains("nosuch"))
        #expect(host("rm", "-f", "j").code == 0)
    }
}
