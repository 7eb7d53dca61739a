import SystemPackage
import Testing

@testable import FerrySystem

/// The one error model: each layer keeps its cause, the printed line is built from the
/// chain, and a caller can still find the system error at the bottom.
@Suite struct ErrorModelTests {
    /// A layer as a module would define it.
    struct LayerError: CodedError {
        enum Code: Equatable { case failed }
        let code: Code = .failed
        let message: String
        let cause: (any Error)?
        let hint: String?

        init(_ message: String, cause: (any Error)? = nil, hint: String? = nil) {
            self.message = message
            self.cause = cause
            self.hint = hint
        }
    }

    @Test func theLineIsBuiltFromTheChain() {
        let system = Errno.noSpace.with("write", path: "x.tar.zst")
        #expect("\(system)" == "write x.tar.zst: No space left on device")
        let inner = LayerError("cannot write the archive", cause: system)
        let outer = LayerError("cannot export container 'web'", cause: inner, hint: "it keeps running")
        #expect(
            "\(outer)" == "cannot export container 'web': cannot write the archive: write x.tar.zst: No space left on device; it keeps running"
        )
        // A layer with nothing to say of its own shows its cause alone, and no cause adds no colon.
        #expect("\(LayerError("", cause: inner))" == "\(inner)")
        #expect("\(LayerError("cannot stop"))" == "cannot stop")
    }

    @Test func theRootCauseIsFoundThroughEveryLayer() {
        let system = Errno.noSpace.with("write", path: "x")
        let outer = LayerError("a", cause: LayerError("b", cause: system))
        #expect(outer.causeChain.count == 4)  // a, b, the system error, its errno
        #expect(outer.rootErrno == .noSpace)
        #expect(outer.firstCause(as: SystemError.self)?.path == "x")
        #expect(outer.causeMessages == ["a", "b", "write x", "No space left on device"])
        #expect(LayerError("alone").rootErrno == nil)
        // A bare errno is its own root.
        #expect(LayerError("a", cause: Errno.noSuchFileOrDirectory).rootErrno == .noSuchFileOrDirectory)
    }

    @Test func aChainIsBounded() {
        var error = LayerError("0")
        for level in 1...100 { error = LayerError("\(level)", cause: error) }
        #expect(error.causeChain.count == 32)
    }
}
