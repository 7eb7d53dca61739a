import ArgumentParser
import FerryRuntime
import FerryStore
import FerrySystem
import Foundation

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in a new container.",
        discussion: """
            Without -d, stdio passes through and ferry exits with the container's exit code. \
            Everything after IMAGE is the container's command; without one, the image's \
            Entrypoint and Cmd run.
              ferry run -d --name web -v data:/data busybox:latest httpd -f
              ferry run --bundle ./mybundle            (an OCI bundle made by `runc spec`)
            """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(name: .shortAndLong, help: "Run in the background and print the container id.")
    var detach = false

    @Flag(name: .shortAndLong, help: "Give the container a terminal (a pty of its own); with -d the supervisor keeps it for `ferry attach`.")
    var tty = false

    @Flag(name: .shortAndLong, help: "Keep stdin open: pass ours to the container (through its terminal with -t, else a pipe).")
    var interactive = false

    @Option(help: "Name of the container (default: ferry-<short id>).")
    var name: String?

    @Option(name: .shortAndLong, help: ArgumentHelp("Set an environment variable (KEY=VALUE, or KEY to pass ours).", valueName: "env"))
    var env: [String] = []

    @Option(
        name: [.customShort("v"), .customLong("volume")],
        help: ArgumentHelp("Mount a named volume or host path: NAME:/path[:ro] or /host:/path[:ro].", valueName: "mount"))
    var volumes: [String] = []

    @Option(name: [.customShort("w"), .customLong("workdir")], help: "Working directory inside the container.")
    var workdir: String?

    @Option(help: ArgumentHelp("Replace the image's Entrypoint (\"\" for none; the image's Cmd is then dropped too).", valueName: "command"))
    var entrypoint: String?

    @Option(
        name: .customLong("stop-signal"),
        help: ArgumentHelp("Signal `ferry stop` sends first (default: the image's StopSignal, or SIGTERM).", valueName: "signal"))
    var stopSignal: String?

    @Option(help: "Hostname inside the container (default: the short id).")
    var hostname: String?

    @Option(help: "Network: none (own namespace, loopback only), host, bridge (the default network 'ferry') or a network's name.")
    var network: String?

    @Option(help: ArgumentHelp("The container's IPv4 address on its network (default: the first free).", valueName: "ip"))
    var ip: String?

    @Option(help: ArgumentHelp("Join the pod's network, ipc and uts namespaces (see ferry pod create).", valueName: "pod"))
    var pod: String?

    @Option(name: .customLong("mac-address"), help: ArgumentHelp("The container's MAC address (default: random).", valueName: "mac"))
    var macAddress: String?

    @Option(
        name: [.customShort("p"), .customLong("publish")], help: ArgumentHelp("Publish a port: [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp].", valueName: "port"))
    var publish: [String] = []

    @Option(help: ArgumentHelp("A DNS server for the container's /etc/resolv.conf.", valueName: "ip"))
    var dns: [String] = []

    @Option(name: .customLong("add-host"), help: ArgumentHelp("Add HOST:IP to the container's /etc/hosts.", valueName: "host:ip"))
    var addHost: [String] = []

    @Option(help: "Memory limit, e.g. 512m or 2g.")
    var memory: String?

    @Option(help: "CPU limit in cores, e.g. 1.5.")
    var cpus: String?

    @Option(name: .customLong("pids-limit"), help: "Maximum number of processes.")
    var pidsLimit: String?

    @Option(name: .customLong("cap-add"), help: ArgumentHelp("Add a capability (e.g. NET_RAW, or ALL).", valueName: "capability"))
    var capAdd: [String] = []

    @Option(name: .customLong("cap-drop"), help: ArgumentHelp("Drop a capability (e.g. CHOWN, or ALL).", valueName: "capability"))
    var capDrop: [String] = []

    @Flag(help: "Give the container every capability, no seccomp filter and no masked paths.")
    var privileged = false

    @Option(
        name: .customLong("security-opt"),
        help: ArgumentHelp("no-new-privileges, seccomp=unconfined or seccomp=PROFILE.json.", valueName: "option"))
    var securityOpt: [String] = []

    @Option(name: [.customShort("u"), .customLong("user")], help: ArgumentHelp("Run as UID[:GID] or NAME[:GROUP] (from the image).", valueName: "user"))
    var user: String?

    @Option(name: .customLong("group-add"), help: ArgumentHelp("Add a supplementary group (name or GID).", valueName: "group"))
    var groupAdd: [String] = []

    @Option(help: ArgumentHelp("Set a resource limit: NAME=SOFT[:HARD], e.g. nofile=1024:2048.", valueName: "ulimit"))
    var ulimit: [String] = []

    @Flag(name: .customLong("read-only"), help: "Mount the container's root filesystem read-only.")
    var readOnly = false

    @Option(help: ArgumentHelp("Mount a tmpfs: PATH[:OPTIONS], e.g. /run:size=64m.", valueName: "tmpfs"))
    var tmpfs: [String] = []

    @Option(help: ArgumentHelp("Run an OCI bundle (config.json + rootfs) instead of an image.", valueName: "dir"))
    var bundle: String?

    @Option(name: .customLong("snapshot-every"), help: ArgumentHelp("Snapshot the running container this often (30s, 5m, 1h).", valueName: "duration"))
    var snapshotEvery: String?

    @Option(name: .customLong("snapshot-keep"), help: "How many periodic snapshots to keep (the newest).")
    var snapshotKeep: Int = 3

    @Option(help: ArgumentHelp("Restart policy: no, or on-failure[:N] (N tries, default 3).", valueName: "policy"))
    var restart: String = "no"

    @Flag(name: .customLong("rollback-on-failure"), help: "With --restart on-failure: come back from the newest snapshot instead of from scratch.")
    var rollbackOnFailure = false

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The image, then the command and its arguments.", valueName: "image [command ...]"))
    var arguments: [String] = []

    func validate() throws {
        try requireTargetFirst(arguments)
        if bundle == nil, arguments.filter({ $0 != "--" }).isEmpty {
            throw ValidationError("give an image and optionally a command, e.g. ferry run busybox:latest sh -c 'echo hi'")
        }
        if bundle != nil, !arguments.isEmpty {
            throw ValidationError("--bundle takes the command from the bundle's config.json; give no image or command")
        }
        if bundle != nil, entrypoint != nil {
            throw ValidationError("--entrypoint is for images; a bundle's command is in its config.json")
        }
        if rollbackOnFailure, restart == "no" {
            throw ValidationError("--rollback-on-failure goes with --restart on-failure")
        }
        if bundle != nil,
            privileged || !capAdd.isEmpty || !capDrop.isEmpty || !securityOpt.isEmpty || user != nil || !groupAdd.isEmpty || !ulimit.isEmpty || readOnly
                || !tmpfs.isEmpty
        {
            throw ValidationError("--bundle takes its security settings from the bundle's config.json; give no --cap-add, --user, --security-opt ... with it")
        }
        if snapshotKeep < 1 {
            throw ValidationError("--snapshot-keep must be at least 1")
        }
        if pod != nil {
            // As podman: the pod owns the network and the hostname.
            let given = [
                ("--network", network != nil), ("--ip", ip != nil), ("--mac-address", macAddress != nil), ("-p", !publish.isEmpty),
                ("--hostname", hostname != nil), ("--dns", !dns.isEmpty), ("--add-host", !addHost.isEmpty),
            ].filter(\.1).map(\.0)
            if let first = given.first {
                throw ValidationError("\(first) cannot go with --pod: the pod owns the network and hostname (give it to ferry pod create)")
            }
        }
        let onBridge = network.map { $0 != "none" && $0 != "host" } ?? !publish.isEmpty
        if !onBridge {
            let mode = network ?? "none"
            if ip != nil { throw ValidationError("--ip needs a bridge network; --network \(mode) has no address to choose") }
            if macAddress != nil { throw ValidationError("--mac-address needs a bridge network, not --network \(mode)") }
            if !publish.isEmpty { throw ValidationError("-p needs a bridge network; --network \(mode) cannot publish ports") }
            if !dns.isEmpty || !addHost.isEmpty { throw ValidationError("--dns and --add-host need a bridge network, not --network \(mode)") }
        }
        if let network, network != "none", network != "host", network != "bridge" {
            do {
                try Names.validate(network, kind: "network")
            } catch {
                throw ValidationError("\(error)")
            }
        }
        for entry in addHost {
            let parts = entry.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, IPv4Address(parts[1]) != nil else {
                throw ValidationError("invalid --add-host '\(entry)': expected HOST:IPv4")
            }
        }
        for server in dns where IPv4Address(server) == nil {
            throw ValidationError("invalid --dns '\(server)': expected an IPv4 address")
        }
    }

    /// none and host as they are; anything else a bridge network (`-p` alone: the default).
    var networkMode: NetworkMode {
        switch network {
        case "none": .none
        case "host": .host
        case nil: publish.isEmpty ? .none : .bridge
        default: .bridge
        }
    }

    func options() throws -> RunOptions {
        var limits = CgroupLimits()
        limits.memoryBytes = try memory.map(RunOptionParser.memory)
        limits.cpus = try cpus.map(RunOptionParser.cpus)
        limits.pidsMax = try pidsLimit.map(RunOptionParser.pidsLimit)
        var options = RunOptions(
            command: splitTarget(arguments).command,
            environment: try env.map { spec throws in try RunOptionParser.environment(spec) },
            workingDirectory: workdir,
            hostname: hostname,
            network: networkMode,
            volumes: try volumes.map { spec throws in try RunOptionParser.volume(spec) },
            limits: limits
        )
        if networkMode == .bridge {
            let name = network.map { $0 == "bridge" ? NetworkStore.defaultName : $0 } ?? NetworkStore.defaultName
            var request = NetworkRequest(network: name, ports: try publish.map { spec throws in try PortMapping.parse(spec) }, dns: dns, addHosts: addHost)
            if let ip {
                guard let address = IPv4Address(ip) else { throw ValidationError("invalid --ip '\(ip)': expected an IPv4 address") }
                request.address = address
            }
            if let macAddress {
                guard let mac = MACAddress(macAddress) else {
                    throw ValidationError("invalid --mac-address '\(macAddress)': expected six hex bytes such as 02:42:0a:59:00:05")
                }
                request.mac = mac
            }
            options.networkRequest = request
        }
        options.pod = pod
        options.capAdd = capAdd
        options.capDrop = capDrop
        options.privileged = privileged
        for option in securityOpt { try RunOptionParser.securityOption(option, into: &options) }
        options.user = user
        if let stopSignal {
            guard Processes.signalNumber(stopSignal) != nil else { throw ValidationError("unknown signal '\(stopSignal)' for --stop-signal") }
            options.stopSignal = stopSignal
        }
        options.groupAdd = groupAdd
        options.ulimits = try ulimit.map { spec throws in try RunOptionParser.ulimit(spec) }
        options.readOnly = readOnly
        options.terminal = tty
        options.tmpfs = try tmpfs.map { spec throws in try RunOptionParser.tmpfs(spec) }
        if let snapshotEvery {
            options.snapshotPolicy = SnapshotPolicy(everySeconds: try RunOptionParser.duration(snapshotEvery), keep: snapshotKeep)
        }
        if let retries = try RunOptionParser.restart(restart) {
            options.restartPolicy = RestartPolicy(maxRetries: retries, rollback: rollbackOnFailure)
        }
        return options
    }

    mutating func run() throws {
        var options = try options()
        let context = try Context(global)
        let record: ContainerRecord
        if let bundle {
            var loaded = try BundleLoader.load(bundle)
            if tty {
                loaded.spec.process.terminal = true
            }
            record = try context.runtime.create(name: name, base: loaded.base, options: options, bundleSpec: loaded.spec)
        } else {
            let reference = splitTarget(arguments).target
            let image = try ImageStore(root: context.root.path).resolve(reference)
            try options.applyImage(image.record.config, entrypoint: entrypoint, image: reference)
            let base = ContainerRuntime.BaseLayer(reference: reference, digest: image.record.digest, rootfs: image.lowerDirectories)
            record = try context.runtime.create(name: name, base: base, options: options)
        }
        if detach {
            try context.runtime.startDetached(id: record.id, removeOnFailure: true)
            print(record.id)
            return
        }
        // Without -t stdin is passed through a pipe as before; `-t` alone gives the
        // container a terminal but not our keyboard, as in podman.
        let code = try context.runtime.runForeground(id: record.id, input: interactive || !tty)
        if code != 0 { throw ExitCode(code) }
    }
}

/// Reads an OCI bundle: its config.json, with its rootfs as the base layer.
enum BundleLoader {
    static func load(_ directory: String) throws -> (spec: OCISpec, base: ContainerRuntime.BaseLayer) {
        let bundle = try Files.realPath(directory)
        let configPath = "\(bundle)/config.json"
        guard let bytes = try? Files.read(configPath) else {
            throw ValidationError("no config.json in bundle '\(directory)'")
        }
        var spec: OCISpec
        do {
            spec = try JSONDecoder().decode(OCISpec.self, from: Data(bytes))
        } catch {
            throw ValidationError("config.json in bundle '\(directory)' is not a valid OCI runtime spec: \(error)")
        }
        let rootPath = spec.root.path.hasPrefix("/") ? spec.root.path : "\(bundle)/\(spec.root.path)"
        guard Files.isDirectory(rootPath) else {
            throw ValidationError("bundle rootfs '\(rootPath)' is not a directory")
        }
        // `runc spec` asks for a terminal by default; a bundle gets one only with -t
        // (below). Relative bind sources are made absolute because the container no
        // longer runs from the bundle.
        spec.process.terminal = false
        spec.mounts = spec.mounts.map { mount in
            var mount = mount
            if let source = mount.source, !source.hasPrefix("/"),
                mount.type == "bind" || (mount.options ?? []).contains(where: { $0 == "bind" || $0 == "rbind" })
            {
                mount.source = "\(bundle)/\(source)"
            }
            return mount
        }
        return (spec, ContainerRuntime.BaseLayer(reference: "bundle:\(bundle)", digest: nil, rootfs: try Files.realPath(rootPath)))
    }
}
