import ArgumentParser
import FerryCRIU
import FerryRuntime
import FerrySystem
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
        subcommands: [
            Run.self, Ps.self, Logs.self, Exec.self, Attach.self, Start.self, Stop.self, Restart.self, Kill.self, Pause.self, Unpause.self,
            Wait.self, Rename.self, Rm.self, Inspect.self, ContainerCommand.self,
            CheckpointCommand.self, RestoreCommand.self, ArchiveCommand.self, SnapshotCommand.self, RollbackCommand.self,
            ServeCommand.self, MigrateCommand.self, GenerateCommand.self,
            ImageCommand.self, VolumeCommand.self, NetworkCommand.self, PodCommand.self, PortCommand.self, Check.self, Supervise.self,
        ]
    )

    /// Shown only here: argument-parser's own `version:` would add --version to every
    /// verb, where podman has it only at the top.
    static let version = "0.1.0"

    /// `ferry --root DIR VERB`: hoisted before parsing (see `hoistingGlobalOptions`);
    /// declared here so that the top-level help shows it.
    @Option(name: .long, help: ArgumentHelp("State root directory (or FERRY_ROOT; default /var/lib/ferry).", valueName: "dir"))
    var root: String?

    @Flag(name: .long, help: "Show the version.")
    var version = false

    public init() {}

    public mutating func run() throws {
        guard version else { throw CleanExit.helpRequest(self) }
        print(Self.version)
    }
}

/// Entry point used by the `ferry` executable: parses, runs, and turns every error into
/// one line on stderr and a non-zero exit.
public enum FerryMain {
    public static func main() {
        // Run by CRIU as a streamed dump's action script: answer, and exit.
        CRIUPostDumpHook.answerIfInvoked()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            let level = ProcessInfo.processInfo.environment["FERRY_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:))
            handler.logLevel = level ?? .warning
            return handler
        }
        let arguments = hoistingGlobalOptions(Array(CommandLine.arguments.dropFirst()))
        var parsed: (any ParsableCommand)?
        do {
            var command = try parse(arguments)
            parsed = command
            try command.run()
        } catch {
            let code = exitCode(for: error)
            // Help and --version are "errors" that end well: the parser prints them.
            if code == 0 { Ferry.exit(withError: error) }
            let message = Ferry.fullMessage(for: error)
            ProgressDisplay.endOpenLine()
            if wantsJSON(arguments, parsed: parsed) {
                FileHandle.standardError.write(Data((errorJSON(message, exitCode: code, causes: causes(of: error)) + "\n").utf8))
            } else if !message.isEmpty {
                FileHandle.standardError.write(Data((message + "\n").utf8))
            }
            exit(code)
        }
    }

    /// Whether the user asked for JSON (`--format json`), so that an error is JSON too.
    /// Words captured for the container (run's and exec's command) are the container's;
    /// when parsing failed, the words before a `--` are read as they were typed.
    static func wantsJSON(_ arguments: [String], parsed: (any ParsableCommand)?) -> Bool {
        if parsed is any PassthroughCommand { return false }
        let words = arguments.prefix { $0 != "--" }
        if words.contains("--format=json") { return true }
        return zip(words, words.dropFirst()).contains { $0 == "--format" && $1 == "json" }
    }

    /// The error as one line of JSON on stderr (docs/json.md): {"error": ..., "exitCode": ...,
    /// "causes": [...]}, the causes being each layer's own sentence, outermost first.
    static func errorJSON(_ message: String, exitCode: Int32, causes: [String] = []) -> String {
        struct Report: Encodable {
            var error: String
            var exitCode: Int32
            var causes: [String]?
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let text = message.isEmpty ? "failed" : message
        let report = Report(error: text, exitCode: exitCode, causes: causes.count > 1 ? causes : nil)
        let data = (try? encoder.encode(report)) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// The layers of a Ferry error (none for the parser's own errors, whose one line is
    /// all there is).
    static func causes(of error: any Error) -> [String] {
        guard error is any CodedError else { return [] }
        return error.causeMessages.filter { !$0.isEmpty }
    }

    /// Parses as argument-parser does, but refuses `--version` after a verb: the parser
    /// takes the top-level flag anywhere (and would ignore it), where podman has it only
    /// at the top. A `--version` that run's or exec's command captured is the container's.
    static func parse(_ arguments: [String]) throws -> any ParsableCommand {
        let command = try Ferry.parseAsRoot(arguments)
        guard !(command is Ferry) else { return command }
        let captured = (command as? any PassthroughCommand)?.passthrough ?? []
        if arguments.filter({ $0 == "--version" }).count > captured.filter({ $0 == "--version" }).count {
            throw ValidationError("unknown option '--version' (it goes before the verb: ferry --version)")
        }
        return command
    }

    /// podman's exit codes: the container's own code when it ran (`run` in the
    /// foreground, `exec`), 126 when its command cannot be invoked, 127 when it is not
    /// found, and 125 for every error of Ferry itself (usage errors included).
    static func exitCode(for error: any Error) -> Int32 {
        if let code = error as? ExitCode { return code.rawValue }
        // The command's failure decides wherever it sits in the chain (a restore that
        // reports it still exits 127).
        if let error = error.firstCause(as: RuntimeError.self) {
            switch error.code {
            case .commandNotFound: return 127
            case .commandNotInvocable: return 126
            default: break
            }
        }
        return Ferry.exitCode(for: error) == .success ? 0 : 125
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

/// A command whose passthrough argument keeps words meant for the container.
protocol PassthroughCommand {
    var passthrough: [String] { get }
}

extension Run: PassthroughCommand {
    var passthrough: [String] { arguments }
}

extension Exec: PassthroughCommand {
    var passthrough: [String] { arguments }
}

/// Refuses an option where the target of a passthrough argument (run's image, exec's
/// container) belongs. The passthrough captures everything from the first word the parser
/// does not know, so `run -p 80:80 img` captures "-p" first: it is an unknown option,
/// not an image name. A command's own options must come before its target.
func requireTargetFirst(_ arguments: [String]) throws {
    guard let first = arguments.first, first != "--", first.hasPrefix("-"), first.count > 1 else { return }
    let option = first.split(separator: "=", maxSplits: 1).first.map(String.init) ?? first
    throw ValidationError("unknown option '\(option)'")
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
