import CCRIUImages
import FerrySystem

/// CRIU's page-server protocol, as the lazy-pages daemon and a lazy dump's page server
/// speak it (criu/page-xfer.c): fixed 24-byte requests and response headers, in the
/// host's byte order (both ends run on the same host here: each is on 127.0.0.1, with
/// Ferry's relay between hosts).
public struct PageServerIOV: Equatable, Sendable {
    public var command: UInt32
    public var pages: UInt32
    public var address: UInt64
    /// The process's id in the images (its pid there).
    public var id: UInt64

    public static let size = 24

    /// Ask for pages (daemon to server).
    public static let get: UInt32 = 7
    /// Pages follow (server to daemon), with PE_PRESENT in the flag bits.
    public static let addWithFlags: UInt32 = 6
    /// The transfer is over; the server answers with a 32-bit status.
    public static let close: UInt32 = 0x1023
    public static let forceClose: UInt32 = 0x1024
    static let commandBits: UInt32 = 16
    static let presentFlag: UInt32 = 1 << 2

    public init(command: UInt32, pages: UInt32, address: UInt64, id: UInt64) {
        self.command = command
        self.pages = pages
        self.address = address
        self.id = id
    }

    /// The command without its flag bits.
    public var baseCommand: UInt32 { command & ((1 << Self.commandBits) - 1) }

    /// The header CRIU's page server puts before the pages it sends.
    public static func pagesFollow(pages: UInt32, address: UInt64, id: UInt64) -> PageServerIOV {
        PageServerIOV(command: presentFlag << commandBits | addWithFlags, pages: pages, address: address, id: id)
    }

    public init(bytes: UnsafeRawBufferPointer) {
        command = bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
        pages = bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
        address = bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        id = bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: command, toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: pages, toByteOffset: 4, as: UInt32.self)
            raw.storeBytes(of: address, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: id, toByteOffset: 16, as: UInt64.self)
        }
        return out
    }
}

/// A run of pages a lazy dump left behind: in no image, served by the page server.
public struct CRIULazyRange: Equatable, Sendable {
    /// The process's id in the images (pagemap-<id>.img).
    public var id: UInt64
    public var address: UInt64
    public var pages: UInt64

    public init(id: UInt64, address: UInt64, pages: UInt64) {
        self.id = id
        self.address = address
        self.pages = pages
    }
}

extension CRIUImageSet {
    /// The lazy runs of every process in a dump's images, in the order of the pagemaps
    /// (ascending ids, ascending addresses): what a lazy restore fetches. Only runs marked
    /// lazy and not present: CRIU also marks present pages lazy-capable, and asking its
    /// page server for those fails the transfer.
    public static func lazyRanges(directory: String) throws -> [CRIULazyRange] {
        var result: [CRIULazyRange] = []
        var byID: [(UInt64, String)] = []
        for name in try Files.listDirectory(directory) where !name.hasPrefix("pagemap-shmem-") {
            if let id = CRIUImageKind.number(in: name, prefix: "pagemap-") { byID.append((id, name)) }
        }
        for (id, name) in byID.sorted(by: { $0.0 < $1.0 }) {
            let image = try CRIUImageFile(name: name, bytes: try Files.read("\(directory)/\(name)"))
            for entry in try pagemapEntries(image) {
                let flags = entry.has_flags != 0 ? entry.flags : 0
                if flags & CRIUPageCounts.lazyFlag != 0, flags & CRIUPageCounts.presentFlag == 0, entry.nr_pages > 0 {
                    result.append(CRIULazyRange(id: id, address: entry.vaddr, pages: UInt64(entry.nr_pages)))
                }
            }
        }
        return result
    }
}
