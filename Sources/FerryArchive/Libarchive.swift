import CArchive
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// Owners for libarchive handles. Each is non-copyable so exactly one value frees the
// handle; a thrown error anywhere in an extraction releases everything on the way out.

/// libarchive's message for the last failure on `handle`.
func libarchiveError(_ handle: OpaquePointer) -> String {
    guard let message = archive_error_string(handle) else { return "unknown libarchive error" }
    return String(cString: message)
}

/// A NUL-terminated copy of a byte path, for libarchive's `const char *` parameters.
func cPath(_ bytes: [UInt8]) -> [CChar] {
    bytes.map { CChar(bitPattern: $0) } + [0]
}

/// Bytes of a C string that libarchive owns.
func bytes(of string: UnsafePointer<CChar>) -> [UInt8] {
    UnsafeBufferPointer(start: string, count: strlen(string)).map { UInt8(bitPattern: $0) }
}

/// Bytes shown to a person: file names are usually UTF-8, and a message may be lossy.
func display(_ bytes: [UInt8]) -> String {
    String(decoding: bytes, as: UTF8.self)
}

/// One `struct archive_entry`, freed with the value.
struct ArchiveEntry: ~Copyable {
    let handle: OpaquePointer

    init(context: String) throws(ArchiveError) {
        guard let handle = archive_entry_new() else {
            throw ArchiveError(.writeFailed, "\(context): libarchive cannot allocate an entry")
        }
        self.handle = handle
    }

    deinit {
        archive_entry_free(handle)
    }
}

/// A tar stream opened for reading from a file.
///
/// Only the tar format is enabled, with the compression filters Ferry promises (gzip,
/// bzip2, xz/lzma, zstd, lz4); libarchive detects which by content, not by file name.
/// `archive_read_support_filter_all` is avoided on purpose: for filters it was built
/// without, libarchive would fork an external program from this multithreaded process.
struct TarReader: ~Copyable {
    let handle: OpaquePointer

    init(path: String, context: String) throws(ArchiveError) {
        guard let handle = archive_read_new() else {
            throw ArchiveError(.unreadable, "\(context): libarchive cannot allocate a reader")
        }
        _ = archive_read_support_filter_gzip(handle)
        _ = archive_read_support_filter_bzip2(handle)
        _ = archive_read_support_filter_xz(handle)
        _ = archive_read_support_filter_lzma(handle)
        _ = archive_read_support_filter_zstd(handle)
        _ = archive_read_support_filter_lz4(handle)
        _ = archive_read_support_format_tar(handle)
        if archive_read_open_filename(handle, path, 1 << 16) != ARCHIVE_OK {
            // libarchive's text is "Failed to open 'x'"; the errno says why.
            let code = archive_errno(handle)
            let message = libarchiveError(handle) + (code > 0 ? ": \(Errno(rawValue: code))" : "")
            archive_read_free(handle)
            throw ArchiveError(.unreadable, "\(context): \(message)")
        }
        self.handle = handle
    }

    deinit {
        archive_read_free(handle)
    }
}
