import CArchive
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What an extraction or copy did.
public struct ExtractionReport: Sendable, Equatable {
    /// Members written, the destination root included when the source described it.
    public let entries: Int
    /// Non-fatal problems libarchive reported (a time or an extended attribute that could
    /// not be set), each naming its member; at most 50 are kept.
    public let warnings: [String]
}

/// Materializes a tree into an empty directory, from a tar stream or from another
/// directory, preserving file types, permissions (setuid/setgid/sticky included),
/// numeric ownership, symlinks, hardlinks, device nodes, FIFOs, timestamps, extended
/// attributes and ACLs.
///
/// Nothing is ever written outside the destination: see `MemberPath` and `DiskWriter`
/// for how. Ownership is only restored when running as root.
public enum TreeExtractor {
    /// Extracts the tar stream in the file at `archive` into `destination`, which must be
    /// an existing, empty directory.
    ///
    /// The compression (none, gzip, bzip2, xz, lzma, zstd, lz4) is detected from the
    /// content, whatever the file is called. A member with an absolute path or a ".."
    /// component, one that would go through a symlink, or one that would replace the
    /// destination itself with a non-directory is refused with `.unsafeMember`; a damaged
    /// or truncated archive gives `.unreadable`. On error the destination may hold a
    /// partial tree, which the caller discards.
    public static func extract(archive: String, into destination: String) throws(ArchiveError) -> ExtractionReport {
        let context = "cannot extract '\(archive)'"
        let root = try prepareDestination(destination, context: context)
        var writer = try DiskWriter(context: context)
        let reader = try TarReader(path: archive, context: context)
        var entries = 0
        while true {
            var next: OpaquePointer? = nil
            let status = archive_read_next_header(reader.handle, &next)
            if status == ARCHIVE_EOF { break }
            // ARCHIVE_RETRY counts as failure too: skipping a damaged header would
            // silently drop files from the image.
            if status != ARCHIVE_OK && status != ARCHIVE_WARN {
                throw ArchiveError(.unreadable, "\(context): \(libarchiveError(reader.handle))")
            }
            guard let entry = next else {
                throw ArchiveError(.unreadable, "\(context): libarchive returned no entry")
            }
            guard let rawName = archive_entry_pathname(entry) else {
                throw ArchiveError(.unreadable, "\(context): member \(entries + 1) has no usable path name")
            }
            let name = bytes(of: rawName)
            let member = display(name)
            if status == ARCHIVE_WARN {
                writer.warn("member '\(member)': \(libarchiveError(reader.handle))")
            }

            let relative = try confine(name, member: member, context: context)
            // Only a directory may describe the destination root ("./" in most tars):
            // anything else would replace the destination, e.g. with a symlink to "/".
            if relative.isEmpty && archive_entry_filetype(entry) != S_IFDIR {
                throw ArchiveError(.unsafeMember, "\(context): member '\(member)': would replace the destination with a non-directory")
            }
            archive_entry_copy_pathname(entry, cPath(MemberPath.join(root, relative)))
            if let rawLink = archive_entry_hardlink(entry) {
                let target = try confine(bytes(of: rawLink), member: member, context: context, what: "hardlink target")
                if target.isEmpty {
                    throw ArchiveError(.unsafeMember, "\(context): member '\(member)': hardlink to the destination root")
                }
                archive_entry_copy_hardlink(entry, cPath(MemberPath.join(root, target)))
            }

            try writer.writeHeader(entry, member: member)
            try copyData(from: reader, to: &writer, member: member, context: context)
            try writer.finishEntry(member: member)
            entries += 1
        }
        try writer.close()
        return ExtractionReport(entries: entries, warnings: writer.warnings)
    }

    /// Copies the directory tree at `source` into `destination`, which must be an
    /// existing, empty directory, with the same preservation as `extract`. The
    /// destination root gets the source root's metadata.
    ///
    /// Symlinks are copied, never followed; directories on another filesystem (mount
    /// points) are created but not entered; sockets are skipped, as tar does. Extended
    /// attributes and ACLs are copied for regular files and directories, which are read
    /// through an open descriptor, and for other types through `/proc/self/fd`.
    public static func copy(directory source: String, into destination: String) throws(ArchiveError) -> ExtractionReport {
        let context = "cannot copy '\(source)'"
        let sourceRoot: String
        do {
            sourceRoot = try Files.realPath(source)
        } catch {
            throw error.archiveError(context)
        }
        let root = try prepareDestination(destination, context: context)
        let sourceBytes = Array(sourceRoot.utf8)
        // Copying a tree into a directory inside it would copy the copy, forever.
        if sourceBytes == [MemberPath.slash] || root.starts(with: sourceBytes + [MemberPath.slash]) {
            throw ArchiveError(.badDestination, "\(context): the destination '\(destination)' is inside the source")
        }

        let metadata = try DiskMetadataReader(context: context)
        var writer = try DiskWriter(context: context)
        var firstNames: [InodeKey: [UInt8]] = [:]
        var entries = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }

        try TreeWalk.walk(root: sourceRoot, context: context) { (directory: borrowing OwnedFD, node: TreeNode) throws(ArchiveError) in
            let status = node.status
            if status.kind == .socket { return }
            let member = node.relativePath.isEmpty ? "." : display(node.relativePath)
            let target = MemberPath.join(root, node.relativePath)
            let entry = try ArchiveEntry(context: context)
            archive_entry_copy_pathname(entry.handle, cPath(target))

            // The first name of a multiply linked inode is copied; later names link to it.
            var linkTarget: [UInt8]? = nil
            if status.kind != .directory && status.linkCount > 1 {
                let key = InodeKey(status)
                if let first = firstNames[key] {
                    linkTarget = first
                } else {
                    firstNames[key] = target
                }
            }

            switch status.kind {
            case .regular, .directory:
                let flags = O_RDONLY | O_NOFOLLOW | (status.kind == .directory ? O_DIRECTORY : O_NONBLOCK | O_NOCTTY)
                let file = try io("\(context): open '\(member)'") { () throws(Errno) in
                    try directory.openAt(node.name, flags)
                }
                try fillMetadata(metadata, entry, fd: file.raw, writer: &writer, member: member, context: context)
                if archive_entry_filetype(entry.handle) != (status.kind == .directory ? S_IFDIR : S_IFREG) {
                    throw ArchiveError(.io, "\(context): '\(member)' changed type during the copy")
                }
                if let linkTarget {
                    archive_entry_copy_hardlink(entry.handle, cPath(linkTarget))
                    archive_entry_set_size(entry.handle, 0)
                }
                try writer.writeHeader(entry.handle, member: member)
                if status.kind == .regular && linkTarget == nil {
                    try streamContent(of: file, to: writer, buffer: buffer, member: member, context: context)
                }
            default:
                // Symlinks, devices and FIFOs cannot be opened for reading without
                // following or side effects; the magic link of the parent's descriptor
                // gives libarchive a race-free path to the entry itself.
                archive_entry_copy_sourcepath(entry.handle, cPath(Array("/proc/self/fd/\(directory.raw)/".utf8) + node.name))
                try fillMetadata(metadata, entry, fd: -1, writer: &writer, member: member, context: context)
                if let linkTarget {
                    archive_entry_copy_hardlink(entry.handle, cPath(linkTarget))
                    archive_entry_set_size(entry.handle, 0)
                }
                try writer.writeHeader(entry.handle, member: member)
            }
            try writer.finishEntry(member: member)
            entries += 1
        }
        try writer.close()
        return ExtractionReport(entries: entries, warnings: writer.warnings)
    }

    // MARK: - Helpers

    /// Resolves the destination to its real path (so that it contains no symlink for
    /// SECURE_SYMLINKS to trip on) and checks that it is an empty directory.
    private static func prepareDestination(_ destination: String, context: String) throws(ArchiveError) -> [UInt8] {
        do {
            let real = try Files.realPath(destination)
            guard Files.isDirectory(real) else {
                throw ArchiveError(.badDestination, "\(context): destination '\(destination)' is not a directory")
            }
            guard try Files.listDirectory(real).isEmpty else {
                throw ArchiveError(.badDestination, "\(context): destination '\(destination)' is not empty")
            }
            return Array(real.utf8)
        } catch let error as ArchiveError {
            throw error
        } catch {
            throw ArchiveError(.badDestination, "\(context): destination: \(error)")
        }
    }

    private static func confine(
        _ name: [UInt8], member: String, context: String, what: String = "path"
    ) throws(ArchiveError) -> [UInt8] {
        do {
            return try MemberPath.normalize(name)
        } catch {
            let detail = what == "path" ? error.reason : "\(what): \(error.reason)"
            throw ArchiveError(.unsafeMember, "\(context): member '\(member)': \(detail)")
        }
    }

    private static func copyData(
        from reader: borrowing TarReader, to writer: inout DiskWriter, member: String, context: String
    ) throws(ArchiveError) {
        while true {
            var block: UnsafeRawPointer? = nil
            var count = 0
            var offset: la_int64_t = 0
            let status = archive_read_data_block(reader.handle, &block, &count, &offset)
            if status == ARCHIVE_EOF { return }
            if status != ARCHIVE_OK && status != ARCHIVE_WARN {
                throw ArchiveError(.unreadable, "\(context): member '\(member)': \(libarchiveError(reader.handle))")
            }
            if status == ARCHIVE_WARN {
                writer.warn("member '\(member)': \(libarchiveError(reader.handle))")
            }
            try writer.writeBlock(block, count: count, offset: Int64(offset), member: member)
        }
    }

    private static func fillMetadata(
        _ metadata: borrowing DiskMetadataReader, _ entry: borrowing ArchiveEntry, fd: Int32,
        writer: inout DiskWriter, member: String, context: String
    ) throws(ArchiveError) {
        let (status, message) = metadata.fill(entry, fd: fd)
        if status == ARCHIVE_OK { return }
        if status == ARCHIVE_WARN {
            writer.warn("member '\(member)': \(message)")
            return
        }
        throw ArchiveError(.io, "\(context): read metadata of '\(member)': \(message)")
    }

    private static func streamContent(
        of file: borrowing OwnedFD, to writer: borrowing DiskWriter, buffer: UnsafeMutableRawBufferPointer,
        member: String, context: String
    ) throws(ArchiveError) {
        while true {
            let count = try io("\(context): read '\(member)'") { () throws(Errno) in try file.read(into: buffer) }
            if count == 0 { return }
            try writer.write(UnsafeRawBufferPointer(rebasing: buffer[0..<count]), member: member)
        }
    }
}
