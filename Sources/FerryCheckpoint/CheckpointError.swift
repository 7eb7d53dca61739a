import FerrySystem

/// Errors of the coordinator: "cannot checkpoint container 'web': criu dump failed: ...".
public struct CheckpointError: CodedError {
    public enum Code: Sendable, Equatable {
        case invalidState
        case dumpFailed
        case exportFailed
        case restoreFailed
        case incompatible
        case invalidArchive
        case conflict
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}
