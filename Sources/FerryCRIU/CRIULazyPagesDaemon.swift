import FerrySystem
import Foundation
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `criu lazy-pages` on the destination of a post-copy migration: it takes each restored
/// task's userfaultfd from the restore (over lazy-pages.socket in the shared work
/// directory), then fills memory from a page server, on demand and in the background,
/// and exits once every page has arrived. There is no RPC request for it, so it runs as
/// a command.
public final class CRIULazyPagesDaemon: @unchecked Sendable {
    public let pid: Int32
    public let logPath: String
    private let lock = NSLock()
    // Guarded by lock: the exit status once reaped.
    private var exitCode: Int32?
    // Set once reaped (after which the pid may belong to someone else).
    private let reaped = Atomic<Bool>(false)

    /// Starts the daemon and returns once it listens for the restore.
    ///
    /// - Parameters:
    ///   - pageServerPort: where it fetches pages (on 127.0.0.1: Ferry's relay).
    public init(criu: CRIUSession, imagesDirectory: String, workDirectory: String, pageServerPort: UInt16) throws(CRIUError) {
        logPath = "\(workDirectory)/lazy-pages.log"
        let pipe: OwnedPipe
        do {
            pipe = try OwnedPipe()
        } catch {
            throw CRIUError(.connectionFailed, "cannot start criu lazy-pages: pipe: \(error)")
        }
        let status = pipe.readEnd
        let statusWriter = OwnedFD(adopting: pipe.writeEnd.take())
        let binary = criu.serviceBinary
        let arguments = [
            binary, "lazy-pages", "--page-server", "--address", CRIUSession.pageServerAddress, "--port", "\(pageServerPort)",
            "--images-dir", imagesDirectory, "--work-dir", workDirectory, "--log-file", "lazy-pages.log", "-v4", "--status-fd", "3",
        ]
        do {
            pid = try Processes.spawn(binary, arguments: arguments, environment: ["PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"], descriptors: [0: 0, 1: 2, 2: 2, 3: statusWriter.raw])
        } catch {
            throw CRIUError(.connectionFailed, "cannot start criu lazy-pages: \(error)")
        }
        _ = consume statusWriter
        // Once the restore is done the daemon polls its sockets without sleeping while
        // it waits for pages; at a low priority that spinning does not take the CPU from
        // the processes that bring the pages (Ferry) and use them (the container).
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(pid), 19)
        // CRIU writes one byte to the status fd once lazy-pages.socket listens; an end of
        // file instead means it exited.
        var byte: UInt8 = 0
        let got = (try? withUnsafeMutableBytes(of: &byte) { try status.read(into: $0) }) ?? 0
        if got != 1 {
            _ = try? Processes.wait(pid)
            let excerpt = CRIULog.errorExcerpt(logPath).joined(separator: " | ")
            throw CRIUError(.communicationFailed, "criu lazy-pages exited before it was ready: \(excerpt) (log: \(logPath))")
        }
    }

    /// Waits until the daemon has delivered every page (or failed). Any thread may ask,
    /// any number of times.
    public func wait() throws(CRIUError) {
        let code: Int32 = lock.withLock {
            if let exitCode { return exitCode }
            let code = (try? Processes.wait(pid)) ?? -1
            exitCode = code
            reaped.store(true, ordering: .releasing)
            return code
        }
        guard code == 0 else {
            let excerpt = CRIULog.errorExcerpt(logPath).joined(separator: " | ")
            throw CRIUError(.rpcFailed(nil), "criu lazy-pages failed (exit \(code)): \(excerpt) (log: \(logPath))")
        }
    }

    /// Ends the daemon (a migration given up) and reaps it.
    public func stop() {
        // Not under the lock: another thread may be waiting in wait() while holding it.
        if !reaped.load(ordering: .acquiring) { try? Processes.signal(pid, SIGKILL) }
        _ = try? wait()
    }
}
