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

/// A `archive_read_disk` handle used only for `archive_read_disk_entry_from_file`, which
/// fills an entry with a file's metadata, extended attributes and ACLs.
///
/// Its tree-walking API (`archive_read_disk_open`) is deliberately not used: it moves
/// through the tree with `fchdir(2)`, which changes the working directory of the whole
/// multithreaded process. `TreeWalk` walks with directory descriptors instead.
struct DiskMetadataReader: ~Copyable {
    let handle: OpaquePointer

    init(context: String) throws(ArchiveError) {
        guard let handle = archive_read_disk_new() else {
            throw ArchiveError(.io, "\(context): libarchive cannot allocate a disk reader")
        }
        _ = archive_read_disk_set_symlink_physical(handle)
        // File flags (chattr +i and friends) are not restored on extraction, so there is
        // no point reading them; the sparse map is not used by the disk writer.
        _ = archive_read_disk_set_behavior(handle, ARCHIVE_READDISK_NO_FFLAGS | ARCHIVE_READDISK_NO_SPARSE)
        self.handle = handle
    }

    /// Fills `entry` from the open descriptor `fd`, or, when `fd` is -1, from the path
    /// set as the entry's source path (without following a final symlink).
    func fill(_ entry: borrowing ArchiveEntry, fd: Int32) -> (status: Int32, message: String) {
        let status = archive_read_disk_entry_from_file(handle, entry.handle, fd, nil)
        return (status, status == ARCHIVE_OK ? "" : libarchiveError(handle))
    }

    deinit {
        archive_read_free(handle)
    }
}

/// An `archive_write_disk` handle that creates entries whose paths are absolute and
/// already confined to one destination directory.
///
/// Options, and why:
/// - OWNER, PERM, TIME, ACL, XATTR: an image is the lower layer of a container's root,
///   so ownership, setuid bits, capabilities (security.capability) and ACLs must survive.
/// - no `archive_write_disk_set_standard_lookup`: ids are taken as numbers from the
///   archive; the host's /etc/passwd says nothing about the image's users.
/// - no FFLAGS: an immutable or append-only flag would make the store unable to delete
///   the image later.
/// - SECURE_SYMLINKS, SECURE_NODOTDOT: refuse any member whose path goes through a
///   symlink or has a ".." component, so nothing can be written outside the destination.
/// - not SECURE_NOABSOLUTEPATHS: libarchive writes relative to the working directory,
///   which is process-wide; instead every member path is checked to be relative (see
///   `MemberPath`) and then prefixed with the destination's real path, which contains
///   no symlink, so the two checks above still cover every component.
struct DiskWriter: ~Copyable {
    let handle: OpaquePointer
    let context: String
    private(set) var warnings: [String] = []
    private static let maximumWarnings = 50

    static let options: Int32 =
        ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME
        | ARCHIVE_EXTRACT_ACL | ARCHIVE_EXTRACT_XATTR
        | ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT

    init(context: String) throws(ArchiveError) {
        guard let handle = archive_write_disk_new() else {
            throw ArchiveError(.writeFailed, "\(context): libarchive cannot allocate a disk writer")
        }
        _ = archive_write_disk_set_options(handle, Self.options)
        self.handle = handle
        self.context = context
    }

    deinit {
        // Also applies the deferred directory permissions and times if `close` was not
        // reached; every path it touches was checked when its entry was written.
        archive_write_free(handle)
    }

    /// Creates the member described by `entry` (a handle owned by an `ArchiveEntry` or
    /// by the tar reader).
    mutating func writeHeader(_ entry: OpaquePointer, member: String) throws(ArchiveError) {
        try check(archive_write_header(handle, entry), member: member)
    }

    /// Writes a block at `offset` (tar members may be sparse).
    mutating func writeBlock(_ buffer: UnsafeRawPointer?, count: Int, offset: Int64, member: String) throws(ArchiveError) {
        try check(Int32(truncatingIfNeeded: archive_write_data_block(handle, buffer, count, offset)), member: member)
    }

    /// Appends bytes to the current member.
    func write(_ buffer: UnsafeRawBufferPointer, member: String) throws(ArchiveError) {
        let written = archive_write_data(handle, buffer.baseAddress, buffer.count)
        if written < 0 {
            throw failure(member: member, message: libarchiveError(handle))
        }
    }

    mutating func finishEntry(member: String) throws(ArchiveError) {
        try check(archive_write_finish_entry(handle), member: member)
    }

    /// Applies the deferred directory permissions and times; must succeed for the tree
    /// to be complete.
    mutating func close() throws(ArchiveError) {
        try check(archive_write_close(handle), member: nil)
    }

    mutating func warn(_ message: String) {
        if warnings.count < Self.maximumWarnings { warnings.append(message) }
    }

    private mutating func check(_ status: Int32, member: String?) throws(ArchiveError) {
        if status == ARCHIVE_OK { return }
        let message = libarchiveError(handle)
        if status == ARCHIVE_WARN {
            warn(member.map { "member '\($0)': \(message)" } ?? message)
            return
        }
        throw failure(member: member, message: message)
    }

    private func failure(member: String?, message: String) -> ArchiveError {
        // libarchive reports its safety refusals as ordinary failures; tell them apart so
        // that callers (and tests) can see an attack was stopped, not a disk problem.
        let unsafe = message.hasPrefix("Cannot extract through symlink") || message.contains("'..'")
        let subject = member.map { "\(context): member '\($0)'" } ?? context
        return ArchiveError(unsafe ? .unsafeMember : .writeFailed, "\(subject): \(message)")
    }
}
