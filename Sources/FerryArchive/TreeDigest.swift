import Crypto
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What `TreeDigest.summarize` learns about a tree in one walk.
public struct TreeSummary: Sendable, Equatable {
    /// "sha256:" followed by 64 lowercase hex digits.
    public let digest: String
    /// Bytes of regular file content, each inode counted once (hardlinks share).
    public let size: UInt64
    /// Number of entries, the root included.
    public let entries: Int
}

/// A content address for a directory tree: equal for equal trees, however they were
/// produced (copied from a directory, extracted from a tar, on another machine).
///
/// ## Format, version 1
///
/// The digest is `"sha256:" + lowercase hex(SHA-256(stream))`, where `stream` is the
/// 21 bytes `"ferry-tree-digest/v1\n"` followed by one record per entry.
///
/// Entries come in walk order: the root first, then depth-first pre-order (a directory,
/// then everything under it, then its next sibling), the entries of each directory sorted
/// by the unsigned bytewise order of their names. Symlinks are never followed; a
/// directory on another filesystem than the root's is recorded but not entered.
///
/// A record is, with every integer unsigned and big-endian:
///
/// | field | encoding |
/// |-------|----------|
/// | path  | u32 length, then the path bytes relative to the root, no leading "./"; the root is "." |
/// | type  | one ASCII byte: `d` directory, `f` regular file, `l` symlink, `c` character device, `b` block device, `p` FIFO, `s` socket |
/// | mode  | u32, `st_mode & 07777` (permissions with setuid, setgid, sticky) |
/// | uid   | u32 |
/// | gid   | u32 |
///
/// followed, for `f`, by the u64 content length and the 32-byte SHA-256 of the content;
/// for `l`, by a u32 length and the target bytes; for `c` and `b`, by u32 major and u32
/// minor numbers; for other types, by nothing.
///
/// Deliberately left out: timestamps (they differ between a directory and a tar of it,
/// and after every copy), extended attributes and ACLs, hardlink structure (each name of
/// a hardlinked file is recorded as a regular file with that content), and file flags.
public enum TreeDigest {
    /// The first bytes of the hashed stream; a new format gets a new header.
    public static let formatHeader = "ferry-tree-digest/v1\n"

    /// The digest of the tree at `root` (see the format above).
    public static func compute(root: String) throws(ArchiveError) -> String {
        try summarize(root: root).digest
    }

    /// The digest, content size and entry count of the tree at `root`, in one walk.
    /// File contents are streamed in 1 MiB chunks, so memory use does not grow with the
    /// size of the files.
    public static func summarize(root: String) throws(ArchiveError) -> TreeSummary {
        let context = "cannot compute the digest of '\(root)'"
        var stream = SHA256()
        Array(formatHeader.utf8).withUnsafeBytes { stream.update(bufferPointer: $0) }
        var size: UInt64 = 0
        var entries = 0
        var seenInodes = Set<InodeKey>()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }

        try TreeWalk.walk(root: root, context: context) { (directory: borrowing OwnedFD, node: TreeNode) throws(ArchiveError) in
            let status = node.status
            let path = node.relativePath.isEmpty ? [MemberPath.dot] : node.relativePath
            var record: [UInt8] = []
            record.appendBigEndian(UInt32(truncatingIfNeeded: path.count))
            record += path
            record.append(try typeByte(status.kind, path: path, context: context))
            record.appendBigEndian(status.permissions)
            record.appendBigEndian(status.uid)
            record.appendBigEndian(status.gid)
            switch status.kind {
            case .regular:
                let (length, contentDigest) = try hashContent(
                    of: directory, name: node.name, buffer: buffer, path: path, context: context)
                record.appendBigEndian(length)
                record += contentDigest
                // A hardlinked file occupies its bytes once, however many names it has.
                if status.linkCount < 2 || seenInodes.insert(InodeKey(status)).inserted {
                    size += length
                }
            case .symlink:
                let target = try io("\(context): readlink '\(display(path))'") { () throws(Errno) in
                    try directory.readLink(at: node.name)
                }
                record.appendBigEndian(UInt32(truncatingIfNeeded: target.count))
                record += target
            case .characterDevice, .blockDevice:
                record.appendBigEndian(status.deviceMajor)
                record.appendBigEndian(status.deviceMinor)
            case .directory, .fifo, .socket, .unknown:
                break
            }
            record.withUnsafeBytes { stream.update(bufferPointer: $0) }
            entries += 1
        }
        return TreeSummary(digest: "sha256:" + hex(stream.finalize()), size: size, entries: entries)
    }

    private static func typeByte(_ kind: FileStatus.Kind, path: [UInt8], context: String) throws(ArchiveError) -> UInt8 {
        switch kind {
        case .directory: UInt8(ascii: "d")
        case .regular: UInt8(ascii: "f")
        case .symlink: UInt8(ascii: "l")
        case .characterDevice: UInt8(ascii: "c")
        case .blockDevice: UInt8(ascii: "b")
        case .fifo: UInt8(ascii: "p")
        case .socket: UInt8(ascii: "s")
        case .unknown: throw ArchiveError(.io, "\(context): '\(display(path))' has an unknown file type")
        }
    }

    /// Streams one regular file through SHA-256; returns its length and digest.
    private static func hashContent(
        of directory: borrowing OwnedFD, name: [UInt8], buffer: UnsafeMutableRawBufferPointer,
        path: [UInt8], context: String
    ) throws(ArchiveError) -> (UInt64, [UInt8]) {
        let message = "\(context): read '\(display(path))'"
        // O_NOFOLLOW: the name was a regular file when listed; if it has since become a
        // symlink, fail rather than hash whatever it points to. O_NONBLOCK: the same for a
        // FIFO, which would otherwise block the open forever.
        let file = try io(message) { () throws(Errno) in
            try directory.openAt(name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
        }
        guard try io(message, { () throws(Errno) in try file.status() }).kind == .regular else {
            throw ArchiveError(.io, "\(context): '\(display(path))' changed type during the walk")
        }
        var hasher = SHA256()
        var length: UInt64 = 0
        while true {
            let count = try io(message) { () throws(Errno) in try file.read(into: buffer) }
            if count == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            length += UInt64(count)
        }
        return (length, Array(hasher.finalize()))
    }

    /// Lowercase hex of `digest` (also used for the export manifest's checksums).
    static func hex(_ digest: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for byte in digest {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}

/// Identifies an inode across its hardlinks.
struct InodeKey: Hashable {
    let device: UInt64
    let inode: UInt64

    init(_ status: FileStatus) {
        device = status.device
        inode = status.inode
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}
