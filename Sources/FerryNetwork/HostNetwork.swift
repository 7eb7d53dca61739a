import FerryStore
import FerrySystem
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What Ferry adds to the host's network for bridge networks, all derived from the
/// records of one state root: a bridge per network in use, a veth per running container,
/// and one nftables table (`ip ferry_<root hash>`) holding every rule Ferry made, so that
/// nothing else's rules are touched and removing the table removes them all.
public enum HostNetwork {
    /// The table of `root`: unique per state root, as its cgroup subtree is.
    public static func tableName(_ root: StateRoot) -> String {
        root.cgroupParent.replacingOccurrences(of: "-", with: "_")
    }

    /// The whole table for these networks and containers, or nil when there is nothing
    /// to hold. Pure, so it is unit-tested.
    ///
    /// - prerouting/output DNAT a published port (to the host's own addresses: `fib daddr
    ///   type local`) to the container; output covers connections made on the host, to
    ///   127.0.0.1 too;
    /// - postrouting masquerades what leaves a network for elsewhere, and what reaches a
    ///   bridge from 127.0.0.0/8 (a DNATed loopback connection, which the container could
    ///   not answer otherwise);
    /// - forward accepts the bridges' traffic, in case the host's own policy drops.
    public static func rules(table: String, networks: [NetworkRecord], endpoints: [ContainerNetwork]) -> String? {
        let used = networks.filter { network in endpoints.contains { $0.network == network.name } }
        guard !used.isEmpty else { return nil }
        var dnat: [String] = []
        for endpoint in endpoints.sorted(by: { $0.address < $1.address }) {
            for port in endpoint.ports {
                let match = port.hostIP.map { "ip daddr \($0)" } ?? "fib daddr type local"
                dnat.append("\(match) \(port.proto.rawValue) dport \(port.hostPort) dnat to \(endpoint.address):\(port.containerPort)")
            }
        }
        var nat: [String] = []
        var forward: [String] = []
        for network in used {
            nat.append("ip saddr \(network.subnet) ip daddr != \(network.subnet) masquerade")
            nat.append("oifname \"\(network.interface)\" ip saddr 127.0.0.0/8 masquerade")
            forward.append("iifname \"\(network.interface)\" accept")
            forward.append("oifname \"\(network.interface)\" accept")
        }
        func chain(_ name: String, _ hook: String, _ rules: [String]) -> String {
            let body = rules.map { "\t\t\($0)\n" }.joined()
            return "\tchain \(name) {\n\t\t\(hook); policy accept;\n\(body)\t}\n"
        }
        return "table ip \(table) {\n"
            + chain("prerouting", "type nat hook prerouting priority dstnat", dnat)
            + chain("output", "type nat hook output priority -100", dnat)
            + chain("postrouting", "type nat hook postrouting priority srcnat", nat)
            + chain("forward", "type filter hook forward priority filter", forward)
            + "}\n"
    }

    /// Makes the host match the records: the table replaced in one transaction (or
    /// removed when nothing needs it), and the bridges of networks no container uses any
    /// more deleted. Callers hold the network lock.
    public static func sync(root: StateRoot, containers: [ContainerRecord]) throws {
        let networks = NetworkStore(root: root).list()
        // A pod's endpoint is held in its own record, not a container's.
        let endpoints = containers.compactMap(\.endpoint) + PodStore(root: root).list().compactMap(\.endpoint)
        let table = tableName(root)
        // "table" first makes the delete valid when there is none yet.
        var commands = "table ip \(table)\ndelete table ip \(table)\n"
        if let rules = rules(table: table, networks: networks, endpoints: endpoints) { commands += rules }
        try Nftables.run(commands)
        let socket = try netlink("open a netlink socket") { () throws(Errno) in try RouteSocket() }
        // Only networks this root has used (written on first use): the default network
        // that another root in this namespace uses is not this root's to delete.
        let store = NetworkStore(root: root)
        for network in networks where store.isRecorded(network.name) && !endpoints.contains(where: { $0.network == network.name }) {
            _ = try netlink("delete bridge '\(network.interface)'") { () throws(Errno) in try socket.deleteLink(network.interface) }
        }
    }

    /// Deletes the host side of the veth `attach` made for `containerID` (a pod's id),
    /// at once: the kernel would delete it with its namespace, but only some time after.
    public static func deleteInterface(containerID: String) throws {
        let socket = try netlink("open a netlink socket") { () throws(Errno) in try RouteSocket() }
        let name = ContainerNetwork.hostInterface(containerID: containerID)
        _ = try netlink("delete veth '\(name)'") { () throws(Errno) in try socket.deleteLink(name) }
    }

    /// Deletes a network's bridge (at `network rm`).
    public static func removeBridge(_ network: NetworkRecord) throws {
        let socket = try netlink("open a netlink socket") { () throws(Errno) in try RouteSocket() }
        _ = try netlink("delete bridge '\(network.interface)'") { () throws(Errno) in try socket.deleteLink(network.interface) }
    }

    public static func linkExists(_ name: String) -> Bool {
        Files.exists("/sys/class/net/\(name)")
    }

    /// The bridge, up, with the gateway's address; forwarding on, and loopback-sourced
    /// packets allowed onto it (the DNAT of connections to 127.0.0.1). Idempotent.
    static func ensureBridge(_ network: NetworkRecord, socket: borrowing RouteSocket) throws {
        _ = try netlink("create bridge '\(network.interface)'") { () throws(Errno) in try socket.addBridge(network.interface) }
        let index = try netlink("find bridge '\(network.interface)'") { () throws(Errno) in try socket.index(of: network.interface) }
        _ = try netlink("address bridge '\(network.interface)'") { () throws(Errno) in
            try socket.addAddress(index, address: network.gateway.networkOrder, prefix: network.subnet.prefix)
        }
        try netlink("bring up bridge '\(network.interface)'") { () throws(Errno) in try socket.setUp(index) }
        try? Files.writeControl("1", to: "/proc/sys/net/ipv4/ip_forward")
        try? Files.writeControl("1", to: "/proc/sys/net/ipv4/conf/\(network.interface)/route_localnet")
    }

    /// Gives the network namespace `namespace` the container's interface: a veth whose
    /// host side joins the bridge and whose other side, eth0, has the endpoint's MAC and
    /// address and the default route via the gateway. The same call builds the interface
    /// of a fresh start and, before CRIU restores into the namespace, of a restore: the
    /// address and MAC come from the record, so they are the ones the sockets knew.
    ///
    /// With `connected` false the host side stays down, so nothing reaches eth0 until
    /// `connect(containerID:)`: a restore connects it once CRIU has restored the sockets.
    /// Before that, a peer's retransmission would meet a namespace with the address but
    /// without the connection's socket and be answered with a reset (seen: a
    /// `--tcp-established` restore lost its client about every other time).
    public static func attach(
        _ endpoint: ContainerNetwork, network: NetworkRecord, containerID: String, namespace: borrowing OwnedFD, connected: Bool = true
    ) throws {
        let host = try netlink("open a netlink socket") { () throws(Errno) in try RouteSocket() }
        try ensureBridge(network, socket: host)
        let bridge = try netlink("find bridge '\(network.interface)'") { () throws(Errno) in try host.index(of: network.interface) }
        let hostName = ContainerNetwork.hostInterface(containerID: containerID)
        // A veth left by a supervisor killed before its namespace went away.
        _ = try? host.deleteLink(hostName)
        try netlink("create veth '\(hostName)'") { () throws(Errno) in
            try host.addVeth(
                hostName: hostName, master: bridge, peerName: ContainerNetwork.containerInterface, mac: endpoint.mac.bytes,
                peerNamespace: namespace)
        }
        if connected { try bringUp(hostName, socket: host) }
        let inside = try netlink("open a netlink socket in the container's namespace") { () throws(Errno) in
            try RouteSocket(in: namespace)
        }
        let eth = try netlink("find eth0") { () throws(Errno) in try inside.index(of: ContainerNetwork.containerInterface) }
        _ = try netlink("address eth0") { () throws(Errno) in
            try inside.addAddress(eth, address: endpoint.address.networkOrder, prefix: network.subnet.prefix)
        }
        try netlink("bring up eth0") { () throws(Errno) in try inside.setUp(eth) }
        try netlink("add the default route") { () throws(Errno) in try inside.addDefaultRoute(eth, gateway: network.gateway.networkOrder) }
    }

    /// Brings up the host side of the container's veth: eth0 carries traffic from now on.
    public static func connect(containerID: String) throws {
        let host = try netlink("open a netlink socket") { () throws(Errno) in try RouteSocket() }
        try bringUp(ContainerNetwork.hostInterface(containerID: containerID), socket: host)
    }

    private static func bringUp(_ hostName: String, socket: borrowing RouteSocket) throws {
        let index = try netlink("find veth '\(hostName)'") { () throws(Errno) in try socket.index(of: hostName) }
        try netlink("bring up veth '\(hostName)'") { () throws(Errno) in try socket.setUp(index) }
    }

    private static func netlink<T: ~Copyable>(_ what: String, _ body: () throws(Errno) -> T) throws(NetworkError) -> T {
        do {
            return try body()
        } catch {
            throw NetworkError(.netlink, "cannot \(what)", cause: error)
        }
    }

    /// /etc/hosts for the container: loopback, its own name on its address, `--add-host`s.
    public static func hostsFile(hostname: String, name: String, endpoint: ContainerNetwork) -> String {
        var lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        let names = hostname == name ? hostname : "\(hostname) \(name)"
        lines.append("\(endpoint.address)\t\(names)")
        for entry in endpoint.addHosts ?? [] {
            let parts = entry.split(separator: ":", maxSplits: 1).map(String.init)
            if parts.count == 2 { lines.append("\(parts[1])\t\(parts[0])") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// /etc/resolv.conf: `--dns` servers, else the host's own that a container can reach
    /// (not loopback, which is the container's own there).
    public static func resolvConf(endpoint: ContainerNetwork, hostResolvConf: String) -> String {
        var servers = endpoint.dns ?? []
        var other: [String] = []
        for line in hostResolvConf.split(separator: "\n") {
            let words = line.split(whereSeparator: \.isWhitespace).map(String.init)
            guard let key = words.first else { continue }
            if key == "nameserver", words.count > 1 {
                if endpoint.dns == nil, !words[1].hasPrefix("127."), words[1] != "::1" { servers.append(words[1]) }
            } else if key == "search" || key == "options" {
                other.append(words.joined(separator: " "))
            }
        }
        return (servers.map { "nameserver \($0)" } + other).joined(separator: "\n") + "\n"
    }
}
