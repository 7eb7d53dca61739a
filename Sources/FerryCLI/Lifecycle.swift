import ArgumentParser
import FerryCheckpoint
import FerryRuntime
import FerryStore
import FerrySystem
import Foundation

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a container's output.",
        discussion: "--since and --until take an RFC 3339 time, Unix seconds, or a duration before now (10m)."
    )

    @OptionGroup var global: GlobalOptions

    @Flag(name: .shortAndLong, help: "Keep printing new output until the container stops.")
    var follow = false

    @Option(name: [.customShort("n"), .customLong("tail")], help: ArgumentHelp("Print only the last N lines.", valueName: "N"))
    var tail: Int?

    @Flag(name: .shortAndLong, help: "Prefix each line with the time it was written.")
    var timestamps = false

    @Option(help: ArgumentHelp("Only lines written at or after this time.", valueName: "time"))
    var since: String?

    @Option(help: ArgumentHelp("Only lines written at or before this time.", valueName: "time"))
    var until: String?

    @Option(help: "Output format: text (the container's output as written) or json.")
    var format: LogFormat = .text

    @Argument(help: "Container name or id.", completion: Completions.container)
    var container: String

    enum LogFormat: String, ExpressibleByArgument, CaseIterable {
        case text
        case json
    }

    /// One line in `logs --format json` (docs/json.md).
    struct Line: Encodable {
        /// RFC 3339 with nanoseconds, as -t prints it (the ISO 8601 of other reports has
        /// whole seconds, too coarse to order lines).
        var time: String?
        var line: String
        /// False for a last line the container has not ended yet.
        var complete: Bool
    }

    func validate() throws {
        if let tail, tail < 0 { throw ValidationError("--tail must be 0 or more, not \(tail)") }
        if follow, format == .json { throw ValidationError("--format json prints the log as it is now; it does not go with --follow") }
        _ = try options()
    }

    func options(now: Date = Date()) throws -> LogOptions {
        var options = LogOptions()
        options.follow = follow
        options.tail = tail
        options.timestamps = timestamps
        options.since = try since.map { spec throws in try LogOptions.parseTime(spec, now: now) }
        options.until = try until.map { spec throws in try LogOptions.parseTime(spec, now: now) }
        return options
    }

    mutating func run() throws {
        let runtime = try Context(global).runtime
        guard format == .json else { return try runtime.logs(container, options: try options()) }
        try Output.json(
            try runtime.logLines(container, options: try options()).map { Line(time: $0.time.map(LogOptions.timestamp), line: $0.text, complete: $0.complete) })
    }
}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in a running container.",
        discussion: "The command joins all of the container's namespaces and its cgroup; ferry exits with its exit code."
    )

    @OptionGroup var global: GlobalOptions

    @Option(name: .shortAndLong, help: ArgumentHelp("Set an environment variable (KEY=VALUE).", valueName: "env"))
    var env: [String] = []

    @Option(name: [.customShort("w"), .customLong("workdir")], help: "Working directory inside the container.")
    var workdir: String?

    @Option(name: .shortAndLong, help: ArgumentHelp("Run as UID[:GID] or NAME[:GROUP] of the container (default: its user).", valueName: "user"))
    var user: String?

    @Flag(name: .shortAndLong, help: "Give the command a terminal of the container, relayed to ours.")
    var tty = false

    @Flag(name: .shortAndLong, help: "Pass our stdin to the command (through its terminal with -t).")
    var interactive = false

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("Container, then the command and its arguments.", valueName: "container command ..."))
    var arguments: [String] = []

    func validate() throws {
        try requireTargetFirst(arguments)
        if arguments.filter({ $0 != "--" }).count < 2 {
            throw ValidationError("give a container and a command, e.g. ferry exec web ps")
        }
    }

    mutating func run() throws {
        let (container, command) = splitTarget(arguments)
        let environment = try env.map { spec throws in try RunOptionParser.environment(spec) }
        // Without -t stdin is inherited as before; `-t` alone does not pass our keyboard.
        let code = try Context(global).runtime.exec(
            container, command: command, environment: environment, workingDirectory: workdir, user: user, terminal: tty, input: interactive || !tty)
        if code != 0 { throw ExitCode(code) }
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop containers: their stop signal (default SIGTERM), then SIGKILL after a timeout.")

    @OptionGroup var global: GlobalOptions

    @Option(name: [.customShort("t"), .customLong("time")], help: "Seconds to wait before SIGKILL.")
    var time: Double = 10

    @Argument(help: "Container names or ids.", completion: Completions.container)
    var containers: [String]

    mutating func run() throws {
        let runtime = try Context(global).runtime
        for container in containers {
            try runtime.stop(container, timeout: time)
            print(container)
        }
    }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send a signal to a container's init process.")

    @OptionGroup var global: GlobalOptions

    @Option(name: [.customShort("s"), .customLong("signal")], help: "Signal name or number.")
    var signal: String = "KILL"

    @Argument(help: "Container names or ids.", completion: Completions.container)
    var containers: [String]

    func validate() throws {
        if Processes.signalNumber(signal) == nil {
            throw ValidationError("unknown signal '\(signal)'")
        }
    }

    mutating func run() throws {
        let runtime = try Context(global).runtime
        let number = Processes.signalNumber(signal) ?? SIGKILL
        for container in containers {
            try runtime.kill(container, signal: number)
            print(container)
        }
    }
}

struct Rm: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove containers (named volumes are kept).")

    @OptionGroup var global: GlobalOptions

    @Flag(name: .shortAndLong, help: "Kill and remove running containers.")
    var force = false

    @Argument(help: "Container names or ids.", completion: Completions.container)
    var containers: [String]

    mutating func run() throws {
        let context = try Context(global)
        let checkpointer = Checkpointer(runtime: context.runtime, logger: context.logger)
        for container in containers {
            do {
                try checkpointer.remove(container, force: force)
            } catch let error as StoreError where force && error.code == .notFound {
                // As podman: `rm -f` of a container that does not exist succeeds.
                continue
            }
            print(container)
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show containers' state and config: a JSON array, as podman prints it.",
        discussion: "--format takes a Go template, one line per container: ferry inspect --format '{{.Name}} {{.State}}' web db"
    )

    @OptionGroup var global: GlobalOptions

    @Option(name: .shortAndLong, help: ArgumentHelp("A Go template such as '{{.Id}} {{.State}}', or json (the default).", valueName: "format"))
    var format: String = "json"

    @Argument(help: "Container names or ids.", completion: Completions.container)
    var containers: [String]

    func validate() throws {
        if format != "json" { _ = try Template(format) }
    }

    struct Document: Encodable {
        var id: String
        var name: String
        var image: String
        var imageDigest: String?
        var created: Date
        var status: ContainerStatus
        var state: String
        var network: NetworkMode
        /// Address, MAC and published ports on a bridge network.
        var endpoint: ContainerNetwork?
        var volumes: [VolumeMount]
        var stopSignal: String
        var labels: [String: String]
        var exposedPorts: [String]
        var stateDirectory: String
        var logPath: String
        var cgroups: [String]
        var config: OCISpec
    }

    mutating func run() throws {
        let runtime = try Context(global).runtime
        // As podman: every container that exists is printed, then the first that does
        // not is the error.
        var documents: [Document] = []
        var missing: (any Error)?
        for container in containers {
            do {
                documents.append(try Self.document(container, runtime: runtime))
            } catch {
                if missing == nil { missing = error }
            }
        }
        if format == "json" {
            if !documents.isEmpty || missing == nil { try Output.json(documents) }
        } else {
            let template = try Template(format)
            for document in documents { print(try template.render(encoding: document)) }
        }
        if let missing { throw missing }
    }

    static func document(_ container: String, runtime: ContainerRuntime) throws -> Document {
        let record = try runtime.load(container)
        let config = try JSONDecoder().decode(OCISpec.self, from: try runtime.containers.loadConfig(id: record.id))
        return Document(
            id: record.id, name: record.name, image: record.image, imageDigest: record.imageDigest,
            created: record.created, status: record.status, state: record.status.stateName, network: record.network,
            endpoint: record.endpoint, volumes: record.volumes, stopSignal: record.imageSettings?.stopSignal ?? "SIGTERM",
            labels: record.imageSettings?.labels ?? [:], exposedPorts: record.imageSettings?.exposedPorts ?? [],
            stateDirectory: runtime.containers.directory(record.id),
            logPath: runtime.containers.logPath(record.id), cgroups: (try? runtime.cgroupPaths(of: record.id)) ?? [],
            config: config
        )
    }
}

/// The supervisor process `run -d` starts. Not for people: hidden from help.
struct Supervise: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_supervise", shouldDisplay: false)

    @OptionGroup var global: GlobalOptions

    @Flag(name: .customLong("remove-on-failure"))
    var removeOnFailure = false

    @Flag(help: "Restore the container from its checkpoint instead of starting it.")
    var restore = false

    @Flag(help: "With --restore: leave the restored container frozen.")
    var frozen = false

    @Argument var id: String

    mutating func run() throws {
        let runtime = try Context(global).runtime
        let launcher: any ContainerLauncher = restore ? RestoreLauncher(volumes: runtime.volumes, frozen: frozen) : FreshLauncher()
        let code = runtime.superviseDetached(id: id, removeOnFailure: removeOnFailure, launcher: launcher)
        throw ExitCode(code)
    }
}

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach to a running container's terminal (one started with run -dit).",
        discussion: "Detach with ctrl-p,ctrl-q (or --detach-keys); the container keeps running. Otherwise ferry exits with the container's exit code."
    )

    @OptionGroup var global: GlobalOptions

    @Option(name: .customLong("detach-keys"), help: ArgumentHelp("Keys that detach: a-Z or ctrl-X, comma-separated (\"\" for none).", valueName: "keys"))
    var detachKeys = "ctrl-p,ctrl-q"

    @Argument(help: "Container name or id.", completion: Completions.container)
    var container: String

    func validate() throws {
        do {
            _ = try DetachKeys(parsing: detachKeys)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    mutating func run() throws {
        let keys = try DetachKeys(parsing: detachKeys)
        if let code = try Context(global).runtime.attach(container, detachKeys: keys), code != 0 { throw ExitCode(code) }
    }
}
