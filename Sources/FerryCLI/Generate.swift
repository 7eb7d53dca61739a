import ArgumentParser
import FerryStore
import FerrySystem
import Foundation

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate files that manage containers from elsewhere.",
        subcommands: [GenerateSystemd.self]
    )
}

struct GenerateSystemd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "systemd",
        abstract: "Generate systemd units that checkpoint containers at shutdown and bring them back at boot.",
        discussion: """
            The unit of a container (ferry-NAME.service) runs `ferry start --restore NAME` \
            when it starts: the container resumes from its checkpoint if it has one, and \
            starts afresh otherwise. When it stops (the host shutting down), it runs \
            `ferry checkpoint NAME`; a container that is not running then is left alone. \
            Enable with: systemctl enable --now ferry-NAME.service
            """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(name: .shortAndLong, help: "A unit for every container of the state root.")
    var all = false

    @Flag(help: "Write ferry-NAME.service files into the current directory and print their paths.")
    var files = false

    @Option(help: ArgumentHelp("Seconds systemd gives the checkpoint at shutdown before it kills the container.", valueName: "seconds"))
    var stopTimeout = SystemdUnit.defaultStopTimeout

    @Option(help: "Output format: text (the units) or json ({\"unitName\": \"content\"}).")
    var format: TextOrJSON = .text

    @Argument(help: "Container names or ids (without --all).", completion: Completions.container)
    var containers: [String] = []

    enum TextOrJSON: String, ExpressibleByArgument, CaseIterable {
        case text, json
    }

    func validate() throws {
        if all == !containers.isEmpty { throw ValidationError("give container names, or --all") }
        if stopTimeout < 1 { throw ValidationError("--stop-timeout must be at least 1 second, not \(stopTimeout)") }
    }

    mutating func run() throws {
        let context = try Context(global)
        let records = all ? context.runtime.list().sorted { $0.name < $1.name } : try containers.map { try context.runtime.load($0) }
        let ferry = try SystemdUnit.ferryExecutable()
        let units = records.map { SystemdUnit(container: $0.name, ferry: ferry, root: context.root.path, stopTimeout: stopTimeout) }
        if files {
            let directory = FileManager.default.currentDirectoryPath
            for unit in units {
                let path = "\(directory)/\(unit.fileName)"
                try Files.writeAtomically(Array(unit.text.utf8), to: path, mode: 0o644)
                print(path)
            }
            return
        }
        if format == .json {
            return try Output.json(Dictionary(units.map { ($0.fileName, $0.text) }, uniquingKeysWith: { first, _ in first }))
        }
        print(units.map(\.text).joined(separator: "\n"), terminator: "")
    }
}

/// A container's systemd unit (`ferry generate systemd`).
///
/// A oneshot unit that stays active: ExecStart brings the container back (from its
/// checkpoint if it was checkpointed, as Incus's stateful stop does) and returns once it
/// runs under its own supervisor; ExecStop checkpoints it. It is ordered after the
/// network and the state root's mount, so at shutdown it stops (and checkpoints) before
/// either goes away.
struct SystemdUnit {
    static let defaultStopTimeout = 300

    var container: String
    /// Absolute path of the ferry binary.
    var ferry: String
    /// The state root the container lives in.
    var root: String
    var stopTimeout = defaultStopTimeout

    var fileName: String { "ferry-\(container).service" }

    /// The commands, as systemd will split them.
    var startCommand: [String] { [ferry, "--root", root, "start", "--restore", container] }
    var stopCommand: [String] { [ferry, "--root", root, "checkpoint", container] }

    var text: String {
        """
        # \(fileName), made by `ferry generate systemd \(container)`.
        [Unit]
        Description=Ferry container \(container), checkpointed at shutdown and restored at boot
        Wants=network-online.target
        After=network-online.target
        RequiresMountsFor=\(Self.escapedPath(root))

        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=\(Self.commandLine(startCommand))
        # "-": a container that is not running at shutdown (stopped, or already
        # checkpointed) is left as it is; a checkpoint that fails is in the journal, and
        # the container then starts afresh at boot.
        ExecStop=-\(Self.commandLine(stopCommand))
        TimeoutStartSec=\(stopTimeout)
        TimeoutStopSec=\(stopTimeout)
        # The container runs under its supervisor, not as this unit's main process.
        KillMode=process

        [Install]
        WantedBy=multi-user.target

        """
    }

    /// The ferry running now (what a user generating units means), by /proc/self/exe.
    static func ferryExecutable() throws -> String {
        do {
            return try Processes.link("/proc/self/exe")
        } catch {
            throw ValidationError("cannot generate systemd units: cannot tell where the ferry binary is: \(error)")
        }
    }

    /// One command line as systemd splits it: words in double quotes when they need them,
    /// with `\` and `"` escaped, and `%` (specifiers) and `$` (variables) doubled.
    static func commandLine(_ words: [String]) -> String {
        words.map(quoted).joined(separator: " ")
    }

    static func quoted(_ word: String) -> String {
        var escaped = ""
        for character in word {
            switch character {
            case "%": escaped += "%%"
            case "$": escaped += "$$"
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            default: escaped.append(character)
            }
        }
        let plain = !word.isEmpty && word.allSatisfy { !$0.isWhitespace && !"\"'\\;".contains($0) }
        return plain ? escaped : "\"\(escaped)\""
    }

    /// A path in a unit setting that takes paths (RequiresMountsFor): specifiers doubled,
    /// whitespace and backslashes as C escapes.
    static func escapedPath(_ path: String) -> String {
        var escaped = ""
        for scalar in path.unicodeScalars {
            switch scalar {
            case "%": escaped += "%%"
            case "\\": escaped += "\\\\"
            case " ": escaped += "\\x20"
            case "\t": escaped += "\\x09"
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }
}
