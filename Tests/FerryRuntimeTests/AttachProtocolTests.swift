import FerryRuntime
import FerrySystem
import Testing

@Suite("Detach keys and attach frames")
struct AttachProtocolTests {
    @Test("detach keys parse as podman's")
    func parsing() throws {
        #expect(try DetachKeys(parsing: "ctrl-p,ctrl-q") == .podmanDefault)
        #expect(try DetachKeys(parsing: "ctrl-a,x,ctrl-@,ctrl-_").sequence == [1, UInt8(ascii: "x"), 0, 31])
        #expect(try DetachKeys(parsing: "").sequence.isEmpty)
        #expect(throws: RuntimeError.self) { try DetachKeys(parsing: "ctrl-1") }
        #expect(throws: RuntimeError.self) { try DetachKeys(parsing: "ab") }
        #expect(throws: RuntimeError.self) { try DetachKeys(parsing: "ctrl-p,") }
    }

    @Test("the matcher holds back a possible start and passes on a broken one")
    func matching() {
        var matcher = DetachKeyMatcher(.podmanDefault)
        var result = matcher.feed([UInt8(ascii: "a"), 0x10])
        #expect(result.forward == [UInt8(ascii: "a")] && !result.detach)
        result = matcher.feed([UInt8(ascii: "b")])
        #expect(result.forward == [0x10, UInt8(ascii: "b")] && !result.detach)
        result = matcher.feed([0x10, 0x10, 0x11, UInt8(ascii: "z")])
        #expect(result.forward == [0x10] && result.detach)
        var none = DetachKeyMatcher(DetachKeys(sequence: []))
        #expect(none.feed([0x10, 0x11]) == ([0x10, 0x11], false))
    }

    @Test("frames round-trip, split anywhere")
    func frames() {
        let sent: [AttachFrame] = [.input(Array("ls\r".utf8)), .resize(WindowSize(rows: 300, columns: 1000)), .input([])]
        let bytes = sent.flatMap(\.encoded)
        for split in 0...bytes.count {
            var buffer = Array(bytes[0..<split])
            var got = AttachFrame.decode(&buffer) ?? []
            buffer += bytes[split...]
            got += AttachFrame.decode(&buffer) ?? []
            #expect(got == sent, "split at \(split)")
            #expect(buffer.isEmpty)
        }
        var bad: [UInt8] = [9, 0, 0]
        #expect(AttachFrame.decode(&bad) == nil)
    }
}
