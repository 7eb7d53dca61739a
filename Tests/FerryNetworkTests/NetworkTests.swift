import Foundation
import Testing

@testable import FerryNetwork
@testable import FerryStore

/// Parsing of -p and subnets, address allocation, and the nftables table Ferry writes.
@Suite struct NetworkParsingTests {
    @Test func portMappings() throws {
        #expect(try PortMapping.parse("8080:80") == PortMapping(hostPort: 8080, containerPort: 80))
        #expect(try PortMapping.parse("127.0.0.1:53:5353/udp") == PortMapping(hostIP: IPv4Address("127.0.0.1"), hostPort: 53, containerPort: 5353, proto: .udp))
        #expect(try PortMapping.parse("0.0.0.0:1:2/tcp") == PortMapping(hostPort: 1, containerPort: 2))
        #expect(try PortMapping.parse(":9000:90").hostIP == nil)
        for bad in ["80", "0:80", "8080:70000", "a:80", "8080:80/sctp", "1.2.3:80:80", "1:2:3:4", "8080:", "-1:80"] {
            #expect(throws: StoreError.self, "\(bad) parsed") { try PortMapping.parse(bad) }
        }
        #expect(try PortMapping.parse("8080:80").description == "0.0.0.0:8080->80/tcp")
    }

    @Test func portConflicts() throws {
        let any = try PortMapping.parse("8080:80")
        #expect(any.conflicts(with: try PortMapping.parse("127.0.0.1:8080:81")))
        #expect(!any.conflicts(with: try PortMapping.parse("8080:80/udp")))
        #expect(!(try PortMapping.parse("127.0.0.1:8080:80")).conflicts(with: try PortMapping.parse("127.0.0.2:8080:80")))
    }

    @Test func subnetsAndAddresses() throws {
        let subnet = try IPv4Subnet.parse("10.89.3.0/24")
        #expect(subnet.firstHost.description == "10.89.3.1" && subnet.lastHost.description == "10.89.3.254")
        #expect(subnet.contains(try #require(IPv4Address("10.89.3.200"))))
        #expect(!subnet.contains(try #require(IPv4Address("10.89.4.1"))))
        #expect(subnet.overlaps(try IPv4Subnet.parse("10.89.0.0/16")))
        #expect(!subnet.overlaps(try IPv4Subnet.parse("10.89.4.0/24")))
        for bad in ["10.89.3.7/24", "10.89.3.0", "10.89.3.0/33", "10.89.3.0/4", "10.089.3.0/24", "256.0.0.0/8", "10.89.3.0/x"] {
            #expect(throws: StoreError.self, "\(bad) parsed") { try IPv4Subnet.parse(bad) }
        }
        #expect(IPv4Address("1.2.3") == nil && IPv4Address("1.2.3.4.5") == nil && IPv4Address(" 1.2.3.4") == nil)
        #expect(MACAddress("02:42:AC:11:00:02")?.description == "02:42:ac:11:00:02")
        #expect(MACAddress("02:42:ac:11:00") == nil && MACAddress("01:00:5e:00:00:01")?.isUnicast == false)
        for _ in 0..<50 { #expect(MACAddress.random().isUnicast && MACAddress.random().bytes[0] & 2 == 2) }
    }
}

@Suite struct AllocationTests {
    func network(range: String? = nil) throws -> NetworkRecord {
        NetworkRecord(
            name: "web", id: "x", interface: "ferry1", subnet: try IPv4Subnet.parse("10.89.5.0/29"),
            gateway: try #require(IPv4Address("10.89.5.1")), ipRange: try range.map { text throws in try IPv4Subnet.parse(text) },
            created: Date(), isDefault: false)
    }

    func endpoint(_ address: String, ports: [PortMapping] = [], network: String = "web") throws -> ContainerNetwork {
        ContainerNetwork(network: network, address: try #require(IPv4Address(address)), mac: MACAddress.random(), ports: ports)
    }

    @Test func allocatesTheLowestFreeAddressAndNeverTwice() throws {
        let web = try network()
        var others: [ContainerNetwork] = []
        var given: [String] = []
        // A /29 has .1 to .6 for hosts; .1 is the gateway.
        for _ in 0..<5 {
            let allocated = try NetworkStore.allocate(NetworkRequest(network: "web"), on: web, others: others, container: "c")
            given.append(allocated.address.description)
            others.append(allocated)
        }
        #expect(given == ["10.89.5.2", "10.89.5.3", "10.89.5.4", "10.89.5.5", "10.89.5.6"])
        #expect(throws: StoreError.self) { try NetworkStore.allocate(NetworkRequest(network: "web"), on: web, others: others, container: "c") }
        // A removed container's address is free again: the records are the allocation.
        others.remove(at: 1)
        #expect(try NetworkStore.allocate(NetworkRequest(network: "web"), on: web, others: others, container: "c").address.description == "10.89.5.3")
        // Addresses on another network do not count.
        let elsewhere = [try endpoint("10.89.5.2", network: "other")]
        #expect(try NetworkStore.allocate(NetworkRequest(network: "web"), on: web, others: elsewhere, container: "c").address.description == "10.89.5.2")
    }

    @Test func honoursTheRange() throws {
        let web = try network(range: "10.89.5.4/30")
        #expect(try NetworkStore.allocate(NetworkRequest(network: "web"), on: web, others: [], container: "c").address.description == "10.89.5.4")
    }

    @Test func refusesBadRequests() throws {
        let web = try network()
        let others = [try endpoint("10.89.5.2", ports: [try PortMapping.parse("8080:80")])]
        func refused(_ request: NetworkRequest, _ words: String) {
            do {
                _ = try NetworkStore.allocate(request, on: web, others: others, container: "c")
                Issue.record("allocated \(request)")
            } catch {
                #expect(error.description.contains(words), "\(error.description)")
            }
        }
        refused(NetworkRequest(network: "web", address: IPv4Address("10.89.6.2")), "outside network")
        refused(NetworkRequest(network: "web", address: IPv4Address("10.89.5.1")), "reserved")
        refused(NetworkRequest(network: "web", address: IPv4Address("10.89.5.7")), "reserved")
        refused(NetworkRequest(network: "web", address: IPv4Address("10.89.5.2")), "already in use")
        refused(NetworkRequest(network: "web", mac: MACAddress("01:00:00:00:00:01")), "not a unicast")
        refused(NetworkRequest(network: "web", mac: others[0].mac), "already in use")
        refused(NetworkRequest(network: "web", ports: [try PortMapping.parse("127.0.0.1:8080:90")]), "already published")
        refused(NetworkRequest(network: "web", ports: [try PortMapping.parse("9000:90"), try PortMapping.parse("9000:91")]), "already published")
        let fine = try NetworkStore.allocate(
            NetworkRequest(network: "web", address: IPv4Address("10.89.5.6"), ports: [try PortMapping.parse("8080:80/udp")]), on: web, others: others,
            container: "c")
        #expect(fine.address.description == "10.89.5.6" && fine.ports.count == 1)
    }
}

@Suite struct RulesTests {
    @Test func theTableHoldsPortsAndMasquerade() throws {
        let web = NetworkRecord(
            name: "web", id: "x", interface: "ferry1", subnet: try IPv4Subnet.parse("10.89.5.0/24"),
            gateway: try #require(IPv4Address("10.89.5.1")), ipRange: nil, created: Date(), isDefault: false)
        let unused = NetworkRecord(
            name: "idle", id: "y", interface: "ferry2", subnet: try IPv4Subnet.parse("10.89.6.0/24"),
            gateway: try #require(IPv4Address("10.89.6.1")), ipRange: nil, created: Date(), isDefault: false)
        let endpoint = ContainerNetwork(
            network: "web", address: try #require(IPv4Address("10.89.5.2")), mac: MACAddress.random(),
            ports: [try PortMapping.parse("8080:80"), try PortMapping.parse("127.0.0.1:5353:53/udp")])
        let rules = try #require(HostNetwork.rules(table: "ferry_t", networks: [web, unused], endpoints: [endpoint]))
        #expect(rules.hasPrefix("table ip ferry_t {"))
        #expect(rules.components(separatedBy: "fib daddr type local tcp dport 8080 dnat to 10.89.5.2:80").count == 3)  // prerouting and output
        #expect(rules.contains("ip daddr 127.0.0.1 udp dport 5353 dnat to 10.89.5.2:53"))
        #expect(rules.contains("ip saddr 10.89.5.0/24 ip daddr != 10.89.5.0/24 masquerade"))
        #expect(rules.contains("oifname \"ferry1\" ip saddr 127.0.0.0/8 masquerade"))
        #expect(!rules.contains("ferry2") && !rules.contains("10.89.6.0"))
        #expect(HostNetwork.rules(table: "ferry_t", networks: [web], endpoints: []) == nil)
    }

    @Test func hostsAndResolvConf() throws {
        let endpoint = ContainerNetwork(
            network: "web", address: try #require(IPv4Address("10.89.5.2")), mac: MACAddress.random(), ports: [], addHosts: ["db:10.0.0.9"])
        let hosts = HostNetwork.hostsFile(hostname: "box", name: "web1", endpoint: endpoint)
        #expect(hosts.contains("10.89.5.2\tbox web1\n") && hosts.contains("10.0.0.9\tdb\n") && hosts.hasPrefix("127.0.0.1\tlocalhost"))
        let host = "nameserver 127.0.0.53\nnameserver 192.168.1.1\nsearch lan\n"
        #expect(HostNetwork.resolvConf(endpoint: endpoint, hostResolvConf: host) == "nameserver 192.168.1.1\nsearch lan\n")
        var withDNS = endpoint
        withDNS.dns = ["9.9.9.9"]
        #expect(HostNetwork.resolvConf(endpoint: withDNS, hostResolvConf: host) == "nameserver 9.9.9.9\nsearch lan\n")
    }
}
