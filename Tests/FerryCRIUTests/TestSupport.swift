import FerrySystem

#if canImport(Glibc)
    import Glibc
#endif

/// A fresh directory under /tmp, removed by `cleanup()`.
struct TempDir {
    let path: String

    init(_ label: String = "ferry-criu-test") {
        var template = Array("/tmp/\(label)-XXXXXX".utf8CString)
        let result = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }
        precondition(result != nil, "mkdtemp failed: \(errno)")
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func sub(_ name: String) -> String { "\(path)/\(name)" }

    func cleanup() { try? Files.removeUntrustedTree(path) }
}
