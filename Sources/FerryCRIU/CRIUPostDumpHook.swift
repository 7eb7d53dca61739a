import FerrySystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Keeps CRIU from ending a streamed dump's tree before Ferry holds every image.
///
/// Streaming (`criu dump --stream`), CRIU writes each image into a pipe, closes it and,
/// once the dump succeeded, ends the tree (unless it is left running). What is still in
/// a pipe when the Ferry reading it dies (SIGKILL) never reaches the images directory:
/// the tree would be gone and its checkpoint incomplete (seen under load: the container
/// was lost). CRIU runs its action scripts at post-dump, before it ends the tree, and
/// resumes the tree when one fails. Ferry's own executable is that script: run by CRIU
/// at post-dump it asks the streaming Ferry, through a socket in the images directory,
/// and succeeds only once Ferry answers that every image is written. A Ferry that is
/// gone cannot answer, and the tree runs on.
public enum CRIUPostDumpHook {
    /// The socket the streaming Ferry listens on, in the images directory.
    static let socketName = "ferry-post-dump.sock"
    static let request = Array("post-dump\n".utf8)
    static let answer = Array("ok\n".utf8)

    private static let registered = Mutex<String?>(nil)

    /// The executable CRIU runs as its action script, if this process's `main` answers
    /// the hook (`answerIfInvoked`).
    static var executable: String? { registered.withLock { $0 } }

    /// Called first by an executable's `main`: run by CRIU as an action script, answers
    /// and exits; otherwise registers this executable as the hook of the streamed dumps
    /// it starts.
    public static func answerIfInvoked() {
        guard let action = getenv("CRTOOLS_SCRIPT_ACTION").map({ String(cString: $0) }) else {
            let path = try? Processes.currentExecutable()
            registered.withLock { $0 = path.flatMap { $0.hasSuffix(" (deleted)") ? nil : $0 } }
            return
        }
        // Every other action (network-lock, pre-dump, ...) has nothing to wait for.
        guard action == "post-dump" else { exit(0) }
        guard let directory = getenv("CRTOOLS_IMAGE_DIR").map({ String(cString: $0) }) else { exit(1) }
        exit(confirmed(socket: "\(directory)/\(socketName)") ? 0 : 1)
    }

    /// Whether the Ferry listening at `socket` says every image is written. Bounded: a
    /// Ferry that neither answers nor goes away in 10 minutes fails the dump (the tree
    /// then runs on).
    static func confirmed(socket: String) -> Bool {
        guard let connection = try? connectUnixSocket(socket) else { return false }
        var timeout = timeval(tv_sec: 600, tv_usec: 0)
        _ = setsockopt(connection.raw, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard request.withUnsafeBytes({ (try? connection.write(all: $0)) != nil }) else { return false }
        var received: [UInt8] = []
        while received.count < answer.count {
            guard let chunk = try? connection.read(upTo: answer.count - received.count), !chunk.isEmpty else { return false }
            received += chunk
        }
        return received == answer
    }
}
