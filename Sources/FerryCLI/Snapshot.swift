import ArgumentParser
import FerryArchive
import FerryCheckpoint
import FerryStore
import FerrySystem
import Foundation

struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Snapshots of a running container (memory, rootfs and volumes at one frozen instant).",
        discussion: """
            The container is thawed right after the dump; unchanged memory, rootfs and volume \
            data are shared between snapshots. Go back to one with `ferry rollback`.
            """,
        subcommands: [Create.self, List.self, Remove.self, Export.self]
    )

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Take a snapshot; the container keeps running.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "A name for the snapshot (default: snap-<time>).") var tag: String?
        @Option(help: "Afterwards keep only the newest N snapshots.") var keep: Int?
        @Option(help: "Output format: table or json.") var format: OutputFormat = .table
        @OptionGroup var progress: ProgressOptions
        @Argument(help: "Container name or id.", completion: Completions.container) var container: String

        mutating func run() throws {
            let context = try Context(global)
            let usage = try Snapshotter(runtime: context.runtime, logger: context.logger).create(container, tag: tag, keep: keep, progress: progress.sink)
            if format == .json { return try Output.json(SnapshotCommand.Entry(usage)) }
            print(usage.manifest.tag)
        }
    }

    struct Entry: Encodable {
        var tag: String
        var created: Date
        var frozenMs: Double
        var sizeBytes: Int64
        var ownBytes: Int64
        var sharedBytes: Int64

        init(_ usage: SnapshotUsage) {
            tag = usage.manifest.tag
            created = usage.manifest.created
            frozenMs = usage.manifest.frozenMilliseconds
            sizeBytes = usage.manifest.size
            ownBytes = usage.ownBytes
            sharedBytes = usage.sharedBytes
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List a container's snapshots, oldest first.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Output format: table or json.") var format: OutputFormat = .table
        @Argument(help: "Container name or id.", completion: Completions.container) var container: String

        mutating func run() throws {
            let context = try Context(global)
            let entries = try Snapshotter(runtime: context.runtime, logger: context.logger).list(container).map(Entry.init)
            if format == .json { return try Output.json(entries) }
            Output.table(
                ["TAG", "CREATED", "FROZEN", "SIZE", "OWN", "SHARED"],
                entries.map {
                    [
                        $0.tag, Output.ago($0.created), String(format: "%.0f ms", $0.frozenMs), Output.bytes($0.sizeBytes), Output.bytes($0.ownBytes),
                        Output.bytes($0.sharedBytes),
                    ]
                })
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a snapshot (its unshared data goes with it).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Container name or id.", completion: Completions.container) var container: String
        @Argument(help: "The snapshot's tag.") var tag: String

        mutating func run() throws {
            let context = try Context(global)
            try Snapshotter(runtime: context.runtime, logger: context.logger).remove(container, tag: tag)
            print(tag)
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a snapshot as a normal export archive (restore it anywhere with `ferry restore --import`)."
        )
        @OptionGroup var global: GlobalOptions
        @Option(help: "Compression: zstd, gzip or none.") var compress: String = "zstd"
        @OptionGroup var keyFile: KeyFileOptions
        @Argument(help: "Container name or id.", completion: Completions.container) var container: String
        @Option(help: "Output format: table or json.") var format: OutputFormat = .table
        @OptionGroup var progress: ProgressOptions
        @Argument(help: "The snapshot's tag.") var tag: String
        @Argument(help: "The archive to write.") var file: String

        func validate() throws {
            if ExportCompression(rawValue: compress) == nil { throw ValidationError("--compress must be zstd, gzip or none") }
        }

        mutating func run() throws {
            let context = try Context(global)
            let path = URL(fileURLWithPath: file).standardizedFileURL.path
            let key = try keyFile.key()
            let result = try Snapshotter(runtime: context.runtime, logger: context.logger)
                .export(
                    container, tag: tag, to: path, compression: ExportCompression(rawValue: compress) ?? .zstd, key: key,
                    progress: progress.sink)
            if format == .json {
                return try Output.json(CheckpointCommand.ExportReport(path: result.path, bytes: result.bytes, durationMs: result.duration.milliseconds))
            }
            print(result.path)
        }
    }
}

struct RollbackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Take a container back to a snapshot: memory, rootfs and volumes as they were.",
        discussion: "Whatever runs now is stopped; the container keeps its name. If the rollback fails, the container is left as it was."
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "The snapshot's tag (default: the newest).")
    var to: String?

    @Option(help: "Output format: table or json.")
    var format: OutputFormat = .table

    struct Report: Encodable {
        var container: String
        var id: String
        var status: String
        var snapshot: String?
        var durationMs: Double
    }

    @Argument(help: "Container name or id.", completion: Completions.container)
    var container: String

    mutating func run() throws {
        let context = try Context(global)
        let snapshotter = Snapshotter(runtime: context.runtime, logger: context.logger)
        // The tag the rollback will take, for the report: the newest unless one is named.
        let tag = try to ?? snapshotter.list(container).last?.manifest.tag
        let clock = ContinuousClock()
        let start = clock.now
        let record = try snapshotter.rollback(container, to: to)
        if format == .json {
            return try Output.json(
                Report(container: record.name, id: record.id, status: record.status.name, snapshot: tag, durationMs: (clock.now - start).milliseconds))
        }
        print(record.name)
    }
}
