import ArgumentParser
import FerryNetwork
import FerryRuntime
import FerryStore
import Foundation

struct NetworkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network",
        abstract: "Manage bridge networks (containers on one reach each other; -p publishes ports).",
        subcommands: [Create.self, List.self, InspectNetwork.self, Remove.self]
    )

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a bridge network.",
            discussion: "  ferry network create --subnet 10.89.5.0/24 --gateway 10.89.5.1 --ip-range 10.89.5.128/25 web")
        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .long], help: "Driver: bridge.") var driver: String = "bridge"
        @Option(help: ArgumentHelp("IPv4 subnet, e.g. 10.89.5.0/24 (default: a free 10.89.N.0/24).", valueName: "subnet")) var subnet: String?
        @Option(help: ArgumentHelp("The bridge's address (default: the subnet's first).", valueName: "ip")) var gateway: String?
        @Option(name: .customLong("ip-range"), help: ArgumentHelp("Allocate container addresses from this range only.", valueName: "range"))
        var ipRange: String?
        @Option(name: .customLong("interface-name"), help: ArgumentHelp("The bridge's name on the host (default: ferryN).", valueName: "name"))
        var interfaceName: String?
        @Argument var name: String

        func validate() throws {
            guard driver == "bridge" else { throw ValidationError("--driver must be 'bridge', not '\(driver)'") }
            if (gateway != nil || ipRange != nil), subnet == nil {
                throw ValidationError("--gateway and --ip-range go with --subnet")
            }
        }

        mutating func run() throws {
            let context = try Context(global)
            let parsedSubnet = try subnet.map { text throws in try IPv4Subnet.parse(text) }
            let parsedRange = try ipRange.map { text throws in try IPv4Subnet.parse(text, what: "--ip-range") }
            let parsedGateway = try gateway.map { text throws -> IPv4Address in
                guard let address = IPv4Address(text) else { throw ValidationError("invalid --gateway '\(text)': expected an IPv4 address") }
                return address
            }
            let record = try NetworkStore(root: context.root).create(
                name, subnet: parsedSubnet, gateway: parsedGateway, ipRange: parsedRange, interface: interfaceName,
                interfaceExists: HostNetwork.linkExists)
            print(record.name)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List networks.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Output format: table or json.") var format: OutputFormat = .table

        mutating func run() throws {
            let networks = NetworkStore(root: try Context(global).root).list()
            if format == .json { return try Output.json(networks) }
            Output.table(
                ["NETWORK ID", "NAME", "DRIVER", "SUBNET", "GATEWAY"],
                networks.map { [String($0.id.prefix(12)), $0.name, $0.driver, $0.subnet.description, $0.gateway.description] })
        }
    }

    struct InspectNetwork: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show networks as a JSON array.")
        @OptionGroup var global: GlobalOptions
        @Argument var names: [String]

        func validate() throws {
            if names.isEmpty { throw ValidationError("give a network name") }
        }

        mutating func run() throws {
            let store = NetworkStore(root: try Context(global).root)
            try Output.json(try names.map { name throws in try store.load(name) })
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove networks no container uses.")
        @OptionGroup var global: GlobalOptions
        @Argument var names: [String]

        mutating func run() throws {
            let context = try Context(global)
            for name in names {
                try context.runtime.removeNetwork(name)
                print(name)
            }
        }
    }
}

/// `ferry port NAME [PRIVATE[/PROTO]]`: the published ports, as podman prints them.
struct PortCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "port", abstract: "List a container's published ports.")
    @OptionGroup var global: GlobalOptions
    @Argument var container: String
    @Argument(help: "Only this container port (PORT or PORT/PROTO).") var privatePort: String?

    mutating func run() throws {
        let ports = try Context(global).runtime.ports(container)
        for line in Self.lines(ports, only: privatePort) { print(line) }
    }

    /// "80/tcp -> 0.0.0.0:8080" per port; with `only`, just "0.0.0.0:8080".
    static func lines(_ ports: [PortMapping], only: String?) -> [String] {
        guard let only else {
            return ports.map { "\($0.containerPort)/\($0.proto.rawValue) -> \($0.hostIP?.description ?? "0.0.0.0"):\($0.hostPort)" }
        }
        let parts = only.split(separator: "/").map(String.init)
        return ports.filter { port in
            "\(port.containerPort)" == parts.first && (parts.count < 2 || parts[1] == port.proto.rawValue)
        }.map { "\($0.hostIP?.description ?? "0.0.0.0"):\($0.hostPort)" }
    }
}
