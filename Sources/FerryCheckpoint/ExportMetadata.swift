import FerryStore
import FerrySystem
import Foundation

/// `ferry.json`, the first member of an export (docs/archive-format.md).
public struct ExportMetadata: Codable, Sendable {
    public static let formatVersion = 1
    public static let memberName = "ferry.json"

    public struct Volume: Codable, Sendable, Equatable {
        public var name: String
        public var destination: String
        public var readOnly: Bool
    }

    public struct BindMount: Codable, Sendable, Equatable {
        public var source: String
        public var destination: String
        public var readOnly: Bool
    }

    public var formatVersion: Int
    public var containerName: String
    public var containerID: String
    public var image: String
    public var imageDigest: String?
    public var checkpointedAt: Date
    public var sourceKernel: String
    public var criuVersion: Int
    public var cpu: CPUDescription
    public var network: NetworkMode
    public var volumes: [Volume]
    public var bindMounts: [BindMount]
    public var stdio: [String]
    public var frozenMilliseconds: Double
    public var tcpEstablished: Bool
    public var fileLocks: Bool
    /// Memory is not in the archive: a migration's page server supplies it (see
    /// `CheckpointMetadata.lazyPages`).
    public var lazyPages: Bool?
    /// The container's stop signal, labels and exposed ports; absent in archives made
    /// before they were recorded.
    public var imageSettings: ContainerImageSettings?
    /// Network, address, MAC and published ports of a container on a bridge network;
    /// absent for none and host. The importing host must have a network of that name.
    public var endpoint: ContainerNetwork?
    /// The size of every later member, so a reader can refuse a member that grew.
    public var members: [String: Int64]
}

/// `config.dump`: the fields checkpointctl reads, as podman writes them.
public struct ConfigDump: Codable, Sendable {
    public var id: String
    public var name: String
    public var rootfsImageName: String
    public var rootfsImageRef: String?
    public var runtime: String
    public var createdTime: Date
    public var checkpointedTime: Date
}

/// `network.status`: the container's networks as podman records them (network name, then
/// interface), which checkpointctl shows. Importers ignore it: `ferry.json`'s `endpoint`
/// is what a restore uses.
struct NetworkStatusDump {
    static let memberName = "network.status"

    struct Subnet: Encodable {
        var ipnet: String
        var gateway: String
    }

    struct Interface: Encodable {
        var subnets: [Subnet]
        var macAddress: String

        enum CodingKeys: String, CodingKey {
            case subnets
            case macAddress = "mac_address"
        }
    }

    struct Network: Encodable {
        var interfaces: [String: Interface]
    }

    var networks: [String: Network]

    init(network: NetworkRecord, endpoint: ContainerNetwork) {
        let subnet = Subnet(ipnet: "\(endpoint.address)/\(network.subnet.prefix)", gateway: "\(network.gateway)")
        let interface = Interface(subnets: [subnet], macAddress: "\(endpoint.mac)")
        networks = [endpoint.network: Network(interfaces: [ContainerNetwork.containerInterface: interface])]
    }
}

/// The CPU a checkpoint was taken on. CRIU restores processes that may use any
/// instruction the source CPU had, so the destination must have every flag the source
/// had (CRIU's own cpuinfo check is stricter still).
public struct CPUDescription: Codable, Sendable, Equatable {
    public var vendor: String
    public var model: String
    public var flags: [String]

    /// This machine's CPU, from /proc/cpuinfo.
    public static func current() -> CPUDescription {
        parse((try? Files.readString("/proc/cpuinfo")) ?? "")
    }

    static func parse(_ text: String) -> CPUDescription {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            if line.trimmingCharacters(in: .whitespaces).isEmpty { break }  // first CPU only
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2, fields[parts[0]] == nil { fields[parts[0]] = parts[1] }
        }
        let flags = (fields["flags"] ?? "").split(separator: " ").map(String.init).sorted()
        return CPUDescription(vendor: fields["vendor_id"] ?? "unknown", model: fields["model name"] ?? "unknown", flags: flags)
    }

    /// The flags `source` has that this CPU lacks; empty when compatible.
    public func missingFlags(from source: CPUDescription) -> [String] {
        let mine = Set(flags)
        return source.flags.filter { !mine.contains($0) }
    }
}
