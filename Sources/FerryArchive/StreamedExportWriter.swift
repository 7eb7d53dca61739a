import CZstd
import Crypto
import Dispatch
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Writes an export archive (docs/archive-format.md) whose members may be added while
/// their size is still unknown: CRIU's images as CRIU streams them during a dump.
///
/// A tar header carries its member's size before the data, and `ferry.json` (the first
/// member) declares every later member's size. Ferry therefore writes this archive itself
/// instead of through libarchive, into a regular file it can write back into:
/// - a member of unknown size (`begin`/`append`/`end`) gets a placeholder header, which
///   `end` overwrites in place once the size is known;
/// - `reserve` writes a member of a fixed size filled with spaces, which `fill`
///   overwrites with its real content (JSON followed by spaces is still the same JSON);
/// - with zstd, every such header or reserved member is a zstd frame of its own holding
///   one *raw* (stored) block, so its bytes sit in the file as they are and can be
///   overwritten; everything else is compressed, in frames that end where a raw frame
///   begins. A zstd stream is any sequence of frames, so readers (libarchive, zstd(1),
///   Go's decoders) see one ordinary tar stream. Uncompressed, the tar is patched as is.
///
/// Memory stays bounded: data passes through in the caller's chunks, checksums are
/// computed as it goes by, and the compressor's buffers do not grow with the input.
/// Writeback of what has been written is started as the archive grows (on another thread,
/// so a writer feeding from a frozen container never waits for the disk), so that the
/// final fsync has little left to do.
///
/// As with `ExportWriter`, the archive is written to `.<name>.tmp-<random>` (mode 0600)
/// and renamed into place by `finish()`; abandoned or failed, the file is deleted.
public final class StreamedExportWriter {
    /// Where the archive will be once finished.
    public let path: String
    private let context: String
    private let directory: OwnedFD
    private let file: OwnedFD
    private let temporaryName: [UInt8]
    private let finalName: [UInt8]
    private let compressor: Compressor?
    /// The encryption layer, for an encrypted archive: `output` and `patch` go through it.
    private let sealed: SealedFileOutput?
    private let modificationTime = Int64(time(nil))
    /// Bytes written to the file so far (the end of the stream; patches do not move it).
    private var offset: Int64 = 0
    private var members: [ExportManifest.Member] = []
    private var names = Set<String>()
    private var directories = ExportDirectories()
    private var reservations: [String: Reservation] = [:]
    private var current: OpenMember?
    private var state = State.open
    private let buffer: UnsafeMutableRawBufferPointer
    private let writeBack = DispatchQueue(label: "ferry.export.writeback")
    private var writeBackStart: Int64 = 0

    /// Writeback is started for every this many new bytes of the file.
    static let writeBackStep: Int64 = 32 << 20
    /// The largest block zstd allows (and the window the raw frames declare).
    static let rawBlockLimit = 128 << 10

    private enum State {
        case open, finished, abandoned
    }

    /// Where a patchable region of the file is: a raw zstd frame's payload, or (no
    /// compression) the bytes themselves.
    private struct Region {
        var start: Int64
        var framed: Bool

        /// The file offset of the payload's byte `index`: a raw frame has a 6-byte header
        /// and a 3-byte header before every block of at most `rawBlockLimit` bytes.
        func fileOffset(of index: Int) -> Int64 {
            guard framed else { return start + Int64(index) }
            return start + 6 + 3 * Int64(index / StreamedExportWriter.rawBlockLimit + 1) + Int64(index)
        }
    }

    private struct Reservation {
        var region: Region
        var capacity: Int
        var manifestIndex: Int
        var filled = false
    }

    private struct OpenMember {
        var name: String
        var header: Region
        var size: Int64 = 0
        var hasher = SHA256()
    }

    /// Starts an archive that `finish()` will place at `path` (replacing any file there).
    /// Only zstd and no compression can be streamed; gzip goes through `ExportWriter`.
    /// With `key`, the whole stream is encrypted; the chunks holding bytes that will be
    /// overwritten are kept in memory until then (docs/archive-format.md).
    public init(path: String, compression: ExportCompression = .zstd, key: ArchiveKey? = nil) throws(ArchiveError) {
        let context = "cannot write export '\(path)'"
        guard compression != .gzip else {
            throw ArchiveError(.writeFailed, "\(context): a streamed export is written with zstd or uncompressed, not gzip")
        }
        let finalName = Array(Files.basename(of: path).utf8)
        guard !finalName.isEmpty, finalName != [MemberPath.dot], finalName != [MemberPath.dot, MemberPath.dot] else {
            throw ArchiveError(.badDestination, "\(context): not a file name")
        }
        let directoryPath = Files.parent(of: path)
        let directory = try io("\(context): open directory '\(directoryPath)'") { () throws(Errno) in
            try OwnedFD.open(directoryPath, O_RDONLY | O_DIRECTORY)
        }
        let temporaryPrefix = Array(".".utf8) + finalName + Array(".tmp-".utf8)
        ExportWriter.removeAbandoned(in: directory, prefix: temporaryPrefix)
        let temporaryName = temporaryPrefix + Array(String(UInt64.random(in: 0...UInt64.max), radix: 16).utf8)
        let file = try io("\(context): create '\(display(temporaryName))'") { () throws(Errno) in
            let file = try directory.openAt(temporaryName, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
            // A new file: nobody else can hold its lock yet.
            _ = try file.tryLockExclusive()
            return file
        }
        do {
            try io("\(context): chmod '\(display(temporaryName))'") { () throws(Errno) in try file.setPermissions(0o600) }
            compressor = compression == .zstd ? try Compressor(context: context) : nil
            if let key {
                let copy = try io("\(context): dup") { () throws(Errno) in try file.duplicate() }
                sealed = try SealedFileOutput(file: copy, key: key, context: context)
            } else {
                sealed = nil
            }
        } catch {
            try? directory.unlink(at: temporaryName, directory: false)
            throw error
        }
        self.path = path
        self.context = context
        self.directory = directory
        self.file = file
        self.temporaryName = temporaryName
        self.finalName = finalName
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ExportWriter.chunkSize, alignment: 16)
    }

    deinit {
        if state == .open { abandon() }
        // The writeback thread uses the descriptor, which closes after this.
        writeBack.sync {}
        buffer.deallocate()
    }

    /// The size of every member added so far but the reserved ones: what `ferry.json`
    /// declares.
    public var memberSizes: [String: Int64] {
        members.filter { reservations[$0.name] == nil }.reduce(into: [:]) { $0[$1.name] = $1.size }
    }

    // MARK: - Members

    /// Adds a member of `capacity` bytes (rounded up to 512) whose content `fill` gives
    /// later; until then it is spaces. For `ferry.json`, which must come first but
    /// declares the sizes of members not yet written.
    public func reserve(name: String, capacity: Int) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            try checkName(name)
            let capacity = (capacity + 511) / 512 * 512
            let header = try TarHeader.bytes(name: name, size: Int64(capacity), modificationTime: modificationTime, context: context)
            let region = try writePatchable(header + [UInt8](repeating: 0x20, count: capacity))
            reservations[name] = Reservation(region: region, capacity: capacity, manifestIndex: members.count)
            members.append(ExportManifest.Member(name: name, size: Int64(capacity), sha256: ""))
        }
    }

    /// Writes the content of the reserved member `name`, padded with spaces to its
    /// capacity.
    public func fill(name: String, bytes: [UInt8]) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            guard var reservation = reservations[name], !reservation.filled else {
                throw ArchiveError(.writeFailed, "\(context): member '\(name)' was not reserved, or is already filled")
            }
            guard bytes.count <= reservation.capacity else {
                throw ArchiveError(
                    .writeFailed, "\(context): member '\(name)' is \(bytes.count) bytes, more than the \(reservation.capacity) reserved for it")
            }
            let content = bytes + [UInt8](repeating: 0x20, count: reservation.capacity - bytes.count)
            try patch(reservation.region, at: 512, content)
            try sealed?.release(start: reservation.region.start)
            reservation.filled = true
            reservations[name] = reservation
            members[reservation.manifestIndex] = ExportManifest.Member(
                name: name, size: Int64(reservation.capacity), sha256: TreeDigest.hex(SHA256.hash(data: content)))
        }
    }

    /// Adds a small member held in memory.
    public func add(name: String, bytes: [UInt8]) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            try checkName(name)
            try stream(try TarHeader.bytes(name: name, size: Int64(bytes.count), modificationTime: modificationTime, context: context))
            try stream(bytes)
            try stream(TarHeader.padding(after: Int64(bytes.count)))
            members.append(ExportManifest.Member(name: name, size: Int64(bytes.count), sha256: TreeDigest.hex(SHA256.hash(data: bytes))))
        }
    }

    /// Adds the regular file at `file` (a symlink there is refused); it must not change
    /// while it is added.
    public func add(name: String, file path: String) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            let source = try io("\(context): member '\(name)': open '\(path)'") { () throws(Errno) in
                try OwnedFD.open(path, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK)
            }
            let status = try io("\(context): member '\(name)': stat '\(path)'") { () throws(Errno) in try source.status() }
            guard status.kind == .regular else {
                throw ArchiveError(.writeFailed, "\(context): member '\(name)': '\(path)' is not a regular file")
            }
            try checkName(name)
            try stream(try TarHeader.bytes(name: name, size: status.size, modificationTime: modificationTime, context: context))
            var hasher = SHA256()
            var total: Int64 = 0
            while true {
                let count = try io("\(context): member '\(name)': read '\(path)'") { () throws(Errno) in try source.read(into: buffer) }
                if count == 0 { break }
                let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
                hasher.update(bufferPointer: chunk)
                try stream(chunk)
                total += Int64(count)
            }
            guard total == status.size else {
                throw ArchiveError(.writeFailed, "\(context): member '\(name)': '\(path)' changed size while it was being added")
            }
            try stream(TarHeader.padding(after: total))
            members.append(ExportManifest.Member(name: name, size: total, sha256: TreeDigest.hex(hasher.finalize())))
        }
    }

    /// Starts a member whose size is known only at `end()`. One at a time.
    public func begin(name: String) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            if let current { throw ArchiveError(.writeFailed, "\(context): member '\(current.name)' is still open") }
            try checkName(name)
            let header = try TarHeader.bytes(name: name, size: 0, modificationTime: modificationTime, context: context)
            current = OpenMember(name: name, header: try writePatchable(header))
        }
    }

    /// Appends to the member `begin` started.
    public func append(_ chunk: UnsafeRawBufferPointer) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            guard current != nil else { throw ArchiveError(.writeFailed, "\(context): no member is open") }
            current?.hasher.update(bufferPointer: chunk)
            current?.size += Int64(chunk.count)
            try stream(chunk)
        }
    }

    /// Ends the open member: pads it and writes its real size into its header.
    /// Returns the size.
    @discardableResult
    public func end() throws(ArchiveError) -> Int64 {
        try guarded { () throws(ArchiveError) in
            guard let member = current else { throw ArchiveError(.writeFailed, "\(context): no member is open") }
            current = nil
            try stream(TarHeader.padding(after: member.size))
            let header = try TarHeader.bytes(name: member.name, size: member.size, modificationTime: modificationTime, context: context)
            try patch(member.header, at: 0, header)
            try sealed?.release(start: member.header.start)
            members.append(ExportManifest.Member(name: member.name, size: member.size, sha256: TreeDigest.hex(member.hasher.finalize())))
            return member.size
        }
    }

    /// Appends `manifest.json` and the end of the archive, fsyncs the file, renames it to
    /// `path` and fsyncs the directory. Every reserved member must have been filled.
    public func finish() throws(ArchiveError) -> ExportSummary {
        try guarded { () throws(ArchiveError) in
            if let current { throw ArchiveError(.writeFailed, "\(context): member '\(current.name)' was never ended") }
            if let unfilled = reservations.first(where: { !$0.value.filled }) {
                throw ArchiveError(.writeFailed, "\(context): member '\(unfilled.key)' was reserved but never filled")
            }
            let manifest = ExportManifest(members: members)
            let encoded = try manifest.encoded(context: context)
            try stream(try TarHeader.bytes(name: ExportManifest.memberName, size: Int64(encoded.count), modificationTime: modificationTime, context: context))
            try stream(encoded)
            try stream(TarHeader.padding(after: Int64(encoded.count)))
            // The end of a tar: two zero blocks.
            try stream([UInt8](repeating: 0, count: 1024))
            try endFrame()
            try sealed?.finish()
            writeBack.sync {}
            try io("\(context): fsync") { () throws(Errno) in try file.sync() }
            let size = sealed == nil ? offset : try io("\(context): fstat") { () throws(Errno) in try file.status().size }
            try io("\(context): rename '\(display(temporaryName))'") { () throws(Errno) in
                try directory.rename(temporaryName, to: finalName, in: directory)
            }
            state = .finished
            // Makes the rename durable; the archive itself is already synced.
            try? directory.sync()
            return ExportSummary(path: path, size: size, manifest: manifest)
        }
    }

    /// Stops writing and deletes the temporary file. Harmless after `finish()`.
    public func abandon() {
        guard state == .open else { return }
        state = .abandoned
        try? directory.unlink(at: temporaryName, directory: false)
    }

    // MARK: - Output

    private func guarded<T>(_ body: () throws(ArchiveError) -> T) throws(ArchiveError) -> T {
        switch state {
        case .open: break
        case .finished: throw ArchiveError(.writeFailed, "\(context): the archive is already finished")
        case .abandoned: throw ArchiveError(.writeFailed, "\(context): the archive was abandoned after an earlier error")
        }
        do {
            return try body()
        } catch {
            abandon()
            throw error
        }
    }

    /// Checks a new member's name, then streams the entries of the directories it is in
    /// that have none yet (`ExportDirectories`).
    private func checkName(_ name: String) throws(ArchiveError) {
        try ExportMemberName.checkNew(name, among: &names, context: context)
        for directory in directories.missing(for: name) {
            try stream(try TarHeader.bytes(name: directory, size: 0, modificationTime: modificationTime, directory: true, context: context))
        }
    }

    private func stream(_ bytes: [UInt8]) throws(ArchiveError) {
        try withRawBytes(bytes) { (chunk) throws(ArchiveError) in try stream(chunk) }
    }

    /// The tar stream's next bytes: compressed, or as they are.
    private func stream(_ chunk: UnsafeRawBufferPointer) throws(ArchiveError) {
        if chunk.isEmpty { return }
        guard let compressor else { return try output(chunk) }
        try compressor.compress(chunk, end: false) { (out) throws(ArchiveError) in try output(out) }
    }

    /// Ends the compressed frame in progress, if any.
    private func endFrame() throws(ArchiveError) {
        guard let compressor, compressor.inFrame else { return }
        try compressor.compress(UnsafeRawBufferPointer(start: nil, count: 0), end: true) { (out) throws(ArchiveError) in try output(out) }
    }

    /// Writes `payload` where it can be overwritten later: a raw zstd frame, or (no
    /// compression) the tar bytes themselves.
    private func writePatchable(_ payload: [UInt8]) throws(ArchiveError) -> Region {
        try endFrame()
        let region = Region(start: offset, framed: compressor != nil)
        guard compressor != nil else {
            try sealed?.hold(offset..<offset + Int64(payload.count))
            try withRawBytes(payload) { (chunk) throws(ArchiveError) in try output(chunk) }
            return region
        }
        // Magic number; frame header descriptor 0 (no content size, not single-segment,
        // no checksum, no dictionary); window descriptor 0x38 (2^17 = 128 KiB).
        var frame: [UInt8] = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38]
        var index = 0
        repeat {
            let count = min(Self.rawBlockLimit, payload.count - index)
            let last = index + count == payload.count
            // Block header, 3 bytes little-endian: bit 0 last block, bits 1-2 type (0 =
            // raw), bits 3-23 size.
            let header = UInt32(count) << 3 | (last ? 1 : 0)
            frame += [UInt8(header & 0xff), UInt8(header >> 8 & 0xff), UInt8(header >> 16 & 0xff)]
            frame += payload[index..<index + count]
            index += count
        } while index < payload.count
        try sealed?.hold(offset..<offset + Int64(frame.count))
        try withRawBytes(frame) { (chunk) throws(ArchiveError) in try output(chunk) }
        return region
    }

    /// Overwrites the payload bytes of `region` from `index` on.
    private func patch(_ region: Region, at index: Int, _ bytes: [UInt8]) throws(ArchiveError) {
        var done = 0
        while done < bytes.count {
            let position = index + done
            // Up to the end of the raw block `position` is in.
            let room = region.framed ? Self.rawBlockLimit - position % Self.rawBlockLimit : bytes.count - done
            let count = min(room, bytes.count - done)
            let piece = Array(bytes[done..<done + count])
            if let sealed {
                try sealed.patch(at: region.fileOffset(of: position), piece)
            } else {
                try io("\(context): write back a header") { () throws(Errno) in try file.write(piece, at: region.fileOffset(of: position)) }
            }
            done += count
        }
    }

    private func output(_ chunk: UnsafeRawBufferPointer) throws(ArchiveError) {
        if let sealed {
            try sealed.append(chunk)
        } else {
            try io("\(context): write") { () throws(Errno) in try file.write(all: chunk) }
        }
        offset += Int64(chunk.count)
        // Writeback works on the file's bytes, which encryption lays out a little wider.
        let end = sealed?.sealedSize ?? offset
        if end - writeBackStart >= Self.writeBackStep {
            let start = writeBackStart
            let count = end - start
            writeBackStart = end
            let raw = file.raw
            // Errors here only mean the final fsync does the work.
            writeBack.async { try? OwnedFD.startWriteBack(raw, offset: start, count: count) }
        }
    }
}

/// libzstd's streaming compressor, at the level and worker count of `TarOutput`'s zstd.
private final class Compressor {
    private let context: OpaquePointer
    private let output: UnsafeMutableRawBufferPointer
    private let message: String
    /// Whether input has been given since the last frame ended.
    private(set) var inFrame = false

    init(context message: String) throws(ArchiveError) {
        guard let context = ZSTD_createCCtx() else { throw ArchiveError(.writeFailed, "\(message): zstd cannot allocate a compressor") }
        self.context = context
        self.message = message
        output = UnsafeMutableRawBufferPointer.allocate(byteCount: ZSTD_CStreamOutSize(), alignment: 16)
        _ = ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, Int32(TarOutput.zstdLevel))
        // Workers let compression overlap with receiving and hashing; a libzstd without
        // them compresses on this thread, which is only slower.
        let cores = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        _ = ZSTD_CCtx_setParameter(context, ZSTD_c_nbWorkers, Int32(min(cores, TarOutput.maximumZstdWorkers)))
    }

    deinit {
        ZSTD_freeCCtx(context)
        output.deallocate()
    }

    /// Compresses `input`; with `end`, also ends the frame. Output goes to `sink`.
    func compress(_ input: UnsafeRawBufferPointer, end: Bool, sink: (UnsafeRawBufferPointer) throws(ArchiveError) -> Void) throws(ArchiveError) {
        var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        if input.count > 0 { inFrame = true }
        while true {
            var destination = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
            let remaining = ZSTD_compressStream2(context, &destination, &source, end ? ZSTD_e_end : ZSTD_e_continue)
            if ZSTD_isError(remaining) != 0 {
                throw ArchiveError(.writeFailed, "\(message): zstd: \(String(cString: ZSTD_getErrorName(remaining)))")
            }
            if destination.pos > 0 { try sink(UnsafeRawBufferPointer(rebasing: output[0..<destination.pos])) }
            if end ? remaining == 0 : source.pos == source.size { break }
        }
        if end { inFrame = false }
    }
}

/// ustar headers, written by hand for the streamed export.
enum TarHeader {
    /// The header of a regular file owned by 0:0 with mode 0600, or with `directory` of a
    /// directory (`name` ending in "/", size 0) with `ExportDirectories.mode`. Names
    /// longer than 100 bytes are split into ustar's prefix and name at a slash.
    static func bytes(
        name: String, size: Int64, modificationTime: Int64, directory: Bool = false, context: String
    ) throws(ArchiveError) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: 512)
        let full = Array(name.utf8)
        var prefix: ArraySlice<UInt8> = []
        var last = full[...]
        if full.count > 100 {
            guard let slash = full.indices.last(where: { full[$0] == UInt8(ascii: "/") && $0 <= 155 && full.count - $0 - 1 <= 100 }) else {
                throw ArchiveError(.writeFailed, "\(context): member '\(name)': the name is too long for a ustar header")
            }
            prefix = full[..<slash]
            last = full[(slash + 1)...]
        }
        header.replaceSubrange(0..<last.count, with: last)
        octal(&header, at: 100, width: 8, directory ? Int64(ExportDirectories.mode) : 0o600)
        octal(&header, at: 108, width: 8, 0)
        octal(&header, at: 116, width: 8, 0)
        if size < 1 << 33 {
            octal(&header, at: 124, width: 12, size)
        } else {
            // Too big for 11 octal digits: base-256, which GNU tar, libarchive and Go read.
            header[124] = 0x80
            for index in 0..<8 { header[135 - index] = UInt8(truncatingIfNeeded: size >> (8 * index)) }
        }
        octal(&header, at: 136, width: 12, modificationTime)
        header[156] = UInt8(ascii: directory ? "5" : "0")
        header.replaceSubrange(257..<263, with: Array("ustar".utf8) + [0])
        header.replaceSubrange(263..<265, with: Array("00".utf8))
        header.replaceSubrange(345..<345 + prefix.count, with: prefix)
        // The checksum is computed with its own field as spaces.
        header.replaceSubrange(148..<156, with: [UInt8](repeating: 0x20, count: 8))
        let sum = header.reduce(0) { $0 + Int64($1) }
        octal(&header, at: 148, width: 7, sum)
        return header
    }

    /// The zeros that pad a member of `size` bytes to whole 512-byte blocks.
    static func padding(after size: Int64) -> [UInt8] {
        [UInt8](repeating: 0, count: Int((512 - size % 512) % 512))
    }

    /// `width - 1` octal digits then a NUL.
    private static func octal(_ header: inout [UInt8], at start: Int, width: Int, _ value: Int64) {
        let digits = Array(String(value, radix: 8).utf8)
        let padded = [UInt8](repeating: UInt8(ascii: "0"), count: max(0, width - 1 - digits.count)) + digits
        header.replaceSubrange(start..<start + width - 1, with: padded.suffix(width - 1))
        header[start + width - 1] = 0
    }
}
