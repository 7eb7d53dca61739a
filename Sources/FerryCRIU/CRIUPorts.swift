import CCRIUImages
import FerrySystem

#if canImport(Glibc)
    import Glibc
#endif

/// A port a dumped process holds: a TCP socket listening on it, or a UDP socket bound
/// to it. In the host's network namespace two such sockets cannot coexist, so a restore
/// there needs the port free.
public struct CRIUBoundPort: Hashable, Sendable, Comparable, CustomStringConvertible {
    public enum Transport: String, Sendable, Comparable {
        case tcp, udp
        public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    }

    public var transport: Transport
    public var port: UInt16

    public init(_ transport: Transport, _ port: UInt16) {
        self.transport = transport
        self.port = port
    }

    public var description: String { "\(transport.rawValue.uppercased()) port \(port)" }

    public static func < (a: Self, b: Self) -> Bool { (a.transport, a.port) < (b.transport, b.port) }

    /// TCP_LISTEN in the kernel's socket states (include/net/tcp_states.h).
    static let listenState: UInt32 = 10

    /// The ports held in `files.img` (the file objects of a dump, criu/files.c): TCP
    /// sockets in LISTEN, UDP sockets bound to a port. Sorted, without repeats.
    public static func held(inFilesImage bytes: [UInt8]) throws(CRIUImageError) -> [CRIUBoundPort] {
        let image = try CRIUImageFile(name: "files.img", bytes: bytes)
        let ports = try image.decodeAll(as: "file_entry", file_entry__unpack, file_entry__free_unpacked) { entry -> CRIUBoundPort? in
            guard entry.type == FD_TYPES__INETSK, let socket = entry.isk?.pointee, socket.src_port != 0, socket.src_port <= UInt32(UInt16.max)
            else { return nil }
            switch Int32(socket.proto) {
            case Int32(IPPROTO_TCP) where socket.state == listenState: return CRIUBoundPort(.tcp, UInt16(socket.src_port))
            case Int32(IPPROTO_UDP): return CRIUBoundPort(.udp, UInt16(socket.src_port))
            default: return nil
            }
        }
        return Array(Set(ports.compactMap { $0 })).sorted()
    }

    /// The ports held on this host: TCP sockets in LISTEN and bound UDP sockets, from
    /// /proc/net/{tcp,tcp6,udp,udp6} (of the caller's network namespace).
    public static func heldOnHost(procNet: String = "/proc/net") -> Set<CRIUBoundPort> {
        var held: Set<CRIUBoundPort> = []
        for (file, transport) in [("tcp", Transport.tcp), ("tcp6", .tcp), ("udp", .udp), ("udp6", .udp)] {
            guard let text = try? Files.readString("\(procNet)/\(file)") else { continue }
            held.formUnion(parseProcNet(text, transport: transport))
        }
        return held
    }

    /// One /proc/net/{tcp,udp}[6] table: "sl local_address rem_address st ...", with
    /// addresses as HEX_IP:HEX_PORT and the state in hex (0A = LISTEN).
    static func parseProcNet(_ text: String, transport: Transport) -> Set<CRIUBoundPort> {
        var held: Set<CRIUBoundPort> = []
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count > 3, let colon = fields[1].lastIndex(of: ":"),
                let port = UInt16(fields[1][fields[1].index(after: colon)...], radix: 16), port != 0,
                let state = UInt32(fields[3], radix: 16)
            else { continue }
            if transport == .udp || state == listenState { held.insert(CRIUBoundPort(transport, port)) }
        }
        return held
    }
}
