import CArchive
import CFerryLinux
import Crypto
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What an extraction did.
public struct ExtractionReport: Sendable, Equatable {
    /// Members written, the destination root included when the source described it.
    public let entries: Int
    /// Non-fatal problems (an attribute that could not be set, a bit removed), each
    /// naming its member; at most 50 are kept.
    public let warnings: [String]
    /// Bytes of regular file content the members declared.
    public var bytes: UInt64 = 0
}

/// What an extraction does with members named `.wh.NAME` and `.wh..wh..opq`, the
/// whiteouts of the OCI image layer format.
public enum WhiteoutHandling: Sendable {
    /// They are ordinary files: a rootfs tarball or an export is taken literally.
    case keep
    /// The tree is an overlayfs lower layer: `.wh.NAME` becomes overlayfs's own whiteout
    /// (a character device 0/0 named NAME), which hides NAME of the layers below, and
    /// `.wh..wh..opq` marks its directory opaque (`trusted.overlay.opaque` = "y"), which
    /// hides everything below it. Other `.wh..wh.` names (AUFS's bookkeeping) are
    /// dropped. Needs root, as every overlay whiteout does.
    case overlay
}

/// How much of an untrusted tree's metadata an extraction keeps.
public enum ExtractionPolicy: Sendable {
    /// A container's root filesystem changes: setuid/setgid bits and file capabilities
    /// (`security.capability`) are kept, with `user.*` extended attributes, because the
    /// image's own programs (ping, sudo) need them.
    case rootfs
    /// A named volume: data only. Setuid/setgid bits are cleared and only `user.*`
    /// extended attributes are kept, so a volume cannot smuggle privileges into a
    /// container that mounts it.
    case volume

    /// Whether an extended attribute named `name` is kept. `trusted.*` (overlayfs's own
    /// metadata) and `security.*` other than capabilities (SELinux labels, IMA) are
    /// never kept: they belong to the host that wrote them.
    public func keepsAttribute(_ name: String) -> Bool {
        if name.hasPrefix("user.") { return true }
        return self == .rootfs && name == "security.capability"
    }

    /// The permission bits an extracted entry gets for the archived `permissions`.
    func permissions(_ permissions: UInt32) -> UInt32 {
        switch self {
        case .rootfs: permissions & 0o7777
        case .volume: permissions & 0o1777
        }
    }
}

/// Extracts an untrusted tar stream into a directory given as a descriptor, so that no
/// member, however crafted, can create or change anything outside it.
///
/// Unlike `TreeExtractor` (which relies on libarchive's path checks for images), every
/// lookup here is done by the kernel: parents are opened with `openat2(2)` and
/// `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`, and
/// the last component is created with `mkdirat`, `symlinkat`, `linkat`, `mkfifoat` or
/// `openat(O_CREAT | O_EXCL | O_NOFOLLOW)`, none of which follows a symlink. A member
/// path may therefore not go through any symlink, even one inside the tree: a tar of a
/// real directory never needs to, and refusing is simpler to reason about than
/// confining. Refused outright: absolute paths, ".." components, device nodes, sockets,
/// a second member with an existing name (except a directory repeating a directory),
/// hardlinks whose target is not already extracted, and data beyond a member's size.
///
/// Symlink targets are stored as they are: they are resolved later, inside the
/// container. Numeric ownership is restored when running as root. Directory modes and
/// times are set after their contents, so a read-only directory can still be filled.
/// On error the destination holds a partial tree, which the caller discards.
public enum SafeTreeExtractor {
    /// Extracts the uncompressed tar at `archive` into `destination`, which must be an
    /// empty directory.
    public static func extract(
        archive: String, into destination: borrowing OwnedFD, policy: ExtractionPolicy
    ) throws(ArchiveError) -> ExtractionReport {
        let context = "cannot extract '\(archive)'"
        let file = try io("\(context): open") { () throws(Errno) in try OwnedFD.open(archive, O_RDONLY) }
        let input = try TarInput(fd: file, filters: .none, context: context)
        return try extract(from: input, into: destination, policy: policy, context: context, label: "member")
    }

    /// Extracts the tar stream read from `stream` (plain or compressed with gzip, zstd,
    /// bzip2, xz or lz4, detected from the content) into the empty directory
    /// `destination`, and hashes every byte read from `stream`, through to its end, so
    /// that the digest covers exactly what was extracted, with no second read that the
    /// file could change under. A tree whose files declare more than `maximumBytes` in
    /// all is refused before the member that crosses the limit is written, so a
    /// compression bomb cannot fill the disk. `name` names the stream in messages.
    public static func extract(
        stream: consuming OwnedFD, name: String, into destination: borrowing OwnedFD, policy: ExtractionPolicy,
        whiteouts: WhiteoutHandling, maximumBytes: UInt64
    ) throws(ArchiveError) -> (report: ExtractionReport, digest: String, streamBytes: UInt64) {
        let context = "cannot extract \(name)"
        let source = HashingSource(fd: stream)
        let report: ExtractionReport
        do {
            let input = try TarInput(
                clientData: Unmanaged.passUnretained(source).toOpaque(), read: hashingSourceRead,
                filters: .imageCompressions, context: context)
            var writer = try TreeWriter(root: destination, policy: policy, context: context, label: "member")
            writer.whiteouts = whiteouts
            writer.maximumBytes = maximumBytes
            try writer.extractEntries(from: input, root: destination)
            try writer.finish(root: destination)
            report = writer.report
        }
        if let error = source.error {
            throw ArchiveError(.io, "\(context): read", cause: error)
        }
        try source.drain(context: context)
        return (report, source.digest(), source.bytes)
    }

    /// Extracts the uncompressed tar at `archive` into the empty directory at `destination`.
    public static func extract(
        archive: String, into destination: String, policy: ExtractionPolicy
    ) throws(ArchiveError) -> ExtractionReport {
        let root = try openEmptyDirectory(destination, context: "cannot extract '\(archive)'")
        return try extract(archive: archive, into: root, policy: policy)
    }

    /// Extracts everything `input` yields, then sets the directories' metadata.
    static func extract(
        from input: borrowing TarInput, into destination: borrowing OwnedFD, policy: ExtractionPolicy,
        context: String, label: String
    ) throws(ArchiveError) -> ExtractionReport {
        var writer = try TreeWriter(root: destination, policy: policy, context: context, label: label)
        try writer.extractEntries(from: input, root: destination)
        try writer.finish(root: destination)
        return writer.report
    }

    /// Opens `path` as a directory and checks that it is empty: extraction relies on
    /// every existing name having come from the archive (duplicates, hardlink targets).
    static func openEmptyDirectory(_ path: String, context: String) throws(ArchiveError) -> OwnedFD {
        let directory: OwnedFD
        do {
            directory = try OwnedFD.open(path, O_RDONLY | O_DIRECTORY)
        } catch {
            throw ArchiveError(.badDestination, "\(context): destination '\(path)'", cause: error)
        }
        try requireEmpty(directory, name: path, context: context)
        return directory
    }

    /// Fails with `.badDestination` unless `directory` is empty.
    static func requireEmpty(_ directory: borrowing OwnedFD, name: String, context: String) throws(ArchiveError) {
        let entries: [[UInt8]]
        do {
            entries = try directory.directoryEntries()
        } catch {
            throw ArchiveError(.badDestination, "\(context): destination '\(name)'", cause: error)
        }
        guard entries.isEmpty else {
            throw ArchiveError(.badDestination, "\(context): destination '\(name)' is not empty")
        }
    }
}

/// How every path inside an extracted tree is looked up: as if the destination were "/",
/// through no symlink (magic or not), on no other filesystem.
let confinedResolution: ResolveFlags = [.inRoot, .noMagicLinks, .noSymlinks, .noMountCrossing]

/// `O_PATH`: a descriptor that only names a directory, as the base of `*at` calls.
let oPath = Int32(FERRY_O_PATH)

/// The extraction engine, in two steps so that `RootfsDiff` can add whiteouts between
/// the entries and the directories' final metadata (creating an entry changes its
/// parent's modification time).
struct TreeWriter {
    let policy: ExtractionPolicy
    let context: String
    /// Names members in messages: "rootfs-diff.tar member", or just "member".
    let label: String
    private(set) var entries = 0
    private(set) var warnings: [String] = []
    /// Whether `.wh.` members are files or overlayfs whiteouts.
    var whiteouts: WhiteoutHandling = .keep
    /// The most bytes of file content the whole tree may declare.
    var maximumBytes: UInt64 = .max
    /// Bytes of file content declared so far.
    private(set) var contentBytes: UInt64 = 0
    private var directories: [PendingDirectory] = []
    private var directoryIndex: [[UInt8]: Int] = [:]
    /// Ownership can only be given away with CAP_CHOWN; without it, files stay ours.
    private let restoresOwnership = geteuid() == 0
    private static let maximumWarnings = 50

    /// Metadata applied to a directory once everything inside it exists.
    private struct PendingDirectory {
        let path: [UInt8]
        let member: String
        let metadata: Metadata
    }

    /// What an entry's header says about ownership, mode, times and attributes.
    struct Metadata {
        var uid: UInt32
        var gid: UInt32
        var permissions: UInt32
        var modification: timespec?
        var access: timespec?
        var attributes: [(name: String, value: [UInt8])]
    }

    var report: ExtractionReport { ExtractionReport(entries: entries, warnings: warnings, bytes: contentBytes) }

    /// A writer into `root`, which must be empty unless `requireEmpty` is false (only
    /// for recording deletions, which create no member).
    init(
        root: borrowing OwnedFD, policy: ExtractionPolicy, context: String, label: String, requireEmpty: Bool = true
    ) throws(ArchiveError) {
        self.policy = policy
        self.context = context
        self.label = label
        if requireEmpty {
            try SafeTreeExtractor.requireEmpty(root, name: "(descriptor \(root.raw))", context: context)
        }
    }

    // MARK: Entries

    /// Creates every entry of `input` under `root`.
    mutating func extractEntries(from input: borrowing TarInput, root: borrowing OwnedFD) throws(ArchiveError) {
        while true {
            var next: OpaquePointer? = nil
            let status = archive_read_next_header(input.handle, &next)
            if status == ARCHIVE_EOF { return }
            // ARCHIVE_RETRY counts as failure too: skipping a damaged header would
            // silently drop files.
            if status != ARCHIVE_OK && status != ARCHIVE_WARN {
                throw ArchiveError(.unreadable, "\(context): \(libarchiveError(input.handle))")
            }
            guard let entry = next, let rawName = archive_entry_pathname(entry) else {
                throw ArchiveError(.unreadable, "\(context): \(label) \(entries + 1) has no usable path name")
            }
            let name = bytes(of: rawName)
            let member = display(name)
            if status == ARCHIVE_WARN {
                warn("\(label) '\(member)': \(libarchiveError(input.handle))")
            }
            try extractEntry(entry, name: name, member: member, input: input, root: root)
            entries += 1
        }
    }

    private mutating func extractEntry(
        _ entry: OpaquePointer, name: [UInt8], member: String, input: borrowing TarInput, root: borrowing OwnedFD
    ) throws(ArchiveError) {
        let relative = try confine(name, member: member)
        if whiteouts == .overlay, try makeWhiteout(relative, member: member, root: root) { return }
        let type = archive_entry_filetype(entry)
        let metadata = try readMetadata(entry, member: member)

        if let rawTarget = archive_entry_hardlink(entry) {
            if archive_entry_size_is_set(entry) != 0 && archive_entry_size(entry) > 0 {
                throw refusal(member, "hardlink with content")
            }
            try makeHardlink(relative, target: bytes(of: rawTarget), member: member, root: root)
            return
        }
        if relative.isEmpty {
            // Only a directory may describe the destination itself ("./"): anything else
            // would replace it, e.g. with a symlink to "/".
            guard type == S_IFDIR else { throw refusal(member, "would replace the destination with a non-directory") }
            deferDirectory([], member: member, metadata: metadata)
            return
        }

        let (parentPath, leaf) = split(relative)
        let parent = try openParent(parentPath, member: member, root: root)
        switch type {
        case S_IFDIR:
            do {
                // 0700 until `finish`: the archived mode may forbid writing the contents.
                try parent.makeDirectory(at: leaf, mode: 0o700)
            } catch {
                guard error == .fileExists else { throw failure(member, "mkdir", error) }
                let existing = try io("\(context): \(label) '\(member)'") { () throws(Errno) in
                    try parent.status(of: leaf)
                }
                guard existing.kind == .directory else { throw refusal(member, "already exists as a non-directory") }
            }
            deferDirectory(relative, member: member, metadata: metadata)
        case S_IFREG:
            let file: OwnedFD
            do {
                file = try parent.openAt(leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY, mode: 0o600)
            } catch {
                throw error == .fileExists ? refusal(member, "already exists (duplicate member)") : failure(member, "create", error)
            }
            let size = archive_entry_size_is_set(entry) != 0 ? Int64(archive_entry_size(entry)) : 0
            guard size >= 0, UInt64(size) <= maximumBytes - contentBytes else {
                throw refusal(member, "its \(size) bytes exceed the limit of \(maximumBytes) bytes for the whole tree")
            }
            contentBytes += UInt64(size)
            try copyData(from: input, to: file, size: size, member: member)
            try apply(metadata, to: file, member: member)
        case S_IFLNK:
            guard let rawTarget = archive_entry_symlink(entry) else { throw refusal(member, "symlink without a target") }
            do {
                try parent.makeSymlink(at: leaf, target: bytes(of: rawTarget))
            } catch {
                throw error == .fileExists ? refusal(member, "already exists (duplicate member)") : failure(member, "symlink", error)
            }
            do {
                if restoresOwnership { try parent.setOwner(of: leaf, uid: metadata.uid, gid: metadata.gid) }
                if let modification = metadata.modification {
                    try parent.setTimes(of: leaf, access: metadata.access ?? modification, modification: modification)
                }
            } catch {
                throw failure(member, "set metadata", error)
            }
        case S_IFIFO:
            do {
                try parent.makeNode(at: leaf, mode: S_IFIFO | 0o600, device: 0)
            } catch {
                throw error == .fileExists ? refusal(member, "already exists (duplicate member)") : failure(member, "mkfifo", error)
            }
            // Opened (without blocking: no writer is needed for a non-blocking read
            // open) so that its metadata is set through a descriptor, never a path.
            let fifo = try io("\(context): \(label) '\(member)': open") { () throws(Errno) in
                try parent.openAt(leaf, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_NOCTTY)
            }
            try apply(metadata, to: fifo, member: member)
        case S_IFCHR, S_IFBLK:
            throw refusal(member, "device nodes are not allowed")
        case S_IFSOCK:
            throw refusal(member, "sockets are not allowed")
        default:
            throw refusal(member, "unsupported file type \(String(type, radix: 8))")
        }
    }

    private mutating func makeHardlink(
        _ relative: [UInt8], target rawTarget: [UInt8], member: String, root: borrowing OwnedFD
    ) throws(ArchiveError) {
        let target = try confine(rawTarget, member: member, what: "hardlink target '\(display(rawTarget))'")
        guard !relative.isEmpty, !target.isEmpty else { throw refusal(member, "hardlink to or from the destination itself") }
        let (targetParentPath, targetLeaf) = split(target)
        let targetParent: OwnedFD
        do throws(Errno) {
            targetParent = try root.open(
                beneath: targetParentPath.isEmpty ? [MemberPath.dot] : targetParentPath,
                oPath | O_DIRECTORY, resolve: confinedResolution)
        } catch {
            throw refusal(
                member, "hardlink target '\(display(rawTarget))': \(describe(error, missing: "does not exist (it must come earlier in the archive)"))")
        }
        let existing: FileStatus
        do throws(Errno) {
            existing = try targetParent.status(of: targetLeaf)
        } catch {
            throw refusal(
                member, "hardlink target '\(display(rawTarget))': \(describe(error, missing: "does not exist (it must come earlier in the archive)"))")
        }
        guard existing.kind != .directory else { throw refusal(member, "hardlink to a directory") }
        let (parentPath, leaf) = split(relative)
        let parent = try openParent(parentPath, member: member, root: root)
        do {
            try parent.makeHardlink(at: leaf, to: targetLeaf, in: targetParent)
        } catch {
            throw error == .fileExists ? refusal(member, "already exists (duplicate member)") : failure(member, "link", error)
        }
    }

    /// The whiteout prefix of the OCI layer format, and its opaque-directory marker.
    private static let whiteoutPrefix = Array(".wh.".utf8)
    private static let opaqueMarker = Array(".wh..wh..opq".utf8)

    /// Records a `.wh.` member in overlayfs's encoding; false for any other member.
    private mutating func makeWhiteout(_ relative: [UInt8], member: String, root: borrowing OwnedFD) throws(ArchiveError) -> Bool {
        let (parentPath, leaf) = split(relative)
        guard leaf.starts(with: Self.whiteoutPrefix) else { return false }
        if leaf == Self.opaqueMarker {
            let parent = try openParent(parentPath, member: member, root: root)
            do {
                let directory = try parent.open(beneath: [MemberPath.dot], O_RDONLY | O_DIRECTORY | O_NOFOLLOW, resolve: confinedResolution)
                try directory.setExtendedAttribute("trusted.overlay.opaque", [UInt8(ascii: "y")])
            } catch {
                throw failure(member, "mark the directory opaque", error)
            }
            return true
        }
        let hidden = Array(leaf.dropFirst(Self.whiteoutPrefix.count))
        if hidden.starts(with: Self.whiteoutPrefix) {
            // ".wh..wh.plnk" and friends: AUFS's own hardlink store, never content.
            warn("\(label) '\(member)': AUFS metadata dropped")
            return true
        }
        guard !hidden.isEmpty, hidden != [MemberPath.dot], hidden != [MemberPath.dot, MemberPath.dot] else {
            throw refusal(member, "whiteout of no name")
        }
        let parent = try openParent(parentPath, member: member, root: root)
        do {
            // A character device 0/0 is overlayfs's whiteout: the kernel allows it
            // whatever the device cgroup says, and it hides the name in lower layers.
            try parent.makeNode(at: hidden, mode: S_IFCHR, device: 0)
        } catch {
            throw error == .fileExists ? refusal(member, "whiteout of a name this layer also holds") : failure(member, "mknod", error)
        }
        entries += 1
        return true
    }

    /// Copies the member's data; holes of a sparse member stay holes.
    private func copyData(from input: borrowing TarInput, to file: borrowing OwnedFD, size: Int64, member: String) throws(ArchiveError) {
        var end: Int64 = 0
        while true {
            var block: UnsafeRawPointer? = nil
            var count = 0
            var offset: la_int64_t = 0
            let status = archive_read_data_block(input.handle, &block, &count, &offset)
            if status == ARCHIVE_EOF { break }
            if status != ARCHIVE_OK && status != ARCHIVE_WARN {
                throw ArchiveError(.unreadable, "\(context): \(label) '\(member)': \(libarchiveError(input.handle))")
            }
            let start = Int64(offset)
            // libarchive stops at the header's size, but a sparse map can place blocks
            // anywhere: nothing may land beyond what the header declared.
            guard start >= 0, count >= 0, start <= size, Int64(count) <= size - start else {
                throw refusal(member, "data exceeds the declared size of \(size) bytes")
            }
            if count > 0, let block {
                try io("\(context): \(label) '\(member)': write") { () throws(Errno) in
                    try file.writeAll(UnsafeRawBufferPointer(start: block, count: count), at: start)
                }
            }
            end = max(end, start + Int64(count))
        }
        if end < size {
            try io("\(context): \(label) '\(member)': truncate") { () throws(Errno) in try file.truncate(to: size) }
        }
    }

    // MARK: Metadata

    private mutating func readMetadata(_ entry: OpaquePointer, member: String) throws(ArchiveError) -> Metadata {
        let uid = archive_entry_uid(entry)
        let gid = archive_entry_gid(entry)
        // (uid_t)-1 means "leave unchanged" to chown(2): it would silently keep root as
        // the owner, so it and anything out of range are refused.
        guard (0..<Int64(UInt32.max)).contains(uid), (0..<Int64(UInt32.max)).contains(gid) else {
            throw refusal(member, "invalid owner \(uid):\(gid)")
        }
        let archived = UInt32(archive_entry_perm(entry)) & 0o7777
        let permissions = policy.permissions(archived)
        if permissions != archived && archive_entry_filetype(entry) != S_IFDIR && archive_entry_hardlink(entry) == nil {
            warn("\(label) '\(member)': setuid/setgid bits removed")
        }
        var metadata = Metadata(uid: UInt32(uid), gid: UInt32(gid), permissions: permissions, attributes: [])
        if archive_entry_mtime_is_set(entry) != 0 {
            metadata.modification = timespec(tv_sec: Int(archive_entry_mtime(entry)), tv_nsec: Int(archive_entry_mtime_nsec(entry)))
        }
        if archive_entry_atime_is_set(entry) != 0 {
            metadata.access = timespec(tv_sec: Int(archive_entry_atime(entry)), tv_nsec: Int(archive_entry_atime_nsec(entry)))
        }
        archive_entry_xattr_reset(entry)
        var rawName: UnsafePointer<CChar>? = nil
        var value: UnsafeRawPointer? = nil
        var size = 0
        while archive_entry_xattr_next(entry, &rawName, &value, &size) == ARCHIVE_OK {
            guard let rawName else { continue }
            let name = String(decoding: bytes(of: rawName), as: UTF8.self)
            guard policy.keepsAttribute(name) else {
                warn("\(label) '\(member)': extended attribute '\(name)' not restored")
                continue
            }
            let data = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
            // A tar with both SCHILY.xattr and LIBARCHIVE.xattr records (libarchive's
            // default) lists each attribute twice: keep one, the last.
            metadata.attributes.removeAll { $0.name == name }
            metadata.attributes.append((name, data))
        }
        if archive_entry_acl_count(entry, ARCHIVE_ENTRY_ACL_TYPE_POSIX1E) > 0 {
            warn("\(label) '\(member)': ACL not restored")
        }
        return metadata
    }

    /// Owner first (chown clears setuid/setgid bits and capabilities), then mode,
    /// attributes, and times last (setting the others does not touch the mtime).
    private mutating func apply(_ metadata: Metadata, to file: borrowing OwnedFD, member: String) throws(ArchiveError) {
        do {
            if restoresOwnership { try file.setOwner(uid: metadata.uid, gid: metadata.gid) }
            try file.setPermissions(mode_t(metadata.permissions))
        } catch {
            throw failure(member, "set owner and mode", error)
        }
        for attribute in metadata.attributes {
            do {
                try file.setExtendedAttribute(attribute.name, attribute.value)
            } catch {
                // As libarchive does: a filesystem without support for a namespace
                // loses the attribute, not the whole tree.
                warn("\(label) '\(member)': extended attribute '\(attribute.name)' not restored: \(error)")
            }
        }
        if let modification = metadata.modification {
            try io("\(context): \(label) '\(member)': set times") { () throws(Errno) in
                try file.setTimes(access: metadata.access ?? modification, modification: modification)
            }
        }
    }

    private mutating func deferDirectory(_ path: [UInt8], member: String, metadata: Metadata) {
        let pending = PendingDirectory(path: path, member: member, metadata: metadata)
        // A directory listed twice takes its last description, as tar does.
        if let index = directoryIndex[path] {
            directories[index] = pending
        } else {
            directoryIndex[path] = directories.count
            directories.append(pending)
        }
    }

    /// Applies the directories' metadata, deepest first.
    mutating func finish(root: borrowing OwnedFD) throws(ArchiveError) {
        for pending in directories.reversed() {
            let directory: OwnedFD
            do {
                directory = try root.open(
                    beneath: pending.path.isEmpty ? [MemberPath.dot] : pending.path,
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW, resolve: confinedResolution)
            } catch {
                throw failure(pending.member, "open directory", error)
            }
            try apply(pending.metadata, to: directory, member: pending.member)
        }
        directories = []
        directoryIndex = [:]
    }

    // MARK: Paths

    /// Opens the directory `path` (relative to `root`, possibly empty for the root),
    /// creating missing components with mode 0755 as tar does for members whose
    /// parents the archive does not list.
    func openParent(_ path: [UInt8], member: String, root: borrowing OwnedFD) throws(ArchiveError) -> OwnedFD {
        do throws(Errno) {
            return try root.open(beneath: path.isEmpty ? [MemberPath.dot] : path, oPath | O_DIRECTORY, resolve: confinedResolution)
        } catch {
            if error != .noSuchFileOrDirectory { throw refusal(member, describe(error, missing: "")) }
        }
        return try createPath(path, member: member, root: root)
    }

    /// Opens or creates each component of `path` in turn, one name at a time.
    func createPath(_ path: [UInt8], member: String, root: borrowing OwnedFD) throws(ArchiveError) -> OwnedFD {
        var current = try io("\(context): \(label) '\(member)': open the destination") { () throws(Errno) in
            try root.open(beneath: [MemberPath.dot], oPath | O_DIRECTORY, resolve: confinedResolution)
        }
        for component in path.split(separator: MemberPath.slash) {
            let name = Array(component)
            do throws(Errno) {
                try current.makeDirectory(at: name, mode: 0o755)
                // mkdir applies the umask; tar's implicit parents are 0755 exactly.
                let created = try current.openAt(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                try created.setPermissions(0o755)
            } catch {
                if error != .fileExists { throw failure(member, "create parent '\(display(name))'", error) }
            }
            do throws(Errno) {
                current = try current.open(beneath: name, oPath | O_DIRECTORY, resolve: confinedResolution)
            } catch {
                throw refusal(member, describe(error, missing: ""))
            }
        }
        return current
    }

    /// The member's path relative to the destination, or a refusal.
    private func confine(_ name: [UInt8], member: String, what: String? = nil) throws(ArchiveError) -> [UInt8] {
        do {
            return try MemberPath.normalize(name)
        } catch {
            let reason: String
            switch error {
            case .absolute: reason = "absolute path"
            case .parentComponent: reason = "path leaves the destination"
            case .empty: reason = "empty path"
            }
            throw refusal(member, what.map { "\($0): \(reason)" } ?? reason)
        }
    }

    private func split(_ path: [UInt8]) -> (parent: [UInt8], leaf: [UInt8]) {
        guard let slash = path.lastIndex(of: MemberPath.slash) else { return ([], path) }
        return (Array(path[..<slash]), Array(path[(slash + 1)...]))
    }

    /// A person's reading of why a confined lookup failed.
    private func describe(_ error: Errno, missing: String) -> String {
        switch error {
        case .tooManySymbolicLinkLevels: "path goes through a symlink"
        case .improperLink: "path crosses a mount point"
        case .notDirectory: "a parent is not a directory"
        case .noSuchFileOrDirectory where !missing.isEmpty: missing
        default: "\(error)"
        }
    }

    // MARK: Errors

    func refusal(_ member: String, _ reason: String) -> ArchiveError {
        ArchiveError(.unsafeMember, "\(context): refusing \(label) '\(member)': \(reason)")
    }

    private func failure(_ member: String, _ operation: String, _ error: Errno) -> ArchiveError {
        if error == .tooManySymbolicLinkLevels || error == .improperLink {
            return refusal(member, describe(error, missing: ""))
        }
        return ArchiveError(.writeFailed, "\(context): \(label) '\(member)': \(operation)", cause: error)
    }

    private mutating func warn(_ message: String) {
        if warnings.count < Self.maximumWarnings { warnings.append(message) }
    }
}

/// A file read through libarchive's callback, hashed on the way.
final class HashingSource {
    private let file: OwnedFD
    private var hasher = SHA256()
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 18, alignment: 16)
    private(set) var bytes: UInt64 = 0
    /// The first read error, reported after libarchive gives up.
    var error: Errno?

    init(fd: consuming OwnedFD) { file = fd }

    deinit { buffer.deallocate() }

    /// Reads the next block into the buffer: its length, 0 at the end, -1 on error.
    func next(_ out: UnsafeMutablePointer<UnsafeRawPointer?>) -> Int {
        do {
            let count = try file.read(into: buffer)
            if count > 0 {
                hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                bytes += UInt64(count)
            }
            out.pointee = UnsafeRawPointer(buffer.baseAddress)
            return count
        } catch {
            self.error = error
            return -1
        }
    }

    /// Hashes what libarchive did not need to read (the tar's trailing zero blocks, or
    /// anything appended), so that the digest is the whole file's.
    func drain(context: String) throws(ArchiveError) {
        var pointer: UnsafeRawPointer? = nil
        while true {
            let count = next(&pointer)
            if count == 0 { return }
            if count < 0 { throw ArchiveError(.io, "\(context): read: \(error.map { "\($0)" } ?? "failed")") }
        }
    }

    /// "sha256:<hex>" of everything read.
    func digest() -> String { "sha256:" + TreeDigest.hex(hasher.finalize()) }
}

private func hashingSourceRead(
    _ archive: OpaquePointer?, _ clientData: UnsafeMutableRawPointer?, _ buffer: UnsafeMutablePointer<UnsafeRawPointer?>?
) -> la_ssize_t {
    guard let clientData, let buffer else { return -1 }
    return la_ssize_t(Unmanaged<HashingSource>.fromOpaque(clientData).takeUnretainedValue().next(buffer))
}
