import ArgumentParser
import FerryArchive
import FerryCRIU
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
            `ferry restore NAME`). With --all, every running container is checkpointed in \
            turn; one that fails is reported and the others go on (the exit code is then 125).
            """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(name: .shortAndLong, help: "Checkpoint every running container (paused and stopped ones are left as they are).")
    var all = false

    @Flag(name: [.customShort("R"), .long], help: "Keep the container running after the dump.")
    var leaveRunning = false

    @Flag(help: "Checkpoint established TCP connections.")
    var tcpEstablished = false

    @Flag(help: "Checkpoint file locks.")
    var fileLocks = false

    @Option(name: .shortAndLong, help: ArgumentHelp("Also write a portable export archive (mode 0600) to this file.", valueName: "file"))
    var export: String?

    @OptionGroup var keyFile: KeyFileOptions

    @Option(name: .shortAndLong, help: "Export compression: zstd, gzip or none.")
    var compress: String = "zstd"

    @Flag(
        name: .shortAndLong,
        help: "Keep the partial images of a failed dump (CRIU's dump.log and stats-dump are always kept, in the container's state directory).")
    var keep = false

    @Flag(help: "Leave named volumes out of the export.")
    var ignoreVolumes = false

    @Flag(help: "Print the frozen time, CRIU's dump timings and the export's size.")
    var printStats = false

    @Option(help: "Output format: table or json.")
    var format: OutputFormat = .table

    @OptionGroup var progress: ProgressOptions

    @Argument(help: "Container name or id (without --all).", completion: Completions.container)
    var container: String?

    func validate() throws {
        if all == (container != nil) { throw ValidationError("give a container name, or --all") }
        if all, export != nil { throw ValidationError("--export writes one container's archive; it does not go with --all") }
        if ExportCompression(rawValue: compress) == nil {
            throw ValidationError("--compress must be zstd, gzip or none, not '\(compress)'")
        }
        if export == nil, ignoreVolumes || compress != "zstd" || keyFile.keyFile != nil {
            throw ValidationError("--compress, --ignore-volumes and --key-file go with --export")
        }
    }

    struct Report: Encodable {
        var container: String
        var id: String
        var status: String
        var frozenMs: Double
        var dumpMs: Double
        var criu: DumpStatistics?
        var pagesWritten: UInt64?
        var export: ExportReport?
    }

    struct ExportReport: Encodable {
        var path: String
        var bytes: Int64
        var durationMs: Double
    }

    mutating func run() throws {
        let context = try Context(global)
        var options = CheckpointOptions()
        options.leaveRunning = leaveRunning
        options.tcpEstablished = tcpEstablished
        options.fileLocks = fileLocks
        options.ignoreVolumes = ignoreVolumes
        options.compression = ExportCompression(rawValue: compress) ?? .zstd
        options.keep = keep
        options.progress = progress.sink
        options.key = try keyFile.key()
        if let export {
            options.exportPath = URL(fileURLWithPath: export).standardizedFileURL.path
        }
        let checkpointer = Checkpointer(runtime: context.runtime, logger: context.logger)
        if all {
            return try Batch.finish(checkpointer.checkpointAll(options: options), format: format) { result, _ in Self.report(of: result) }
        }
        let result = try checkpointer.checkpoint(container ?? "", options: options)
        let report = Self.report(of: result)
        if format == .json { return try Output.json(report) }
        print(result.record.name)
        guard printStats else { return }
        var rows: [[String]] = [["frozen time (downtime)", String(format: "%.1f ms", report.frozenMs)]]
        rows.append(["dump total", String(format: "%.1f ms", report.dumpMs)])
        if let stats = result.statistics {
            rows.append(["criu freezing", String(format: "%.1f ms", Double(stats.freezingTime) / 1000)])
            rows.append(["criu frozen", String(format: "%.1f ms", Double(stats.frozenTime) / 1000)])
            rows.append(["criu memdump", String(format: "%.1f ms", Double(stats.memdumpTime) / 1000)])
            rows.append(["criu memwrite", String(format: "%.1f ms", Double(stats.memwriteTime) / 1000)])
            rows.append(["pages written", "\(stats.pagesWritten) (\(Output.bytes(Int64(stats.pagesWritten) * 4096)))"])
        }
        if let export = report.export {
            rows.append(["export size", Output.bytes(export.bytes)])
            rows.append(["export time", String(format: "%.1f ms", export.durationMs)])
        }
        Output.table(["STATISTIC", "VALUE"], rows)
    }

    static func report(of result: CheckpointResult) -> Report {
        Report(
            container: result.record.name, id: result.record.id, status: result.record.status.name,
            frozenMs: result.frozen.milliseconds, dumpMs: result.dumpDuration.milliseconds,
            criu: result.statistics, pagesWritten: result.statistics?.pagesWritten,
            export: result.export.map { ExportReport(path: $0.path, bytes: $0.bytes, durationMs: $0.duration.milliseconds) }
        )
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a checkpointed container, or import an export archive; it resumes where it stopped.",
        discussion: """
              ferry restore web                                   (a local checkpoint)
              ferry restore --import web.tar.zst --name web2      (here or on another host)
              ferry restore --all                                 (every checkpointed container)
            The same export restores any number of times under different names.
            """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(name: .shortAndLong, help: "Restore every checkpointed container (stopped ones stay stopped).")
    var all = false

    @Option(name: [.customShort("i"), .customLong("import")], help: ArgumentHelp("Restore from an export archive.", valueName: "file"))
    var importPath: String?

    @Option(name: .shortAndLong, help: "Name of the imported container (default: the name in the archive).")
    var name: String?

    @OptionGroup var keyFile: KeyFileOptions

    @Flag(help: "Restore established TCP connections; refuse a checkpoint taken without them.")
    var tcpEstablished = false

    @Flag(name: .shortAndLong, help: "Keep CRIU's restore.log and the images (Ferry always keeps both, in the container's state directory).")
    var keep = false

    @Flag(help: "Restore file locks (Ferry restores those of a checkpoint taken with --file-locks either way).")
    var fileLocks = false

    @Flag(help: "With --import: replace the content of named volumes that already exist.")
    var force = false

    @Flag(help: "Print how long the restore took.")
    var printStats = false

    @Flag(name: .customLong("ignore-static-ip"), help: "With --import: give the container a new address on its network.")
    var ignoreStaticIP = false

    @Flag(name: .customLong("ignore-static-mac"), help: "With --import: give the container a new MAC address.")
    var ignoreStaticMAC = false

    @Option(help: "Output format: table or json.")
    var format: OutputFormat = .table

    @OptionGroup var progress: ProgressOptions

    @Argument(help: "Container name or id (without --import).", completion: Completions.container)
    var container: String?

    func validate() throws {
        if [importPath != nil, container != nil, all].filter({ $0 }).count != 1 {
            throw ValidationError("give a container name, --import FILE or --all")
        }
        if importPath == nil, name != nil || force || ignoreStaticIP || ignoreStaticMAC || keyFile.keyFile != nil {
            throw ValidationError("--name, --force, --ignore-static-ip, --ignore-static-mac and --key-file go with --import")
        }
    }

    struct Report: Encodable {
        var container: String
        var id: String
        var status: String
        var durationMs: Double
    }

    mutating func run() throws {
        let context = try Context(global)
        let checkpointer = Checkpointer(runtime: context.runtime, logger: context.logger)
        let clock = ContinuousClock()
        let start = clock.now
        let record: ContainerRecord
        if let importPath {
            var options = ImportOptions(path: URL(fileURLWithPath: importPath).standardizedFileURL.path)
            options.name = name
            options.force = force
            options.requireTCPEstablished = tcpEstablished
            options.progress = progress.sink
            options.ignoreStaticIP = ignoreStaticIP
            options.ignoreStaticMAC = ignoreStaticMAC
            options.key = try keyFile.key()
            record = try checkpointer.restore(importing: options)
        } else if all {
            return try Batch.finish(checkpointer.restoreAll(requireTCPEstablished: tcpEstablished), format: format) { record, duration in
                Report(container: record.name, id: record.id, status: record.status.name, durationMs: duration.milliseconds)
            }
        } else {
            record = try checkpointer.restore(container ?? "", requireTCPEstablished: tcpEstablished)
        }
        let report = Report(container: record.name, id: record.id, status: record.status.name, durationMs: (clock.now - start).milliseconds)
        if format == .json { return try Output.json(report) }
        print(record.name)
        if printStats { print(String(format: "restore time: %.1f ms", report.durationMs)) }
    }
}
