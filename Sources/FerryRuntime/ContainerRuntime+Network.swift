import FerryNetwork
import FerryStore
import FerrySystem
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

extension ContainerRuntime {
    public var networks: NetworkStore { NetworkStore(root: root) }

    /// Creates the container's record with its address, MAC and ports, and publishes the
    /// ports: under the network lock, so two runs can never take one address or port.
    /// The record is the allocation; nothing else is written.
    public func createOnNetwork(_ record: ContainerRecord, config: Data, request: NetworkRequest) throws -> ContainerRecord {
        try networks.withLock { () throws -> ContainerRecord in
            var network = try networks.load(request.network)
            if network.isDefault, !networks.isRecorded(network.name) {
                network.created = Date()
                try networks.save(network)
            }
            let others = containers.list().compactMap(\.endpoint) + PodStore(root: root).list().compactMap(\.endpoint)
            var record = record
            record.network = .bridge
            record.endpoint = try NetworkStore.allocate(request, on: network, others: others, container: record.name)
            try containers.create(record, config: config)
            do {
                try HostNetwork.sync(root: root, containers: containers.list())
            } catch {
                try? containers.remove(record)
                try? HostNetwork.sync(root: root, containers: containers.list())
                throw RuntimeError(.invalidArgument, "cannot run container '\(record.name)'", cause: error)
            }
            return record
        }
    }

    /// After a container with an endpoint is removed: its ports unpublished, and its
    /// network's bridge deleted if no container uses it any more.
    func releaseNetwork(of record: ContainerRecord) {
        guard record.endpoint != nil else { return }
        do {
            try networks.withLock { try HostNetwork.sync(root: root, containers: containers.list()) }
        } catch {
            logger.warning("cannot remove the network rules of a removed container", metadata: ["ferry.container": "\(record.name)", "error": "\(error)"])
        }
    }

    /// `network rm`: refused while a container (of any state, a checkpointed one too:
    /// it holds an address there) is on the network.
    public func removeNetwork(_ name: String) throws {
        try networks.withLock {
            let network = try networks.load(name)
            let users =
                containers.list().filter { $0.endpoint?.network == name }.map(\.name)
                + PodStore(root: root).list().filter { $0.endpoint?.network == name }.map { "pod \($0.name)" }
            if !users.isEmpty {
                throw StoreError(
                    .inUse,
                    "network '\(name)' is used by container\(users.count == 1 ? "" : "s") \(users.joined(separator: ", ")): remove \(users.count == 1 ? "it" : "them") first"
                )
            }
            try networks.remove(name)
            try HostNetwork.removeBridge(network)
            try HostNetwork.sync(root: root, containers: containers.list())
        }
    }

    /// `ferry port NAME`: the published ports.
    public func ports(_ nameOrID: String) throws -> [PortMapping] {
        try load(nameOrID).endpoint?.ports ?? []
    }
}

/// Builds a container's network interface in its namespace (a fresh start's or a
/// restore's), from its record.
public enum ContainerNetworking {
    /// The network the endpoint is on, as this state root has it.
    /// With `connected` false nothing reaches the interface until `connect` (a restore,
    /// see `HostNetwork.attach`).
    public static func attach(_ record: ContainerRecord, root: StateRoot, namespace: borrowing OwnedFD, connected: Bool = true) throws {
        guard let endpoint = record.endpoint else { return }
        let network: NetworkRecord
        do {
            network = try NetworkStore(root: root).load(endpoint.network)
        } catch {
            throw RuntimeError(.invalidState, "cannot start container '\(record.name)': its network '\(endpoint.network)' is gone", cause: error)
        }
        do {
            try HostNetwork.attach(endpoint, network: network, containerID: record.id, namespace: namespace, connected: connected)
        } catch {
            throw RuntimeError(.spawnFailed, "cannot start container '\(record.name)'", cause: error)
        }
    }

    /// Lets traffic reach an interface attached with `connected: false`.
    public static func connect(_ record: ContainerRecord) throws {
        guard record.endpoint != nil else { return }
        do {
            try HostNetwork.connect(containerID: record.id)
        } catch {
            throw RuntimeError(.spawnFailed, "cannot connect container '\(record.name)' to its network", cause: error)
        }
    }

    /// Writes /etc/hosts and /etc/resolv.conf into the mounted rootfs, resolved inside it
    /// (an image's symlinked /etc/hosts cannot lead out). A read-only rootfs keeps its own.
    static func writeFiles(_ record: ContainerRecord, hostname: String?, rootfs: String, logger: Logger) {
        guard let endpoint = record.endpoint else { return }
        let hosts = HostNetwork.hostsFile(hostname: hostname ?? record.shortID, name: record.name, endpoint: endpoint)
        let hostResolv = (try? Files.readString("/etc/resolv.conf")) ?? ""
        let resolv = HostNetwork.resolvConf(endpoint: endpoint, hostResolvConf: hostResolv)
        do {
            let root = try OwnedFD.open(rootfs, O_RDONLY | O_DIRECTORY)
            try? root.makeDirectory(at: Array("etc".utf8), mode: 0o755)
            for (name, content) in [("etc/hosts", hosts), ("etc/resolv.conf", resolv)] {
                let file = try root.open(beneath: Array(name.utf8), O_WRONLY | O_CREAT | O_TRUNC | O_NOCTTY, mode: 0o644, resolve: [.inRoot, .noMagicLinks])
                try file.writeAll(Array(content.utf8))
            }
        } catch {
            logger.debug("cannot write /etc/hosts or /etc/resolv.conf", metadata: ["ferry.container": "\(record.name)", "error": "\(error)"])
        }
    }
}
