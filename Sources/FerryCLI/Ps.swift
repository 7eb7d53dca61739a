import ArgumentParser
import FerryRuntime
import FerryStore
import Foundation

struct Ps: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List containers.",
        discussion: """
            --format takes table, json, or a Go template as podman's: \
            {{.ID}} {{.Names}} {{.Image}} {{.Command}} {{.Status}} {{.State}} {{.Created}} \
            {{.RunningFor}} {{.Pid}} {{.ExitCode}} {{.Ports}} {{.PodName}}, {{json .}}, and a leading 'table' for a header.
              ferry ps -a --filter status=exited --format '{{.Names}}\\t{{.Status}}'
            """,
        aliases: ["ls", "list"]
    )

    @OptionGroup var global: GlobalOptions

    @Flag(name: .shortAndLong, help: "Show all containers, not only running ones.")
    var all = false

    @Flag(name: .shortAndLong, help: "Print only the container ids.")
    var quiet = false

    @Flag(name: .shortAndLong, help: "Show only the latest created container (of all states).")
    var latest = false

    @Flag(name: .customLong("no-trunc"), help: "Do not truncate ids and commands.")
    var noTrunc = false

    @Flag(help: "Show the pod of each container (a PODNAME column).")
    var pod = false

    @Option(
        name: .shortAndLong,
        help: ArgumentHelp("Filter: name=TEXT, id=PREFIX or status=STATE (created, running, paused, exited, checkpointed...).", valueName: "filter"))
    var filter: [String] = []

    @Option(help: ArgumentHelp("Output format: table, json, or a Go template such as '{{.Names}}'.", valueName: "format"))
    var format: String = "table"

    func validate() throws {
        _ = try ContainerFilter(filter)
        if format != "table", format != "json" { _ = try Template(format) }
    }

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
        /// Published ports, "0.0.0.0:8080->80/tcp"; absent without any.
        var ports: [String]?
        /// The pod the container is in; absent for none.
        var pod: String?
    }

    /// The fields of a `--format` template, named as podman names them.
    struct TemplateFields: Encodable {
        var ID: String
        var Names: String
        var Image: String
        var Command: String
        var Status: String
        var State: String
        var Created: Date
        var RunningFor: String
        var Pid: Int32
        var ExitCode: Int32
        var Ports: String
        var PodName: String
    }

    static let templateHeaders = ["id": "CONTAINER ID", "runningfor": "CREATED"]

    mutating func run() throws {
        let context = try Context(global)
        let filter = try ContainerFilter(filter)
        var records = context.runtime.list().filter(filter.matches)
        if latest {
            records = records.last.map { [$0] } ?? []
        } else if !all, !filter.selectsStatus {
            records = records.filter { $0.status.name == "running" }
        }
        for line in try Self.render(records, format: format, quiet: quiet, noTrunc: noTrunc, pod: pod) { print(line) }
    }

    /// The lines `ps` prints for `records`.
    static func render(
        _ records: [ContainerRecord], format: String, quiet: Bool, noTrunc: Bool, pod: Bool = false, now: Date = Date()
    ) throws -> [String] {
        if quiet { return records.map { noTrunc ? $0.id : $0.shortID } }
        switch format {
        case "json":
            let entries = records.map { record in
                var entry = Entry(
                    id: record.id, name: record.name, image: record.image, command: record.command, status: record.status.stateName,
                    created: record.created)
                entry.ports = record.endpoint.flatMap { $0.ports.isEmpty ? nil : $0.ports.map(\.description) }
                entry.pod = record.pod
                switch record.status {
                case .running(let state): entry.pid = state.pid
                case .exited(let state): entry.exitCode = state.exitCode
                default: break
                }
                return entry
            }
            return [String(decoding: try JSONEncoder.ferry.encode(entries), as: UTF8.self)]
        case "table":
            return Output.tableLines(
                ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"] + (pod ? ["PODNAME"] : []),
                records.map { record in
                    let command = record.command.joined(separator: " ")
                    return [
                        noTrunc ? record.id : record.shortID, record.image, noTrunc ? command : String(command.prefix(30)),
                        Output.ago(record.created, now: now), describe(record.status, now: now), ports(record), record.name,
                    ] + (pod ? [record.pod ?? ""] : [])
                }
            )
        default:
            let template = try Template(format)
            let rows = try records.map { record in try template.render(encoding: fields(record, noTrunc: noTrunc, now: now)) }
            return template.isTable ? [template.header(templateHeaders)] + rows : rows
        }
    }

    static func fields(_ record: ContainerRecord, noTrunc: Bool, now: Date) -> TemplateFields {
        var pid: Int32 = 0
        var exitCode: Int32 = 0
        switch record.status {
        case .running(let state), .checkpointing(let state): pid = state.pid
        case .exited(let state): exitCode = state.exitCode
        default: break
        }
        return TemplateFields(
            ID: noTrunc ? record.id : record.shortID, Names: record.name, Image: record.image, Command: record.command.joined(separator: " "),
            Status: describe(record.status, now: now), State: record.status.stateName, Created: record.created,
            RunningFor: Output.ago(record.created, now: now), Pid: pid, ExitCode: exitCode, Ports: ports(record), PodName: record.pod ?? ""
        )
    }

    /// The PORTS column: published ports, comma-separated, as podman's.
    static func ports(_ record: ContainerRecord) -> String {
        (record.endpoint?.ports ?? []).map(\.description).joined(separator: ", ")
    }

    static func describe(_ status: ContainerStatus, now: Date = Date()) -> String {
        switch status {
        case .created: "Created"
        case .running(let state) where state.paused == true: "Paused"
        case .running(let state): "Up \(Output.ago(state.startedAt, now: now).replacingOccurrences(of: " ago", with: ""))"
        case .starting: "Starting"
        case .restoring: "Restoring"
        case .checkpointing: "Checkpointing"
        case .exited(let state): "Exited (\(state.exitCode)) \(Output.ago(state.finishedAt, now: now))"
        case .checkpointed(let state): "Checkpointed \(Output.ago(state.checkpointedAt, now: now))"
        }
    }
}
