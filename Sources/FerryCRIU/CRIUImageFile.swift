import CCRIUImages
import FerrySystem
import SystemPackage

// Reading CRIU's image files (criu/image.c, criu/protobuf.c, criu/include/magic.h).
//
// Everything here works from bytes, not paths: `ferry archive inspect` reads the images
// straight out of an export archive's stream, where there is no directory to open.

/// A CRIU image that could not be read, naming the image file.
public struct CRIUImageError: CodedError, Equatable {
    /// What was wrong.
    public enum Code: Equatable, Sendable {
        /// The name does not follow any image naming scheme Ferry reads ("core-<pid>.img",
        /// "stats-dump"...), so it is unknown which magic to expect.
        case unknownImage
        /// The file does not start with the expected magic numbers. `expected` and `found`
        /// are the first 8 bytes as two little-endian u32 (head magic, type magic); for
        /// inventory, which has no head magic, only the first value is meaningful.
        case badMagic(expected: [UInt32], found: [UInt32])
        /// The file ends inside its magic, an entry's length, or an entry's payload
        /// (which starts at `offset`).
        case truncated(offset: Int)
        /// protobuf-c rejected entry number `entry` (0-based) as a `message`.
        case unpackFailed(message: String, entry: Int)
        /// The image parsed, but does not hold what CRIU always writes there (e.g. a
        /// pagemap without its head, stats without their section, no entry at all).
        case malformed
        /// An image another image refers to is absent (e.g. `core-<pid>.img` for a pid
        /// listed in pstree.img).
        case missing
        /// The image could not be read from disk.
        case readFailed(Errno)
    }

    /// What was wrong.
    public let code: Code
    /// The image's file name, as CRIU names it ("pstree.img", "stats-dump").
    public let file: String
    /// One line for people: names the file and says what is wrong.
    public let message: String

    public init(_ code: Code, file: String, _ detail: String) {
        self.code = code
        self.file = file
        self.message = "cannot read CRIU image '\(file)': \(detail)"
    }
}

/// The kinds of CRIU image Ferry understands, with the magic numbers that start them.
public enum CRIUImageKind: String, Codable, CaseIterable, Sendable {
    /// `inventory.img`: image version, plugins. The one image without a head magic.
    case inventory
    /// `pstree.img`: one entry per process (pid, ppid, pgid, sid, threads).
    case pstree
    /// `core-<tid>.img`: registers and task state, one image per thread.
    case core
    /// `ids-<pid>.img`: the ids of the kernel objects a task uses (fd table, mm, namespaces).
    case ids
    /// `mm-<pid>.img`: the address space layout (VMAs).
    case mm
    /// `pagemap-<pid>.img`: which pages of the address space were dumped, and where.
    case pagemap
    /// `pagemap-shmem-<id>.img`: the same for a shared anonymous memory segment.
    case shmemPagemap
    /// `fdinfo-<files id>.img`: the descriptors of one fd table.
    case fdinfo
    /// `files.img`: what those descriptors point at.
    case files
    /// `stats-dump` / `stats-restore`: a "service" file, see `Header.service`.
    case stats
    /// `irmap-cache`: another service file, the inotify path cache.
    case irmapCache

    /// What precedes the entries of an image.
    public enum Header: Sendable {
        /// Only the type magic (inventory: CRIU reads it first to learn the image
        /// version, so it cannot depend on the version's common magic).
        case typeMagicOnly
        /// IMG_COMMON_MAGIC, then the type magic: every ordinary image.
        case common
        /// IMG_SERVICE_MAGIC, then the type magic: files CRIU opens with O_SERVICE
        /// (stats, irmap cache), which are not part of the checkpoint proper.
        case service
    }

    /// IMG_COMMON_MAGIC ("Sarov"), the first u32 of every ordinary image.
    public static let commonMagic: UInt32 = 0x5456_4319
    /// IMG_SERVICE_MAGIC ("Zlatoust"), the first u32 of stats and irmap-cache.
    public static let serviceMagic: UInt32 = 0x5510_5940

    /// The type magic from criu/include/magic.h.
    public var magic: UInt32 {
        switch self {
        case .inventory: 0x5831_3116
        case .pstree: 0x5027_3030
        case .core: 0x5505_3847
        case .ids: 0x5443_2030
        case .mm: 0x5749_2820
        case .pagemap, .shmemPagemap: 0x5608_4025
        case .fdinfo: 0x5621_3732
        case .files: 0x5630_3138
        case .stats: 0x5709_3306
        case .irmapCache: 0x5700_4059
        }
    }

    /// What precedes the entries.
    public var header: Header {
        switch self {
        case .inventory: .typeMagicOnly
        case .stats, .irmapCache: .service
        default: .common
        }
    }

    /// The kind of the image called `name`, from CRIU's name templates
    /// (criu/image-desc.c); nil for images Ferry does not read, including the raw
    /// `pages-<id>.img`, which have no magic and no entries.
    public init?(fileName name: String) {
        switch name {
        case "inventory.img": self = .inventory
        case "pstree.img": self = .pstree
        case "files.img": self = .files
        case "stats-dump", "stats-restore": self = .stats
        case "irmap-cache": self = .irmapCache
        default:
            // "pagemap-shmem-" must be tried before "pagemap-".
            let templates: [(String, CRIUImageKind)] = [
                ("core-", .core), ("ids-", .ids), ("mm-", .mm),
                ("pagemap-shmem-", .shmemPagemap), ("pagemap-", .pagemap), ("fdinfo-", .fdinfo),
            ]
            for (prefix, kind) in templates where CRIUImageKind.number(in: name, prefix: prefix) != nil {
                self = kind
                return
            }
            return nil
        }
    }

    /// The number in "<prefix><number>.img", or nil when `name` is not of that form.
    static func number(in name: String, prefix: String) -> UInt64? {
        guard name.hasPrefix(prefix), name.hasSuffix(".img") else { return nil }
        let digits = name.dropFirst(prefix.count).dropLast(4)
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt64(digits)
    }
}

/// One CRIU image file split into its entries.
///
/// A protobuf image is its magic(s) followed by entries, each a little-endian u32 length
/// and that many bytes of one protobuf message (criu/protobuf.c). The parser checks the
/// magic and the framing; decoding the messages is up to the caller (`decode`).
public struct CRIUImageFile: Sendable {
    /// The file name, used in errors.
    public let name: String
    /// The kind, which decides the magic and the message type of the entries.
    public let kind: CRIUImageKind
    /// The payload of each entry, in file order (slices of the bytes given to `init`).
    public let entries: [ArraySlice<UInt8>]

    /// Parses `bytes` as the image `name`, whose kind follows from the name.
    public init(name: String, bytes: [UInt8]) throws(CRIUImageError) {
        guard let kind = CRIUImageKind(fileName: name) else {
            throw CRIUImageError(.unknownImage, file: name, "not an image name Ferry knows")
        }
        try self.init(name: name, bytes: bytes, kind: kind)
    }

    /// Parses `bytes` as an image of `kind`; `name` only labels errors.
    public init(name: String, bytes: [UInt8], kind: CRIUImageKind) throws(CRIUImageError) {
        self.name = name
        self.kind = kind
        var offset = 0
        let expected: [UInt32]
        switch kind.header {
        case .typeMagicOnly: expected = [kind.magic]
        case .common: expected = [CRIUImageKind.commonMagic, kind.magic]
        case .service: expected = [CRIUImageKind.serviceMagic, kind.magic]
        }
        var found: [UInt32] = []
        for _ in expected {
            guard let value = Self.u32(bytes, at: offset) else { break }
            found.append(value)
            offset += 4
        }
        if found != expected {
            // A short file that matches so far is truncated; anything else is not this image.
            if found == Array(expected.prefix(found.count)) {
                throw CRIUImageError(.truncated(offset: offset), file: name, "file ends inside its magic (\(bytes.count) bytes)")
            }
            throw CRIUImageError(
                .badMagic(expected: expected, found: found), file: name,
                "bad magic \(Self.hex(found)), expected \(Self.hex(expected)) for a \(kind.rawValue) image"
            )
        }

        var entries: [ArraySlice<UInt8>] = []
        while offset < bytes.count {
            guard let length = Self.u32(bytes, at: offset) else {
                throw CRIUImageError(
                    .truncated(offset: offset), file: name,
                    "entry \(entries.count) is truncated: \(bytes.count - offset) bytes where its 4-byte length should be"
                )
            }
            let start = offset + 4
            // Compare against what is left rather than computing start + length, which
            // a hostile length could overflow on 32-bit platforms.
            guard Int(length) <= bytes.count - start else {
                throw CRIUImageError(
                    .truncated(offset: start), file: name,
                    "entry \(entries.count) is truncated: length \(length) but only \(bytes.count - start) bytes left"
                )
            }
            entries.append(bytes[start..<(start + Int(length))])
            offset = start + Int(length)
        }
        self.entries = entries
    }

    /// The little-endian u32 at `offset`, or nil if the bytes end first.
    private static func u32(_ bytes: [UInt8], at offset: Int) -> UInt32? {
        guard offset >= 0, bytes.count - offset >= 4 else { return nil }
        return UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8
            | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
    }

    private static func hex(_ values: [UInt32]) -> String {
        values.isEmpty ? "(none)" : values.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
    }
}

// MARK: - protobuf-c decoding

/// A generated `<message>__unpack`: allocator (nil for malloc), length, bytes.
typealias ProtobufUnpack<Message> = (UnsafeMutablePointer<ProtobufCAllocator>?, Int, UnsafePointer<UInt8>?) -> UnsafeMutablePointer<Message>?
/// The matching `<message>__free_unpacked`.
typealias ProtobufFree<Message> = (UnsafeMutablePointer<Message>?, UnsafeMutablePointer<ProtobufCAllocator>?) -> Void

extension CRIUImageFile {
    /// Unpacks entry `index` with protobuf-c and converts it with `convert` while the
    /// C message is alive; the message is freed before returning. `message` is the
    /// protobuf name ("pstree_entry"), for errors.
    func decode<Message, Value>(
        entry index: Int,
        as message: String,
        _ unpack: ProtobufUnpack<Message>,
        _ free: ProtobufFree<Message>,
        _ convert: (Message) throws(CRIUImageError) -> Value
    ) throws(CRIUImageError) -> Value {
        guard entries.indices.contains(index) else {
            throw CRIUImageError(.malformed, file: name, "expected a \(message) as entry \(index), but the image has \(entries.count) entries")
        }
        let payload = entries[index]
        let unpacked: UnsafeMutablePointer<Message>? = payload.withUnsafeBufferPointer { buffer in
            // protobuf-c reads nothing for a zero length, but still wants a pointer.
            guard let base = buffer.baseAddress else {
                var none: UInt8 = 0
                return unpack(nil, 0, &none)
            }
            return unpack(nil, buffer.count, base)
        }
        guard let unpacked else {
            throw CRIUImageError(
                .unpackFailed(message: message, entry: index), file: name,
                "entry \(index) (\(payload.count) bytes) is not a valid \(message)"
            )
        }
        defer { free(unpacked, nil) }
        return try convert(unpacked.pointee)
    }

    /// Decodes every entry from `first` on as `message`.
    func decodeAll<Message, Value>(
        from first: Int = 0,
        as message: String,
        _ unpack: ProtobufUnpack<Message>,
        _ free: ProtobufFree<Message>,
        _ convert: (Message) throws(CRIUImageError) -> Value
    ) throws(CRIUImageError) -> [Value] {
        var values: [Value] = []
        var index = first
        while index < entries.count {
            values.append(try decode(entry: index, as: message, unpack, free, convert))
            index += 1
        }
        return values
    }
}

/// A C string from a protobuf-c message as a Swift string; nil when the field is unset.
/// Invalid UTF-8 (comm is whatever the process wrote with PR_SET_NAME) is repaired.
func swiftString(_ pointer: UnsafeMutablePointer<CChar>?) -> String? {
    pointer.map { String(cString: $0) }
}

/// A protobuf-c repeated field (count + pointer) as an array.
func swiftArray<Element>(_ pointer: UnsafeMutablePointer<Element>?, count: Int) -> [Element] {
    guard let pointer, count > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: pointer, count: count))
}
