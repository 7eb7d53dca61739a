import FerrySystem

/// Counts the bytes of an archive's members as an export, import or snapshot goes
/// through them, and reports to a `ProgressSink`: one update as each member starts,
/// so the display moves member by member (memory pages are most of the bytes).
struct ProgressTally {
    let sink: ProgressSink
    let verb: String
    let total: Int64
    private(set) var done: Int64 = 0
    private var current: Int64 = 0

    init(sizes: [Int64], sink: ProgressSink, verb: String) {
        self.sink = sink
        self.verb = verb
        total = sizes.reduce(0, +)
    }

    /// Members about to be written; their sizes are known before the first byte.
    init(_ members: [Exporter.Member], sink: ProgressSink, verb: String) {
        self.init(sizes: members.map(\.byteCount), sink: sink, verb: verb)
    }

    /// An archive's members, as its `ferry.json` lists their sizes.
    init(_ sizes: [String: Int64], sink: ProgressSink, verb: String) {
        self.init(sizes: Array(sizes.values), sink: sink, verb: verb)
    }

    /// The previous member is done; `member` starts.
    mutating func starting(_ member: Exporter.Member) {
        starting(member.name, bytes: member.byteCount)
    }

    mutating func starting(_ name: String, bytes: Int64) {
        done += current
        current = bytes
        sink.report("\(verb) \(name)", done: min(done, total), total: total)
    }

    mutating func finish(_ phase: String) {
        done += current
        current = 0
        sink.finish(phase, done: max(done, total), total: max(done, total))
    }
}

extension Exporter.Member {
    /// The member's size in the archive (0 for a file that cannot be read: the writer
    /// reports that failure).
    var byteCount: Int64 {
        switch source {
        case .bytes(let bytes): Int64(bytes.count)
        case .file(let path): (try? Files.status(path, followSymlinks: false).size) ?? 0
        }
    }
}
