import FerryArchive
import FerryCRIU
import FerrySystem
import Foundation

/// What `ferry archive inspect` shows of an export, in the spirit of checkpointctl.
public struct ArchiveReport: Codable, Sendable {
    public var path: String
    public var archiveBytes: Int64
    public var metadata: ExportMetadata
    public var config: ConfigDump?
    public var processTree: [CRIUProcess]
    public var memory: CRIUMemorySummary?
    public var openFiles: Int?
    public var dumpStatistics: DumpStatistics?
    public var rootfsDiffBytes: Int64
    public var deletedFiles: [String]
    public var volumes: [String: Int64]
    /// Whether the whole stream was read and matched its manifest.
    public var verified: Bool
    /// Whether the archive is encrypted (it was read with its key).
    public var encrypted: Bool
}

/// Reads an export's head: metadata, then CRIU's small images, which the exporter
/// writes before the memory pages. Only with `verify` is the rest read and checked.
public enum ArchiveInspector {
    public static func inspect(_ path: String, verify: Bool = false, key: ArchiveKey? = nil) throws -> ArchiveReport {
        let reader = try ExportReader(path: path, key: key, allowing: Importer.isAllowed)
        guard let first = try reader.next(), first.name == ExportMetadata.memberName else {
            throw CheckpointError(.invalidArchive, "'\(path)' does not start with \(ExportMetadata.memberName); is it a Ferry export?")
        }
        let metadata = try JSONDecoder.ferry.decode(ExportMetadata.self, from: Data(try reader.data(max: Importer.headMemberLimit)))
        try reader.expect(sizes: metadata.members)
        var config: ConfigDump?
        var deleted: [String] = []
        var images: [String: [UInt8]] = [:]
        var sizes: [String: UInt64] = [:]
        var stats: DumpStatistics?
        var reachedPages = false
        // A streamed export has images after the pages (CRIU writes the process tree and
        // the inventory last): the pages are skipped until every other image is read.
        var unread = Set(metadata.members.keys.filter { $0.hasPrefix("checkpoint/") && !$0.hasPrefix("checkpoint/pages-") })
        while !reachedPages, let member = try reader.next() {
            unread.remove(member.name)
            switch member.name {
            case "config.dump":
                config = try? JSONDecoder.ferry.decode(ConfigDump.self, from: Data(try reader.data(max: Importer.headMemberLimit)))
            case "deleted.files":
                deleted = (try? JSONDecoder().decode([String].self, from: Data(try reader.data(max: Importer.headMemberLimit)))) ?? []
            case "stats-dump":
                stats = try? DumpStatistics(statsDump: try reader.data(max: Importer.headMemberLimit))
            default:
                guard member.name.hasPrefix("checkpoint/") else { continue }
                let file = String(member.name.dropFirst("checkpoint/".count))
                if file.hasPrefix("pages-"), !verify {
                    if unread.isEmpty { reachedPages = true } else { try reader.skip() }
                } else if CRIUImageSet.needsContents(of: file) {
                    images[file] = try reader.data(max: 256 << 20)
                } else {
                    sizes[file] = UInt64(member.size)
                }
            }
        }
        for (name, size) in metadata.members where name.hasPrefix("checkpoint/pages-") {
            sizes[String(name.dropFirst("checkpoint/".count))] = UInt64(size)
        }
        if verify { _ = try reader.finish() }
        let set = try CRIUImageSet(images: images, fileSizes: sizes)
        let volumes = metadata.members.filter { $0.key.hasPrefix("volumes/") }
            .reduce(into: [String: Int64]()) { $0[String($1.key.dropFirst(8).dropLast(4))] = $1.value }
        return ArchiveReport(
            path: path, archiveBytes: (try? Files.status(path, followSymlinks: true).size) ?? 0, metadata: metadata,
            config: config, processTree: set.processTree, memory: set.memory, openFiles: set.openFiles.total,
            dumpStatistics: stats ?? set.dumpStatistics, rootfsDiffBytes: metadata.members["rootfs-diff.tar"] ?? 0,
            deletedFiles: deleted, volumes: volumes, verified: verify, encrypted: reader.isEncrypted
        )
    }
}
