import CCRIU
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// CRIU's RPC spoken directly to `criu swrk`, for what libcriu has no setter for: lazy
/// pages on dump (memory stays behind a page server) and on restore (memory arrives
/// through userfaultfd). The messages are CRIU's own (rpc.proto, compiled with
/// protobuf-c into libcriu); the exchange is libcriu's: one request on a SOCK_SEQPACKET
/// socket pair, any number of notifications answered in turn, one response.
///
/// Unlike libcriu, which forks the calling (multithreaded) process, `criu swrk` is
/// started with posix_spawn; descriptors CRIU must inherit are named explicitly.
struct CRIURPCCall: ~Copyable {
    /// What CRIU answered.
    struct Reply {
        var success: Bool
        var crErrno: Int32?
        var message: String?
        /// The restored tree's root, for a restore.
        var restoredPid: Int32?
    }

    private let request: UnsafeMutablePointer<CriuReq>
    private let options: UnsafeMutablePointer<CriuOpts>
    /// Everything allocated for the request, freed with it.
    private var allocations: [UnsafeMutableRawPointer] = []

    init(_ type: CriuReqType) {
        request = .allocate(capacity: 1)
        criu_req__init(request)
        options = .allocate(capacity: 1)
        criu_opts__init(options)
        request.pointee.type = type
        request.pointee.opts = options
    }

    deinit {
        allocations.forEach { free($0) }
        options.deallocate()
        request.deallocate()
    }

    /// Sets the options; the closure gets a way to make C strings and arrays that live
    /// as long as the request.
    mutating func set(_ body: (inout CriuOpts, inout Allocator) -> Void) {
        var allocator = Allocator()
        body(&options.pointee, &allocator)
        allocations += allocator.pointers
    }

    struct Allocator {
        fileprivate var pointers: [UnsafeMutableRawPointer] = []

        mutating func string(_ value: String) -> UnsafeMutablePointer<CChar>? {
            guard let copy = strdup(value) else { return nil }
            pointers.append(UnsafeMutableRawPointer(copy))
            return copy
        }

        /// A C array of `count` zeroed `T`s (for repeated fields and sub-messages).
        mutating func array<T>(of type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
            guard let raw = calloc(max(count, 1), MemoryLayout<T>.stride) else {
                // As for any Swift allocation: there is no way on without memory.
                fatalError("out of memory")
            }
            pointers.append(raw)
            return raw.bindMemory(to: T.self, capacity: max(count, 1))
        }

        /// The C array of strings CRIU's repeated string fields are.
        mutating func strings(_ values: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
            let array = self.array(of: UnsafeMutablePointer<CChar>?.self, count: values.count)
            for (index, value) in values.enumerated() { array[index] = string(value) }
            return array
        }
    }

    /// Starts `criu swrk`, sends the request, answers notifications with `notify`
    /// (return false to make CRIU fail the step: a failed post-dump resumes the tree),
    /// and returns CRIU's response.
    ///
    /// - Parameters:
    ///   - inherited: descriptors CRIU must have at the same numbers (inherit-fd).
    func run(binary: String, inherited: [Int32], notify: (String) -> Bool) throws(CRIUError) -> Reply {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw CRIUError(.connectionFailed, "cannot start '\(binary) swrk': socketpair: \(Errno(rawValue: errno))")
        }
        let socket = OwnedFD(adopting: pair[0])
        let theirs = OwnedFD(adopting: pair[1])
        // CRIU's end goes above every inherited descriptor so that none is overwritten.
        let serviceFD = max(2, inherited.max() ?? 2) + 1
        var descriptors: [Int32: Int32] = [0: 0, 1: 1, 2: 2, serviceFD: theirs.raw]
        for fd in inherited { descriptors[fd] = fd }
        let pid: Int32
        do {
            // A dump runs shielded from Ctrl-C and the like, as through libcriu (see
            // CRIUSession.dump).
            pid = try Processes.spawn(
                binary, arguments: [binary, "swrk", "\(serviceFD)"], environment: Self.environment(), descriptors: descriptors,
                blockedSignals: request.pointee.type == CRIU_REQ_TYPE__DUMP ? Signals.termination : [])
        } catch {
            throw CRIUError(.connectionFailed, "cannot start '\(binary) swrk'", cause: error)
        }
        _ = consume theirs
        defer { _ = try? Processes.wait(pid) }
        return try exchange(over: socket, binary: binary, notify: notify)
    }

    private func exchange(over socket: borrowing OwnedFD, binary: String, notify: (String) -> Bool) throws(CRIUError) -> Reply {
        try send(request, over: socket, binary: binary)
        while true {
            guard let response = receive(over: socket) else {
                throw CRIUError(.communicationFailed, "'\(binary) swrk' exited without answering")
            }
            defer { criu_resp__free_unpacked(response, nil) }
            let answer = response.pointee
            if answer.type == CRIU_REQ_TYPE__NOTIFY {
                let script = answer.notify.flatMap { $0.pointee.script }.map { String(cString: $0) } ?? ""
                var ack = CriuReq()
                criu_req__init(&ack)
                ack.type = CRIU_REQ_TYPE__NOTIFY
                ack.has_notify_success = 1
                ack.notify_success = .init(notify(script))
                try send(&ack, over: socket, binary: binary)
                continue
            }
            guard answer.type == request.pointee.type else {
                if answer.type == CRIU_REQ_TYPE__EMPTY, answer.success == 0 {
                    throw CRIUError(.unsupportedRequest, "\(binary) does not support this request")
                }
                throw CRIUError(.unexpectedResponse, "unexpected response from \(binary)")
            }
            return Reply(
                success: answer.success != 0,
                crErrno: answer.has_cr_errno != 0 ? answer.cr_errno : nil,
                message: answer.cr_errmsg.map { String(cString: $0) },
                restoredPid: answer.restore.map { $0.pointee.pid }
            )
        }
    }

    private func send(_ message: UnsafePointer<CriuReq>, over socket: borrowing OwnedFD, binary: String) throws(CRIUError) {
        let size = criu_req__get_packed_size(message)
        var buffer = [UInt8](repeating: 0, count: size)
        let packed = buffer.withUnsafeMutableBufferPointer { criu_req__pack(message, $0.baseAddress) }
        let sent = buffer.withUnsafeBytes { Glibc.send(socket.raw, $0.baseAddress, packed, Int32(MSG_NOSIGNAL)) }
        guard sent == packed else {
            throw CRIUError(.communicationFailed, "cannot send a request to '\(binary) swrk': \(Errno(rawValue: errno))")
        }
    }

    /// One whole response (a seqpacket message); nil when CRIU closed its end.
    private func receive(over socket: borrowing OwnedFD) -> UnsafeMutablePointer<CriuResp>? {
        var probe: UInt8 = 0
        var size: Int
        repeat {
            size = recv(socket.raw, &probe, 1, Int32(MSG_PEEK | MSG_TRUNC))
        } while size < 0 && errno == EINTR
        guard size > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: size)
        let got = buffer.withUnsafeMutableBytes { recv(socket.raw, $0.baseAddress, size, 0) }
        guard got == size else { return nil }
        return buffer.withUnsafeBufferPointer { criu_resp__unpack(nil, size, $0.baseAddress) }
    }

    private static func environment() -> [String] {
        var result: [String] = []
        var cursor = environ
        while let entry = cursor.pointee {
            result.append(String(cString: entry))
            cursor += 1
        }
        return result
    }
}
