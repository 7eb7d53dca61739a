import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Plays CRIU's `restore --lazy-pages` towards a lazy-pages server listening at `socket`:
/// connects, sends each process's pid (32 bits) and userfaultfd, then the "restore
/// finished" word (0x52535446) unless `finish` is false, when it stops after the first
/// process (a restore that died; close the returned socket to make it go away).
public func actAsLazyRestore(socket path: String, processes: [(pid: Int32, fault: Userfault)], finish: Bool) throws -> OwnedFD {
    let socket = OwnedFD(adopting: try retryingSyscall { Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0) })
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
    _ = try withUnsafePointer(to: &address) { pointer throws(Errno) in
        try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic throws(Errno) in
            try retryingSyscall { Glibc.connect(socket.raw, generic, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
    let raw = socket.raw
    func sendWord(_ word: UInt32) {
        var value = word
        _ = withUnsafeBytes(of: &value) { Glibc.send(raw, $0.baseAddress, 4, 0) }
    }
    for process in processes {
        sendWord(UInt32(bitPattern: process.pid))
        try socket.sendDescriptor(process.fault.descriptor)
        if !finish { break }
    }
    if finish { sendWord(0x5253_5446) }
    return socket
}
