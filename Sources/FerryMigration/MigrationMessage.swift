import Foundation

/// Every message of the migration protocol. Each case has a stable numeric type code
/// (`Kind`), written in the frame header; the table is in docs/migration-protocol.md.
///
/// Control messages with structure travel as JSON (Codable); handshake and transfer
/// messages, which are either tiny or bulk, are compact binary.
public enum MigrationMessage: Sendable, Equatable {
    // Handshake. Sent by `MigrationChannel.handshake(role:token:)` only.

    /// The first frame each side sends: its protocol version, its role and a fresh nonce.
    case hello(version: UInt16, role: MigrationRole, nonce: [UInt8])
    /// HMAC-SHA256(token, "ferry-migrate-v1" || role || own nonce || peer nonce).
    case proof(hmac: [UInt8])
    /// The handshake failed on the sender's side; the connection closes after it.
    case refused(reason: String)

    // Preflight.

    /// Source to destination: can this container run there?
    case preflightRequest(PreflightRequest)
    /// Destination to source: the answer.
    case preflightResponse(PreflightResponse)

    // Transfer: `member`, any number of `data`, `memberEnd`.

    /// A file starts. `size` is its length, or -1 when not known in advance (a pipe).
    case member(name: String, size: Int64)
    /// The next bytes of the current member.
    case data([UInt8])
    /// The current member ends: its total length and the SHA-256 of its bytes.
    case memberEnd(size: Int64, sha256: [UInt8])

    // Control.

    /// Destination: the container is restored and still frozen.
    case restored(RestoredInfo)
    /// Source: its copy of the container is gone for good; the destination may run it.
    case commit
    /// Destination: the container runs here now.
    case committed
    /// Either side gives up; the receiver rolls back what it did.
    case abort(reason: String)
    /// Either side reports a failure with a message for the user.
    case error(message: String)
    /// Optional: how far a phase has got (also serves as a keep-alive).
    case progress(MigrationProgress)
    /// Destination (lazy mode): where CRIU's lazy-pages daemon is ready.
    case lazyPagesReady(LazyPagesEndpoint)
    /// The session is over; the connection closes after it.
    case done
    /// Source (lazy mode, page channel): a run of memory pages pushed to the destination.
    case pages(PageRun)
    /// Destination (lazy mode, page channel): these pages are wanted now (a fault).
    case pageRequest(PageRange)

    /// The type code of each message, as written in the frame header. Never renumber.
    public enum Kind: UInt16, Sendable, CaseIterable, CustomStringConvertible {
        case hello = 0x0001
        case proof = 0x0002
        case refused = 0x0003
        case preflightRequest = 0x0101
        case preflightResponse = 0x0102
        case member = 0x0201
        case data = 0x0202
        case memberEnd = 0x0203
        case restored = 0x0301
        case commit = 0x0302
        case committed = 0x0303
        case lazyPagesReady = 0x0304
        case progress = 0x0305
        case done = 0x0306
        case pages = 0x0307
        case pageRequest = 0x0308
        case abort = 0x0401
        case error = 0x0402

        /// Messages that only the handshake sends.
        public var isHandshake: Bool { self == .hello || self == .proof || self == .refused }

        public var description: String {
            switch self {
            case .hello: "hello"
            case .proof: "proof"
            case .refused: "refused"
            case .preflightRequest: "preflightRequest"
            case .preflightResponse: "preflightResponse"
            case .member: "member"
            case .data: "data"
            case .memberEnd: "memberEnd"
            case .restored: "restored"
            case .commit: "commit"
            case .committed: "committed"
            case .lazyPagesReady: "lazyPagesReady"
            case .progress: "progress"
            case .done: "done"
            case .pages: "pages"
            case .pageRequest: "pageRequest"
            case .abort: "abort"
            case .error: "error"
            }
        }
    }

    /// This message's type code.
    public var kind: Kind {
        switch self {
        case .hello: .hello
        case .proof: .proof
        case .refused: .refused
        case .preflightRequest: .preflightRequest
        case .preflightResponse: .preflightResponse
        case .member: .member
        case .data: .data
        case .memberEnd: .memberEnd
        case .restored: .restored
        case .commit: .commit
        case .committed: .committed
        case .abort: .abort
        case .error: .error
        case .progress: .progress
        case .lazyPagesReady: .lazyPagesReady
        case .done: .done
        case .pages: .pages
        case .pageRequest: .pageRequest
        }
    }
}

/// What the source asks before anything heavy moves.
public struct PreflightRequest: Codable, Sendable, Equatable {
    /// The container's name, which the destination must not already use.
    public var containerName: String
    /// The rootfs image's content digest ("sha256:…"): the destination may already have it.
    public var imageDigest: String
    /// The image's reference ("busybox:latest").
    public var imageReference: String
    /// The source's CRIU version as CRIU numbers it (40101 for 4.1.1).
    public var criuVersion: Int
    /// The source's `uname -r`.
    public var kernelRelease: String
    /// The source CPU's flags (/proc/cpuinfo): the destination needs every one the
    /// processes may use.
    public var cpuFlags: [String]
    /// Bytes the destination will store: images, rootfs diff, volumes (and the image if
    /// it is missing there).
    public var neededBytes: Int64
    /// How the memory will move.
    public var mode: MigrationMode
    /// The image's layers, bottom first ("sha256:…"): a destination that lacks the image
    /// names those it lacks, and only they are sent. Nil from a source before layers
    /// travelled.
    public var imageLayers: [String]?
    /// A container of a bridge network: what it holds there, which the destination must
    /// have free before anything is frozen. Absent otherwise (and from older sources).
    public var endpoint: PreflightEndpoint?

    public init(
        containerName: String, imageDigest: String, imageReference: String, criuVersion: Int,
        kernelRelease: String, cpuFlags: [String], neededBytes: Int64, mode: MigrationMode, imageLayers: [String]? = nil
    ) {
        self.containerName = containerName
        self.imageDigest = imageDigest
        self.imageReference = imageReference
        self.criuVersion = criuVersion
        self.kernelRelease = kernelRelease
        self.cpuFlags = cpuFlags
        self.neededBytes = neededBytes
        self.mode = mode
        self.imageLayers = imageLayers
    }
}

/// The network, address, MAC and published ports ("[IP]:HOSTPORT:CONTAINERPORT/PROTO") of
/// a migrating bridge container, as text: this module knows no store types.
public struct PreflightEndpoint: Codable, Sendable, Equatable {
    public var network: String
    public var address: String
    public var mac: String
    public var ports: [String]

    public init(network: String, address: String, mac: String, ports: [String]) {
        self.network = network
        self.address = address
        self.mac = mac
        self.ports = ports
    }
}

/// The destination's answer to a `PreflightRequest`.
public struct PreflightResponse: Codable, Sendable, Equatable {
    /// Why the container cannot come; empty when it can.
    public var reasons: [String]
    /// True when the destination lacks the image, so the source must send it first.
    public var needsImage: Bool
    /// Free bytes where the destination stores containers.
    public var freeBytes: Int64
    /// The modes this destination can restore with.
    public var supportedModes: [MigrationMode]
    /// With `needsImage`, the layers of `PreflightRequest.imageLayers` the destination
    /// lacks; nil from a destination that cannot take layers (it takes only a plain
    /// rootfs tree).
    public var missingLayers: [String]?

    /// True when nothing stands in the way.
    public var ok: Bool { reasons.isEmpty }

    public init(reasons: [String], needsImage: Bool, freeBytes: Int64, supportedModes: [MigrationMode], missingLayers: [String]? = nil) {
        self.missingLayers = missingLayers
        self.reasons = reasons
        self.needsImage = needsImage
        self.freeBytes = freeBytes
        self.supportedModes = supportedModes
    }
}

/// Sent by the destination once CRIU has restored the container, still frozen.
public struct RestoredInfo: Codable, Sendable, Equatable {
    /// The restored init process, as the destination's host sees it.
    public var pid: Int32
    /// Anything else worth showing or logging (restore time, CRIU version…); opaque here.
    public var details: [String: String]

    public init(pid: Int32, details: [String: String] = [:]) {
        self.pid = pid
        self.details = details
    }
}

/// How far a phase has got.
public struct MigrationProgress: Codable, Sendable, Equatable {
    /// Free-form phase name ("dump", "transfer", "restore").
    public var phase: String
    /// Bytes done in this phase.
    public var bytesDone: Int64
    /// Bytes the phase will take, when known.
    public var bytesTotal: Int64?

    public init(phase: String, bytesDone: Int64, bytesTotal: Int64? = nil) {
        self.phase = phase
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
    }
}

/// Where the destination's lazy-pages side listens (post-copy); the fields are passed to
/// CRIU as they are.
public struct LazyPagesEndpoint: Codable, Sendable, Equatable {
    /// An address the other host can reach.
    public var address: String
    /// The TCP port.
    public var port: UInt16
    /// Anything else the orchestration needs; opaque here.
    public var details: [String: String]

    public init(address: String, port: UInt16, details: [String: String] = [:]) {
        self.address = address
        self.port = port
        self.details = details
    }
}

// MARK: - Payload encoding

extension MigrationMessage {
    /// The payload bytes of this message (without the frame header and tag).
    func encodePayload() throws(MigrationError) -> [UInt8] {
        switch self {
        case let .hello(version, role, nonce):
            var bytes: [UInt8] = []
            bytes.appendBigEndian(version)
            bytes.append(role.rawValue)
            bytes += nonce
            return bytes
        case let .proof(hmac):
            return hmac
        case let .refused(text), let .abort(text), let .error(text):
            return Array(text.utf8)
        case let .preflightRequest(value):
            return try json(value)
        case let .preflightResponse(value):
            return try json(value)
        case let .member(name, size):
            var bytes: [UInt8] = []
            bytes.appendBigEndian(UInt64(bitPattern: size))
            bytes += Array(name.utf8)
            return bytes
        case let .data(bytes):
            return bytes
        case let .memberEnd(size, sha256):
            var bytes: [UInt8] = []
            bytes.appendBigEndian(UInt64(bitPattern: size))
            bytes += sha256
            return bytes
        case let .restored(value):
            return try json(value)
        case let .progress(value):
            return try json(value)
        case let .lazyPagesReady(value):
            return try json(value)
        case let .pages(run):
            var bytes = run.range.encoded()
            bytes += run.bytes
            return bytes
        case let .pageRequest(range):
            return range.encoded()
        case .commit, .committed, .done:
            return []
        }
    }

    /// Decodes a payload whose frame has been verified. A malformed payload is a protocol
    /// violation: the peer proved it holds the token, so it is a bug or a version skew.
    static func decode(kind rawKind: UInt16, payload: UnsafeRawBufferPointer) throws(MigrationError) -> MigrationMessage {
        guard let kind = Kind(rawValue: rawKind) else {
            throw MigrationError(.protocolViolation(unexpected: nil), "unknown message type 0x\(String(rawKind, radix: 16))")
        }
        func malformed(_ why: String) -> MigrationError {
            MigrationError(.protocolViolation(unexpected: kind), "malformed \(kind) message: \(why)")
        }
        func text() throws(MigrationError) -> String {
            guard let string = String(validating: payload, as: UTF8.self) else { throw malformed("text is not UTF-8") }
            return string
        }
        func fromJSON<T: Decodable>(_ type: T.Type) throws(MigrationError) -> T {
            do {
                return try JSONDecoder().decode(type, from: Data(payload))
            } catch {
                throw malformed("\(error)")
            }
        }
        func exactly(_ count: Int) throws(MigrationError) {
            if payload.count != count { throw malformed("\(payload.count) bytes, expected \(count)") }
        }
        switch kind {
        case .hello:
            // A later version may append fields; the version field lets this one say so.
            guard payload.count >= 3 + MigrationProtocol.nonceSize else { throw malformed("\(payload.count) bytes, too short") }
            guard let role = MigrationRole(rawValue: payload[2]) else { throw malformed("unknown role \(payload[2])") }
            return .hello(version: payload.bigEndian(UInt16.self, at: 0), role: role, nonce: Array(payload[3..<(3 + MigrationProtocol.nonceSize)]))
        case .proof:
            try exactly(MigrationProtocol.tagSize)
            return .proof(hmac: Array(payload))
        case .refused: return .refused(reason: try text())
        case .abort: return .abort(reason: try text())
        case .error: return .error(message: try text())
        case .preflightRequest: return .preflightRequest(try fromJSON(PreflightRequest.self))
        case .preflightResponse: return .preflightResponse(try fromJSON(PreflightResponse.self))
        case .member:
            guard payload.count > 8 else { throw malformed("no name") }
            let size = Int64(bitPattern: payload.bigEndian(UInt64.self, at: 0))
            guard size >= -1 else { throw malformed("size \(size)") }
            guard let name = String(validating: UnsafeRawBufferPointer(rebasing: payload[8...]), as: UTF8.self) else {
                throw malformed("name is not UTF-8")
            }
            return .member(name: name, size: size)
        case .data: return .data(Array(payload))
        case .memberEnd:
            try exactly(8 + 32)
            let size = Int64(bitPattern: payload.bigEndian(UInt64.self, at: 0))
            return .memberEnd(size: size, sha256: Array(payload[8...]))
        case .restored: return .restored(try fromJSON(RestoredInfo.self))
        case .progress: return .progress(try fromJSON(MigrationProgress.self))
        case .lazyPagesReady: return .lazyPagesReady(try fromJSON(LazyPagesEndpoint.self))
        case .pages:
            guard let range = PageRange(decoding: payload) else { throw malformed("\(payload.count) bytes, too short") }
            guard let bytes = range.pages(in: payload) else {
                throw malformed("\(payload.count - PageRange.encodedSize) bytes for \(range.count) pages")
            }
            return .pages(PageRun(range: range, bytes: Array(bytes)))
        case .pageRequest:
            try exactly(PageRange.encodedSize)
            guard let range = PageRange(decoding: payload) else { throw malformed("too short") }
            return .pageRequest(range)
        case .commit, .committed, .done:
            try exactly(0)
            return kind == .commit ? .commit : kind == .committed ? .committed : .done
        }
    }
}

private func json(_ value: some Encodable) throws(MigrationError) -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    do {
        return Array(try encoder.encode(value))
    } catch {
        throw MigrationError(.protocolViolation(unexpected: nil), "cannot encode a message", cause: error)
    }
}

/// Pages of one process's memory in a post-copy migration: CRIU's own coordinates (the
/// process's id in the images, a page-aligned address, a number of pages).
public struct PageRange: Sendable, Equatable, Hashable {
    public var id: UInt64
    public var address: UInt64
    public var count: UInt32

    public init(id: UInt64, address: UInt64, count: UInt32) {
        self.id = id
        self.address = address
        self.count = count
    }

    /// The page size both hosts use (CRIU's images can only be restored on a host with
    /// the dumping host's page size).
    public static let pageSize = 4096
    /// id, address (8 bytes each), count (4), big-endian.
    public static let encodedSize = 20

    public var end: UInt64 { address + UInt64(count) * UInt64(Self.pageSize) }

    func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.encodedSize)
        bytes.appendBigEndian(id)
        bytes.appendBigEndian(address)
        bytes.appendBigEndian(count)
        return bytes
    }

    /// Writes the encoding into the first `encodedSize` bytes of `buffer`.
    public func encode(into buffer: UnsafeMutableRawBufferPointer) {
        encoded().withUnsafeBytes { buffer.copyMemory(from: $0) }
    }

    init?(decoding payload: UnsafeRawBufferPointer) {
        guard payload.count >= Self.encodedSize else { return nil }
        self.init(
            id: payload.bigEndian(UInt64.self, at: 0), address: payload.bigEndian(UInt64.self, at: 8),
            count: payload.bigEndian(UInt32.self, at: 16))
    }

    /// The pages after this range's encoding in a `pages` payload; nil unless there are
    /// exactly `count` of them.
    func pages(in payload: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        let bytes = UnsafeRawBufferPointer(rebasing: payload[Self.encodedSize...])
        return UInt64(bytes.count) == UInt64(count) * UInt64(Self.pageSize) ? bytes : nil
    }
}

/// A run of pages and their contents.
public struct PageRun: Sendable, Equatable {
    public var range: PageRange
    public var bytes: [UInt8]

    public init(range: PageRange, bytes: [UInt8]) {
        self.range = range
        self.bytes = bytes
    }
}
