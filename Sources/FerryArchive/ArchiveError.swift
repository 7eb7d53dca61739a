import FerrySystem
import SystemPackage

/// An error from reading, extracting, copying or digesting a tree.
///
/// The message names the archive or directory and, where there is one, the member and
/// libarchive's own error string: "cannot extract '/tmp/x.tar.gz': member '../evil':
/// path escapes the destination".
public struct ArchiveError: CodedError {
    /// What kind of failure this is, for callers that react differently.
    public enum Code: String, Sendable {
        /// The archive is damaged, truncated or not a tar stream in a known compression.
        case unreadable
        /// A member would land outside the destination (absolute path, "..", a symlink in
        /// the way) or replace the destination itself.
        case unsafeMember
        /// libarchive could not create a member on disk.
        case writeFailed
        /// The destination is missing, not a directory, or not empty.
        case badDestination
        /// A system call failed while reading a source tree.
        case io
        /// An export archive's content does not match its manifest (a checksum or size
        /// differs, a member is missing from one or the other, the manifest is absent).
        case verificationFailed
        /// The destination's filesystem has less free space than the archive declares.
        case insufficientSpace
        /// The archive is encrypted and no key was given, or the key does not open it, or
        /// a key was given for a clear archive, or the key file is unusable.
        case badKey
    }

    /// What kind of failure this is.
    public let code: Code
    /// This layer's sentence; the cause's line follows it.
    public let message: String
    public let cause: (any Error)?
    public let hint: String?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil, hint: String? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
        self.hint = hint
    }
}

extension SystemError {
    /// Wraps a system error met while working on `subject` ("cannot copy '/src'").
    func archiveError(_ context: String) -> ArchiveError {
        ArchiveError(.io, context, cause: self)
    }
}

/// Runs `body`, turning an `Errno` into an `.io` error that starts with `message`
/// ("cannot copy '/src': open 'etc/passwd'"), followed by the errno text.
func io<T: ~Copyable>(_ message: @autoclosure () -> String, _ body: () throws(Errno) -> T) throws(ArchiveError) -> T {
    do {
        return try body()
    } catch {
        throw ArchiveError(.io, message(), cause: error)
    }
}
