import ArgumentParser
import FerryArchive
import FerryCheckpoint
import Foundation

struct ArchiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archive",
        abstract: "Look into export archives.",
        subcommands: [InspectArchive.self]
    )

    struct InspectArchive: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "inspect",
            abstract: "Show an export's metadata, process tree, memory, files, rootfs diff and volumes.",
            discussion: "Reads only the head of the archive; --verify reads it all and checks every member against the manifest."
        )

        @Option(help: "Output format: table or json.")
        var format: OutputFormat = .table

        @Flag(help: "Read the whole archive and check its manifest.")
        var verify = false

        @OptionGroup var keyFile: KeyFileOptions

        @Argument(help: "The export archive.")
        var file: String

        mutating func run() throws {
            let report = try ArchiveInspector.inspect(file, verify: verify, key: try keyFile.key())
            if format == .json { return try Output.json(report) }
            let meta = report.metadata
            Output.table(
                ["FIELD", "VALUE"],
                [
                    ["container", "\(meta.containerName) (\(meta.containerID.prefix(12)))"],
                    ["image", "\(meta.image) \(meta.imageDigest ?? "")"],
                    ["checkpointed", ISO8601DateFormatter().string(from: meta.checkpointedAt)],
                    [
                        "source",
                        "Linux \(meta.sourceKernel), CRIU \(meta.criuVersion / 10000).\(meta.criuVersion / 100 % 100).\(meta.criuVersion % 100), \(meta.cpu.model)",
                    ],
                    ["network", meta.network.rawValue],
                    ["archive size", Output.bytes(report.archiveBytes)],
                    ["encrypted", report.encrypted ? "yes (AES-256-GCM)" : "no"],
                    [
                        "memory",
                        report.memory.map { "\($0.processPages.present + $0.sharedPages.present) pages, \(Output.bytes(Int64($0.dumpedBytes)))" } ?? "-",
                    ],
                    ["open files", report.openFiles.map(String.init) ?? "-"],
                    ["rootfs diff", "\(Output.bytes(report.rootfsDiffBytes)), \(report.deletedFiles.count) deleted"],
                    [
                        "volumes",
                        report.volumes.isEmpty
                            ? "-" : report.volumes.sorted { $0.key < $1.key }.map { "\($0.key) (\(Output.bytes($0.value)))" }.joined(separator: ", "),
                    ],
                    ["bind mounts", meta.bindMounts.isEmpty ? "-" : meta.bindMounts.map { "\($0.source):\($0.destination)" }.joined(separator: ", ")],
                    ["frozen time", String(format: "%.1f ms", meta.frozenMilliseconds)],
                    ["verified", report.verified ? "yes (manifest matches)" : "not checked (use --verify)"],
                ])
            if let stats = report.dumpStatistics {
                print(
                    "\nCRIU dump: freezing \(stats.freezingTime / 1000) ms, frozen \(stats.frozenTime / 1000) ms, memdump \(stats.memdumpTime / 1000) ms, memwrite \(stats.memwriteTime / 1000) ms, \(stats.pagesWritten) pages written"
                )
            }
            print("\nPROCESS TREE")
            Output.table(
                ["PID", "PPID", "THREADS", "COMMAND"],
                report.processTree.map {
                    [String($0.pid), String($0.parentPid), String($0.threads.count), $0.command]
                })
        }
    }
}

/// `--key-file`, shared by every command that writes or reads an export archive.
struct KeyFileOptions: ParsableArguments {
    @Option(
        name: .customLong("key-file"),
        help: ArgumentHelp(
            "Encrypt (or decrypt) the export with the key in this file: at least 32 random bytes, e.g. from `head -c 32 /dev/urandom`.",
            valueName: "file"))
    var keyFile: String?

    /// The key, read now: a bad key file fails before any work starts.
    func key() throws -> ArchiveKey? {
        try keyFile.map { try ArchiveKey(file: $0) }
    }
}
