import ArgumentParser
import FerryRuntime
import FerryStore
import Foundation

struct VolumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume",
        abstract: "Manage named volumes (kept under the state root, outliving containers).",
        subcommands: [Create.self, List.self, InspectVolume.self, Remove.self]
    )

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a named volume.")
        @OptionGroup var global: GlobalOptions
        @Argument var name: String

        mutating func run() throws {
            try Context(global).runtime.volumes.create(name)
            print(name)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List volumes.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Output format: table or json.") var format: OutputFormat = .table

        mutating func run() throws {
            let volumes = try Context(global).runtime.volumes.list()
            if format == .json { return try Output.json(volumes) }
            Output.table(["NAME", "CREATED", "MOUNTPOINT"], volumes.map { [$0.name, Output.ago($0.created), $0.mountpoint] })
        }
    }

    struct InspectVolume: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show a volume as JSON.")
        @OptionGroup var global: GlobalOptions
        @Argument(completion: Completions.volume) var name: String

        mutating func run() throws {
            try Output.json(try Context(global).runtime.volumes.inspect(name))
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove volumes not used by any container.")
        @OptionGroup var global: GlobalOptions
        @Argument(completion: Completions.volume) var names: [String]

        mutating func run() throws {
            let runtime = try Context(global).runtime
            let containers = runtime.list()
            for name in names {
                let users = containers.filter { $0.volumes.contains { $0.kind == .named && $0.source == name } }.map(\.name)
                try runtime.volumes.remove(name, usedBy: users)
                print(name)
            }
        }
    }
}
