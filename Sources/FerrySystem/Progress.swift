/// How far a long operation (export, import, migration, snapshot, image import) is, for
/// a progress display. Operations report; only the CLI decides whether anything is shown.
public struct ProgressUpdate: Sendable, Equatable {
    /// What is being done now, e.g. "exporting checkpoint/pages-1.img".
    public var phase: String
    /// Bytes done so far over the whole operation.
    public var doneBytes: Int64
    /// Bytes the whole operation moves, when known.
    public var totalBytes: Int64?
    /// The last update of the operation: everything is done.
    public var finished: Bool

    public init(phase: String, doneBytes: Int64 = 0, totalBytes: Int64? = nil, finished: Bool = false) {
        self.phase = phase
        self.doneBytes = doneBytes
        self.totalBytes = totalBytes
        self.finished = finished
    }
}

/// The callback long operations call with their progress. `.none` (the default of every
/// operation) drops updates, so callers that show nothing pass nothing.
public struct ProgressSink: Sendable {
    private let deliver: (@Sendable (ProgressUpdate) -> Void)?

    public init(_ deliver: @escaping @Sendable (ProgressUpdate) -> Void) {
        self.deliver = deliver
    }

    private init() {
        deliver = nil
    }

    public static let none = ProgressSink()

    /// Whether updates go anywhere: an operation may skip work done only to report.
    public var isActive: Bool { deliver != nil }

    public func report(_ phase: String, done: Int64 = 0, total: Int64? = nil) {
        deliver?(ProgressUpdate(phase: phase, doneBytes: done, totalBytes: total))
    }

    public func finish(_ phase: String, done: Int64, total: Int64? = nil) {
        deliver?(ProgressUpdate(phase: phase, doneBytes: done, totalBytes: total ?? done, finished: true))
    }
}
