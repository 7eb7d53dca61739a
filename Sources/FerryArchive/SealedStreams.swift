import CArchive
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// The encryption layer between the export writers and readers and the file: it sees
// only the archive's byte stream (tar, compressed or not), never its members, so the tar
// layout can change without touching it.

/// An encrypted archive file being written: plaintext in, sealed records written at their
/// offsets (`pwrite`, so a chunk held back for a later patch goes to its own place).
final class SealedFileOutput {
    private let sealer: ArchiveSealer
    private let file: OwnedFD
    private let context: String
    /// A failure inside libarchive's write callback, reported instead of libarchive's
    /// "write callback failed".
    private(set) var failure: ArchiveError?

    /// Writes the clear header at the start of `file` (a regular file, empty).
    init(file: consuming OwnedFD, key: ArchiveKey, context: String) throws(ArchiveError) {
        self.sealer = ArchiveSealer(key: key)
        self.file = file
        self.context = context
        try sealer.start(sink)
    }

    /// Plaintext bytes written so far.
    var plaintextSize: Int64 { sealer.plaintextSize }
    /// The file's size once the sealed chunks so far are written.
    var sealedSize: Int64 { sealer.sealedSize }

    func append(_ bytes: UnsafeRawBufferPointer) throws(ArchiveError) {
        try sealer.append(bytes, sink)
    }

    func hold(_ range: Range<Int64>) throws(ArchiveError) {
        try sealer.hold(range)
    }

    func patch(at offset: Int64, _ bytes: [UInt8]) throws(ArchiveError) {
        try sealer.patch(at: offset, bytes)
    }

    func release(start: Int64) throws(ArchiveError) {
        try sealer.release(start: start, sink)
    }

    /// Seals the last chunk. The caller fsyncs.
    func finish() throws(ArchiveError) {
        try sealer.finish(sink)
    }

    /// libarchive's write callback lands here.
    fileprivate func callbackWrite(_ buffer: UnsafeRawPointer?, _ length: Int) -> Int {
        do throws(ArchiveError) {
            try append(UnsafeRawBufferPointer(start: buffer, count: length))
            return length
        } catch {
            failure = error
            return -1
        }
    }

    private func sink(_ bytes: UnsafeRawBufferPointer, _ offset: Int64) throws(ArchiveError) {
        try io("\(context): write") { () throws(Errno) in try file.write(Array(bytes), at: offset) }
    }

    /// For `TarOutput`: the client data and callback that send libarchive's output here.
    var libarchiveClient: (UnsafeMutableRawPointer, ArchiveWriteCallback) {
        (Unmanaged.passUnretained(self).toOpaque(), sealedFileOutputWrite)
    }
}

/// libarchive's write callback type.
typealias ArchiveWriteCallback =
    @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, UnsafeRawPointer?, Int) -> la_ssize_t

/// The client data is the `SealedFileOutput`, which outlives the libarchive writer.
private func sealedFileOutputWrite(
    _ archive: OpaquePointer?, _ clientData: UnsafeMutableRawPointer?, _ buffer: UnsafeRawPointer?, _ length: Int
) -> la_ssize_t {
    guard let clientData else { return -1 }
    let output = Unmanaged<SealedFileOutput>.fromOpaque(clientData).takeUnretainedValue()
    return la_ssize_t(output.callbackWrite(buffer, length))
}

/// An export archive's byte stream as read from its file or pipe: the bytes themselves
/// for a clear archive, the authenticated plaintext for an encrypted one (detected by its
/// first bytes). libarchive reads it through `libarchiveClient`.
final class ArchiveInput {
    private let file: OwnedFD
    private let opener: ArchiveOpener?
    private let context: String
    /// Clear bytes read while looking for the encryption header, handed out first.
    private var prefix: [UInt8]
    private let buffer: UnsafeMutableRawBufferPointer
    /// A failure inside the read callback, reported instead of libarchive's own message.
    private(set) var failure: ArchiveError?

    /// Whether the archive is encrypted.
    var isSealed: Bool { opener != nil }

    /// Reads the start of `file` to see whether it is encrypted. An encrypted archive
    /// needs `key` (and the key must open it); a clear one must come without a key, so
    /// that nobody believes a clear archive was encrypted.
    init(file: consuming OwnedFD, key: ArchiveKey?, context: String) throws(ArchiveError) {
        var head: [UInt8] = []
        do throws(Errno) {
            while head.count < SealedArchiveHeader.size {
                let piece = try file.read(upTo: SealedArchiveHeader.size - head.count)
                if piece.isEmpty { break }
                head += piece
                // A clear archive is told apart as soon as its first bytes differ.
                if !SealedArchiveHeader.magic.starts(with: head.prefix(SealedArchiveHeader.magic.count)) { break }
            }
        } catch {
            throw ArchiveError(.io, "\(context): read", cause: error)
        }
        let opener: ArchiveOpener?
        if SealedArchiveHeader.isSealed(head) {
            guard let key else {
                throw ArchiveError(.badKey, "\(context): it is encrypted; give its key with --key-file")
            }
            opener = try ArchiveOpener(headerBytes: head, key: key, context: context)
        } else {
            if key != nil {
                throw ArchiveError(.badKey, "\(context): it is not encrypted, but a key file was given")
            }
            opener = nil
        }
        self.opener = opener
        self.prefix = opener == nil ? head : []
        self.file = file
        self.context = context
        buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: max(256 << 10, opener?.header.chunkSize ?? 0, SealedArchiveHeader.size), alignment: 16)
    }

    deinit {
        buffer.deallocate()
    }

    /// After the tar's end: an encrypted stream must go on to its last chunk and stop
    /// there (a clear one is read by libarchive as before).
    func requireEnd() throws(ArchiveError) {
        guard let opener else { return }
        try opener.requireEnd(source)
    }

    /// The next bytes of the stream (empty at its end), in `buffer`.
    private func next() throws(ArchiveError) -> UnsafeRawBufferPointer {
        if !prefix.isEmpty {
            let bytes = prefix
            prefix = []
            return stage(bytes)
        }
        guard let opener else {
            let count = try source(buffer)
            return UnsafeRawBufferPointer(rebasing: buffer[0..<count])
        }
        // An empty chunk (a last chunk with nothing in it) is not data.
        while let plaintext = try opener.next(source) {
            if !plaintext.isEmpty { return stage(plaintext) }
        }
        return UnsafeRawBufferPointer(rebasing: buffer[0..<0])
    }

    /// Copies `bytes` (at most a chunk) into `buffer`, which libarchive may read until
    /// the next call.
    private func stage(_ bytes: [UInt8]) -> UnsafeRawBufferPointer {
        let target = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes.count])
        target.copyBytes(from: bytes)
        return UnsafeRawBufferPointer(target)
    }

    private func source(_ into: UnsafeMutableRawBufferPointer) throws(ArchiveError) -> Int {
        try io("\(context): read") { () throws(Errno) in try file.read(into: into) }
    }

    fileprivate func callbackRead(_ out: UnsafeMutablePointer<UnsafeRawPointer?>) -> Int {
        do throws(ArchiveError) {
            let bytes = try next()
            out.pointee = bytes.baseAddress
            return bytes.count
        } catch {
            failure = error
            return -1
        }
    }

    /// For `TarInput`: the client data and callback that read from here.
    var libarchiveClient: (UnsafeMutableRawPointer, TarInput.ReadCallback) {
        (Unmanaged.passUnretained(self).toOpaque(), archiveInputRead)
    }
}

/// The client data is the `ArchiveInput`, which outlives the libarchive reader.
private func archiveInputRead(
    _ archive: OpaquePointer?, _ clientData: UnsafeMutableRawPointer?, _ buffer: UnsafeMutablePointer<UnsafeRawPointer?>?
) -> la_ssize_t {
    guard let clientData, let buffer else { return -1 }
    let input = Unmanaged<ArchiveInput>.fromOpaque(clientData).takeUnretainedValue()
    return la_ssize_t(input.callbackRead(buffer))
}
