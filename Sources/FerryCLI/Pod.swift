import ArgumentParser
import FerryCheckpoint
import FerryRuntime
import FerryStore
import Foundation

/// `ferry pod ...`: podman's pods, i.e. network, ipc and uts namespaces that the
/// containers run with `--pod NAME` share.
struct PodCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pod",
        abstract: "Manage pods (containers that share network, ipc and uts namespaces).",
        subcommands: [Create.self, List.self, InspectPod.self, StartPod.self, StopPod.self, RemovePod.self]
    )

    /// What `pod ls` and `pod inspect --format json` print for a pod.
    struct View: Encodable, Equatable {
        var id: String
        var name: String
        var created: Date
        var hostname: String
        /// running (a container runs), exited (containers, none running), created (none).
        var status: String
        var network: String?
        var address: String?
        var mac: String?
        var ports: [PortMapping]
        var containers: [String]

        init(_ pod: PodRecord, members: [ContainerRecord]) {
            id = pod.id
            name = pod.name
            created = pod.created
            hostname = pod.hostname
            status = Self.status(members.map(\.status))
            network = pod.endpoint?.network
            address = pod.endpoint?.address.description
            mac = pod.endpoint?.mac.description
            ports = pod.endpoint?.ports ?? []
            containers = members.map(\.name).sorted()
        }

        static func status(_ statuses: [ContainerStatus]) -> String {
            if statuses.isEmpty { return "created" }
            if statuses.contains(where: { if case .running = $0 { true } else { false } }) { return "running" }
            return "exited"
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a pod: network, ipc and uts namespaces for containers run with --pod.",
            discussion: "  ferry pod create --name web --network bridge -p 8080:80\n  ferry run -d --pod web busybox:latest httpd -f -p 80")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Name of the pod (default: pod-<short id>).") var name: String?
        @Option(help: "A bridge network for the pod: bridge (the default network 'ferry') or a network's name (default: none, loopback only).")
        var network: String?
        @Option(help: ArgumentHelp("The pod's IPv4 address on its network (default: the first free).", valueName: "ip")) var ip: String?
        @Option(
            name: [.customShort("p"), .customLong("publish")],
            help: ArgumentHelp("Publish a port of the pod: [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp].", valueName: "port"))
        var publish: [String] = []
        @Option(help: "Hostname of the pod's containers (default: the pod's name).") var hostname: String?
        @Option(help: "Output format: name or json.") var format: String = "name"

        func validate() throws {
            if format != "name", format != "json" { throw ValidationError("--format must be name or json") }
            if network == "host" || network == "none" {
                throw ValidationError("--network \(network ?? "") is not a bridge network: leave it out for a pod with loopback only")
            }
            if network == nil, ip != nil { throw ValidationError("--ip needs --network") }
        }

        /// The pod's network request: a bridge network given, or `-p` alone (the default
        /// network), as for `ferry run`.
        func request() throws -> NetworkRequest? {
            guard network != nil || !publish.isEmpty else { return nil }
            let name = network.map { $0 == "bridge" ? NetworkStore.defaultName : $0 } ?? NetworkStore.defaultName
            var request = NetworkRequest(network: name, ports: try publish.map { spec throws in try PortMapping.parse(spec) })
            if let ip {
                guard let address = IPv4Address(ip) else { throw ValidationError("invalid --ip '\(ip)': expected an IPv4 address") }
                request.address = address
            }
            return request
        }

        mutating func run() throws {
            let context = try Context(global)
            let podName = name ?? "pod-\(ContainerStore.newID().prefix(12))"
            let pod = try context.runtime.createPod(name: podName, hostname: hostname, network: try request())
            if format == "json" { return try Output.json(View(pod, members: [])) }
            print(pod.name)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List pods.", aliases: ["ps", "list"])
        @OptionGroup var global: GlobalOptions
        @Option(help: "Output format: table or json.") var format: OutputFormat = .table
        @Flag(name: .shortAndLong, help: "Print the names only.") var quiet = false

        mutating func run() throws {
            let runtime = try Context(global).runtime
            let views = runtime.pods.list().map { View($0, members: runtime.members(of: $0.name)) }
            if quiet { return views.forEach { print($0.name) } }
            if format == .json { return try Output.json(views) }
            Output.table(
                ["POD ID", "NAME", "STATUS", "ADDRESS", "# OF CONTAINERS"],
                views.map { [String($0.id.prefix(12)), $0.name, $0.status, $0.address ?? "", "\($0.containers.count)"] })
        }
    }

    struct InspectPod: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show pods as a JSON array.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Output format: json.") var format: String = "json"
        @Argument var names: [String]

        func validate() throws {
            if names.isEmpty { throw ValidationError("give a pod name") }
            if format != "json" { throw ValidationError("--format must be json") }
        }

        mutating func run() throws {
            let runtime = try Context(global).runtime
            try Output.json(try names.map { name throws in View(try runtime.pods.load(name), members: runtime.members(of: name)) })
        }
    }

    struct StartPod: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "start", abstract: "Start the containers of pods.")
        @OptionGroup var global: GlobalOptions
        @Argument var names: [String]

        mutating func run() throws {
            let runtime = try Context(global).runtime
            for name in names {
                try runtime.startPod(name)
                print(name)
            }
        }
    }

    struct StopPod: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop the containers of pods (the pod's namespaces stay).")
        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .long], help: "Seconds to wait before SIGKILL.") var time: Double = 10
        @Argument var names: [String]

        mutating func run() throws {
            let runtime = try Context(global).runtime
            for name in names {
                try runtime.stopPod(name, timeout: time)
                print(name)
            }
        }
    }

    struct RemovePod: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove pods (with -f, their containers too).")
        @OptionGroup var global: GlobalOptions
        @Flag(name: .shortAndLong, help: "Remove the pod's containers too (killing running ones).") var force = false
        @Argument var names: [String]

        mutating func run() throws {
            let context = try Context(global)
            let checkpointer = Checkpointer(runtime: context.runtime, logger: context.logger)
            for name in names {
                try context.runtime.removePod(name, force: force) { id in try checkpointer.remove(id, force: true) }
                print(name)
            }
        }
    }
}
