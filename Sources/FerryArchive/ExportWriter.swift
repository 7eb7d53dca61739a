import CArchive
import Crypto
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Writes an export archive (docs/archive-format.md): members streamed into a
/// compressed pax tar, then `manifest.json` with every member's size and SHA-256.
///
/// The archive is written to `.<name>.tmp-<random>` (mode 0600: it holds the processes'
/// memory) beside the final path, and `finish()` renames it into place only once it is
/// complete and on disk, so a reader never sees a partial export. If the writer is
/// abandoned, fails, or goes away unfinished, the temporary file is deleted. The writer
/// holds a `flock` on its temporary file: a process killed outright cannot delete it,
/// but its lock dies with it, and the next export to the same name removes every such
/// file that nobody holds.
///
/// Memory stays bounded whatever the members' sizes: files are streamed in 1 MiB
/// chunks, checksums are computed as the bytes go by (nothing is read twice), and the
/// compressor's buffers do not grow with the input.
///
/// Every member is a regular file owned by 0:0 with mode 0600 and the time the writer
/// was created as its modification time. Members appear in the order they are added;
/// the format's order (ferry.json first) is the caller's to follow. Before the first
/// member inside a directory (`checkpoint/…`) comes that directory's entry, as podman
/// writes it: checkpointctl refuses an archive without a `checkpoint/` entry.
public final class ExportWriter {
    /// Where the archive will be once finished.
    public let path: String
    private let context: String
    private let directory: OwnedFD
    private let file: OwnedFD
    private let temporaryName: [UInt8]
    private let finalName: [UInt8]
    /// Writing to a pipe or socket (a migration): no temporary file, no rename.
    private let streaming: Bool
    private var output: TarOutput
    /// The encryption layer under `output`, for an encrypted archive.
    private let sealed: SealedFileOutput?
    private let modificationTime = time(nil)
    private var members: [ExportManifest.Member] = []
    private var names = Set<String>()
    private var directories = ExportDirectories()
    private var state = State.open
    private let buffer: UnsafeMutableRawBufferPointer

    /// The size of the chunks files are streamed in.
    static let chunkSize = 1 << 20

    private enum State {
        case open, finished, abandoned
    }

    /// Starts an archive that `finish()` will place at `path` (replacing any file
    /// there). The directory of `path` must exist. With `key`, the whole archive stream
    /// is encrypted (docs/archive-format.md, "Encrypted archives").
    public init(path: String, compression: ExportCompression = .zstd, key: ArchiveKey? = nil) throws(ArchiveError) {
        let context = "cannot write export '\(path)'"
        let finalName = Array(Files.basename(of: path).utf8)
        guard !finalName.isEmpty, finalName != [MemberPath.dot], finalName != [MemberPath.dot, MemberPath.dot] else {
            throw ArchiveError(.badDestination, "\(context): not a file name")
        }
        let directoryPath = Files.parent(of: path)
        let directory = try io("\(context): open directory '\(directoryPath)'") { () throws(Errno) in
            try OwnedFD.open(directoryPath, O_RDONLY | O_DIRECTORY)
        }
        let temporaryPrefix = Array(".".utf8) + finalName + Array(".tmp-".utf8)
        Self.removeAbandoned(in: directory, prefix: temporaryPrefix)
        let random = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let temporaryName = temporaryPrefix + Array(random.utf8)
        let file = try io("\(context): create '\(display(temporaryName))'") { () throws(Errno) in
            let file = try directory.openAt(temporaryName, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
            // A new file: nobody else can hold its lock yet.
            _ = try file.tryLockExclusive()
            return file
        }
        let output: TarOutput
        let sealed: SealedFileOutput?
        do {
            // The umask may have taken bits away, never added any; set exactly 0600.
            try io("\(context): chmod '\(display(temporaryName))'") { () throws(Errno) in
                try file.setPermissions(0o600)
            }
            if let key {
                let copy = try io("\(context): dup") { () throws(Errno) in try file.duplicate() }
                let layer = try SealedFileOutput(file: copy, key: key, context: context)
                output = try TarOutput(sealed: layer, compression: compression, context: context)
                sealed = layer
            } else {
                output = try TarOutput(fd: file, compression: compression, context: context)
                sealed = nil
            }
        } catch {
            try? directory.unlink(at: temporaryName, directory: false)
            throw error
        }
        self.path = path
        self.context = context
        self.finalName = finalName
        self.temporaryName = temporaryName
        self.directory = directory
        self.file = file
        self.streaming = false
        self.output = output
        self.sealed = sealed
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunkSize, alignment: 16)
    }

    /// Writes the archive as a stream to `fd` (the write end of a pipe, a socket): for a
    /// migration, where no archive may land on disk. `finish()` closes the stream; there
    /// is nothing to rename or delete.
    public init(streamingTo fd: consuming OwnedFD, compression: ExportCompression = .zstd) throws(ArchiveError) {
        let context = "cannot write the export stream"
        // `directory` is only used for the temporary file of a file-backed archive; a
        // stream keeps the root open there so that the property need not be optional.
        let root = try io(context) { () throws(Errno) in try OwnedFD.open("/", O_RDONLY | O_DIRECTORY) }
        let output = try TarOutput(fd: fd, compression: compression, context: context)
        self.path = "(stream)"
        self.context = context
        self.finalName = []
        self.temporaryName = []
        self.directory = root
        self.file = fd
        self.output = output
        self.sealed = nil
        self.streaming = true
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunkSize, alignment: 16)
    }

    deinit {
        if state == .open { abandon() }
        buffer.deallocate()
    }

    /// Deletes the temporary files of earlier writers of the same archive that died
    /// unfinished: those whose lock nobody holds. A live writer's file is left alone.
    static func removeAbandoned(in directory: borrowing OwnedFD, prefix: [UInt8]) {
        guard let names = try? directory.directoryEntries() else { return }
        for name in names where name.starts(with: prefix) {
            guard let file = try? directory.openAt(name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK),
                (try? file.status().kind) == .regular, (try? file.tryLockExclusive()) == true
            else { continue }
            try? directory.unlink(at: name, directory: false)
        }
    }

    /// Adds a small member held in memory (metadata, JSON).
    public func add(name: String, bytes: [UInt8]) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            try checkName(name)
            try writeHeader(name: name, size: Int64(bytes.count))
            var hasher = SHA256()
            let result: ArchiveError? = bytes.withUnsafeBytes { chunk -> ArchiveError? in
                hasher.update(bufferPointer: chunk)
                do throws(ArchiveError) {
                    try output.write(chunk, member: name, context: context)
                    return nil
                } catch {
                    return error
                }
            }
            if let result { throw result }
            try finishMember(name: name, size: Int64(bytes.count), hasher: hasher)
        }
    }

    /// Adds the regular file at `file` (a symlink there is refused), streamed in 1 MiB
    /// chunks. The file must not change size while it is added.
    public func add(name: String, file path: String) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            let source = try io("\(context): member '\(name)': open '\(path)'") { () throws(Errno) in
                try OwnedFD.open(path, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK)
            }
            try addContents(name: name, of: source, source: path)
        }
    }

    /// Adds the content of the open regular file `source`, from its current offset
    /// (normally the start) to its end.
    public func add(name: String, contentsOf source: borrowing OwnedFD) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            try addContents(name: name, of: source, source: "descriptor \(source.raw)")
        }
    }

    /// Appends `manifest.json`, completes the stream, fsyncs the file, renames it to
    /// `path` and fsyncs the directory.
    public func finish() throws(ArchiveError) -> ExportSummary {
        try guarded { () throws(ArchiveError) in
            let manifest = ExportManifest(members: members)
            let encoded = try manifest.encoded(context: context)
            try writeHeader(name: ExportManifest.memberName, size: Int64(encoded.count))
            let result: ArchiveError? = encoded.withUnsafeBytes { chunk -> ArchiveError? in
                do throws(ArchiveError) {
                    try output.write(chunk, member: ExportManifest.memberName, context: context)
                    return nil
                } catch {
                    return error
                }
            }
            if let result { throw result }
            try output.finishEntry(member: ExportManifest.memberName, context: context)
            try output.close(context: context)
            try sealed?.finish()
            if streaming {
                state = .finished
                return ExportSummary(path: path, size: -1, manifest: manifest)
            }
            try io("\(context): fsync") { () throws(Errno) in try file.sync() }
            let size = try io("\(context): fstat") { () throws(Errno) in try file.status().size }
            try io("\(context): rename '\(display(temporaryName))'") { () throws(Errno) in
                try directory.rename(temporaryName, to: finalName, in: directory)
            }
            state = .finished
            // Makes the rename durable. Some filesystems refuse fsync on a directory;
            // the archive itself is already complete and synced.
            try? directory.sync()
            return ExportSummary(path: path, size: size, manifest: manifest)
        }
    }

    /// Stops writing and deletes the temporary file. Harmless after `finish()` or a
    /// failure (which abandon by themselves).
    public func abandon() {
        guard state == .open else { return }
        state = .abandoned
        output.abandon()
        if !streaming { try? directory.unlink(at: temporaryName, directory: false) }
    }

    // MARK: - Helpers

    /// Runs `body` if the writer is still open; any error abandons the archive, since a
    /// tar stream cannot be rewound to before a half-written member.
    private func guarded<T>(_ body: () throws(ArchiveError) -> T) throws(ArchiveError) -> T {
        switch state {
        case .open: break
        case .finished: throw ArchiveError(.writeFailed, "\(context): the archive is already finished")
        case .abandoned: throw ArchiveError(.writeFailed, "\(context): the archive was abandoned after an earlier error")
        }
        do {
            return try body()
        } catch {
            abandon()
            // libarchive only says its write callback failed; the layer says why.
            throw sealed?.failure ?? error
        }
    }

    /// Checks a new member's name, then writes the entries of the directories it is in
    /// that have none yet.
    private func checkName(_ name: String) throws(ArchiveError) {
        try ExportMemberName.checkNew(name, among: &names, context: context)
        for directory in directories.missing(for: name) {
            let entry = try ArchiveEntry(context: context)
            archive_entry_copy_pathname(entry.handle, directory)
            archive_entry_set_filetype(entry.handle, UInt32(Glibc.S_IFDIR))
            archive_entry_set_perm(entry.handle, ExportDirectories.mode)
            archive_entry_set_uid(entry.handle, 0)
            archive_entry_set_gid(entry.handle, 0)
            archive_entry_set_mtime(entry.handle, modificationTime, 0)
            archive_entry_set_size(entry.handle, 0)
            try output.writeHeader(entry, member: directory, context: context)
            try output.finishEntry(member: directory, context: context)
        }
    }

    private func writeHeader(name: String, size: Int64) throws(ArchiveError) {
        let entry = try ArchiveEntry(context: context)
        archive_entry_copy_pathname(entry.handle, name)
        archive_entry_set_filetype(entry.handle, UInt32(Glibc.S_IFREG))
        archive_entry_set_perm(entry.handle, 0o600)
        archive_entry_set_uid(entry.handle, 0)
        archive_entry_set_gid(entry.handle, 0)
        archive_entry_set_mtime(entry.handle, modificationTime, 0)
        archive_entry_set_size(entry.handle, la_int64_t(size))
        try output.writeHeader(entry, member: name, context: context)
    }

    private func finishMember(name: String, size: Int64, hasher: SHA256) throws(ArchiveError) {
        try output.finishEntry(member: name, context: context)
        members.append(ExportManifest.Member(name: name, size: size, sha256: TreeDigest.hex(hasher.finalize())))
    }

    private func addContents(name: String, of source: borrowing OwnedFD, source description: String) throws(ArchiveError) {
        try checkName(name)
        let message = "\(context): member '\(name)': read \(description)"
        let status = try io(message) { () throws(Errno) in try source.status() }
        guard status.kind == .regular else {
            throw ArchiveError(.writeFailed, "\(context): member '\(name)': \(description) is not a regular file")
        }
        // The header needs the size before the data: it is taken now, and the file must
        // then deliver exactly that many bytes (CRIU's images and the diff tars are
        // finished files; a change means something else is writing to them).
        let size = status.size
        try writeHeader(name: name, size: size)
        var hasher = SHA256()
        var total: Int64 = 0
        while true {
            let count = try io(message) { () throws(Errno) in try source.read(into: buffer) }
            if count == 0 { break }
            guard Int64(count) <= size - total else {
                throw ArchiveError(.writeFailed, "\(context): member '\(name)': \(description) grew while it was being added")
            }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
            hasher.update(bufferPointer: chunk)
            try output.write(chunk, member: name, context: context)
            total += Int64(count)
        }
        guard total == size else {
            throw ArchiveError(.writeFailed, "\(context): member '\(name)': \(description) shrank while it was being added")
        }
        try finishMember(name: name, size: size, hasher: hasher)
    }
}
