import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Takes the images of a streamed dump as CRIU writes them. Every call happens on the
/// thread that runs `CRIUSession.streamedDump`, in the order CRIU's data arrives; several
/// images can be open at once. Nothing received is complete until `streamedDump`
/// returns: if CRIU dies, its open images end early as if they were finished.
public protocol CRIUImageReceiver: AnyObject {
    /// CRIU opened image `name` (one path component, "pages-1.img"); `id` names it below.
    func imageOpened(_ id: Int, name: String) throws
    /// The next bytes of image `id`.
    func imageData(_ id: Int, _ chunk: UnsafeRawBufferPointer) throws
    /// Image `id` is closed: CRIU wrote all of it (or died).
    func imageClosed(_ id: Int) throws
}

/// The names in CRIU's image streaming protocol (criu/img-streamer.c).
enum CRIUImageStreaming {
    /// The socket a dump connects to, in its images directory.
    static let captureSocket = "streamer-capture.sock"
    /// The largest request accepted: a file name in a one-field protobuf message.
    static let maximumRequest = 4096

    /// The file name in an `img_streamer_request_entry` (field 1, a string), or nil if
    /// the message is not one.
    static func fileName(inRequest message: [UInt8]) -> String? {
        guard message.first == 0x0a else { return nil }
        var length = 0
        var shift = 0
        var index = 1
        while index < message.count {
            let byte = message[index]
            index += 1
            length |= Int(byte & 0x7f) << shift
            if byte & 0x80 == 0 { break }
            shift += 7
            if shift > 28 { return nil }
        }
        guard length > 0, index + length == message.count else { return nil }
        return String(validating: message[index...], as: UTF8.self)
    }
}

extension CRIUSession {
    /// `criu dump --stream`: CRIU sends every image file through a pipe to `receiver`
    /// instead of writing it into the images directory (criu-image-streamer's protocol:
    /// CRIU connects to `streamer-capture.sock` there, names each file in a framed
    /// request and passes the pipe's read end over SCM_RIGHTS).
    ///
    /// CRIU 4.1 refuses `--stream` through its RPC service (cr-service.c opens the images
    /// directory without a streaming mode, and a streaming config file crashes it), so
    /// this dump runs the criu binary with the request as command-line options. If
    /// `receiver` throws, Ferry stops reading: CRIU fails on the broken pipes and, as on
    /// any failed dump, resumes the tree. On failure the error quotes CRIU's log.
    public func streamedDump(_ request: DumpRequest, to receiver: CRIUImageReceiver) throws(CRIUError) {
        let log = "\(request.workDirectory ?? request.imagesDirectory)/\(request.logFile)"
        let images = try openImages(request.imagesDirectory)
        let listener: UnixListener
        do {
            listener = try UnixListener(directory: request.imagesDirectory, name: CRIUImageStreaming.captureSocket)
        } catch {
            throw CRIUError(.connectionFailed, "cannot listen for criu's image stream", cause: error)
        }
        // CRIU's post-dump hook asks here whether every image is written (CRIUPostDumpHook).
        let hook = CRIUPostDumpHook.executable
        let confirmations: UnixListener
        do {
            confirmations = try UnixListener(directory: request.imagesDirectory, name: CRIUPostDumpHook.socketName)
        } catch {
            throw CRIUError(.connectionFailed, "cannot listen for criu's post-dump hook", cause: error)
        }
        let null: OwnedFD
        do {
            null = try OwnedFD.open("/dev/null", O_RDWR)
        } catch {
            throw CRIUError(.connectionFailed, "cannot open /dev/null", cause: error)
        }
        // CRIU connects to "<images>/streamer-capture.sock", which must fit in
        // sun_path's 108 bytes: the images directory is passed as the child's fd 3.
        let pid: Int32
        do {
            pid = try Processes.spawn(
                serviceBinary,
                arguments: Self.streamedDumpArguments(request, binary: serviceBinary, imagesPath: "/proc/self/fd/3", actionScript: hook),
                // Ferry's own environment, as `criu swrk` gets it through libcriu (CRIU
                // finds iptables or nft through PATH when it locks connections).
                environment: Self.inheritedEnvironment(),
                descriptors: [0: null.raw, 1: null.raw, 2: null.raw, 3: images.raw].merging(
                    request.leaseDescriptor.map { [4: $0] } ?? [:], uniquingKeysWith: { first, _ in first }),
                // As the libcriu path does: killed half-way, CRIU can leave the tasks
                // dead and the images incomplete; Ferry takes the signal instead.
                blockedSignals: Signals.termination)
        } catch {
            throw CRIUError(.connectionFailed, "cannot start '\(serviceBinary) dump --stream'", cause: error)
        }
        var streamError: Error?
        do {
            try Self.serve(listener: listener, confirmations: confirmations, criu: pid, receiver: receiver)
        } catch {
            streamError = error
        }
        // The pipes are closed by now: a CRIU still writing fails at once.
        let status = (streamError as? ExitedEarly)?.status ?? Self.reap(pid)
        if status != 0 {
            let excerpt = CRIULog.errorExcerpt(log)
            let detail = excerpt.isEmpty ? "" : ": \(excerpt.joined(separator: " | "))"
            let cause = streamError.map { " after Ferry stopped reading (\($0))" } ?? ""
            throw CRIUError(.unknown(status), "criu dump --stream failed with status \(status)\(cause)\(detail) (log: \(log))")
        }
        if let streamError { throw CRIUError(.communicationFailed, "criu dump --stream: \(streamError)") }
    }

    static func inheritedEnvironment() -> [String] {
        var result: [String] = []
        var entry = environ
        while let pointer = entry.pointee {
            result.append(String(cString: pointer))
            entry += 1
        }
        return result
    }

    /// The command line of a streamed dump: the options `dump(_:)` sets through libcriu.
    static func streamedDumpArguments(_ request: DumpRequest, binary: String, imagesPath: String, actionScript: String? = nil) -> [String] {
        var arguments = [
            binary, "dump", "--stream", "--images-dir", imagesPath, "--work-dir", request.workDirectory ?? request.imagesDirectory,
            "--tree", "\(request.pid)", "--log-file", request.logFile, "-v4", "--ghost-limit", "\(64 << 20)",
            "--manage-cgroups=soft",
        ]
        if request.leaveRunning { arguments.append("--leave-running") }
        if request.tcpEstablished { arguments.append("--tcp-established") } else { arguments += ["--network-lock", "skip"] }
        if request.fileLocks { arguments.append("--file-locks") }
        if let cgroup = request.freezeCgroup { arguments += ["--freeze-cgroup", cgroup] }
        for mount in request.externalMounts { arguments += ["--external", "mnt[\(mount.mountPoint)]:\(mount.key)"] }
        for external in request.externals { arguments += ["--external", external] }
        for controller in request.cgroupDumpControllers { arguments += ["--cgroup-dump-controller", controller] }
        if let actionScript { arguments += ["--action-script", actionScript] }
        return arguments
    }

    /// An image pipe CRIU handed over.
    private final class ImagePipe {
        let id: Int
        let fd: OwnedFD

        init(id: Int, fd: consuming OwnedFD) {
            self.id = id
            self.fd = fd
        }
    }

    /// Accepts CRIU's connection and moves every image to `receiver` until CRIU has
    /// closed the connection and every pipe. CRIU's post-dump hook, which connects to
    /// `confirmations` once CRIU has closed every image, is answered only when each has
    /// been read to its end and handed to `receiver`.
    private static func serve(
        listener: borrowing UnixListener, confirmations: borrowing UnixListener, criu pid: Int32, receiver: CRIUImageReceiver
    ) throws {
        // CRIU connects once it has parsed its options; if it dies first, say so.
        while try !listener.descriptor.waitReadable(timeout: .milliseconds(100)) {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                throw ExitedEarly(status: Processes.decode(status: status))
            }
        }
        let control = try listener.accept()
        var controlOpen = true
        var pipes: [ImagePipe] = []
        var nextID = 0
        // The post-dump hook: not connected yet, waiting on its connection (kept in an
        // ImagePipe, a class holding the descriptor), or answered (once).
        enum Hook {
            case listening
            case asked(ImagePipe)
            case answered
        }
        var hook = Hook.listening
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while controlOpen || !pipes.isEmpty {
            var polled: [pollfd] = []
            if controlOpen { polled.append(pollfd(fd: control.raw, events: Int16(POLLIN), revents: 0)) }
            let listening = if case .listening = hook { true } else { false }
            if listening { polled.append(pollfd(fd: confirmations.descriptor.raw, events: Int16(POLLIN), revents: 0)) }
            let firstPipe = polled.count
            polled += pipes.map { pollfd(fd: $0.fd.raw, events: Int16(POLLIN), revents: 0) }
            _ = try retryingSyscall { poll(&polled, nfds_t(polled.count), -1) }
            var requestArrived = false
            if controlOpen, polled[0].revents != 0 {
                requestArrived = true
                if let (name, pipe) = try receiveRequest(control, id: nextID) {
                    nextID += 1
                    if name == "inventory.img", FaultInjection.isArmed(.dieBeforeImagesWritten) {
                        // CRIU writes its last image into the pipe meanwhile.
                        sleep(1)
                        kill(getpid(), SIGKILL)
                    }
                    pipes.append(pipe)
                    try receiver.imageOpened(pipe.id, name: name)
                } else {
                    // CRIU opens no more images (img_streamer_finish).
                    controlOpen = false
                }
            }
            if listening, polled[firstPipe - 1].revents != 0, let asked = acceptConfirmation(confirmations) {
                hook = .asked(asked)
            }
            var closed = Set<Int>()
            for entry in polled[firstPipe...] where entry.revents != 0 {
                guard let pipe = pipes.first(where: { $0.fd.raw == entry.fd }) else { continue }
                let count = try pipe.fd.read(into: buffer)
                if count == 0 {
                    closed.insert(pipe.id)
                    try receiver.imageClosed(pipe.id)
                } else {
                    try receiver.imageData(pipe.id, UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                }
            }
            pipes.removeAll { closed.contains($0.id) }
            // CRIU runs the hook after closing every image and sending every request: once
            // no pipe is left and no request came in this round, each image is written.
            if case .asked(let waiting) = hook, pipes.isEmpty, !requestArrived {
                CRIUPostDumpHook.answer.withUnsafeBytes { bytes in _ = try? waiting.fd.write(all: bytes) }
                if FaultInjection.isArmed(.dieAfterImagesWritten) { kill(getpid(), SIGKILL) }
                hook = .answered
            }
        }
    }

    /// The hook's connection, once it has asked; nil if the peer asked anything else.
    private static func acceptConfirmation(_ confirmations: borrowing UnixListener) -> ImagePipe? {
        guard let connection = try? confirmations.accept(),
            let asked = try? readExactly(connection, CRIUPostDumpHook.request.count), asked == CRIUPostDumpHook.request
        else { return nil }
        return ImagePipe(id: -1, fd: connection)
    }

    /// Reads one request (a native-endian u32 length, the message) and the pipe that
    /// follows it; nil when CRIU has closed the connection.
    private static func receiveRequest(_ control: borrowing OwnedFD, id: Int) throws -> (String, ImagePipe)? {
        let header = try readExactly(control, 4)
        if header.isEmpty { return nil }
        let length = Int(header.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
        guard length > 0, length <= CRIUImageStreaming.maximumRequest else {
            throw CRIUError(.unexpectedResponse, "criu sent a stream request of \(length) bytes")
        }
        let message = try readExactly(control, length)
        guard message.count == length, let name = CRIUImageStreaming.fileName(inRequest: message) else {
            throw CRIUError(.unexpectedResponse, "criu sent a malformed stream request")
        }
        // CRIU names files in its images directory: one path component.
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw CRIUError(.unexpectedResponse, "criu asked to stream '\(name)', which is not a file name")
        }
        guard let fd = try control.receiveDescriptor() else {
            throw CRIUError(.unexpectedResponse, "criu closed the stream before sending the pipe of '\(name)'")
        }
        // 1 MiB instead of 64 KiB: CRIU splices the pages into the pipe, and each wakeup
        // then moves 16 times as much. A smaller pipe (a lower limit) only costs speed.
        _ = try? fd.setPipeSize(1 << 20)
        return (name, ImagePipe(id: id, fd: fd))
    }

    /// Exactly `count` bytes, or none at a clean end of stream. Never more: the byte after
    /// a request carries the pipe's descriptor.
    private static func readExactly(_ fd: borrowing OwnedFD, _ count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        while result.count < count {
            let chunk = try fd.read(upTo: count - result.count)
            if chunk.isEmpty {
                if result.isEmpty { return [] }
                throw CRIUError(.unexpectedResponse, "criu's stream request ends early")
            }
            result += chunk
        }
        return result
    }

    /// CRIU exited (and was reaped) before it connected.
    private struct ExitedEarly: Error, CustomStringConvertible {
        var status: Int32
        var description: String { "criu exited before streaming any image" }
    }

    /// Waits for CRIU: a minute for it to notice the closed pipes and resume the tree,
    /// then SIGKILL (its tasks are then released by the kernel and thawed by the caller).
    private static func reap(_ pid: Int32) -> Int32 {
        if let status = try? Processes.wait(pid, timeout: .seconds(60)) { return status }
        _ = kill(pid, SIGKILL)
        return (try? Processes.wait(pid)) ?? 255
    }
}
