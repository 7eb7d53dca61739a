import ArgumentParser
import FerryRuntime
import FerryStore
import Foundation

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Manage base images (content-addressed, read-only root filesystems).",
        subcommands: [Import.self, List.self, Remove.self]
    )

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import a directory, tar, tar.gz or tar.zst as an image.",
            discussion: "  ferry image import ./rootfs busybox:latest\n  ferry image import rootfs.tar.zst app:1.0"
        )
        @OptionGroup var global: GlobalOptions
        @Argument(help: "A directory, or a tar archive (plain, gzip, zstd or xz).") var source: String
        @Argument(help: "NAME[:TAG] (tag defaults to latest).") var reference: String

        mutating func run() throws {
            let context = try Context(global)
            let parsed = try ImageReference(reference)
            let record = try ImageStore(root: context.root.path, logger: context.logger).importImage(from: source, as: parsed)
            print(record.digest)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List images.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Output format: table or json.") var format: OutputFormat = .table

        mutating func run() throws {
            let context = try Context(global)
            let images = try ImageStore(root: context.root.path, logger: context.logger).list()
            if format == .json { return try Output.json(images) }
            var rows: [[String]] = []
            for image in images {
                let references = image.references.isEmpty ? ["<none>"] : image.references
                for reference in references {
                    rows.append([reference, image.shortID, Output.ago(image.created), Output.bytes(Int64(image.size))])
                }
            }
            Output.table(["REFERENCE", "IMAGE ID", "CREATED", "SIZE"], rows)
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove image references; an image's tree goes with its last reference.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAME[:TAG] references.") var references: [String]

        mutating func run() throws {
            let context = try Context(global)
            let store = ImageStore(root: context.root.path, logger: context.logger)
            let used = Set(context.runtime.list().compactMap(\.imageDigest))
            for reference in references {
                switch try store.remove(try ImageReference(reference), isInUse: { used.contains($0) }) {
                case .untagged(let name, _): print("Untagged: \(name)")
                case .deleted(let name, let digest): print("Untagged: \(name)\nDeleted: \(digest)")
                }
            }
        }
    }
}
