import ArgumentParser
import FerryArchive
import FerryRuntime
import FerryStore
import Foundation

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Manage base images (content-addressed, read-only root filesystems).",
        subcommands: [Import.self, List.self, Inspect.self, Remove.self]
    )

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import an OCI or docker image archive, or a rootfs directory or tar, as an image.",
            discussion: """
                  ferry image import busybox.oci              (podman save --format oci-archive: its tag is kept)
                  ferry image import ./busybox-oci-dir app:1  (an OCI layout directory, tagged app:1)
                  ferry image import busybox.tar              (docker save or podman save: its RepoTags are kept)
                  ferry image import ./rootfs busybox:latest
                  ferry image import rootfs.tar.zst app:1.0
                The format is recognized by content, not by file name.
                """
        )
        @OptionGroup var global: GlobalOptions
        @OptionGroup var progress: ProgressOptions
        @Argument(help: "An OCI archive or layout directory, a docker-archive, or a rootfs directory or tar (plain, gzip, zstd or xz).")
        var source: String
        @Argument(help: "NAME[:TAG] (tag defaults to latest); overrides the archive's own name; required for a rootfs.")
        var reference: String?

        mutating func run() throws {
            let context = try Context(global)
            let parsed = try reference.map { text throws(StoreError) in try ImageReference(text) }
            let record = try ImageStore(root: context.root.path, logger: context.logger).importImage(from: source, as: parsed, progress: progress.sink)
            print(record.digest)
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an image as JSON: digest, references, layers, config, size.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAME[:TAG], or a digest or its first 12+ hex digits.", completion: Completions.image) var image: String

        mutating func run() throws {
            let context = try Context(global)
            try Output.json(ImageCommand.Report(try ImageStore(root: context.root.path, logger: context.logger).resolve(image).record))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List images.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Output format: table or json.") var format: OutputFormat = .table

        mutating func run() throws {
            let context = try Context(global)
            let images = try ImageStore(root: context.root.path, logger: context.logger).list()
            if format == .json { return try Output.json(images.map(ImageCommand.Report.init)) }
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

    /// An image as `image ls` and `image inspect` print it in JSON: the stored record,
    /// with the unit in the size's key (docs/json.md). The run config keeps the OCI
    /// spelling ("Env", "Cmd"), as podman's inspect and the image itself have it.
    struct Report: Encodable {
        var id: String
        var digest: String
        var references: [String]
        var sizeBytes: UInt64
        var created: Date
        var source: String
        var layers: [String]
        var config: ImageRuntimeConfig?
        var architecture: String?
        var os: String?

        init(_ record: ImageRecord) {
            id = record.shortID
            digest = record.digest
            references = record.references
            sizeBytes = record.size
            created = record.created
            source = record.source
            layers = record.layers
            config = record.config
            architecture = record.architecture
            os = record.os
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove image references; an image's tree goes with its last reference.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAME[:TAG] references.", completion: Completions.image) var references: [String]

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
