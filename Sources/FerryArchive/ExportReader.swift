import CArchive
import Crypto
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Reads an export archive (docs/archive-format.md), which is untrusted input, one
/// member at a time.
///
/// ```swift
/// let reader = try ExportReader(path: archive) { name in allowedNames(name) }
/// guard let first = try reader.next(), first.name == "ferry.json" else { ... }
/// let metadata = try decode(reader.data(max: 1 << 20))
/// try reader.expect(sizes: metadata.members)
/// try reader.ensureSpace(directory: staging)
/// while let member = try reader.next() { ... reader.copy(to:) / extractTar(into:policy:) ... }
/// // next() returned nil: every member matched manifest.json.
/// ```
///
/// What it enforces, so that callers cannot forget:
/// - Every member is a regular file (directory entries are skipped) whose name follows
///   the generic rules (relative, no "." or ".." or empty component, UTF-8, no NUL), is
///   not a duplicate, and is accepted by the caller's `allowing` closure. Links,
///   devices and other types are refused.
/// - Only the first member may be read before `expect(sizes:)`; after it, a member that
///   is not declared, or whose header size differs from its declared size, is refused
///   when `next()` reaches it, before any of its data is returned.
/// - Every member's SHA-256 and length are computed as its bytes are read, including
///   members the caller skips (they are read and hashed, not seeked over).
/// - `manifest.json` must be the last member; `next()` returns nil only after every
///   member read matched it in name, size and checksum and every entry in it was
///   present. `finish()` reads whatever the caller did not and does the same.
///
/// A damaged or truncated stream fails with `.unreadable`, a manifest mismatch with
/// `.verificationFailed`, a refused member with `.unsafeMember`; every message names
/// the archive. After an error, every later call repeats it.
public final class ExportReader {
    /// The archive being read.
    public let path: String
    private let context: String
    /// The archive's byte stream (decrypted if it is encrypted), which `input` reads.
    private let stream: ArchiveInput
    private let input: TarInput
    private let isAllowed: (String) -> Bool
    private let buffer: UnsafeMutableRawBufferPointer
    private var phase = Phase.reading
    private var current: CurrentMember?
    /// Members completely read, in archive order, with what was measured.
    private var completed: [ExportManifest.Member] = []
    private var seen = Set<String>()
    private var declared: [String: Int64]?
    private var declaredTotal: Int64 = 0
    private var membersReached = 0
    /// An error met inside the read callback of an inner tar, reported after libarchive
    /// gives up on that tar (its own message would only say the callback failed).
    private var callbackError: ArchiveError?

    private static let chunkSize = 1 << 20

    private enum Phase {
        case reading
        case verified(ExportManifest)
        case failed(ArchiveError)
    }

    private struct CurrentMember {
        let name: String
        let size: Int64
        var hasher = SHA256()
        var count: Int64 = 0
        var ended = false
    }

    /// Opens the archive at `path`; the compression (zstd, gzip, xz or none) is detected
    /// from the content. `allowing` says which member names the caller accepts
    /// (`manifest.json` is always accepted); it is consulted for every member.
    /// Reads the archive at `path`; messages name it `displayName` if given. An
    /// encrypted archive (told by its first bytes) needs the `key` it was written with;
    /// a clear one is refused with a key.
    public init(
        path: String, displayName: String? = nil, key: ArchiveKey? = nil, allowing isAllowed: @escaping (String) -> Bool
    ) throws(ArchiveError) {
        let context = "cannot read export \(displayName ?? "'\(path)'")"
        let stream = try ArchiveInput(file: try Self.openInput(path, context: context), key: key, context: context)
        let (client, read) = stream.libarchiveClient
        do throws(ArchiveError) {
            self.input = try TarInput(clientData: client, read: read, filters: .exportCompressions, context: context)
        } catch {
            throw stream.failure ?? error
        }
        self.stream = stream
        self.path = path
        self.context = context
        self.isAllowed = isAllowed
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunkSize, alignment: 16)
    }

    deinit {
        buffer.deallocate()
    }

    /// How long a named pipe may go without a writer before the import gives up.
    public static let pipeWriterTimeout: Duration = .seconds(60)

    /// Opens an archive: a regular file, or a pipe (a process substitution, a FIFO, the
    /// migration stream). Anything else is refused by name, and a FIFO nobody writes to
    /// is given up on after `pipeWriterTimeout` instead of blocking the open forever.
    static func openInput(_ path: String, context: String, pipeWriterTimeout: Duration = pipeWriterTimeout) throws(ArchiveError) -> OwnedFD {
        let kind: FileStatus.Kind
        do {
            kind = try Files.status(path).kind
        } catch {
            throw ArchiveError(.io, context, cause: error.errno)
        }
        switch kind {
        case .regular:
            return try io(context) { () throws(Errno) in try OwnedFD.open(path, O_RDONLY | O_NOCTTY) }
        case .fifo:
            // Opening a FIFO for reading blocks until a writer opens it; without blocking
            // it returns at once, and poll reports data (or a writer that came and went).
            let pipe = try io(context) { () throws(Errno) in try OwnedFD.open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK) }
            let ready = try io(context) { () throws(Errno) in try pipe.waitReadable(timeout: pipeWriterTimeout) }
            guard ready else {
                throw ArchiveError(.unreadable, "\(context): nothing was written to this pipe for \(pipeWriterTimeout)")
            }
            try io(context) { () throws(Errno) in try pipe.setNonBlocking(false) }
            return pipe
        case .directory:
            throw ArchiveError(.unreadable, "\(context): it is a directory, not an export archive")
        default:
            throw ArchiveError(.unreadable, "\(context): it is not a regular file or a pipe")
        }
    }

    /// Whether the archive is encrypted.
    public var isEncrypted: Bool { stream.isSealed }

    /// The member `next()` last returned, while it has not been passed.
    public var currentMember: ExportMember? {
        current.map { ExportMember(name: $0.name, size: $0.size) }
    }

    /// Moves to the next member, first reading (and hashing) whatever is left of the
    /// current one. Returns nil at the end of a verified archive.
    public func next() throws(ArchiveError) -> ExportMember? {
        try guarded { () throws(ArchiveError) in try advance() }
    }

    /// Declares the size of every member after the first, as `ferry.json` lists them.
    /// From then on, a member not listed here, or whose header gives another size, is
    /// refused. Call once, after reading the first member.
    public func expect(sizes: [String: Int64]) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            guard declared == nil else {
                throw ArchiveError(.unsafeMember, "\(context): the member sizes were already declared")
            }
            var total: Int64 = 0
            for (name, size) in sizes {
                guard size >= 0 else {
                    throw ArchiveError(.unsafeMember, "\(context): '\(name)' is declared with a negative size")
                }
                let (sum, overflow) = total.addingReportingOverflow(size)
                guard !overflow else {
                    throw ArchiveError(.unsafeMember, "\(context): the declared member sizes add up to more than 2^63 bytes")
                }
                total = sum
            }
            declared = sizes
            declaredTotal = total
        }
    }

    /// Fails with `.insufficientSpace` unless the filesystem holding `directory` has at
    /// least as many free bytes as the declared members add up to.
    public func ensureSpace(directory: String) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            guard declared != nil else {
                throw ArchiveError(.unsafeMember, "\(context): the member sizes must be declared before checking space")
            }
            let available = try io("\(context): free space of '\(directory)'") { () throws(Errno) -> UInt64 in
                let fd = try OwnedFD.open(directory, O_RDONLY | O_DIRECTORY)
                return try fd.availableSpace()
            }
            if UInt64(declaredTotal) > available {
                throw ArchiveError(
                    .insufficientSpace,
                    "\(context): its members need \(declaredTotal) bytes but '\(directory)' has only \(available) bytes free")
            }
        }
    }

    /// The rest of the current member, which must be at most `max` bytes (checked
    /// against its header before anything is read).
    public func data(max: Int) throws(ArchiveError) -> [UInt8] {
        try guarded { () throws(ArchiveError) in
            let member = try requireCurrent()
            guard member.size <= Int64(max) else {
                throw ArchiveError(.unsafeMember, "\(context): member '\(member.name)' is \(member.size) bytes, more than the \(max) expected")
            }
            var result: [UInt8] = []
            result.reserveCapacity(Int(member.size))
            while let chunk = try readChunk() {
                result.append(contentsOf: chunk)
            }
            return result
        }
    }

    /// Streams the rest of the current member to `body` in chunks of up to 1 MiB. A
    /// chunk is only valid during its call.
    public func read(_ body: (UnsafeRawBufferPointer) throws(ArchiveError) -> Void) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            _ = try requireCurrent()
            while let chunk = try readChunk() {
                try body(chunk)
            }
        }
    }

    /// Writes the rest of the current member to `destination` at its current offset.
    public func copy(to destination: borrowing OwnedFD) throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            let member = try requireCurrent()
            while let chunk = try readChunk() {
                try io("\(context): member '\(member.name)': write") { () throws(Errno) in
                    try destination.writeAll(chunk)
                }
            }
        }
    }

    /// Reads the rest of the current member without keeping it (it is still hashed and
    /// counted for the manifest check).
    public func skip() throws(ArchiveError) {
        try guarded { () throws(ArchiveError) in
            _ = try requireCurrent()
            while try readChunk() != nil {}
        }
    }

    /// Extracts the current member, an uncompressed tar, into the empty directory
    /// `destination` with `SafeTreeExtractor`'s rules, reading it straight from the
    /// archive (nothing is staged). Messages name the inner member too: "refusing
    /// rootfs-diff.tar member '../x': path leaves the destination".
    public func extractTar(into destination: borrowing OwnedFD, policy: ExtractionPolicy) throws(ArchiveError) -> ExtractionReport {
        try withInnerTar { (input: borrowing TarInput, name: String) throws(ArchiveError) -> ExtractionReport in
            try SafeTreeExtractor.extract(from: input, into: destination, policy: policy, context: context, label: "\(name) member")
        }
    }

    /// Reads everything the caller has not, applying the same checks, and verifies the
    /// archive against its manifest. Returns the manifest.
    public func finish() throws(ArchiveError) -> ExportManifest {
        try guarded { () throws(ArchiveError) in
            while try advance() != nil {}
            guard case .verified(let manifest) = phase else {
                throw ArchiveError(.verificationFailed, "\(context): the archive was not verified")
            }
            return manifest
        }
    }

    // MARK: - Inner tars

    /// Runs `body` with a tar reader whose input is the rest of the current member, then
    /// reads what the inner reader left (the tar's end padding) so that it is hashed too.
    func withInnerTar<T>(
        _ body: (borrowing TarInput, String) throws(ArchiveError) -> T
    ) throws(ArchiveError) -> T {
        try guarded { () throws(ArchiveError) in
            let member = try requireCurrent()
            let result: T
            do throws(ArchiveError) {
                let input = try TarInput(
                    clientData: Unmanaged.passUnretained(self).toOpaque(), read: exportReaderInnerRead,
                    filters: .none, context: "\(context): \(member.name)")
                result = try body(input, member.name)
            } catch {
                // The outer stream's own failure (truncation, a checksum-relevant read
                // error) explains the inner one better than "read callback failed".
                if let underlying = callbackError {
                    callbackError = nil
                    throw underlying
                }
                throw error
            }
            while try readChunk() != nil {}
            return result
        }
    }

    /// Called by the inner tar reader through `exportReaderInnerRead`.
    fileprivate func innerRead(_ buffer: UnsafeMutablePointer<UnsafeRawPointer?>) -> Int {
        do {
            guard let chunk = try readChunk() else { return 0 }
            buffer.pointee = chunk.baseAddress
            return chunk.count
        } catch {
            callbackError = error
            return -1
        }
    }

    // MARK: - Reading

    private func guarded<T>(_ body: () throws(ArchiveError) -> T) throws(ArchiveError) -> T {
        if case .failed(let error) = phase { throw error }
        do {
            return try body()
        } catch {
            phase = .failed(error)
            throw error
        }
    }

    private func requireCurrent() throws(ArchiveError) -> ExportMember {
        guard let current else {
            throw ArchiveError(.unreadable, "\(context): there is no current member (call next() first)")
        }
        return ExportMember(name: current.name, size: current.size)
    }

    /// The next chunk of the current member's data, hashed and counted; nil at its end.
    /// Points into `buffer`, valid until the next call.
    private func readChunk() throws(ArchiveError) -> UnsafeRawBufferPointer? {
        guard var member = current else { return nil }
        if member.ended { return nil }
        let count = archive_read_data(input.handle, buffer.baseAddress, buffer.count)
        if count < 0 {
            throw stream.failure ?? ArchiveError(.unreadable, "\(context): member '\(member.name)': \(libarchiveError(input.handle))")
        }
        if count == 0 {
            guard member.count == member.size else {
                throw ArchiveError(.unreadable, "\(context): member '\(member.name)' ends after \(member.count) of \(member.size) bytes")
            }
            member.ended = true
            completed.append(
                ExportManifest.Member(
                    name: member.name, size: member.count, sha256: TreeDigest.hex(member.hasher.finalize())))
            current = member
            return nil
        }
        guard Int64(count) <= member.size - member.count else {
            throw ArchiveError(.unsafeMember, "\(context): member '\(member.name)' has more data than its header declares")
        }
        let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
        member.hasher.update(bufferPointer: chunk)
        member.count += Int64(count)
        current = member
        return chunk
    }

    /// Finishes the current member, then reads headers until a member to return (nil
    /// after the manifest has been read and verified).
    private func advance() throws(ArchiveError) -> ExportMember? {
        while try readChunk() != nil {}
        current = nil
        if case .verified = phase { return nil }
        while true {
            var next: OpaquePointer? = nil
            let status = archive_read_next_header(input.handle, &next)
            if status == ARCHIVE_EOF {
                if let failure = stream.failure { throw failure }
                throw ArchiveError(
                    .verificationFailed,
                    "\(context): the archive ends without \(ExportManifest.memberName) (it is truncated, or not a Ferry export)")
            }
            // A warning counts as failure too: an export is written exactly, so anything
            // libarchive had to paper over means damage.
            guard status == ARCHIVE_OK, let entry = next else {
                throw stream.failure ?? ArchiveError(.unreadable, "\(context): \(libarchiveError(input.handle))")
            }
            guard let name = try checkHeader(entry) else { continue }
            let size = Int64(archive_entry_size(entry))
            membersReached += 1
            if name == ExportManifest.memberName {
                try readManifest(size: size)
                return nil
            }
            if let declared {
                guard let expected = declared[name] else {
                    throw refusal(name, "not declared in ferry.json")
                }
                guard expected == size else {
                    throw refusal(name, "its header says \(size) bytes but ferry.json declares \(expected)")
                }
            } else if membersReached > 1 {
                throw refusal(name, "comes before the member sizes are declared (ferry.json must come first)")
            }
            current = CurrentMember(name: name, size: size)
            return ExportMember(name: name, size: size)
        }
    }

    /// Checks a header against the generic rules and the caller's policy. Returns the
    /// member's name, or nil for a directory entry (skipped).
    private func checkHeader(_ entry: OpaquePointer) throws(ArchiveError) -> String? {
        guard let rawName = archive_entry_pathname(entry) else {
            throw ArchiveError(.unsafeMember, "\(context): member \(membersReached + 1) has no usable name")
        }
        let nameBytes = bytes(of: rawName)
        guard let name = String(validating: nameBytes, as: UTF8.self) else {
            throw refusal(display(nameBytes), "name is not UTF-8")
        }
        let type = archive_entry_filetype(entry)
        if type == S_IFDIR && archive_entry_hardlink(entry) == nil {
            // Tools like podman write "checkpoint/" entries; they carry nothing.
            let bare = name.hasSuffix("/") ? String(name.dropLast()) : name
            if let reason = ExportMemberName.refusal(bare) { throw refusal(name, reason) }
            guard archive_entry_size(entry) == 0 else { throw refusal(name, "directory entry with content") }
            return nil
        }
        if let reason = ExportMemberName.refusal(name) { throw refusal(name, reason) }
        if archive_entry_hardlink(entry) != nil { throw refusal(name, "hardlinks are not allowed") }
        switch type {
        case S_IFREG: break
        case S_IFLNK: throw refusal(name, "symlinks are not allowed")
        case S_IFCHR, S_IFBLK: throw refusal(name, "device nodes are not allowed")
        default: throw refusal(name, "only regular files are allowed")
        }
        guard seen.insert(name).inserted else { throw refusal(name, "duplicate member") }
        guard name == ExportManifest.memberName || isAllowed(name) else {
            throw refusal(name, "not a member a Ferry export may contain")
        }
        guard archive_entry_size_is_set(entry) != 0, archive_entry_size(entry) >= 0 else {
            throw refusal(name, "no size in its header")
        }
        return name
    }

    /// Reads `manifest.json`, checks that nothing follows it, and verifies every member
    /// read against it.
    private func readManifest(size: Int64) throws(ArchiveError) {
        let name = ExportManifest.memberName
        guard size <= Int64(ExportManifest.maximumSize) else {
            throw refusal(name, "\(size) bytes, more than the \(ExportManifest.maximumSize) allowed")
        }
        // Read like any member, but not recorded: the manifest cannot list itself.
        current = CurrentMember(name: name, size: size)
        var content: [UInt8] = []
        while let chunk = try readChunk() {
            content.append(contentsOf: chunk)
        }
        completed.removeLast()
        current = nil

        var next: OpaquePointer? = nil
        let status = archive_read_next_header(input.handle, &next)
        if status == ARCHIVE_OK, let next, let rawName = archive_entry_pathname(next) {
            throw refusal(display(bytes(of: rawName)), "follows \(name), which must be the last member")
        }
        guard status == ARCHIVE_EOF else {
            throw stream.failure ?? ArchiveError(.unreadable, "\(context): after \(name): \(libarchiveError(input.handle))")
        }
        // An encrypted stream must also end where its writer ended it.
        try stream.requireEnd()

        let manifest = try ExportManifest.decode(content, context: context)
        try verify(manifest)
        phase = .verified(manifest)
    }

    private func verify(_ manifest: ExportManifest) throws(ArchiveError) {
        var listed: [String: ExportManifest.Member] = [:]
        for entry in manifest.members { listed[entry.name] = entry }
        for member in completed {
            guard let entry = listed[member.name] else {
                throw mismatch("member '\(member.name)' is not listed in \(ExportManifest.memberName)")
            }
            guard entry.size == member.size else {
                throw mismatch("member '\(member.name)' is \(member.size) bytes but \(ExportManifest.memberName) says \(entry.size)")
            }
            guard entry.sha256 == member.sha256 else {
                throw mismatch(
                    "member '\(member.name)' does not match its checksum in \(ExportManifest.memberName) (sha256 \(member.sha256), expected \(entry.sha256))")
            }
        }
        let present = Set(completed.map(\.name))
        for entry in manifest.members where !present.contains(entry.name) {
            throw mismatch("\(ExportManifest.memberName) lists '\(entry.name)', which the archive does not contain")
        }
        for name in (declared ?? [:]).keys.sorted() where !present.contains(name) {
            throw mismatch("ferry.json declares '\(name)', which the archive does not contain")
        }
    }

    private func refusal(_ member: String, _ reason: String) -> ArchiveError {
        ArchiveError(.unsafeMember, "\(context): refusing member '\(member)': \(reason)")
    }

    private func mismatch(_ message: String) -> ArchiveError {
        ArchiveError(.verificationFailed, "\(context): \(message)")
    }
}

/// libarchive's read callback for a tar inside an export archive: the client data is
/// the `ExportReader`, which stays alive (and unmoved) while the inner reader exists.
private func exportReaderInnerRead(
    _ archive: OpaquePointer?, _ clientData: UnsafeMutableRawPointer?, _ buffer: UnsafeMutablePointer<UnsafeRawPointer?>?
) -> la_ssize_t {
    guard let clientData, let buffer else { return -1 }
    let reader = Unmanaged<ExportReader>.fromOpaque(clientData).takeUnretainedValue()
    return la_ssize_t(reader.innerRead(buffer))
}
