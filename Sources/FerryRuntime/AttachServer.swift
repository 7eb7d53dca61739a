import FerrySystem

#if canImport(Glibc)
    import Glibc
#endif

/// The supervisor's side of `ferry attach` for a detached container with a terminal: a
/// listening socket in the container's directory and at most one attached client (a new
/// one takes over, as the last `attach` wins). A class so the poll loop can hold it
/// optionally; it owns the listener and the client.
final class AttachServer {
    private let listener: UnixListener
    private var client: OwnedFD?
    private var pending: [UInt8] = []
    var listenerFD: Int32 { listener.descriptor.raw }
    /// -1 without a client.
    private(set) var clientFD: Int32 = -1

    init(directory: String) throws(SystemError) {
        listener = try UnixListener(directory: directory, name: AttachFrame.socketName)
    }

    func accept() {
        guard let connection = try? listener.accept() else { return }
        clientFD = connection.raw
        client = consume connection
        pending = []
    }

    /// Reads the client's frames and applies them to the terminal's master.
    func readClient(master: Int32) {
        var buffer = [UInt8](repeating: 0, count: 16384)
        let n = buffer.withUnsafeMutableBytes { read(clientFD, $0.baseAddress, $0.count) }
        if n < 0, errno == EINTR || errno == EAGAIN { return }
        guard n > 0 else { return drop() }
        pending += buffer[0..<n]
        guard let frames = AttachFrame.decode(&pending) else { return drop() }
        for frame in frames {
            switch frame {
            case .input(let bytes):
                _ = bytes.withUnsafeBytes { write(master, $0.baseAddress, $0.count) }
            case .resize(let size):
                try? Terminal.setWindowSize(master, size)
            }
        }
    }

    /// Passes the terminal's output on; a client that is gone is dropped.
    func send(_ bytes: ArraySlice<UInt8>) {
        guard clientFD >= 0 else { return }
        var offset = bytes.startIndex
        while offset < bytes.endIndex {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(clientFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0, errno == EINTR { continue }
            guard sent > 0 else { return drop() }
            offset += sent
        }
    }

    private func drop() {
        client = nil
        clientFD = -1
        pending = []
    }
}
