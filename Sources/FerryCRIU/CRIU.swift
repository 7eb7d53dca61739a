import CCRIU
import FerrySystem
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The CRIU versions Ferry works with, in libcriu's encoding:
/// major * 10000 + minor * 100 + sublevel.
public enum CRIUVersion {
    /// The oldest CRIU Ferry accepts: 4.1.0. This is the one place the minimum lives;
    /// `CRIUSession.checkVersion()` enforces it at run time, against the binary that
    /// will actually do the work (not the libcriu Ferry was built with).
    public static let minimum = 40100
}

/// What CRIU can do on this host with this kernel, as its feature check reports.
public struct CRIUFeatures: Equatable, Sendable {
    /// Soft-dirty memory tracking, which iterative pre-dumps (live migration) need.
    public var memTrack: Bool
    /// Lazy restore through userfaultfd (post-copy migration).
    public var lazyPages: Bool
    /// The pidfd store, which keeps pre-dump iterations safe from pid reuse.
    public var pidfdStore: Bool

    public init(memTrack: Bool, lazyPages: Bool, pidfdStore: Bool) {
        self.memTrack = memTrack
        self.lazyPages = lazyPages
        self.pidfdStore = pidfdStore
    }
}

/// A CRIU failure, with a message that says what Ferry was doing and what to do about it.
public struct CRIUError: CodedError {
    public enum Code: Equatable, Sendable {
        /// No criu binary where we looked, or the one named is not executable.
        case notFound
        /// The binary is older than `CRIUVersion.minimum`.
        case tooOld(version: Int)
        /// CRIU ran the request and reported failure (libcriu's -EBADE), with the errno
        /// CRIU sent back, when it sent one.
        case rpcFailed(Errno?)
        /// libcriu could not start `criu swrk` (-ECONNREFUSED).
        case connectionFailed
        /// `criu swrk` went away before answering (-ECOMM): it could not be executed, or
        /// it crashed.
        case communicationFailed
        /// CRIU does not know the request (-EINVAL): it is older than libcriu.
        case unsupportedRequest
        /// CRIU answered with something libcriu did not expect (-EBADMSG).
        case unexpectedResponse
        /// libcriu could not allocate or set an option.
        case optionFailed
        /// A return value libcriu does not document.
        case unknown(Int32)
    }

    public let code: Code
    public let message: String
    public let cause: (any Error)?
    public let hint: String?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil, hint: String? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
        self.hint = hint
    }

    /// Maps a negative libcriu return (its table in criu.h) and the errno libcriu left
    /// behind (CRIU's cr_errno for -EBADE) to an error for `operation`.
    static func libcriu(_ result: Int32, errno savedErrno: Int32, operation: String, binary: String) -> CRIUError {
        let prefix = "cannot \(operation)"
        switch -result {
        case EBADE:
            let cause = savedErrno != 0 ? Errno(rawValue: savedErrno) : nil
            let reason = cause.map { ": \($0)" } ?? ""
            return CRIUError(.rpcFailed(cause), "\(prefix): criu reported failure\(reason)")
        case ECONNREFUSED:
            return CRIUError(.connectionFailed, "\(prefix): could not start '\(binary) swrk'")
        case ECOMM:
            return CRIUError(
                .communicationFailed,
                "\(prefix): '\(binary) swrk' exited without answering (is it a working criu, and is Ferry running as root?)"
            )
        case EINVAL:
            let minimum = CRIUSession.formatVersion(CRIUVersion.minimum)
            return CRIUError(
                .unsupportedRequest,
                "\(prefix): \(binary) does not support this request; Ferry needs CRIU \(minimum) or later"
            )
        case EBADMSG:
            return CRIUError(
                .unexpectedResponse,
                "\(prefix): unexpected response from \(binary); is it older than the libcriu Ferry was built with?"
            )
        default:
            return CRIUError(.unknown(result), "\(prefix): libcriu returned \(result)")
        }
    }
}

/// One set of CRIU options (a libcriu `criu_opts`) and the calls made with it.
///
/// Every call runs `criu swrk` (the binary resolved at init) as a child and talks to it
/// over a socket pair. libcriu is not thread-safe: next to each `criu_opts` it keeps
/// process-wide state (the errno of the last response, the orphan pts master), so all
/// calls, on any session, are serialized through one process-wide lock. Options are set
/// through `withOptions`, under the same lock, so that setters for dump and restore can
/// be added as methods without touching the locking.
public final class CRIUSession: @unchecked Sendable {
    // @unchecked: `opts` is only used under `libcriuLock` (and freed in deinit, when no
    // other reference exists).
    private let opts: OpaquePointer
    /// The absolute path of the criu binary this session runs.
    public let serviceBinary: String

    /// Serializes every libcriu call in the process; see the type's comment.
    private static let libcriuLock = Mutex<Void>(())

    /// Directories searched after PATH: where `make deps` installs CRIU and where
    /// distributions do, since sudo and service managers often drop sbin from PATH.
    public static let fallbackDirectories = ["/usr/local/sbin", "/usr/sbin"]

    /// - Parameter serviceBinary: the criu binary: a path, or a name searched in PATH and
    ///   `fallbackDirectories`. By default "criu".
    /// - Throws: `CRIUError` with `.notFound` when no executable criu is found, or
    ///   `.optionFailed` when libcriu cannot set up its options.
    public init(serviceBinary: String? = nil) throws(CRIUError) {
        let requested = serviceBinary ?? "criu"
        let searchPath = getenv("PATH").map { String(cString: $0) }
        guard let binary = Self.resolveBinary(requested, searchPath: searchPath) else {
            if requested.contains("/") {
                throw CRIUError(.notFound, "cannot use criu at \(requested): it is not an executable file")
            }
            let places = (["PATH"] + Self.fallbackDirectories).joined(separator: ", ")
            let minimum = Self.formatVersion(CRIUVersion.minimum)
            throw CRIUError(
                .notFound,
                "cannot find \(requested) in \(places): install CRIU \(minimum) or later (scripts/deps.sh)"
            )
        }

        let (initResult, opts): (Int32, OpaquePointer?) = Self.libcriuLock.withLock { _ in
            // criu_local_init_opts frees whatever *opts points to first, hence nil.
            var created: OpaquePointer?
            let result = criu_local_init_opts(&created)
            return (result, created)
        }
        guard initResult == 0, let opts else {
            throw CRIUError(.optionFailed, "cannot set up libcriu options: out of memory")
        }
        // libcriu forks and then runs execlp(binary) in a child of this multithreaded
        // process; an absolute path means no PATH search happens there, and a missing
        // binary is reported above instead of as a bare ECOMM later.
        let setResult = Self.libcriuLock.withLock { _ in criu_local_set_service_binary(opts, binary) }
        guard setResult == 0 else {
            criu_local_free_opts(opts)
            throw CRIUError(.optionFailed, "cannot set up libcriu options: out of memory")
        }
        self.opts = opts
        self.serviceBinary = binary
    }

    deinit {
        criu_local_free_opts(opts)
    }

    /// Runs `body` with the session's `criu_opts` under the process-wide libcriu lock.
    /// The place for option setters, and for calls that need several steps to stay
    /// together (set options, then dump).
    func withOptions<T: Sendable>(_ body: (OpaquePointer) throws(CRIUError) -> T) throws(CRIUError) -> T {
        let opts = self.opts
        return try Self.libcriuLock.withLock { _ throws(CRIUError) -> T in try body(opts) }
    }

    /// Calls into libcriu and returns its result with the errno it left, read before
    /// anything else can change it.
    private func call(_ body: (OpaquePointer) -> Int32) -> (result: Int32, errno: Int32) {
        let opts = self.opts
        return Self.libcriuLock.withLock { _ in
            let result = body(opts)
            return (result, Glibc.errno)
        }
    }

    // MARK: Version and features

    /// The version of the criu binary (not of libcriu): major * 10000 + minor * 100 +
    /// sublevel; a build from git counts as the next minor version.
    ///
    /// `criu_local_get_version`.
    public func version() throws(CRIUError) -> Int {
        let (result, savedErrno) = call { criu_local_get_version($0) }
        guard result >= 0 else {
            throw CRIUError.libcriu(result, errno: savedErrno, operation: "get the criu version", binary: serviceBinary)
        }
        return Int(result)
    }

    /// The binary's version, after checking that it is at least `minimum`.
    ///
    /// - Throws: `CRIUError` with `.tooOld` ("criu 3.17.1 (/usr/sbin/criu) is too old:
    ///   Ferry needs 4.1.0 or later"), or the errors of `version()`.
    @discardableResult
    public func checkVersion(minimum: Int = CRIUVersion.minimum) throws(CRIUError) -> Int {
        let found = try version()
        guard found >= minimum else {
            let (have, need) = (Self.formatVersion(found), Self.formatVersion(minimum))
            throw CRIUError(
                .tooOld(version: found),
                "criu \(have) (\(serviceBinary)) is too old: Ferry needs \(need) or later"
            )
        }
        return found
    }

    /// Asks CRIU which optional features work with this kernel.
    ///
    /// `criu_local_feature_check`: each field set to true in the request is checked,
    /// and on return says whether that feature is available.
    public func features() throws(CRIUError) -> CRIUFeatures {
        let (result, savedErrno, check) = withCheck()
        guard result == 0 else {
            throw CRIUError.libcriu(result, errno: savedErrno, operation: "check criu's features", binary: serviceBinary)
        }
        return CRIUFeatures(memTrack: check.mem_track, lazyPages: check.lazy_pages, pidfdStore: check.pidfd_store)
    }

    private func withCheck() -> (Int32, Int32, criu_feature_check) {
        let opts = self.opts
        return Self.libcriuLock.withLock { _ in
            var check = criu_feature_check(mem_track: true, lazy_pages: true, pidfd_store: true)
            // The size tells libcriu which fields this caller knows about; passing a
            // larger one makes it fail without asking CRIU.
            let result = criu_local_feature_check(opts, &check, MemoryLayout<criu_feature_check>.size)
            return (result, Glibc.errno, check)
        }
    }

    /// "4.1.1" for 40101.
    public static func formatVersion(_ version: Int) -> String {
        "\(version / 10000).\(version / 100 % 100).\(version % 100)"
    }

    // MARK: Finding the binary

    /// The absolute path of an executable `name`: as given when it contains a slash,
    /// else the first match in `searchPath` (a PATH value) and then `fallbackDirectories`.
    static func resolveBinary(_ name: String, searchPath: String?) -> String? {
        if name.contains("/") {
            guard isExecutableFile(name) else { return nil }
            return (try? Files.realPath(name)) ?? name
        }
        // Relative PATH entries ("." or empty) would make the answer depend on the
        // current directory; only absolute ones count.
        let directories =
            (searchPath ?? "").split(separator: ":").map(String.init)
            .filter { $0.hasPrefix("/") } + fallbackDirectories
        for directory in directories {
            let candidate = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            if isExecutableFile(candidate) { return candidate }
        }
        return nil
    }

    private static func isExecutableFile(_ path: String) -> Bool {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return false }
        return access(path, X_OK) == 0
    }
}
