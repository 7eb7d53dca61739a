import ArgumentParser
import Foundation
import Logging

/// The `ferry` command: a thin layer that maps flags to library calls.
public struct Ferry: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Run, checkpoint, restore and migrate Linux containers.",
        discussion: """
            Ferry runs its own containers (namespaces, overlayfs, cgroups, one small \
            supervisor per container) so it can freeze them, save their whole state with \
            CRIU and bring them back here or on another host.
            """,
        version: "0.1.0",
        subcommands: [
            Run.self, Ps.self, Logs.self, Exec.self, Stop.self, Kill.self, Rm.self, Inspect.self,
            CheckpointCommand.self, RestoreCommand.self, ArchiveCommand.self, SnapshotCommand.self, RollbackCommand.self,
            ServeCommand.self, MigrateCommand.self,
            ImageCommand.self, VolumeCommand.self, Check.self, Supervise.self,
        ]
    )

    public init() {}
}

/// Entry point used by the `ferry` executable: parses, runs, and turns every error into
/// one line on stderr and a non-zero exit.
public enum FerryMain {
    public static func main() {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            let level = ProcessInfo.processInfo.environment["FERRY_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:))
            handler.logLevel = level ?? .warning
            return handler
        }
        do {
            var command = try Ferry.parseAsRoot(hoistingGlobalOptions(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch {
            Ferry.exit(withError: error)
        }
    }
}

/// `ferry --root DIR run ...`: the global option may come before the verb, as users of
/// podman expect. It is passed on through FERRY_ROOT, which every command reads.
func hoistingGlobalOptions(_ arguments: [String]) -> [String] {
    var rest = arguments
    while let first = rest.first {
        if first == "--root", rest.count >= 2 {
            setenv("FERRY_ROOT", rest[1], 1)
            rest.removeFirst(2)
        } else if first.hasPrefix("--root=") {
            setenv("FERRY_ROOT", String(first.dropFirst("--root=".count)), 1)
            rest.removeFirst()
        } else {
            break
        }
    }
    return rest
}

/// Options every command that touches the state root shares.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("State root directory (or FERRY_ROOT).", valueName: "dir"))
    var root: String?

    var rootPath: String {
        root ?? ProcessInfo.processInfo.environment["FERRY_ROOT"] ?? "/var/lib/ferry"
    }
}

/// Splits "TARGET [--] COMMAND..." (run's image, exec's container) as captured by a
/// passthrough argument: everything after the target belongs to the command.
func splitTarget(_ arguments: [String]) -> (target: String, command: [String]) {
    var words = arguments
    if words.first == "--" { words.removeFirst() }
    var command = Array(words.dropFirst())
    if command.first == "--" { command.removeFirst() }
    return (words.first ?? "", command)
}

/// `--format table|json` for commands whose output scripts read.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table
    case json
}
