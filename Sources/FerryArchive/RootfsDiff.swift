import CArchive
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What `RootfsDiff.create` wrote.
public struct RootfsDiffSummary: Sendable, Equatable {
    /// Absolute paths the container deleted from its image, for `deleted.files`: each
    /// whiteout, and each opaque directory (whose lower content is gone, though the
    /// directory itself is in the tar).
    public let deleted: [String]
    /// Absolute paths left out of the tar because an export cannot carry them: sockets
    /// (recreated by whoever binds them) and device nodes (refused on import).
    public let skipped: [String]
    /// Entries written to the tar, the root included.
    public let entries: Int
}

/// The container's changes to its image, as the `rootfs-diff.tar` and `deleted.files`
/// members of an export archive carry them.
///
/// The changes live in the overlayfs upper directory, in overlayfs's own encoding: a
/// deleted lower file is a whiteout (a character device 0/0), and a directory that
/// replaced a lower one is marked opaque (`trusted.overlay.opaque` = "y"). Neither
/// survives a tar intact (`trusted.*` attributes are never exported, devices are refused
/// on import), so they travel as a list of absolute paths and are re-encoded on import.
public enum RootfsDiff {
    /// Writes an uncompressed pax tar of the upper directory `upperDirectory` to the new
    /// file `tarPath` (mode 0600), and returns the deleted paths.
    ///
    /// The walk never follows a symlink and does not enter other filesystems. Kept:
    /// types, modes (setuid/setgid included), numeric owners, modification times,
    /// symlink targets, hardlinks (later names of an inode become hardlink entries),
    /// FIFOs, and the `user.*` and `security.capability` attributes; nothing else.
    /// Must run as root to see the `trusted.overlay.*` attributes. An upper directory
    /// that uses overlayfs's redirect_dir or metacopy features is refused: its content
    /// then depends on the lower layers in ways a tar cannot express. On error, the
    /// partial tar is deleted.
    public static func create(upperDirectory: String, tarPath: String) throws(ArchiveError) -> RootfsDiffSummary {
        let context = "cannot create the rootfs diff of '\(upperDirectory)'"
        let file = try io("\(context): create '\(tarPath)'") { () throws(Errno) in
            try OwnedFD.open(tarPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        }
        do throws(ArchiveError) {
            var output = try TarOutput(fd: file, compression: .none, context: context)
            let summary = try writeTree(upperDirectory, to: output, context: context)
            try output.close(context: context)
            return summary
        } catch {
            try? Files.removeUntrustedTree(tarPath)
            throw error
        }
    }

    /// Extracts the rootfs diff tar at `tarPath` into the empty directory `upper`, then
    /// records `deleted` in it as whiteouts and opaque directories.
    public static func apply(tarPath: String, deleted: [String], intoUpper upper: String) throws(ArchiveError) -> ExtractionReport {
        let context = "cannot apply the rootfs diff '\(tarPath)'"
        try checkDeleted(deleted, context: context)
        let root = try SafeTreeExtractor.openEmptyDirectory(upper, context: context)
        let file = try io("\(context): open") { () throws(Errno) in try OwnedFD.open(tarPath, O_RDONLY) }
        let input = try TarInput(fd: file, filters: .none, context: context)
        return try apply(input, deleted: deleted, root: root, context: context, label: "member")
    }

    /// Extracts the current member of `reader` (the rootfs diff tar) straight from the
    /// export archive into the empty directory `upper`, then records `deleted` in it.
    public static func apply(from reader: ExportReader, deleted: [String], intoUpper upper: String) throws(ArchiveError) -> ExtractionReport {
        let context = "cannot read export '\(reader.path)'"
        try checkDeleted(deleted, context: context)
        let root = try SafeTreeExtractor.openEmptyDirectory(upper, context: context)
        return try reader.withInnerTar { (input: borrowing TarInput, name: String) throws(ArchiveError) -> ExtractionReport in
            try apply(input, deleted: deleted, root: root, context: context, label: "\(name) member")
        }
    }

    /// Records `deleted` (absolute paths, as in `deleted.files`) in the upper directory
    /// `upper`: a path that is a directory there becomes opaque; anything else becomes a
    /// whiteout, with missing parents created (0755). A path where the upper directory
    /// already has a non-directory needs nothing: that entry already hides the lower
    /// one. The paths are untrusted: they must be absolute and normalized, may not be
    /// "/", and are resolved inside `upper` without following any symlink.
    public static func recordDeletions(_ deleted: [String], in upper: borrowing OwnedFD) throws(ArchiveError) {
        let context = "cannot record deleted files"
        try checkDeleted(deleted, context: context)
        try record(deleted, in: upper, context: context)
    }

    // MARK: - Create

    private static func writeTree(
        _ upperDirectory: String, to output: borrowing TarOutput, context: String
    ) throws(ArchiveError) -> RootfsDiffSummary {
        var deleted: [String] = []
        var skipped: [String] = []
        var entries = 0
        var firstNames: [InodeKey: [UInt8]] = [:]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }

        try TreeWalk.walk(root: upperDirectory, context: context) { (directory: borrowing OwnedFD, node: TreeNode) throws(ArchiveError) in
            let status = node.status
            let member = node.relativePath.isEmpty ? "." : display(node.relativePath)
            switch status.kind {
            case .characterDevice where status.rdev == 0:
                // An overlayfs whiteout: the lower file at this path was deleted.
                deleted.append(try absolutePath(node.relativePath, context: context))
                return
            case .characterDevice, .blockDevice, .socket:
                skipped.append(try absolutePath(node.relativePath, context: context))
                return
            case .unknown:
                throw ArchiveError(.io, "\(context): '\(member)' has an unknown file type")
            default:
                break
            }

            let entry = try ArchiveEntry(context: context)
            archive_entry_copy_pathname(entry.handle, cPath(node.relativePath.isEmpty ? [MemberPath.dot] : node.relativePath))
            archive_entry_set_perm(entry.handle, mode_t(status.permissions))
            archive_entry_set_uid(entry.handle, la_int64_t(status.uid))
            archive_entry_set_gid(entry.handle, la_int64_t(status.gid))
            archive_entry_set_mtime(entry.handle, time_t(status.modificationSeconds), Int(status.modificationNanoseconds))

            // The first name of a multiply linked inode carries the content; later
            // names link to it.
            if status.kind != .directory && status.linkCount > 1 {
                let key = InodeKey(status)
                if let first = firstNames[key] {
                    archive_entry_set_filetype(entry.handle, UInt32(Glibc.S_IFREG))
                    archive_entry_copy_hardlink(entry.handle, cPath(first))
                    archive_entry_set_size(entry.handle, 0)
                    try output.writeHeader(entry, member: member, context: context)
                    try output.finishEntry(member: member, context: context)
                    entries += 1
                    return
                }
                firstNames[key] = node.relativePath
            }

            switch status.kind {
            case .directory:
                let opened = try io("\(context): open '\(member)'") { () throws(Errno) in
                    try directory.openAt(node.name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                }
                let attributes = try readAttributes(of: opened, member: member, context: context)
                if attributes.opaque && !node.relativePath.isEmpty {
                    deleted.append(try absolutePath(node.relativePath, context: context))
                }
                archive_entry_set_filetype(entry.handle, UInt32(Glibc.S_IFDIR))
                add(attributes.kept, to: entry)
                try output.writeHeader(entry, member: member, context: context)
            case .regular:
                let opened = try io("\(context): open '\(member)'") { () throws(Errno) in
                    try directory.openAt(node.name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
                }
                let current = try io("\(context): stat '\(member)'") { () throws(Errno) in try opened.status() }
                guard current.kind == .regular, current.inode == status.inode else {
                    throw ArchiveError(.io, "\(context): '\(member)' changed during the walk")
                }
                let attributes = try readAttributes(of: opened, member: member, context: context)
                archive_entry_set_filetype(entry.handle, UInt32(Glibc.S_IFREG))
                archive_entry_set_size(entry.handle, la_int64_t(current.size))
                add(attributes.kept, to: entry)
                try output.writeHeader(entry, member: member, context: context)
                try streamContent(of: opened, size: current.size, to: output, buffer: buffer, member: member, context: context)
            case .symlink:
                let target = try io("\(context): readlink '\(member)'") { () throws(Errno) in
                    try directory.readLink(at: node.name)
                }
                archive_entry_set_filetype(entry.handle, UInt32(Glibc.S_IFLNK))
                archive_entry_copy_symlink(entry.handle, cPath(target))
                try output.writeHeader(entry, member: member, context: context)
            case .fifo:
                archive_entry_set_filetype(entry.handle, UInt32(Glibc.S_IFIFO))
                try output.writeHeader(entry, member: member, context: context)
            default:
                break
            }
            try output.finishEntry(member: member, context: context)
            entries += 1
        }
        return RootfsDiffSummary(deleted: deleted, skipped: skipped, entries: entries)
    }

    /// What the extended attributes of one upper-directory entry mean for the diff.
    private struct Attributes {
        /// Attributes exported with the entry (the rootfs policy's).
        var kept: [(name: String, value: [UInt8])] = []
        /// `trusted.overlay.opaque` is "y": the directory hides the lower one.
        var opaque = false
    }

    private static func readAttributes(of file: borrowing OwnedFD, member: String, context: String) throws(ArchiveError) -> Attributes {
        let message = "\(context): extended attributes of '\(member)'"
        var attributes = Attributes()
        let names = try io(message) { () throws(Errno) in try file.extendedAttributeNames() }
        for name in names {
            switch name {
            case "trusted.overlay.opaque":
                // "y" is opaque; "x" (Linux 6.7+) only marks a directory that holds
                // xwhiteouts in a lower layer, which an upper directory never has.
                let value = try io(message) { () throws(Errno) in try file.extendedAttribute(name) }
                attributes.opaque = value == [UInt8(ascii: "y")]
            case "trusted.overlay.redirect", "trusted.overlay.metacopy":
                throw ArchiveError(
                    .io,
                    "\(context): '\(member)' has \(name): the overlay was mounted with redirect_dir or metacopy, which a rootfs diff cannot carry")
            default:
                guard ExtractionPolicy.rootfs.keepsAttribute(name) else { continue }
                // Gone between the listing and now: nothing to keep.
                guard let value = try io(message, { () throws(Errno) in try file.extendedAttribute(name) }) else { continue }
                attributes.kept.append((name, value))
            }
        }
        return attributes
    }

    private static func add(_ attributes: [(name: String, value: [UInt8])], to entry: borrowing ArchiveEntry) {
        for attribute in attributes {
            attribute.value.withUnsafeBytes { value in
                archive_entry_xattr_add_entry(entry.handle, attribute.name, value.baseAddress, value.count)
            }
        }
    }

    /// Streams exactly `size` bytes of `file` (the size its header announced).
    private static func streamContent(
        of file: borrowing OwnedFD, size: Int64, to output: borrowing TarOutput, buffer: UnsafeMutableRawBufferPointer,
        member: String, context: String
    ) throws(ArchiveError) {
        var total: Int64 = 0
        while true {
            let count = try io("\(context): read '\(member)'") { () throws(Errno) in try file.read(into: buffer) }
            if count == 0 { break }
            guard Int64(count) <= size - total else {
                throw ArchiveError(.io, "\(context): '\(member)' grew while it was being archived")
            }
            try output.write(UnsafeRawBufferPointer(rebasing: buffer[0..<count]), member: member, context: context)
            total += Int64(count)
        }
        guard total == size else {
            throw ArchiveError(.io, "\(context): '\(member)' shrank while it was being archived")
        }
    }

    /// "/" + the relative path. `deleted.files` is JSON, whose strings cannot carry
    /// names that are not UTF-8; such a name fails the export rather than silently
    /// bringing a deleted file back after import.
    private static func absolutePath(_ relative: [UInt8], context: String) throws(ArchiveError) -> String {
        guard let path = String(validating: relative, as: UTF8.self) else {
            throw ArchiveError(.io, "\(context): '\(display(relative))' is not a UTF-8 name, which deleted.files cannot record")
        }
        return "/" + path
    }

    // MARK: - Apply

    private static func apply(
        _ input: borrowing TarInput, deleted: [String], root: borrowing OwnedFD, context: String, label: String
    ) throws(ArchiveError) -> ExtractionReport {
        var writer = try TreeWriter(root: root, policy: .rootfs, context: context, label: label)
        try writer.extractEntries(from: input, root: root)
        // Whiteouts before the directories' metadata: creating one changes its
        // parent's modification time, which `finish` then restores.
        try record(deleted, in: root, context: context)
        try writer.finish(root: root)
        return writer.report
    }

    private static func record(_ deleted: [String], in root: borrowing OwnedFD, context: String) throws(ArchiveError) {
        // Used only for its confined lookups and its messages.
        let writer = try TreeWriter(root: root, policy: .rootfs, context: context, label: "deleted.files entry", requireEmpty: false)
        for path in deleted {
            let relative = Array(path.utf8.dropFirst())
            let slash = relative.lastIndex(of: MemberPath.slash)
            let parentPath = slash.map { Array(relative[..<$0]) } ?? []
            let leaf = slash.map { Array(relative[($0 + 1)...]) } ?? relative
            let parent = try writer.openParent(parentPath, member: path, root: root)
            let existing: FileStatus?
            do throws(Errno) {
                existing = try parent.status(of: leaf)
            } catch {
                guard error == .noSuchFileOrDirectory else {
                    throw ArchiveError(.writeFailed, "\(context): deleted.files entry '\(path)'", cause: error)
                }
                existing = nil
            }
            switch existing?.kind {
            case nil:
                // A whiteout is a character device 0/0 with mode 0, as overlayfs makes them.
                try io("\(context): deleted.files entry '\(path)': create whiteout") { () throws(Errno) in
                    try parent.makeNode(at: leaf, mode: S_IFCHR, device: 0)
                }
            case .directory?:
                try io("\(context): deleted.files entry '\(path)': mark opaque") { () throws(Errno) in
                    let directory = try parent.openAt(leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                    try directory.setExtendedAttribute("trusted.overlay.opaque", [UInt8(ascii: "y")])
                }
            default:
                // Already a whiteout (a repeated entry) or a file that hides the lower
                // one by itself.
                break
            }
        }
    }

    /// Checks every deleted path before anything is written.
    private static func checkDeleted(_ deleted: [String], context: String) throws(ArchiveError) {
        for path in deleted {
            if let reason = deletedPathRefusal(path) {
                throw ArchiveError(.unsafeMember, "\(context): refusing deleted.files entry '\(path)': \(reason)")
            }
        }
    }

    /// Why `path` is not an acceptable deleted path, or nil when it is.
    static func deletedPathRefusal(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return "not an absolute path" }
        if path == "/" { return "the root itself" }
        if path.utf8.contains(0) { return "contains a NUL byte" }
        for component in path.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            if component.isEmpty { return "not normalized (empty component)" }
            if component == "." { return "not normalized ('.' component)" }
            if component == ".." { return "path leaves the root ('..')" }
        }
        return nil
    }
}
