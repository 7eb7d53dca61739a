import Foundation

/// `manifest.json`, the last member of an export archive: the size and SHA-256 of every
/// other member, so that an import can prove it read exactly what was written.
///
/// See docs/archive-format.md.
public struct ExportManifest: Codable, Sendable, Equatable {
    /// The member's name in the archive.
    public static let memberName = "manifest.json"
    /// The format version this code writes and reads.
    public static let currentVersion = 1
    /// The largest manifest a reader accepts. An entry takes about 130 bytes, so this
    /// allows tens of thousands of members while keeping a hostile one from making the
    /// reader buffer gigabytes.
    public static let maximumSize = 8 << 20

    /// One member's size and checksum.
    public struct Member: Codable, Sendable, Equatable {
        /// The member's name, as in the tar header.
        public let name: String
        /// The member's length in bytes.
        public let size: Int64
        /// The SHA-256 of the member's content: 64 lowercase hex digits.
        public let sha256: String

        /// An entry for the member `name` of `size` bytes whose SHA-256 is `sha256` (hex).
        public init(name: String, size: Int64, sha256: String) {
            self.name = name
            self.size = size
            self.sha256 = sha256
        }
    }

    /// Always `currentVersion` when written.
    public let version: Int
    /// Every member but the manifest itself, in archive order.
    public let members: [Member]

    /// A manifest of the current version listing `members`.
    public init(members: [Member]) {
        version = Self.currentVersion
        self.members = members
    }

    /// The JSON written into the archive.
    func encoded(context: String) throws(ArchiveError) -> [UInt8] {
        let encoder = JSONEncoder()
        // Sorted keys make the bytes reproducible for equal content; unescaped slashes
        // keep "checkpoint/pages-1.img" readable.
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return Array(try encoder.encode(self))
        } catch {
            throw ArchiveError(.writeFailed, "\(context): cannot encode \(Self.memberName)", cause: error)
        }
    }

    /// Parses and checks a manifest read from an untrusted archive: known version, no
    /// duplicate names, sizes not negative, well-formed checksums.
    static func decode(_ bytes: [UInt8], context: String) throws(ArchiveError) -> ExportManifest {
        let manifest: ExportManifest
        do {
            manifest = try JSONDecoder().decode(ExportManifest.self, from: Data(bytes))
        } catch {
            throw ArchiveError(.verificationFailed, "\(context): \(memberName) is not valid", cause: error)
        }
        guard manifest.version == currentVersion else {
            throw ArchiveError(
                .verificationFailed,
                "\(context): \(memberName) has format version \(manifest.version); this Ferry reads version \(currentVersion)")
        }
        var names = Set<String>()
        for member in manifest.members {
            guard names.insert(member.name).inserted else {
                throw ArchiveError(.verificationFailed, "\(context): \(memberName) lists '\(member.name)' twice")
            }
            guard member.size >= 0 else {
                throw ArchiveError(.verificationFailed, "\(context): \(memberName) gives '\(member.name)' a negative size")
            }
            guard isChecksum(member.sha256) else {
                throw ArchiveError(.verificationFailed, "\(context): \(memberName) gives '\(member.name)' a malformed sha256")
            }
        }
        return manifest
    }

    private static func isChecksum(_ text: String) -> Bool {
        let utf8 = text.utf8
        return utf8.count == 64 && utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}

/// A member an `ExportReader` stopped at: its name, and its size as its header declares
/// it (already checked against the sizes `ferry.json` declares, once they are known).
public struct ExportMember: Sendable, Equatable {
    /// The member's name, e.g. "checkpoint/pages-1.img".
    public let name: String
    /// The member's length in bytes.
    public let size: Int64

    /// A member called `name` of `size` bytes.
    public init(name: String, size: Int64) {
        self.name = name
        self.size = size
    }
}

/// What `ExportWriter.finish()` produced.
public struct ExportSummary: Sendable, Equatable {
    /// The final path of the archive.
    public let path: String
    /// The archive's size on disk, in bytes (compressed).
    public let size: Int64
    /// What was written into `manifest.json`: every other member with its size and checksum.
    public let manifest: ExportManifest
}

/// The rules every member name of an export archive follows, whatever the caller's own
/// list of allowed names: a relative path of non-empty components other than "." and
/// "..", in UTF-8, without NUL. Checked when writing too, so that Ferry never produces an
/// archive it would refuse to read.
enum ExportMemberName {
    /// Why `name` is not acceptable, or nil when it is.
    static func refusal(_ name: String) -> String? {
        if name.isEmpty { return "empty name" }
        if name.utf8.contains(0) { return "name contains a NUL byte" }
        if name.hasPrefix("/") { return "absolute path" }
        for component in name.split(separator: "/", omittingEmptySubsequences: false) {
            if component.isEmpty { return "empty path component" }
            if component == ".." { return "path leaves the archive ('..')" }
            if component == "." { return "'.' path component" }
        }
        return nil
    }

    /// Checks a member a writer is about to add: a valid name, not the manifest (which
    /// `finish()` writes), not added before (recorded in `names`).
    static func checkNew(_ name: String, among names: inout Set<String>, context: String) throws(ArchiveError) {
        if let reason = refusal(name) {
            throw ArchiveError(.writeFailed, "\(context): member '\(name)': \(reason)")
        }
        guard name != ExportManifest.memberName else {
            throw ArchiveError(.writeFailed, "\(context): \(name) is written by finish()")
        }
        guard names.insert(name).inserted else {
            throw ArchiveError(.writeFailed, "\(context): member '\(name)' was already added")
        }
    }
}

/// The directory entries an export carries: one for each directory a member is in,
/// written just before the first such member. Readers skip them (ExportReader does);
/// tools that look for the directory itself (checkpointctl's `checkpoint/`) find it.
/// They hold nothing, so neither `ferry.json` nor the manifest lists them.
struct ExportDirectories {
    /// Like podman's: only root, the archive's owner, may enter.
    static let mode: UInt32 = 0o700

    private var written = Set<String>()

    /// The entries (`checkpoint/`) still to write before `member`, outermost first;
    /// recorded as written.
    mutating func missing(for member: String) -> [String] {
        var entries: [String] = []
        var path = ""
        for component in member.split(separator: "/").dropLast() {
            path += component + "/"
            if written.insert(path).inserted { entries.append(path) }
        }
        return entries
    }
}
