import Foundation

/// An IPv4 address, kept as a host-order number so that ranges are arithmetic.
public struct IPv4Address: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    public var value: UInt32

    public init(_ value: UInt32) {
        self.value = value
    }

    /// Dotted quad, "10.89.0.2"; nil for anything else (no shorthand forms, no leading
    /// zeros that some parsers take for octal).
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), part.allSatisfy(\.isNumber),
                part == "0" || !part.hasPrefix("0"), let octet = UInt32(part), octet <= 255
            else { return nil }
            value = value << 8 | octet
        }
        self.value = value
    }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }

    /// The address in network byte order, as sockaddr_in and netlink take it.
    public var networkOrder: UInt32 { value.bigEndian }

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.value < rhs.value }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let address = IPv4Address(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an IPv4 address: '\(text)'"))
        }
        self = address
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// An IPv4 network, "10.89.0.0/24", always stored with its host bits clear.
public struct IPv4Subnet: Sendable, Hashable, CustomStringConvertible, Codable {
    public let network: IPv4Address
    public let prefix: Int

    public init(network: IPv4Address, prefix: Int) {
        let prefix = min(max(prefix, 0), 32)
        self.prefix = prefix
        self.network = IPv4Address(network.value & Self.mask(prefix))
    }

    /// "ADDRESS/PREFIX". Host bits set ("10.89.0.7/24") are an error rather than silently
    /// cleared: the user may have meant an address, not a network.
    public static func parse(_ text: String, what: String = "subnet") throws(StoreError) -> IPv4Subnet {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, let address = IPv4Address(parts[0]), let prefix = Int(parts[1]), (8...30).contains(prefix),
            parts[1].allSatisfy(\.isNumber)
        else {
            throw StoreError(.invalidArgument, "invalid \(what) '\(text)': expected an IPv4 network such as 10.89.0.0/24 (prefix 8 to 30)")
        }
        let subnet = IPv4Subnet(network: address, prefix: prefix)
        guard subnet.network == address else {
            throw StoreError(.invalidArgument, "invalid \(what) '\(text)': host bits are set (the network is \(subnet))")
        }
        return subnet
    }

    static func mask(_ prefix: Int) -> UInt32 { prefix == 0 ? 0 : UInt32.max << (32 - prefix) }

    public var mask: UInt32 { Self.mask(prefix) }
    public var broadcast: IPv4Address { IPv4Address(network.value | ~mask) }
    /// The lowest and highest addresses a host may have (not the network or broadcast).
    public var firstHost: IPv4Address { IPv4Address(network.value + 1) }
    public var lastHost: IPv4Address { IPv4Address(broadcast.value - 1) }

    public func contains(_ address: IPv4Address) -> Bool { address.value & mask == network.value }

    /// Whether the two networks share any address.
    public func overlaps(_ other: IPv4Subnet) -> Bool { contains(other.network) || other.contains(network) }

    /// Whether `other` lies wholly inside this network.
    public func contains(_ other: IPv4Subnet) -> Bool { other.prefix >= prefix && contains(other.network) }

    public var description: String { "\(network)/\(prefix)" }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do {
            self = try Self.parse(text)
        } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "\(error)"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// An Ethernet address, "02:42:ac:11:00:02".
public struct MACAddress: Sendable, Hashable, CustomStringConvertible, Codable {
    public let bytes: [UInt8]

    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard part.count == 2, let byte = UInt8(part, radix: 16) else { return nil }
            bytes.append(byte)
        }
        self.bytes = bytes
    }

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// A random unicast, locally administered address (bit 1 of the first byte set, bit 0
    /// clear), as the kernel gives a veth: never one a vendor assigned.
    public static func random() -> MACAddress {
        var bytes = (0..<6).map { _ in UInt8.random(in: 0...255) }
        bytes[0] = (bytes[0] & 0xfe) | 0x02
        return MACAddress(bytes: bytes)
    }

    /// Multicast (bit 0 of the first byte) and all-zero addresses cannot be a host's.
    public var isUnicast: Bool { bytes[0] & 1 == 0 && bytes.contains { $0 != 0 } }

    public var description: String { bytes.map { String(format: "%02x", $0) }.joined(separator: ":") }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let address = MACAddress(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a MAC address: '\(text)'"))
        }
        self = address
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// `-p [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]`: a host port forwarded to the container.
public struct PortMapping: Sendable, Hashable, Codable, CustomStringConvertible {
    public enum Proto: String, Sendable, Codable { case tcp, udp }

    /// The host address the port is published on; nil: every address of the host.
    public var hostIP: IPv4Address?
    public var hostPort: UInt16
    public var containerPort: UInt16
    public var proto: Proto

    public init(hostIP: IPv4Address? = nil, hostPort: UInt16, containerPort: UInt16, proto: Proto = .tcp) {
        self.hostIP = hostIP
        self.hostPort = hostPort
        self.containerPort = containerPort
        self.proto = proto
    }

    public static func parse(_ spec: String) throws(StoreError) -> PortMapping {
        func fail(_ why: String) -> StoreError {
            StoreError(.invalidArgument, "invalid port mapping '\(spec)': \(why)")
        }
        var body = Substring(spec)
        var proto = Proto.tcp
        if let slash = body.lastIndex(of: "/") {
            guard let parsed = Proto(rawValue: String(body[body.index(after: slash)...])) else {
                throw fail("the protocol must be tcp or udp")
            }
            proto = parsed
            body = body[..<slash]
        }
        let parts = body.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        func port(_ text: String, _ which: String) throws(StoreError) -> UInt16 {
            guard !text.isEmpty, text.allSatisfy(\.isNumber), let value = UInt16(text), value > 0 else {
                throw fail("the \(which) port must be a number from 1 to 65535")
            }
            return value
        }
        switch parts.count {
        case 2:
            return PortMapping(hostPort: try port(parts[0], "host"), containerPort: try port(parts[1], "container"), proto: proto)
        case 3:
            var hostIP: IPv4Address?
            if !parts[0].isEmpty {
                guard let address = IPv4Address(parts[0]) else { throw fail("'\(parts[0])' is not an IPv4 address") }
                // 0.0.0.0 means every address, as with podman.
                hostIP = address.value == 0 ? nil : address
            }
            return PortMapping(
                hostIP: hostIP, hostPort: try port(parts[1], "host"), containerPort: try port(parts[2], "container"), proto: proto)
        default:
            throw fail("expected [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp], e.g. 8080:80")
        }
    }

    /// Whether the two take the same host port: same protocol and port, and the same or
    /// an overlapping host address (every address overlaps every one).
    public func conflicts(with other: PortMapping) -> Bool {
        proto == other.proto && hostPort == other.hostPort && (hostIP == nil || other.hostIP == nil || hostIP == other.hostIP)
    }

    /// As podman's PORTS column: "0.0.0.0:8080->80/tcp".
    public var description: String {
        "\(hostIP?.description ?? "0.0.0.0"):\(hostPort)->\(containerPort)/\(proto.rawValue)"
    }
}
