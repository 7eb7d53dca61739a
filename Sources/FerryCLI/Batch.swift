import ArgumentParser
import FerryCheckpoint
import Foundation

/// The output of `checkpoint --all` and `restore --all`: each container's name as it is
/// done and each failure as one line on stderr (with `--format json`, one array of
/// reports and errors), then, if any failed, a last line that says how many, and
/// podman's exit code 125.
enum Batch {
    struct Failed: Error, CustomStringConvertible {
        var failed: Int
        var total: Int
        var description: String { "\(failed) of \(total) containers failed" }
    }

    /// One container in the JSON array (docs/json.md): its report, or its name and error.
    struct Entry<Report: Encodable>: Encodable {
        var report: Report?
        var container: String
        var error: String?

        func encode(to encoder: any Encoder) throws {
            if let report { return try report.encode(to: encoder) }
            var fields = encoder.container(keyedBy: Keys.self)
            try fields.encode(container, forKey: .container)
            try fields.encode(error, forKey: .error)
        }

        enum Keys: String, CodingKey {
            case container, error
        }
    }

    static func finish<Value, Report: Encodable>(
        _ outcomes: [BatchOutcome<Value>], format: OutputFormat, report: (Value, Duration) -> Report
    ) throws {
        var entries: [Entry<Report>] = []
        var failed = 0
        for outcome in outcomes {
            switch outcome.result {
            case .success(let value):
                entries.append(Entry(report: report(value, outcome.duration), container: outcome.container))
                if format != .json { print(outcome.container) }
            case .failure(let error):
                failed += 1
                let message = Ferry.fullMessage(for: error)
                entries.append(Entry(container: outcome.container, error: message))
                if format != .json { FileHandle.standardError.write(Data((message + "\n").utf8)) }
            }
        }
        if format == .json { try Output.json(entries) }
        if failed > 0 { throw Failed(failed: failed, total: outcomes.count) }
    }
}
