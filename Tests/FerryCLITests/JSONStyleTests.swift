import FerryCRIU
import FerrySystem
import Foundation
import SystemPackage
import Testing

@testable import FerryCLI
@testable import FerryCheckpoint
@testable import FerryStore

/// One JSON style for every report (docs/json.md): camelCase keys, the unit in the name
/// of every duration, and errors as one JSON object when JSON was asked for.
@Suite struct JSONStyleTests {
    /// Every key of `value`, nested ones as "outer.inner", with the number under it if any.
    static func keys(_ value: some Encodable) throws -> [(path: String, number: Double?)] {
        let object = try JSONSerialization.jsonObject(with: try JSONEncoder.ferry.encode(value))
        var found: [(String, Double?)] = []
        func walk(_ node: Any, _ prefix: String) {
            if let dictionary = node as? [String: Any] {
                for (key, child) in dictionary {
                    found.append((prefix + key, (child as? NSNumber).map(\.doubleValue)))
                    walk(child, prefix + key + ".")
                }
            } else if let array = node as? [Any] {
                array.forEach { walk($0, prefix) }
            }
        }
        walk(object, "")
        return found
    }

    /// camelCase, and a number that is a time says its unit.
    static func expectStyle(_ value: some Encodable, _ what: String) throws {
        for (path, number) in try keys(value) {
            let key = String(path.split(separator: ".").last ?? "")
            #expect(key.range(of: "^[a-z][a-zA-Z0-9]*$", options: .regularExpression) != nil, "\(what): key '\(path)' is not camelCase")
            let lower = key.lowercased()
            if number != nil, lower.contains("time") || lower.contains("duration") || path.contains("phasesMs.") {
                #expect(key.hasSuffix("Ms") || key.hasSuffix("Us") || path.contains("phasesMs."), "\(what): '\(path)' has no unit")
            }
        }
    }

    static let stats = DumpStatistics(
        freezingTime: 120, frozenTime: 2500, memdumpTime: 300, memwriteTime: 400, irmapResolveTime: 5,
        pagesScanned: 1000, pagesSkippedParent: 10, pagesWritten: 321, pagesLazy: 0)

    @Test func reportsUseOneKeyStyle() throws {
        let checkpoint = CheckpointCommand.Report(
            container: "web", id: "abc", status: "checkpointed", frozenMs: 12.5, dumpMs: 40, criu: Self.stats, pagesWritten: 321,
            export: CheckpointCommand.ExportReport(path: "/tmp/web.tar.zst", bytes: 4096, durationMs: 3))
        try Self.expectStyle(checkpoint, "checkpoint")
        let keys = Set(try Self.keys(checkpoint).map(\.path))
        #expect(keys.isSuperset(of: ["frozenMs", "dumpMs", "criu.frozenTimeUs", "criu.memwriteTimeUs", "export.bytes", "export.durationMs"]))

        try Self.expectStyle(RestoreCommand.Report(container: "web", id: "abc", status: "running", durationMs: 80), "restore")
        try Self.expectStyle(
            RollbackCommand.Report(container: "web", id: "abc", status: "running", snapshot: "s1", durationMs: 80), "rollback")
        try Self.expectStyle(Logs.Line(time: "2026-12-03T07:00:00.000000001Z", line: "hello", complete: true), "logs")

        let migration = MigrationReport(
            mode: "lazy", downtimeMs: 300, totalMs: 4000, bytesSent: 1 << 20, pagesTransferredLazily: 256, destination: "10.0.0.2:7070",
            container: "web", phasesMs: ["imagesWritten": 20, "memoryArrived": 3000])
        try Self.expectStyle(migration, "migrate")
        #expect(Set(try Self.keys(migration).map(\.path)).isSuperset(of: ["downtimeMs", "totalMs", "bytesSent", "pagesTransferredLazily"]))
    }

    @Test func checkSaysWarnAsItsTable() throws {
        #expect(Check.Item.Status.warn.rawValue == "warn")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ferry-json-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let report = Check.report(rootPath: directory)
        try Self.expectStyle(report, "check")
        let statuses = Set(report.checks.map(\.status.rawValue))
        #expect(statuses.isSubset(of: ["ok", "warn", "missing"]))
    }

    @Test func imageReportNamesTheSizeUnit() throws {
        let record = ImageRecord(
            digest: "sha256:" + String(repeating: "ab", count: 32), size: 1234, created: Date(timeIntervalSince1970: 0), references: ["busybox:latest"],
            source: "/tmp/rootfs", layers: [], config: nil, architecture: "amd64", os: "linux")
        let report = ImageCommand.Report(record)
        try Self.expectStyle(report, "image")
        #expect(report.sizeBytes == 1234)
        #expect(report.id == String(repeating: "ab", count: 6))
    }

    @Test func errorsAreJSONWhenJSONWasAskedFor() throws {
        #expect(FerryMain.wantsJSON(["checkpoint", "--format", "json", "web"], parsed: nil))
        #expect(FerryMain.wantsJSON(["ps", "--format=json"], parsed: nil))
        #expect(!FerryMain.wantsJSON(["ps", "--format", "table"], parsed: nil))
        #expect(!FerryMain.wantsJSON(["logs", "web", "--", "--format", "json"], parsed: nil))
        // Words of run's command belong to the container.
        let run = try FerryMain.parse(["run", "img", "tool", "--format", "json"])
        #expect(!FerryMain.wantsJSON(["run", "img", "tool", "--format", "json"], parsed: run))

        let line = FerryMain.errorJSON("no such container: web", exitCode: 125)
        #expect(!line.contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["error"] as? String == "no such container: web")
        #expect(object["exitCode"] as? Int == 125)
        #expect(object["causes"] == nil)

        // A layered error lists its layers, outermost first, ending with the root cause.
        let full = CheckpointError(.exportFailed, "cannot export container 'web'", cause: Errno.noSpace.with("write", path: "x.tar.zst"))
        let layered = FerryMain.errorJSON("\(full)", exitCode: 125, causes: FerryMain.causes(of: full))
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(layered.utf8)) as? [String: Any])
        #expect(parsed["error"] as? String == "cannot export container 'web': write x.tar.zst: No space left on device")
        #expect(parsed["causes"] as? [String] == ["cannot export container 'web'", "write x.tar.zst", "No space left on device"])
    }
}
