import FerryArchive
import FerryCRIU
import FerrySystem

#if canImport(Glibc)
    import Glibc
#endif

/// Receives a streamed dump's images and sends each both into the container's images
/// directory (a checkpointed container is restored, and a failed export brought back,
/// from there) and into the export archive, so that the pages are read from CRIU once
/// and hashed, compressed and written as they arrive.
///
/// The first `pages-N.img` CRIU opens while no other member is being streamed goes
/// straight into the archive, its size written into its header at the end
/// (`StreamedExportWriter.begin`). Every other image is only written to its file while
/// it streams, and added to the archive from there once it is complete and the archive
/// is free: they are small (process tree, mappings, descriptors), or, for a second
/// process's pages, read back from the page cache rather than held in memory.
final class ImageStreamTee: CRIUImageReceiver {
    private let writer: StreamedExportWriter
    private let directory: OwnedFD
    private let imagesPath: String
    private var open: [Int: Image] = [:]
    /// The image being streamed straight into the archive.
    private var live: Int?
    /// Complete images not yet in the archive, in the order they completed.
    private var waiting: [String] = []

    private final class Image {
        let name: String
        let file: OwnedFD

        init(name: String, file: consuming OwnedFD) {
            self.name = name
            self.file = file
        }
    }

    init(writer: StreamedExportWriter, imagesDirectory: String) throws {
        self.writer = writer
        self.imagesPath = imagesDirectory
        directory = try OwnedFD.open(imagesDirectory, O_RDONLY | O_DIRECTORY)
    }

    func imageOpened(_ id: Int, name: String) throws {
        let file = try directory.openAt(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        open[id] = Image(name: name, file: file)
        if live == nil, name.hasPrefix("pages-") {
            try writer.begin(name: "checkpoint/\(name)")
            live = id
        }
    }

    func imageData(_ id: Int, _ chunk: UnsafeRawBufferPointer) throws {
        guard let image = open[id] else { return }
        try image.file.write(all: chunk)
        if live == id { try writer.append(chunk) }
    }

    func imageClosed(_ id: Int) throws {
        guard let image = open.removeValue(forKey: id) else { return }
        if live == id {
            try writer.end()
            live = nil
        } else {
            waiting.append(image.name)
        }
        if live == nil { try addWaiting() }
    }

    /// After CRIU succeeded: every image is in the archive.
    func complete() throws {
        guard open.isEmpty, live == nil else { throw CheckpointError(.exportFailed, "criu left images open") }
        try addWaiting()
    }

    private func addWaiting() throws {
        for name in waiting { try writer.add(name: "checkpoint/\(name)", file: "\(imagesPath)/\(name)") }
        waiting.removeAll()
    }
}
