import Crypto
import FerrySystem
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// An encrypted export (docs/archive-format.md, "Encrypted archives") is a clear header
// followed by the whole archive byte stream, cut into fixed-size chunks, each sealed with
// AES-256-GCM. The construction is the STREAM one of Hoang, Reyhanitabar, Rogaway and
// Vizár (as in age and Tink): every chunk's nonce is a per-archive random prefix and the
// chunk's counter, and the associated data says whether the chunk is the last one, so a
// reader detects chunks dropped, reordered, duplicated or appended, and a stream cut at a
// chunk boundary. Only swift-crypto's primitives are used (HKDF-SHA256, AES-GCM).

/// The secret an encrypted export is sealed with: the bytes of a key file.
///
/// The file's content is HKDF input keying material, not a passphrase (HKDF does not slow
/// down guessing), so it must hold at least `minimumSize` bytes: random bytes, e.g. from
/// `head -c 32 /dev/urandom`.
public struct ArchiveKey: Sendable {
    /// The key file's bytes (a `SymmetricKey` is made from them where needed: it is not
    /// `Sendable`).
    private let bytes: [UInt8]

    var material: SymmetricKey { SymmetricKey(data: bytes) }

    /// The fewest bytes a key file may hold: 256 bits if they are random.
    public static let minimumSize = 32
    /// The most: a key file is a key, not a document.
    public static let maximumSize = 64 << 10

    /// A key of `bytes` (for tests and callers holding the key in memory).
    public init(bytes: [UInt8]) throws(ArchiveError) {
        guard bytes.count >= Self.minimumSize, bytes.count <= Self.maximumSize else {
            throw ArchiveError(.badKey, "cannot use the archive key: \(Self.sizeRule(bytes.count))")
        }
        self.bytes = bytes
    }

    /// Reads the key file at `path` (a regular file or a pipe).
    public init(file path: String) throws(ArchiveError) {
        let context = "cannot use key file '\(path)'"
        let contents: [UInt8]?
        do throws(Errno) {
            contents = try Self.read(path)
        } catch {
            throw ArchiveError(.badKey, "\(context)", cause: error)
        }
        guard let bytes = contents else {
            throw ArchiveError(.badKey, "\(context): it is not a regular file or a pipe")
        }
        guard bytes.count >= Self.minimumSize, bytes.count <= Self.maximumSize else {
            throw ArchiveError(.badKey, "\(context): \(Self.sizeRule(bytes.count))")
        }
        self.bytes = bytes
    }

    /// Up to `maximumSize + 1` bytes of the file (one more tells a file that is too
    /// long); nil if it is not a regular file or a pipe.
    private static func read(_ path: String) throws(Errno) -> [UInt8]? {
        let file = try OwnedFD.open(path, O_RDONLY | O_NOCTTY)
        let kind = try file.status().kind
        guard kind == .regular || kind == .fifo else { return nil }
        var bytes: [UInt8] = []
        while bytes.count <= maximumSize {
            let piece = try file.read(upTo: maximumSize + 1 - bytes.count)
            if piece.isEmpty { break }
            bytes += piece
        }
        return bytes
    }

    private static func sizeRule(_ count: Int) -> String {
        count < minimumSize
            ? "it holds \(count) bytes, fewer than the \(minimumSize) a key needs (make one with: head -c 32 /dev/urandom > FILE)"
            : "it holds more than \(maximumSize) bytes; a key file holds only a key"
    }
}

/// The clear header of an encrypted export, and the format's constants.
struct SealedArchiveHeader: Equatable {
    /// "FERRYENC": distinct from every compression's magic, so readers tell an encrypted
    /// archive from a clear one by its first bytes.
    static let magic: [UInt8] = Array("FERRYENC".utf8)
    static let version: UInt8 = 1
    /// 1 = AES-256-GCM, the only algorithm so far.
    static let aes256GCM: UInt8 = 1
    static let saltSize = 32
    static let noncePrefixSize = 8
    static let keyCheckSize = 32
    static let tagSize = 16
    /// magic, version, algorithm, 2 reserved zero bytes, chunk size (u32 big endian),
    /// salt, nonce prefix, key check.
    static let size = 8 + 1 + 1 + 2 + 4 + saltSize + noncePrefixSize + keyCheckSize
    /// The plaintext bytes of every chunk but the last.
    static let defaultChunkSize = 64 << 10
    /// What a reader accepts: a chunk is held in memory whole.
    static let chunkSizes = (4 << 10)...(4 << 20)

    var chunkSize: Int
    var salt: [UInt8]
    var noncePrefix: [UInt8]
    var keyCheck: [UInt8]

    var encoded: [UInt8] {
        var bytes = Self.magic + [Self.version, Self.aes256GCM, 0, 0]
        bytes.append(contentsOf: withUnsafeBytes(of: UInt32(chunkSize).bigEndian) { Array($0) })
        return bytes + salt + noncePrefix + keyCheck
    }

    /// Whether `prefix` (the first bytes of a file) starts an encrypted archive.
    static func isSealed(_ prefix: some Collection<UInt8>) -> Bool {
        prefix.starts(with: magic)
    }

    /// Parses a header; `bytes` must be `size` long and start with the magic.
    init(decoding bytes: [UInt8], context: String) throws(ArchiveError) {
        guard bytes.count == Self.size, Self.isSealed(bytes) else {
            throw ArchiveError(.unreadable, "\(context): the encryption header is truncated")
        }
        guard bytes[8] == Self.version else {
            throw ArchiveError(.unreadable, "\(context): it is encrypted with format version \(bytes[8]); this Ferry reads version \(Self.version)")
        }
        guard bytes[9] == Self.aes256GCM, bytes[10] == 0, bytes[11] == 0 else {
            throw ArchiveError(.unreadable, "\(context): it is encrypted with an unknown algorithm (\(bytes[9]))")
        }
        let size = bytes[12..<16].reduce(0) { $0 << 8 | Int($1) }
        guard Self.chunkSizes.contains(size) else {
            throw ArchiveError(.unreadable, "\(context): its encryption header declares chunks of \(size) bytes, outside \(Self.chunkSizes)")
        }
        var index = 16
        func take(_ count: Int) -> [UInt8] {
            defer { index += count }
            return Array(bytes[index..<index + count])
        }
        chunkSize = size
        salt = take(Self.saltSize)
        noncePrefix = take(Self.noncePrefixSize)
        keyCheck = take(Self.keyCheckSize)
    }

    init(chunkSize: Int, salt: [UInt8], noncePrefix: [UInt8], keyCheck: [UInt8]) {
        self.chunkSize = chunkSize
        self.salt = salt
        self.noncePrefix = noncePrefix
        self.keyCheck = keyCheck
    }

    /// The archive's AES key and its check value: two HKDF-SHA256 outputs of the key
    /// file under the archive's salt. The check is stored in the header so that a wrong
    /// key is told apart from a damaged archive (and it commits the archive to one key,
    /// which GCM alone does not).
    static func derive(_ key: ArchiveKey, salt: [UInt8]) -> (key: SymmetricKey, check: [UInt8]) {
        let derived = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: key.material, salt: salt, info: Array("ferry-archive-v1 key".utf8), outputByteCount: 32)
        let check = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: key.material, salt: salt, info: Array("ferry-archive-v1 key check".utf8), outputByteCount: keyCheckSize)
        return (derived, check.withUnsafeBytes { Array($0) })
    }

    /// Nonce of chunk `index`: the prefix, then the counter (u32 big endian).
    func nonce(_ index: UInt64) throws(ArchiveError) -> AES.GCM.Nonce {
        guard index <= UInt64(UInt32.max) else {
            throw ArchiveError(.writeFailed, "an encrypted archive holds at most 2^32 chunks")
        }
        do {
            return try AES.GCM.Nonce(data: noncePrefix + withUnsafeBytes(of: UInt32(index).bigEndian) { Array($0) })
        } catch {
            throw ArchiveError(.writeFailed, "cannot make the nonce of chunk \(index)", cause: error)
        }
    }

    /// The associated data of a chunk: the header (so that no field of it can be
    /// changed), then 1 for the last chunk, 0 for the others.
    func associatedData(final: Bool) -> [UInt8] {
        encoded + [final ? 1 : 0]
    }

    /// The file offset of chunk `index` (every chunk before it is full).
    func offset(ofChunk index: Int) -> Int64 {
        Int64(Self.size) + Int64(index) * Int64(chunkSize + Self.tagSize)
    }
}

/// Seals an archive's byte stream, chunk by chunk, into records it hands to a sink with
/// the file offset each belongs at.
///
/// Most chunks are sealed and handed on as soon as they are full. A writer that will
/// overwrite bytes it has already written (the streamed export's `ferry.json` and its
/// first image's header) declares them first with `hold`: a chunk that a held range
/// touches stays in memory, in clear, until `release`, then is sealed once with its
/// final content. No chunk is ever sealed twice, so no nonce is reused, and a chunk
/// sealed later goes to its own offset (the chunks before it are full, so offsets are
/// known in advance). Memory: the chunk in progress plus the held ones.
final class ArchiveSealer {
    /// Receives a sealed record (or the header) and the file offset it belongs at.
    typealias Sink = (UnsafeRawBufferPointer, Int64) throws(ArchiveError) -> Void

    let header: SealedArchiveHeader
    private let key: SymmetricKey
    private let headerData: (chunk: [UInt8], final: [UInt8])
    /// The chunk being filled.
    private var current: [UInt8] = []
    /// How many chunks are complete (sealed or held): the index of `current`.
    private var completed = 0
    /// Complete chunks kept in clear because a held range touches them.
    private var pending: [Int: [UInt8]] = [:]
    /// Held plaintext ranges, by their start.
    private var holds: [Int64: Range<Int64>] = [:]
    private var finished = false

    /// Plaintext bytes appended so far.
    var plaintextSize: Int64 { Int64(completed) * Int64(header.chunkSize) + Int64(current.count) }

    /// The size of the file once the chunks so far are written.
    var sealedSize: Int64 { header.offset(ofChunk: completed) }

    init(key: ArchiveKey, chunkSize: Int = SealedArchiveHeader.defaultChunkSize) {
        var generator = SystemRandomNumberGenerator()
        let salt = (0..<SealedArchiveHeader.saltSize).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let prefix = (0..<SealedArchiveHeader.noncePrefixSize).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let derived = SealedArchiveHeader.derive(key, salt: salt)
        header = SealedArchiveHeader(chunkSize: chunkSize, salt: salt, noncePrefix: prefix, keyCheck: derived.check)
        self.key = derived.key
        headerData = (header.associatedData(final: false), header.associatedData(final: true))
        current.reserveCapacity(chunkSize)
    }

    /// Hands the clear header to `sink` (offset 0). Call first.
    func start(_ sink: Sink) throws(ArchiveError) {
        try withRawBytes(header.encoded) { (bytes) throws(ArchiveError) in try sink(bytes, 0) }
    }

    /// Appends plaintext; full chunks not held are sealed and handed to `sink`.
    func append(_ bytes: UnsafeRawBufferPointer, _ sink: Sink) throws(ArchiveError) {
        guard !finished else { throw ArchiveError(.writeFailed, "the encrypted archive is already finished") }
        var index = 0
        while index < bytes.count {
            let count = min(header.chunkSize - current.count, bytes.count - index)
            current.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<index + count]))
            index += count
            if current.count == header.chunkSize {
                let chunk = current
                let number = completed
                completed += 1
                current.removeAll(keepingCapacity: true)
                if isHeld(number) {
                    pending[number] = chunk
                } else {
                    try seal(chunk, index: number, final: false, sink)
                }
            }
        }
    }

    /// Declares that `range` of the plaintext (from the current end on) will be
    /// overwritten with `patch` before `release(start:)`.
    func hold(_ range: Range<Int64>) throws(ArchiveError) {
        guard range.lowerBound >= plaintextSize, holds[range.lowerBound] == nil else {
            throw ArchiveError(.writeFailed, "cannot hold bytes \(range) of an encrypted archive: they are already sealed or held")
        }
        holds[range.lowerBound] = range
    }

    /// Overwrites plaintext at `offset`, which must lie in a held range already appended.
    func patch(at offset: Int64, _ bytes: [UInt8]) throws(ArchiveError) {
        guard let hold = holds.values.first(where: { $0.contains(offset) }), offset + Int64(bytes.count) <= hold.upperBound,
            offset + Int64(bytes.count) <= plaintextSize
        else {
            throw ArchiveError(.writeFailed, "cannot overwrite bytes at \(offset) of an encrypted archive: they are not held")
        }
        var done = 0
        while done < bytes.count {
            let position = offset + Int64(done)
            let number = Int(position / Int64(header.chunkSize))
            let within = Int(position % Int64(header.chunkSize))
            let count = min(header.chunkSize - within, bytes.count - done)
            let piece = bytes[done..<done + count]
            if number == completed {
                current.replaceSubrange(within..<within + count, with: piece)
            } else if pending[number] != nil {
                pending[number]?.replaceSubrange(within..<within + count, with: piece)
            } else {
                throw ArchiveError(.writeFailed, "cannot overwrite chunk \(number) of an encrypted archive: it is already sealed")
            }
            done += count
        }
    }

    /// Ends the hold that starts at `start`; complete chunks no longer held are sealed.
    func release(start: Int64, _ sink: Sink) throws(ArchiveError) {
        holds[start] = nil
        for number in pending.keys.sorted() where !isHeld(number) {
            if let chunk = pending.removeValue(forKey: number) {
                try seal(chunk, index: number, final: false, sink)
            }
        }
    }

    /// Seals the chunk in progress (possibly empty) as the last one.
    func finish(_ sink: Sink) throws(ArchiveError) {
        guard holds.isEmpty, pending.isEmpty else {
            throw ArchiveError(.writeFailed, "cannot finish an encrypted archive while some of its bytes are held")
        }
        guard !finished else { return }
        try seal(current, index: completed, final: true, sink)
        finished = true
        current = []
    }

    private func isHeld(_ chunk: Int) -> Bool {
        let start = Int64(chunk) * Int64(header.chunkSize)
        let range = start..<start + Int64(header.chunkSize)
        return holds.values.contains { $0.overlaps(range) }
    }

    private func seal(_ chunk: [UInt8], index: Int, final: Bool, _ sink: Sink) throws(ArchiveError) {
        let nonce = try header.nonce(UInt64(index))
        let box: AES.GCM.SealedBox
        do {
            box = try AES.GCM.seal(chunk, using: key, nonce: nonce, authenticating: final ? headerData.final : headerData.chunk)
        } catch {
            throw ArchiveError(.writeFailed, "cannot encrypt chunk \(index)", cause: error)
        }
        var record = [UInt8]()
        record.reserveCapacity(chunk.count + SealedArchiveHeader.tagSize)
        record.append(contentsOf: box.ciphertext)
        record.append(contentsOf: box.tag)
        try withRawBytes(record) { (bytes) throws(ArchiveError) in try sink(bytes, header.offset(ofChunk: index)) }
    }
}

/// Opens an encrypted archive's chunks in order, authenticating each before any of its
/// bytes are returned.
final class ArchiveOpener {
    /// Reads up to the buffer's size; 0 at the end of the input.
    typealias Source = (UnsafeMutableRawBufferPointer) throws(ArchiveError) -> Int

    let header: SealedArchiveHeader
    private let key: SymmetricKey
    private let context: String
    private let record: UnsafeMutableRawBufferPointer
    private var index: UInt64 = 0
    private(set) var ended = false
    /// Bytes read ahead of the current record (the lookahead byte).
    private var carried = 0

    /// Checks `key` against the header (`headerBytes`, already read).
    init(headerBytes: [UInt8], key: ArchiveKey, context: String) throws(ArchiveError) {
        let header = try SealedArchiveHeader(decoding: headerBytes, context: context)
        let derived = SealedArchiveHeader.derive(key, salt: header.salt)
        let matches = derived.check.withUnsafeBytes { a in header.keyCheck.withUnsafeBytes { b in a.elementsEqual(b) } }
        guard matches else {
            throw ArchiveError(.badKey, "\(context): the key does not open this archive (wrong key file, or a damaged header)")
        }
        self.header = header
        self.key = derived.key
        self.context = context
        // One extra byte tells a full last chunk from a full chunk with more to come.
        record = UnsafeMutableRawBufferPointer.allocate(byteCount: header.chunkSize + SealedArchiveHeader.tagSize + 1, alignment: 16)
    }

    deinit {
        record.deallocate()
    }

    /// The next chunk's plaintext, authenticated; nil after the last chunk. Fails on a
    /// damaged, reordered, truncated or extended stream.
    func next(_ source: Source) throws(ArchiveError) -> [UInt8]? {
        if ended { return nil }
        let full = header.chunkSize + SealedArchiveHeader.tagSize
        // Fill a record and one byte more: whether that byte exists says if this is the end.
        var count = carried
        while count < full + 1 {
            let n = try source(UnsafeMutableRawBufferPointer(rebasing: record[count...]))
            if n == 0 { break }
            count += n
        }
        let more = count > full
        let length = min(count, full)
        if length == 0 {
            throw ArchiveError(.unreadable, "\(context): the encrypted stream is truncated (it ends after chunk \(index) without its last chunk)")
        }
        guard length >= SealedArchiveHeader.tagSize else {
            throw ArchiveError(.unreadable, "\(context): the encrypted stream is truncated inside chunk \(index)")
        }
        // A record shorter than full must be the last; a full one may be either, and only
        // the last may have nothing after it.
        let final = !more
        let plaintext = try open(UnsafeRawBufferPointer(rebasing: record[0..<length]), final: final)
        if more {
            record[0] = record[full]
            carried = 1
        } else {
            carried = 0
            ended = true
        }
        index += 1
        return plaintext
    }

    /// After the last chunk: there must be nothing more (`next` has already looked).
    func requireEnd(_ source: Source) throws(ArchiveError) {
        while let chunk = try next(source) {
            // The tar's end and the compressor's last bytes may follow what the reader
            // used; they are authenticated like the rest, and must be zeros or nothing
            // would have written them.
            _ = chunk
        }
    }

    /// Opens the record as the last chunk or not, as the stream's length says; when that
    /// fails, a full record that opens with the other flag means the stream was cut at
    /// a chunk boundary, or had bytes appended after its end.
    private func open(_ bytes: UnsafeRawBufferPointer, final: Bool) throws(ArchiveError) -> [UInt8] {
        if let plaintext = try? open(bytes, asFinal: final) { return plaintext }
        if bytes.count == header.chunkSize + SealedArchiveHeader.tagSize, (try? open(bytes, asFinal: !final)) != nil {
            throw ArchiveError(
                .unreadable,
                final
                    ? "\(context): the encrypted stream is truncated (it ends after chunk \(index), which is not its last)"
                    : "\(context): the encrypted stream has data after its last chunk")
        }
        throw ArchiveError(
            .unreadable, "\(context): chunk \(index) of the encrypted stream fails authentication (the archive is damaged or was tampered with)")
    }

    private func open(_ bytes: UnsafeRawBufferPointer, asFinal final: Bool) throws -> [UInt8] {
        let split = bytes.count - SealedArchiveHeader.tagSize
        let box = try AES.GCM.SealedBox(
            nonce: try header.nonce(index), ciphertext: UnsafeRawBufferPointer(rebasing: bytes[0..<split]),
            tag: UnsafeRawBufferPointer(rebasing: bytes[split...]))
        return Array(try AES.GCM.open(box, using: key, authenticating: header.associatedData(final: final)))
    }
}

/// `withUnsafeBytes`, keeping the error's type (it only rethrows `any Error`).
func withRawBytes(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(ArchiveError) -> Void) throws(ArchiveError) {
    let failure: ArchiveError? = bytes.withUnsafeBytes { raw in
        do throws(ArchiveError) {
            try body(raw)
            return nil
        } catch {
            return error
        }
    }
    if let failure { throw failure }
}
