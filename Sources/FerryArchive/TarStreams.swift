import CArchive
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// Owners for the libarchive handles of the export archive and of the tars inside it.
// Each is non-copyable so that exactly one value frees the handle, whichever way the
// work ends.

/// How an export archive is compressed.
public enum ExportCompression: String, Sendable, CaseIterable {
    /// zstd at level 1 with up to two worker threads: fast, and the default.
    case zstd
    /// gzip at zlib's default level, for tools that cannot read zstd.
    case gzip
    /// A plain tar.
    case none
}

/// A libarchive writer producing a pax tar, optionally compressed, into a descriptor
/// the caller owns and closes.
struct TarOutput: ~Copyable {
    let handle: OpaquePointer
    private var closed = false

    /// Output is handed to `write(2)` in blocks of this size. Tar's traditional 10 KiB
    /// records would mean a system call per 10 KiB of a multi-GiB archive.
    private static let blockSize: Int32 = 128 * 1024

    /// The most zstd worker threads used, whatever the core count: each worker holds its
    /// own job buffers, and an export's memory must stay bounded (Ferry's whole process
    /// under 64 MiB, of which the process itself takes about 25). Measured on a 3 GiB
    /// export, the peak RSS grows by about 3 MiB without workers; with two, by 14 MiB at
    /// level 1, 25 MiB at level 2 and 48 MiB at level 3.
    static let maximumZstdWorkers = 2

    /// zstd's level. Level 1 is the fastest, and its 512 KiB window keeps the workers'
    /// job buffers small (2 MiB each, against 8 MiB at level 3, zstd's default). The
    /// price: on code-like data its output is about 8% larger than level 2's and 13%
    /// larger than level 3's.
    static let zstdLevel = 1

    init(fd: borrowing OwnedFD, compression: ExportCompression, context: String) throws(ArchiveError) {
        let raw = fd.raw
        try self.init(compression: compression, context: context) { handle in archive_write_open_fd(handle, raw) }
    }

    /// Writes into an encrypted archive file (`SealedFileOutput`), which must outlive
    /// this value.
    init(sealed output: SealedFileOutput, compression: ExportCompression, context: String) throws(ArchiveError) {
        let (client, write) = output.libarchiveClient
        try self.init(compression: compression, context: context) { handle in archive_write_open(handle, client, nil, write, nil) }
    }

    private init(compression: ExportCompression, context: String, open: (OpaquePointer) -> Int32) throws(ArchiveError) {
        guard let handle = archive_write_new() else {
            throw ArchiveError(.writeFailed, "\(context): libarchive cannot allocate a writer")
        }
        do throws(ArchiveError) {
            try Self.configure(handle, compression: compression, context: context, open: open)
        } catch {
            archive_write_free(handle)
            throw error
        }
        self.handle = handle
    }

    private static func configure(
        _ handle: OpaquePointer, compression: ExportCompression, context: String, open: (OpaquePointer) -> Int32
    ) throws(ArchiveError) {
        func check(_ status: Int32) throws(ArchiveError) {
            if status != ARCHIVE_OK {
                throw ArchiveError(.writeFailed, "\(context): \(libarchiveError(handle))")
            }
        }
        // pax_restricted writes plain ustar headers unless a member needs an extension
        // (long names, extended attributes, large ids), so tools that know only ustar
        // still read the archive.
        try check(archive_write_set_format_pax_restricted(handle))
        // Extended attributes only as SCHILY.xattr records, the form GNU tar, Go's
        // archive/tar (podman, CRI-O) and libarchive all read. By default libarchive adds
        // a LIBARCHIVE.xattr copy of each, which its own reader then reports twice and
        // GNU tar warns about.
        _ = archive_write_set_format_option(handle, "pax", "xattrheader", "SCHILY")
        switch compression {
        case .zstd:
            try check(archive_write_add_filter_zstd(handle))
            _ = archive_write_set_filter_option(handle, "zstd", "compression-level", "\(zstdLevel)")
            // Worker threads let compression overlap with reading and hashing the
            // images. Older libarchive versions do not know the option; they then
            // compress on this thread, which is only slower.
            let cores = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
            _ = archive_write_set_filter_option(handle, "zstd", "threads", "\(min(cores, maximumZstdWorkers))")
        case .gzip:
            try check(archive_write_add_filter_gzip(handle))
        case .none:
            try check(archive_write_add_filter_none(handle))
        }
        _ = archive_write_set_bytes_per_block(handle, blockSize)
        // No padding after the end-of-archive blocks: the output is a regular file, and
        // zeros after a compressed frame would be garbage to a strict decompressor.
        _ = archive_write_set_bytes_in_last_block(handle, 1)
        try check(open(handle))
    }

    deinit {
        // An archive that was not closed is being abandoned: archive_write_fail keeps
        // archive_write_free from finishing the stream (and compressing what is
        // buffered) into a file that is about to be deleted.
        if !closed { _ = archive_write_fail(handle) }
        archive_write_free(handle)
    }

    /// Starts the member described by `entry`.
    func writeHeader(_ entry: borrowing ArchiveEntry, member: String, context: String) throws(ArchiveError) {
        try check(archive_write_header(handle, entry.handle), context: "\(context): member '\(member)'")
    }

    /// Appends all of `buffer` to the current member.
    func write(_ buffer: UnsafeRawBufferPointer, member: String, context: String) throws(ArchiveError) {
        if buffer.isEmpty { return }
        let written = archive_write_data(handle, buffer.baseAddress, buffer.count)
        if written != buffer.count {
            let reason = written < 0 ? libarchiveError(handle) : "short write (\(written) of \(buffer.count) bytes)"
            throw ArchiveError(.writeFailed, "\(context): member '\(member)': \(reason)")
        }
    }

    /// Ends the current member (padding it to the tar block size).
    func finishEntry(member: String, context: String) throws(ArchiveError) {
        try check(archive_write_finish_entry(handle), context: "\(context): member '\(member)'")
    }

    /// Writes the end-of-archive blocks and flushes the compressor. Must succeed for the
    /// archive to be complete.
    mutating func close(context: String) throws(ArchiveError) {
        // Set first: after a failed close the handle is in a fatal state and must not
        // be closed again, only freed.
        closed = true
        try check(archive_write_close(handle), context: context)
    }

    /// Gives up on the stream: nothing more is written, not even what is buffered.
    mutating func abandon() {
        guard !closed else { return }
        closed = true
        _ = archive_write_fail(handle)
    }

    private func check(_ status: Int32, context: String) throws(ArchiveError) {
        if status == ARCHIVE_OK { return }
        // ARCHIVE_WARN from the writer means lost information (a name that could not be
        // converted, a truncated field); an export must be exact, so it fails too.
        throw ArchiveError(.writeFailed, "\(context): \(libarchiveError(handle))")
    }
}

/// A libarchive reader limited to the tar format, freed with the value.
///
/// `archive_read_support_filter_all` is avoided on purpose: for filters it was built
/// without, libarchive would fork an external program from this multithreaded process,
/// and an untrusted archive should meet as little decoding code as possible.
struct TarInput: ~Copyable {
    let handle: OpaquePointer

    /// Which decompression filters to enable.
    enum Filters {
        /// The compressions an export archive may use: gzip, zstd, and xz for archives
        /// recompressed by hand. Detected from the content, not the file name.
        case exportCompressions
        /// None: the tars inside an export are uncompressed.
        case none
        /// What an image's layers and rootfs tarballs may use: gzip and zstd (the OCI
        /// layer media types), and bzip2, xz, lzma and lz4 for rootfs tarballs made by
        /// hand. Detected from the content, not the file name.
        case imageCompressions
    }

    /// A C read callback: fills `*buffer` and returns its length, 0 at end, -1 on error.
    typealias ReadCallback =
        @convention(c) (
            OpaquePointer?, UnsafeMutableRawPointer?, UnsafeMutablePointer<UnsafeRawPointer?>?
        ) -> la_ssize_t

    private init(handle: OpaquePointer) {
        self.handle = handle
    }

    /// Reads from an open file, which must stay open as long as this value.
    init(fd: borrowing OwnedFD, filters: Filters, context: String) throws(ArchiveError) {
        let raw = fd.raw
        self.init(
            handle: try Self.open(filters: filters, context: context) { handle in
                archive_read_open_fd(handle, raw, 256 * 1024)
            })
    }

    /// Reads whatever `read` returns; `clientData` is passed to it and must stay valid as
    /// long as this value.
    init(clientData: UnsafeMutableRawPointer, read: ReadCallback, filters: Filters, context: String) throws(ArchiveError) {
        self.init(
            handle: try Self.open(filters: filters, context: context) { handle in
                archive_read_open(handle, clientData, nil, read, nil)
            })
    }

    /// A new handle with `filters` and the tar format, opened by `open`.
    private static func open(
        filters: Filters, context: String, _ open: (OpaquePointer) -> Int32
    ) throws(ArchiveError) -> OpaquePointer {
        guard let handle = archive_read_new() else {
            throw ArchiveError(.unreadable, "\(context): libarchive cannot allocate a reader")
        }
        switch filters {
        case .exportCompressions:
            _ = archive_read_support_filter_gzip(handle)
            _ = archive_read_support_filter_zstd(handle)
            _ = archive_read_support_filter_xz(handle)
        case .imageCompressions:
            _ = archive_read_support_filter_gzip(handle)
            _ = archive_read_support_filter_zstd(handle)
            _ = archive_read_support_filter_bzip2(handle)
            _ = archive_read_support_filter_xz(handle)
            _ = archive_read_support_filter_lzma(handle)
            _ = archive_read_support_filter_lz4(handle)
        case .none:
            break
        }
        _ = archive_read_support_format_tar(handle)
        if open(handle) != ARCHIVE_OK {
            let message = libarchiveError(handle)
            archive_read_free(handle)
            throw ArchiveError(.unreadable, "\(context): \(message)")
        }
        return handle
    }

    deinit {
        archive_read_free(handle)
    }
}
