import ArgumentParser
import FerryCheckpoint
import FerryRuntime
import FerryStore
import Foundation

struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Save a running container's whole state with CRIU.",
        discussion: """
            Ferry freezes the container's cgroup, dumps its processes with CRIU, and thaws. \
            Without --leave-running the container ends checkpointed (restore it with \
            `ferry restore NAME`).
            """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Keep the container running after the dump.")
    var leaveRunning = false

    @Flag(help: "Checkpoint established TCP connections.")
    var tcpEstablished = false

    @Flag(help: "Checkpoint file locks.")
    var fileLocks = false

    @Flag(help: "Print the frozen time and CRIU's dump statistics.")
    var printStats = false

    @Option(help: "Output format: table or json.")
    var format: OutputFormat = .table

    @Argument(help: "Container name or id.")
    var container: String

    struct Report: Encodable {
        var container: String
        var id: String
        var status: String
        var frozenMilliseconds: Double
        var dumpMilliseconds: Double
    }

    mutating func run() throws {
        let context = try Context(global)
        var options = CheckpointOptions()
        options.leaveRunning = leaveRunning
        options.tcpEstablished = tcpEstablished
        options.fileLocks = fileLocks
        let result = try Checkpointer(runtime: context.runtime, logger: context.logger).checkpoint(container, options: options)
        let report = Report(
            container: result.record.name, id: result.record.id, status: result.record.status.name,
            frozenMilliseconds: result.frozen.milliseconds, dumpMilliseconds: result.dumpDuration.milliseconds
        )
        if format == .json { return try Output.json(report) }
        print(result.record.name)
        if printStats {
            print(String(format: "frozen time: %.1f ms\ndump time:   %.1f ms", report.frozenMilliseconds, report.dumpMilliseconds))
        }
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a checkpointed container; it resumes where it stopped."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Container name or id.")
    var container: String

    mutating func run() throws {
        let context = try Context(global)
        let record = try Checkpointer(runtime: context.runtime, logger: context.logger).restore(container)
        print(record.name)
    }
}
