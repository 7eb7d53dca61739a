import CCRIUImages
import FerrySystem

#if canImport(Glibc)
    import Glibc
#endif

/// An established TCP connection that a `--tcp-established` dump locked.
///
/// To dump a connection CRIU puts its socket in repair mode (TCP_REPAIR: the kernel stops
/// sending and acknowledging on it) and adds two iptables rules that drop its packets
/// except those carrying CRIU's own mark, so the peer sees a silent link rather than a
/// reset. A dump that ends its tasks leaves both for the restore to undo. One that resumes
/// them undoes both itself, except in one path: a lazy dump whose page transfer fails
/// resumes the tasks (CRIU 4.1's cr_dump_finish only unlocks the network before it serves
/// the pages), leaving a running process with frozen connections. `release` undoes it
/// from what the images say.
public struct CRIULockedConnection: Hashable, Sendable {
    /// The socket's inode: what /proc/PID/fd/N of its holders reads as "socket:[INODE]".
    public var inode: UInt64
    /// Whether the addresses are IPv6 (ip6tables) or IPv4 (iptables).
    public var isIPv6: Bool
    public var localAddress: String
    public var localPort: UInt16
    public var remoteAddress: String
    public var remotePort: UInt16
    /// SO_REUSEADDR as dumped: leaving repair mode resets it, so it is set again.
    public var reuseAddress: Bool

    public init(
        inode: UInt64, isIPv6: Bool, localAddress: String, localPort: UInt16, remoteAddress: String, remotePort: UInt16,
        reuseAddress: Bool
    ) {
        self.inode = inode
        self.isIPv6 = isIPv6
        self.localAddress = localAddress
        self.localPort = localPort
        self.remoteAddress = remoteAddress
        self.remotePort = remotePort
        self.reuseAddress = reuseAddress
    }

    /// TCP_LISTEN and TCP_CLOSE in the kernel's socket states (include/net/tcp_states.h):
    /// the states of a TCP socket with no connection to lock.
    static let unconnectedStates: Set<UInt32> = [10, 7]

    /// The connected TCP sockets in `files.img` (the file objects of a dump, criu/files.c).
    public static func locked(inFilesImage bytes: [UInt8]) throws(CRIUImageError) -> [CRIULockedConnection] {
        let image = try CRIUImageFile(name: "files.img", bytes: bytes)
        let found = try image.decodeAll(as: "file_entry", file_entry__unpack, file_entry__free_unpacked) { entry -> CRIULockedConnection? in
            guard entry.type == FD_TYPES__INETSK, let socket = entry.isk?.pointee, Int32(socket.proto) == Int32(IPPROTO_TCP),
                !unconnectedStates.contains(socket.state), socket.dst_port != 0,
                let localPort = UInt16(exactly: socket.src_port), let remotePort = UInt16(exactly: socket.dst_port),
                let local = address(socket.src_addr, count: socket.n_src_addr, family: socket.family),
                let remote = address(socket.dst_addr, count: socket.n_dst_addr, family: socket.family)
            else { return nil }
            // An IPv6 socket talking to an IPv4 peer (::ffff:a.b.c.d) is locked with
            // iptables, as CRIU does.
            let isIPv6 = local.isIPv6 || remote.isIPv6
            return CRIULockedConnection(
                inode: UInt64(socket.ino), isIPv6: isIPv6, localAddress: local.text, localPort: localPort, remoteAddress: remote.text,
                remotePort: remotePort, reuseAddress: socket.opts?.pointee.reuseaddr != 0)
        }
        return Array(Set(found.compactMap { $0 })).sorted { $0.inode < $1.inode }
    }

    /// An address as CRIU stores it (the in_addr or in6_addr bytes as 32-bit words), in
    /// text; a v4-mapped IPv6 address as its IPv4 form.
    static func address(_ words: UnsafeMutablePointer<UInt32>?, count: Int, family: UInt32) -> (text: String, isIPv6: Bool)? {
        guard let words, count == 1 || count == 4 else { return nil }
        var bytes: [UInt8] = []
        for index in 0..<count { withUnsafeBytes(of: words[index]) { bytes.append(contentsOf: $0) } }
        if count == 4, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
            bytes = Array(bytes[12...])
        }
        guard Int32(family) == AF_INET || Int32(family) == AF_INET6 else { return nil }
        if bytes.count == 4 { return (bytes.map(String.init).joined(separator: "."), false) }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, bytes, &text, socklen_t(text.count)) != nil else { return nil }
        return (String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), true)
    }

    /// The mark CRIU's own packets carry (libsoccr's SOCCR_MARK), which its rules let by.
    static let criuMark = "0xC114"

    /// The rule specifications CRIU adds for this connection (criu/netfilter.c), in its
    /// argument order so that `-D` matches them: incoming packets from the peer and
    /// outgoing ones to it.
    public var ruleSpecifications: [(chain: String, arguments: [String])] {
        func rule(from source: String, _ sourcePort: UInt16, to destination: String, _ destinationPort: UInt16) -> [String] {
            [
                "--protocol", "tcp", "-m", "mark", "!", "--mark", Self.criuMark, "--source", source, "--sport", "\(sourcePort)",
                "--destination", destination, "--dport", "\(destinationPort)", "-j", "DROP",
            ]
        }
        return [
            ("INPUT", rule(from: remoteAddress, remotePort, to: localAddress, localPort)),
            ("OUTPUT", rule(from: localAddress, localPort, to: remoteAddress, remotePort)),
        ]
    }
}

/// Undoes CRIU's lock of dumped connections in the caller's network namespace.
public enum CRIUConnectionLock {
    /// TCP_REPAIR from <linux/tcp.h>, and TCP_REPAIR_OFF (leave repair mode, sending a
    /// window probe so the peer learns the window again).
    static let tcpRepair: Int32 = 19
    static let repairOff: Int32 = 0

    /// Deletes CRIU's drop rules for `connections`; a rule already gone is no problem.
    /// Returns what could not be done, one line each.
    /// `namespaceOf`: a process whose network namespace holds the rules (nil: the
    /// caller's).
    public static func removeRules(_ connections: [CRIULockedConnection], namespaceOf pid: Int32? = nil) -> [String] {
        var problems: [String] = []
        let enter = pid.map { ["nsenter", "--net=/proc/\($0)/ns/net"] } ?? []
        for connection in connections {
            let tool = connection.isIPv6 ? "ip6tables" : "iptables"
            for rule in connection.ruleSpecifications {
                // -w 5: wait for the xtables lock (CRIU or a firewall may hold it), bounded.
                do {
                    let result = try Processes.runTool(enter + [tool, "-w", "5", "-t", "filter", "-D", rule.chain] + rule.arguments)
                    // iptables says "Bad rule (does a matching rule exist in that chain?)"
                    // when there is none: the state wanted.
                    if result.status != 0, !result.output.contains("does a matching rule exist") {
                        problems.append("\(tool) -D \(rule.chain) for \(connection.localPort)->\(connection.remotePort): \(result.output.trimmed)")
                    }
                } catch {
                    problems.append("\(tool) -D \(rule.chain) for \(connection.localPort)->\(connection.remotePort): \(error)")
                }
            }
        }
        return problems
    }

    /// Takes the sockets of `connections` held by `processes` out of repair mode, with
    /// SO_REUSEADDR as dumped, and deletes their rules: in the caller's network
    /// namespace, where CRIU puts them for a host-network container, and in the
    /// processes' own if they have one. Returns what could not be done.
    public static func release(_ connections: [CRIULockedConnection], heldBy processes: [Int32]) -> [String] {
        var problems = removeRules(connections)
        if let first = processes.first, let own = try? Processes.link("/proc/\(first)/ns/net"),
            own != (try? Processes.link("/proc/self/ns/net"))
        {
            problems += removeRules(connections, namespaceOf: first)
        }
        var pending = Dictionary(connections.map { ($0.inode, $0) }, uniquingKeysWith: { first, _ in first })
        for pid in processes where !pending.isEmpty {
            for socket in Processes.sockets(of: pid) {
                guard let connection = pending[socket.inode] else { continue }
                do {
                    let fd = try Processes.duplicateDescriptor(socket.fd, of: pid)
                    try fd.setSocketOption(level: Int32(IPPROTO_TCP), name: tcpRepair, value: repairOff)
                    if connection.reuseAddress { try fd.setSocketOption(level: SOL_SOCKET, name: SO_REUSEADDR, value: 1) }
                    pending[socket.inode] = nil
                } catch {
                    problems.append("socket \(socket.inode) (fd \(socket.fd) of pid \(pid)): \(error)")
                }
            }
        }
        for connection in pending.values.sorted(by: { $0.inode < $1.inode }) {
            problems.append("no process holds the socket of \(connection.localPort)->\(connection.remotePort) (inode \(connection.inode))")
        }
        return problems
    }
}

extension String {
    fileprivate var trimmed: String {
        split(whereSeparator: \.isNewline).map { $0.trimmingPrefix(while: \.isWhitespace) }.joined(separator: "; ")
    }
}
