import ArgumentParser
import FerryRuntime
import FerryStore
import Foundation

struct Ps: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List containers.")

    @OptionGroup var global: GlobalOptions

    @Flag(name: .shortAndLong, help: "Show all containers, not only running ones.")
    var all = false

    @Option(help: "Output format: table or json.")
    var format: OutputFormat = .table

    /// One container as `ps --format json` prints it.
    struct Entry: Encodable {
        var id: String
        var name: String
        var image: String
        var command: [String]
        var status: String
        var created: Date
        var pid: Int32?
        var exitCode: Int32?
    }

    mutating func run() throws {
        let context = try Context(global)
        let records = context.runtime.list().filter { all || $0.status.name == "running" }
        let entries = records.map { record in
            var entry = Entry(
                id: record.id, name: record.name, image: record.image, command: record.command, status: record.status.name, created: record.created)
            switch record.status {
            case .running(let state): entry.pid = state.pid
            case .exited(let state): entry.exitCode = state.exitCode
            default: break
            }
            return entry
        }
        if format == .json {
            try Output.json(entries)
            return
        }
        Output.table(
            ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"],
            records.map { record in
                [
                    record.shortID, record.image, String(record.command.joined(separator: " ").prefix(30)), Output.ago(record.created),
                    Self.describe(record.status), record.name,
                ]
            }
        )
    }

    static func describe(_ status: ContainerStatus) -> String {
        switch status {
        case .created: "Created"
        case .running(let state): "Up \(Output.ago(state.startedAt).replacingOccurrences(of: " ago", with: ""))"
        case .restoring: "Restoring"
        case .checkpointing: "Checkpointing"
        case .exited(let state): "Exited (\(state.exitCode)) \(Output.ago(state.finishedAt))"
        case .checkpointed(let state): "Checkpointed \(Output.ago(state.checkpointedAt))"
        }
    }
}
