import SystemPackage

/// Ferry's one error model: every module's error type conforms.
///
/// An error has a code to match on, its own sentence (`message`: what this layer was
/// doing, naming the object — "cannot checkpoint container 'web'"), and the error it was
/// made from (`cause`), kept whole rather than flattened into text. The printed line is
/// built from the chain: "cannot checkpoint container 'web': criu dump failed: …", with an
/// optional `hint` after it ("; it keeps running here"). Because the cause survives, a
/// caller several layers up can still ask what really happened — a full disk is ENOSPC
/// (`rootErrno`) whichever layer reports it, and a command that was not found exits 127
/// even when a restore reported it.
public protocol CodedError: Error, CustomStringConvertible, Sendable {
    associatedtype Code: Sendable & Equatable
    /// What kind of failure this is, for callers that react differently.
    var code: Code { get }
    /// This layer's sentence, without the cause's text.
    var message: String { get }
    /// The error this one was made from, if any.
    var cause: (any Error)? { get }
    /// What follows the cause in the printed line: what became of the object, or what to
    /// do ("it keeps running here", "use --force to replace it").
    var hint: String? { get }
}

extension CodedError {
    public var cause: (any Error)? { nil }
    public var hint: String? { nil }

    /// The whole line: the message, the cause's line after a colon, then the hint.
    public var description: String {
        var line = message
        if let cause {
            let text = "\(cause)"
            if !text.isEmpty { line += line.isEmpty ? text : ": " + text }
        }
        if let hint, !hint.isEmpty { line += "; " + hint }
        return line
    }
}

extension Error {
    /// This error, then its cause, then the cause's cause, outermost first (bounded, in
    /// case a chain were ever made circular through a reference type).
    public var causeChain: [any Error] {
        var chain: [any Error] = [self]
        while chain.count < 32, let next = (chain[chain.count - 1] as? any CodedError)?.cause {
            chain.append(next)
        }
        return chain
    }

    /// The first error of type `T` in the chain, outermost first.
    public func firstCause<T: Error>(as type: T.Type) -> T? {
        causeChain.lazy.compactMap { $0 as? T }.first
    }

    /// The system error at the bottom of the chain, when one is there: how a caller asks
    /// "was this ENOSPC?" of an error several layers deep.
    public var rootErrno: Errno? {
        for error in causeChain.reversed() {
            if let errno = error as? Errno { return errno }
            if let system = error as? SystemError { return system.errno }
        }
        return nil
    }

    /// Each layer's own sentence, outermost first ("cannot export 'web'", "write
    /// 'x.tar.zst'", "No space left on device"): the `causes` of a JSON error.
    public var causeMessages: [String] {
        causeChain.map { error in
            if let coded = error as? any CodedError { return coded.message }
            return "\(error)"
        }
    }
}

extension SystemError: CodedError {
    /// The errno is the code: callers match on `.noSpace`, `.noSuchFileOrDirectory`.
    public var code: Errno { errno }
    /// "mount /var/lib/ferry/x/rootfs"
    public var message: String {
        if let path { return "\(operation) \(path)" }
        return operation
    }
    public var cause: (any Error)? { errno }
}
