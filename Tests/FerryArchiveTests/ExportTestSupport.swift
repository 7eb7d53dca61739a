import CArchive
import Crypto
import FerryArchive
import FerrySystem
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Hand-made tars, with whatever headers a hostile archive would have

/// One member of a tar written by `writeRawTar`, described field by field.
struct RawMember {
    enum Kind {
        case file
        case directory
        case symlink(String)
        case hardlink(String)
        case characterDevice(UInt64, UInt64)
        case fifo
    }

    var name: String
    var kind: Kind = .file
    var content: [UInt8] = []
    var mode: mode_t = 0o644
    var uid: Int64 = 0
    var gid: Int64 = 0
    var mtime: Int = 1_700_000_000
    /// The size written in the header when it should differ from the content's length
    /// (libarchive pads a short member with zeros).
    var headerSize: Int64? = nil
    var xattrs: [(String, [UInt8])] = []

    static func file(_ name: String, _ text: String, mode: mode_t = 0o644) -> RawMember {
        RawMember(name: name, content: Array(text.utf8), mode: mode)
    }

    static func file(_ name: String, bytes: [UInt8]) -> RawMember {
        RawMember(name: name, content: bytes, mode: 0o600)
    }

    static func directory(_ name: String, mode: mode_t = 0o755) -> RawMember {
        RawMember(name: name, kind: .directory, mode: mode)
    }

    static func symlink(_ name: String, to target: String) -> RawMember {
        RawMember(name: name, kind: .symlink(target), mode: 0o777)
    }

    static func hardlink(_ name: String, to target: String) -> RawMember {
        RawMember(name: name, kind: .hardlink(target))
    }
}

/// Writes a pax tar holding exactly `members`, optionally compressed.
func writeRawTar(_ members: [RawMember], to path: String, compression: ExportCompression = .none) {
    guard let archive = archive_write_new() else { preconditionFailure("archive_write_new failed") }
    defer { archive_write_free(archive) }
    archive_write_set_format_pax_restricted(archive)
    switch compression {
    case .zstd: archive_write_add_filter_zstd(archive)
    case .gzip: archive_write_add_filter_gzip(archive)
    case .none: break
    }
    precondition(archive_write_open_filename(archive, path) == ARCHIVE_OK)
    for member in members {
        guard let entry = archive_entry_new() else { preconditionFailure("archive_entry_new failed") }
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname(entry, member.name)
        archive_entry_set_perm(entry, member.mode)
        archive_entry_set_uid(entry, member.uid)
        archive_entry_set_gid(entry, member.gid)
        archive_entry_set_mtime(entry, member.mtime, 0)
        var content = member.content
        switch member.kind {
        case .file:
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFREG))
        case .directory:
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFDIR))
            content = []
        case let .symlink(target):
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFLNK))
            archive_entry_set_symlink(entry, target)
            content = []
        case let .hardlink(target):
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFREG))
            archive_entry_set_hardlink(entry, target)
            content = []
        case let .characterDevice(major, minor):
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFCHR))
            archive_entry_set_rdevmajor(entry, dev_t(major))
            archive_entry_set_rdevminor(entry, dev_t(minor))
            content = []
        case .fifo:
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFIFO))
            content = []
        }
        for (name, value) in member.xattrs {
            value.withUnsafeBytes { archive_entry_xattr_add_entry(entry, name, $0.baseAddress, $0.count) }
        }
        archive_entry_set_size(entry, la_int64_t(member.headerSize ?? Int64(content.count)))
        precondition(archive_write_header(archive, entry) == ARCHIVE_OK, String(cString: archive_error_string(archive)))
        if !content.isEmpty {
            _ = content.withUnsafeBytes { archive_write_data(archive, $0.baseAddress, $0.count) }
        }
    }
    precondition(archive_write_close(archive) == ARCHIVE_OK)
}

func sha256Hex(_ bytes: [UInt8]) -> String {
    SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}

// MARK: - Export archives built by hand

/// How the manifest of a hand-made export differs from a correct one.
enum ManifestVariant {
    case correct
    /// No manifest at all.
    case missing
    /// The named member is left out of the manifest.
    case omitting(String)
    /// The named member's checksum is wrong.
    case wrongChecksum(String)
    /// The manifest lists a member the archive does not hold.
    case listing(String)
}

/// `ferry.json` declaring `sizes` for the later members.
func ferryJSON(declaring sizes: [String: Int64]) -> RawMember {
    let members = sizes.map { "\"\($0.key)\": \($0.value)" }.sorted().joined(separator: ", ")
    return .file("ferry.json", "{\"formatVersion\": 1, \"members\": {\(members)}}")
}

/// An export with `ferry.json` first (declaring the sizes of `members` unless `declared`
/// is given), then `members`, then a manifest built from the members as `manifest` says,
/// and then `trailing` (members after the manifest).
func writeHandMadeExport(
    _ members: [RawMember], to path: String, declared: [String: Int64]? = nil,
    manifest variant: ManifestVariant = .correct, trailing: [RawMember] = [], compression: ExportCompression = .zstd
) {
    var sizes: [String: Int64] = [:]
    for member in members { sizes[member.name] = Int64(member.content.count) }
    let metadata = ferryJSON(declaring: declared ?? sizes)
    var entries: [(String, Int64, String)] = []
    for member in [metadata] + members {
        var checksum = sha256Hex(member.content)
        if case .wrongChecksum(member.name) = variant { checksum = String(repeating: "0", count: 64) }
        if case .omitting(member.name) = variant { continue }
        entries.append((member.name, Int64(member.content.count), checksum))
    }
    if case let .listing(name) = variant { entries.append((name, 3, sha256Hex(Array("abc".utf8)))) }
    let json =
        "{\"version\": 1, \"members\": ["
        + entries.map { "{\"name\": \"\($0.0)\", \"size\": \($0.1), \"sha256\": \"\($0.2)\"}" }.joined(separator: ", ")
        + "]}"
    var all = [metadata] + members
    if case .missing = variant {} else { all.append(.file("manifest.json", json)) }
    writeRawTar(all + trailing, to: path, compression: compression)
}

// MARK: - Reading an export the way `ferry import` does

/// The names a Ferry export may hold (docs/archive-format.md).
func isExportMemberName(_ name: String) -> Bool {
    let fixed: Set<String> = ["ferry.json", "config.dump", "spec.dump", "deleted.files", "stats-dump", "rootfs-diff.tar"]
    if fixed.contains(name) { return true }
    let parts = name.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count == 2, !parts[1].isEmpty else { return false }
    if parts[0] == "checkpoint" { return true }
    return parts[0] == "volumes" && parts[1].hasSuffix(".tar")
}

/// Reads `ferry.json` (which must come first) and declares the sizes it lists.
func openExport(_ path: String) throws -> ExportReader {
    let reader = try ExportReader(path: path, allowing: isExportMemberName)
    let first = try #require(try reader.next())
    try #require(first.name == "ferry.json")
    let object = try JSONSerialization.jsonObject(with: Data(reader.data(max: 1 << 20))) as? [String: Any]
    let members = try #require(object?["members"] as? [String: Int])
    try reader.expect(sizes: members.mapValues { Int64($0) })
    return reader
}

/// Reads a whole export: small members into memory, `checkpoint/` members into files
/// under `staging`, tars extracted under `staging/<name>.d`. Throws on any refusal.
@discardableResult
func importExport(_ path: String, staging: String) throws -> [String: [UInt8]] {
    let reader = try openExport(path)
    try reader.ensureSpace(directory: staging)
    var small: [String: [UInt8]] = [:]
    while let member = try reader.next() {
        let flat = member.name.replacingOccurrences(of: "/", with: "_")
        if member.name.hasPrefix("checkpoint/") {
            let file = try OwnedFD.open("\(staging)/\(flat)", O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            try reader.copy(to: file)
        } else if member.name.hasSuffix(".tar") {
            try makeDir("\(staging)/\(flat).d")
            let directory = try OwnedFD.open("\(staging)/\(flat).d", O_RDONLY | O_DIRECTORY)
            _ = try reader.extractTar(into: directory, policy: member.name == "rootfs-diff.tar" ? .rootfs : .volume)
        } else {
            small[member.name] = try reader.data(max: 1 << 20)
        }
    }
    return small
}

// MARK: - Checks

/// Expects `body` to throw an `ArchiveError` with `code` whose message contains every
/// string in `fragments`.
func expectArchiveError(
    _ code: ArchiveError.Code, _ fragments: String..., sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected an ArchiveError \(code) containing \(fragments), but nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as ArchiveError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(error.description.contains(fragment), "'\(error.description)' lacks '\(fragment)'", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("expected an ArchiveError, got \(error)", sourceLocation: sourceLocation)
    }
}

/// A directory beside the destination that nothing may touch: its digest is compared
/// before and after a hostile extraction (callers compare the listing of the directory
/// around it themselves, since they add their own files there).
struct Sentinel {
    let path: String
    let digest: String

    init(in tmp: TempDir) throws {
        path = tmp.sub("sentinel")
        try makeDir(path)
        try writeFile("\(path)/keep", "untouched\n")
        digest = try TreeDigest.compute(root: path)
    }

    /// Checks that the sentinel is unchanged.
    func check(sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(try TreeDigest.compute(root: path) == digest, "the sentinel changed", sourceLocation: sourceLocation)
        #expect(try entries(path) == ["keep"], "something appeared in the sentinel", sourceLocation: sourceLocation)
    }
}

/// Deterministic bytes that compress somewhat, like memory pages.
func patternBytes(count: Int, seed: UInt64 = 0x9e37_79b9_7f4a_7c15) -> [UInt8] {
    var state = seed
    var result = [UInt8](repeating: 0, count: count)
    var index = 0
    while index < count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        // Runs of repeated bytes between random ones.
        let run = Int(state & 0x3f)
        let value = UInt8(truncatingIfNeeded: state >> 8)
        let end = min(count, index + 1 + run)
        for i in index..<end { result[i] = (i - index) % 3 == 0 ? UInt8(truncatingIfNeeded: state >> 16) : value }
        index = end
    }
    return result
}

/// Extended attribute `name` of `path`, without following a symlink; nil when absent.
func extendedAttribute(_ path: String, _ name: String) -> [UInt8]? {
    guard let fd = try? OwnedFD.open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK) else { return nil }
    return try? fd.extendedAttribute(name)
}

/// Sets extended attribute `name` on `path` (a file or directory).
func setExtendedAttribute(_ path: String, _ name: String, _ value: String) throws {
    let fd = try OwnedFD.open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
    try fd.setExtendedAttribute(name, Array(value.utf8))
}
