import Crypto
import FerrySystem
import Foundation

/// A bridge network: containers on it get an address of `subnet` on a veth enslaved to
/// the host bridge `interface`, whose address is `gateway`.
public struct NetworkRecord: Codable, Sendable, Equatable {
    public var name: String
    public var id: String
    public var driver: String
    /// The bridge's name on the host.
    public var interface: String
    public var subnet: IPv4Subnet
    public var gateway: IPv4Address
    /// Where container addresses are allocated from (`--ip-range`); nil: all of `subnet`.
    public var ipRange: IPv4Subnet?
    public var created: Date
    /// Ferry's own network, used by `run --network bridge` and made on first use.
    public var isDefault: Bool

    public init(
        name: String, id: String, driver: String = "bridge", interface: String, subnet: IPv4Subnet, gateway: IPv4Address,
        ipRange: IPv4Subnet?, created: Date, isDefault: Bool
    ) {
        self.name = name
        self.id = id
        self.driver = driver
        self.interface = interface
        self.subnet = subnet
        self.gateway = gateway
        self.ipRange = ipRange
        self.created = created
        self.isDefault = isDefault
    }

    /// The addresses containers may be given: the range (or subnet) without its network,
    /// broadcast and gateway addresses.
    public func assignable(_ address: IPv4Address) -> Bool {
        subnet.contains(address) && (ipRange?.contains(address) ?? true) && address != gateway && address != subnet.network
            && address != subnet.broadcast
    }

    /// The lowest assignable address not in `taken`; nil when the range is full.
    public func firstFree(excluding taken: Set<IPv4Address>) -> IPv4Address? {
        let range = ipRange ?? subnet
        var candidate = max(range.network, subnet.firstHost).value
        let last = min(range.broadcast, subnet.lastHost).value
        while candidate <= last {
            let address = IPv4Address(candidate)
            if assignable(address), !taken.contains(address) { return address }
            candidate += 1
        }
        return nil
    }
}

/// What a container on a bridge network has: its address, MAC and published ports. Kept
/// in the container's record, which is the allocation: an address is taken exactly while
/// a record names it (also while checkpointed), so a ferry that crashes leaks nothing.
public struct ContainerNetwork: Codable, Sendable, Equatable {
    public var network: String
    public var address: IPv4Address
    public var mac: MACAddress
    public var ports: [PortMapping]
    /// `--dns`, `--add-host`: what /etc/resolv.conf and /etc/hosts get.
    public var dns: [String]?
    public var addHosts: [String]?

    public init(network: String, address: IPv4Address, mac: MACAddress, ports: [PortMapping], dns: [String]? = nil, addHosts: [String]? = nil) {
        self.network = network
        self.address = address
        self.mac = mac
        self.ports = ports
        self.dns = dns
        self.addHosts = addHosts
    }

    /// The host side of the container's veth: "fv" and the first 13 hex digits of its
    /// id (IFNAMSIZ allows 15), unique per container on the host.
    public static func hostInterface(containerID: String) -> String { "fv\(containerID.prefix(13))" }
    /// The container's side, inside its namespace.
    public static let containerInterface = "eth0"
}

/// What a container asks of a network: given values are checked, missing ones allocated.
public struct NetworkRequest: Sendable, Equatable {
    public var network: String
    public var address: IPv4Address?
    public var mac: MACAddress?
    public var ports: [PortMapping]
    public var dns: [String]
    public var addHosts: [String]

    public init(network: String, address: IPv4Address? = nil, mac: MACAddress? = nil, ports: [PortMapping] = [], dns: [String] = [], addHosts: [String] = []) {
        self.network = network
        self.address = address
        self.mac = mac
        self.ports = ports
        self.dns = dns
        self.addHosts = addHosts
    }
}

/// `networks/<name>.json`. Changes to networks and to the addresses and ports containers
/// hold happen under one lock per state root (`locks/networks.lock`), taken around both
/// the check and the write of the record that holds them.
public struct NetworkStore: Sendable {
    public let root: StateRoot

    /// The network `run --network bridge` (or no --network with `-p`) uses.
    public static let defaultName = "ferry"
    public static let defaultSubnet = IPv4Subnet(network: IPv4Address(0x0A5A_0000), prefix: 16)  // 10.90.0.0/16

    public init(root: StateRoot) {
        self.root = root
    }

    public var directory: String { "\(root.path)/networks" }
    private func path(_ name: String) -> String { "\(directory)/\(name).json" }

    /// Runs `body` holding the network lock.
    public func withLock<T>(_ body: () throws -> T) throws -> T {
        try FileLock.holding("\(root.locksDirectory)/networks.lock", body)
    }

    /// The default network as it is before its first use.
    var defaultNetwork: NetworkRecord {
        let subnet = Self.defaultSubnet
        return NetworkRecord(
            name: Self.defaultName, id: Self.id(for: Self.defaultName, root: root), interface: "ferry0", subnet: subnet,
            gateway: subnet.firstHost, ipRange: nil, created: Date(timeIntervalSince1970: 0), isDefault: true)
    }

    static func id(for name: String, root: StateRoot) -> String {
        let digest = SHA256.hash(data: Array("\(root.path)\0\(name)\0\(UUID().uuidString)".utf8))
        return digest.map { String(format: "%02x", $0) }.joined()
    }

    /// Every network, the default one included (listed even before it is first used).
    public func list() -> [NetworkRecord] {
        let names = ((try? Files.listDirectory(directory)) ?? []).filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }
        var records = names.compactMap { try? load($0) }
        if !records.contains(where: { $0.name == Self.defaultName }) { records.append(defaultNetwork) }
        return records.sorted { $0.name < $1.name }
    }

    /// Whether the network has a record here (the default one gets its record on first use).
    public func isRecorded(_ name: String) -> Bool { Files.exists(path(name)) }

    public func load(_ name: String) throws(StoreError) -> NetworkRecord {
        try Names.validate(name, kind: "network")
        guard let bytes = try? Files.read(path(name)) else {
            if name == Self.defaultName { return defaultNetwork }
            throw StoreError(.notFound, "no such network: \(name)")
        }
        do {
            return try JSONDecoder.ferry.decode(NetworkRecord.self, from: Data(bytes))
        } catch {
            throw StoreError(.corrupt, "network '\(name)' record is unreadable", cause: error)
        }
    }

    /// `network create`: checks everything, then writes the record (under the lock).
    /// `subnet` nil: the first free 10.89.N.0/24; `gateway` nil: the subnet's first host;
    /// `interface` nil: the first free "ferryN".
    public func create(
        _ name: String, subnet: IPv4Subnet?, gateway: IPv4Address?, ipRange: IPv4Subnet?, interface: String?,
        interfaceExists: (String) -> Bool
    ) throws -> NetworkRecord {
        try Names.validate(name, kind: "network")
        return try withLock { () throws -> NetworkRecord in
            let existing = list()
            if Files.exists(path(name)) || name == Self.defaultName {
                throw StoreError(.alreadyExists, "network '\(name)' already exists")
            }
            // The default network counts only once it is used; its subnet stays reserved.
            let others = existing
            let chosen: IPv4Subnet
            if let subnet {
                if let clash = others.first(where: { $0.subnet.overlaps(subnet) }) {
                    throw StoreError(.invalidArgument, "cannot create network '\(name)': subnet \(subnet) overlaps network '\(clash.name)' (\(clash.subnet))")
                }
                chosen = subnet
            } else {
                let free = (0...255).lazy.map { IPv4Subnet(network: IPv4Address(0x0A59_0000 | UInt32($0) << 8), prefix: 24) }
                    .first { candidate in !others.contains { $0.subnet.overlaps(candidate) } }
                guard let free else { throw StoreError(.invalidArgument, "cannot create network '\(name)': no free subnet in 10.89.0.0/16; give --subnet") }
                chosen = free
            }
            if let gateway, !chosen.contains(gateway) || gateway == chosen.network || gateway == chosen.broadcast {
                throw StoreError(.invalidArgument, "cannot create network '\(name)': gateway \(gateway) is not a host address of subnet \(chosen)")
            }
            if let ipRange, !chosen.contains(ipRange) {
                throw StoreError(.invalidArgument, "cannot create network '\(name)': --ip-range \(ipRange) is not inside subnet \(chosen)")
            }
            let bridge: String
            if let interface {
                try Self.validateInterface(interface)
                if others.contains(where: { $0.interface == interface }) || interfaceExists(interface) {
                    throw StoreError(.alreadyExists, "cannot create network '\(name)': interface '\(interface)' already exists")
                }
                bridge = interface
            } else {
                let used = Set(others.map(\.interface))
                guard let free = (1...9999).lazy.map({ "ferry\($0)" }).first(where: { !used.contains($0) && !interfaceExists($0) }) else {
                    throw StoreError(.invalidArgument, "cannot create network '\(name)': no free bridge name")
                }
                bridge = free
            }
            let record = NetworkRecord(
                name: name, id: Self.id(for: name, root: root), interface: bridge, subnet: chosen, gateway: gateway ?? chosen.firstHost,
                ipRange: ipRange, created: Date(), isDefault: false)
            try save(record)
            return record
        }
    }

    /// Writes the record (temp file and rename). Callers hold the lock.
    public func save(_ record: NetworkRecord) throws {
        do {
            try Files.createDirectory(directory, mode: 0o700)
            try Files.writeAtomically(Array(try JSONEncoder.ferry.encode(record)), to: path(record.name))
        } catch {
            throw StoreError(.io, "cannot write network '\(record.name)'", cause: error)
        }
    }

    /// Removes the record; callers hold the lock and have checked that no container uses it.
    public func remove(_ name: String) throws {
        if name == Self.defaultName {
            throw StoreError(.invalidArgument, "the default network '\(name)' cannot be removed")
        }
        guard Files.exists(path(name)) else { throw StoreError(.notFound, "no such network: \(name)") }
        if unlink(path(name)) != 0 {
            throw StoreError(.io, "cannot remove network '\(name)': \(String(cString: strerror(errno)))")
        }
    }

    /// Link names: at most 15 bytes, no '/', ':' or whitespace (the kernel's rules).
    public static func validateInterface(_ name: String) throws(StoreError) {
        guard !name.isEmpty, name.utf8.count <= 15, name != ".", name != "..",
            !name.contains(where: { $0 == "/" || $0 == ":" || $0.isWhitespace })
        else {
            throw StoreError(.invalidArgument, "invalid interface name '\(name)': at most 15 characters, no '/', ':' or spaces")
        }
    }

    /// Picks the address, MAC and ports for a container joining `network`, given what the
    /// other containers of this state root hold (`others`). Everything asked for is
    /// checked; nothing is written. Callers hold the lock and write the record before
    /// releasing it.
    public static func allocate(
        _ request: NetworkRequest, on network: NetworkRecord, others: [ContainerNetwork], container: String
    ) throws(StoreError) -> ContainerNetwork {
        let onNetwork = others.filter { $0.network == network.name }
        let taken = Set(onNetwork.map(\.address))
        let address: IPv4Address
        if let wanted = request.address {
            guard network.subnet.contains(wanted) else {
                throw StoreError(
                    .invalidArgument, "cannot run container '\(container)': address \(wanted) is outside network '\(network.name)' (\(network.subnet))")
            }
            guard network.assignable(wanted) else {
                throw StoreError(
                    .invalidArgument,
                    "cannot run container '\(container)': address \(wanted) is reserved in network '\(network.name)' (network, broadcast or gateway)")
            }
            if taken.contains(wanted) {
                throw StoreError(.inUse, "cannot run container '\(container)': address \(wanted) is already in use on network '\(network.name)'")
            }
            address = wanted
        } else {
            guard let free = network.firstFree(excluding: taken) else {
                throw StoreError(.inUse, "cannot run container '\(container)': network '\(network.name)' has no free address")
            }
            address = free
        }
        let macs = Set(onNetwork.map(\.mac))
        let mac: MACAddress
        if let wanted = request.mac {
            guard wanted.isUnicast else {
                throw StoreError(.invalidArgument, "cannot run container '\(container)': MAC address \(wanted) is not a unicast address")
            }
            if macs.contains(wanted) {
                throw StoreError(.inUse, "cannot run container '\(container)': MAC address \(wanted) is already in use on network '\(network.name)'")
            }
            mac = wanted
        } else {
            var random = MACAddress.random()
            while macs.contains(random) { random = MACAddress.random() }
            mac = random
        }
        let published = others.flatMap(\.ports)
        for (index, port) in request.ports.enumerated() {
            if let clash = published.first(where: { $0.conflicts(with: port) }) ?? request.ports[..<index].first(where: { $0.conflicts(with: port) }) {
                throw StoreError(.inUse, "cannot run container '\(container)': port \(port.hostPort)/\(port.proto.rawValue) is already published (\(clash))")
            }
        }
        return ContainerNetwork(
            network: network.name, address: address, mac: mac, ports: request.ports, dns: request.dns.isEmpty ? nil : request.dns,
            addHosts: request.addHosts.isEmpty ? nil : request.addHosts)
    }
}
