import FerryStore
import Foundation
import Testing

@testable import FerryCLI

/// podman's `--format` Go templates, and what `ps` prints with -q, --no-trunc, templates.
@Suite struct FormatTests {
    struct Sample: Encodable {
        var Names = "web"
        var pid: Int32 = 42
        var paused = false
        var state = State()
        var args = ["sh", "-c", "x"]
    }

    struct State: Encodable {
        var status = "running"
    }

    @Test func fieldsNestedFieldsAndJSON() throws {
        #expect(try Template("{{.Names}} {{ .pid }}").render(encoding: Sample()) == "web 42")
        #expect(try Template("{{.PID}}:{{.Paused}}").render(encoding: Sample()) == "42:false", "names match case-insensitively")
        #expect(try Template("{{.State.Status}}").render(encoding: Sample()) == "running")
        #expect(try Template("{{.Args}}").render(encoding: Sample()) == "[sh -c x]")
        #expect(try Template("{{json .State}}").render(encoding: Sample()) == #"{"status":"running"}"#)
        #expect(try Template(#"{{.Names}}\t{{.Pid}}"#).render(encoding: Sample()) == "web\t42")
    }

    @Test func tableTemplatesHaveAHeader() throws {
        let template = try Template("table {{.ID}}\t{{.Names}}")
        #expect(template.isTable)
        #expect(template.header(["id": "CONTAINER ID"]) == "CONTAINER ID\tNAMES")
    }

    @Test func whatGoTemplatesDoBeyondFieldsIsRefused() {
        for bad in ["{{.Names", "{{if .Names}}x{{end}}", "{{Names}}", "{{.Names | upper}}"] {
            #expect(throws: Template.Error.self, "\(bad)") { try Template(bad) }
        }
        #expect(throws: Template.Error.self) { try Template("{{.Nope}}").render(encoding: Sample()) }
    }

    func record(_ name: String, _ status: ContainerStatus) -> ContainerRecord {
        ContainerRecord(
            id: String(repeating: "ab", count: 32), name: name, image: "busybox:latest", imageDigest: nil, lowerDirectory: "/lower",
            command: ["sh", "-c", String(repeating: "echo hi; ", count: 10)], created: Date(timeIntervalSince1970: 1000), network: .none,
            volumes: [], status: status
        )
    }

    @Test func psPrintsIdsTemplatesAndUntruncatedTables() throws {
        let now = Date(timeIntervalSince1970: 1060)
        let exited = record("db", .exited(ExitState(exitCode: 3, startedAt: nil, finishedAt: Date(timeIntervalSince1970: 1030))))
        #expect(try Ps.render([exited], format: "table", quiet: true, noTrunc: false, now: now) == ["abababababab"])
        #expect(try Ps.render([exited], format: "table", quiet: true, noTrunc: true, now: now) == [exited.id])
        let rows = try Ps.render([exited], format: "{{.Names}} {{.State}} {{.ExitCode}} {{.Status}} {{.Command}}", quiet: false, noTrunc: false, now: now)
        #expect(rows == ["db exited 3 Exited (3) 30 seconds ago \(exited.command.joined(separator: " "))"])
        #expect(
            try Ps.render([exited], format: "table {{.ID}} {{.Names}}", quiet: false, noTrunc: false, now: now) == ["CONTAINER ID NAMES", "abababababab db"])
        let truncated = try Ps.render([exited], format: "table", quiet: false, noTrunc: false, now: now)
        #expect(!truncated[1].contains(exited.id) && !truncated[1].contains(exited.command.joined(separator: " ")))
        let full = try Ps.render([exited], format: "table", quiet: false, noTrunc: true, now: now)
        #expect(full[1].contains(exited.id) && full[1].contains(exited.command.joined(separator: " ")))
    }

    @Test func psOptionsParse() throws {
        let ps = try #require(try Ferry.parseAsRoot(["ps", "-q", "-l", "--no-trunc", "-f", "name=web", "--filter", "status=exited"]) as? Ps)
        #expect(ps.quiet && ps.latest && ps.noTrunc)
        #expect(ps.filter == ["name=web", "status=exited"])
        #expect(throws: (any Error).self) { _ = try Ferry.parseAsRoot(["ps", "--filter", "colour=red"]) }
        #expect(throws: (any Error).self) { _ = try Ferry.parseAsRoot(["ps", "--format", "{{if}}"]) }
        let inspect = try #require(try Ferry.parseAsRoot(["inspect", "-f", "{{.Name}}", "a", "b"]) as? Inspect)
        #expect(inspect.containers == ["a", "b"] && inspect.format == "{{.Name}}")
    }
}
