import Foundation

/// When each part of a container's log was written, for `logs -t/--since/--until`.
///
/// The log itself (`container.log`) stays the container's raw output, byte for byte, so
/// logs written before timestamps existed read as they always did. Beside it,
/// `container.log.times` gets one line "OFFSET NANOSECONDS\n" per chunk the supervisor
/// writes: the byte offset in the log where the chunk starts and the wall-clock time it
/// arrived. A line of output takes the time of the chunk its first byte came in.
public enum LogIndex {
    public struct Entry: Equatable, Sendable {
        public var offset: Int64
        public var time: Date

        public init(offset: Int64, time: Date) {
            self.offset = offset
            self.time = time
        }

        /// The index line for this entry.
        public var line: [UInt8] {
            Array("\(offset) \(Int64((time.timeIntervalSince1970 * 1e9).rounded()))\n".utf8)
        }
    }

    /// Parses an index; a torn last line (a supervisor killed mid-write) is ignored.
    public static func parse(_ bytes: [UInt8]) -> [Entry] {
        String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count == 2, let offset = Int64(fields[0]), let nanos = Int64(fields[1]) else { return nil }
            return Entry(offset: offset, time: Date(timeIntervalSince1970: Double(nanos) / 1e9))
        }
    }

    /// One line of output, with the time it was written if the index knows it.
    public struct Line: Equatable, Sendable {
        public var text: String
        public var time: Date?
        /// Whether the line ended with a newline (the last line may not, yet).
        public var complete: Bool
    }

    /// Splits `log[start...]` into lines and dates each from `entries`. Only complete
    /// lines unless `includePartial`; returns them with the offset just after the last.
    public static func lines(_ log: [UInt8], entries: [Entry], from start: Int = 0, includePartial: Bool = true) -> (lines: [Line], end: Int) {
        var result: [Line] = []
        var lineStart = start
        var entryIndex = 0
        func time(at offset: Int) -> Date? {
            while entryIndex + 1 < entries.count, entries[entryIndex + 1].offset <= Int64(offset) { entryIndex += 1 }
            guard entryIndex < entries.count, entries[entryIndex].offset <= Int64(offset) else { return nil }
            return entries[entryIndex].time
        }
        var position = start
        while position < log.count {
            if log[position] == UInt8(ascii: "\n") {
                result.append(Line(text: String(decoding: log[lineStart..<position], as: UTF8.self), time: time(at: lineStart), complete: true))
                lineStart = position + 1
            }
            position += 1
        }
        if includePartial, lineStart < log.count {
            result.append(Line(text: String(decoding: log[lineStart...], as: UTF8.self), time: time(at: lineStart), complete: false))
            lineStart = log.count
        }
        return (result, lineStart)
    }
}

/// What `ferry logs` prints: podman's --tail, --timestamps, --since and --until.
public struct LogOptions: Sendable, Equatable {
    public var follow = false
    /// Only the last N lines (of those --since/--until keep).
    public var tail: Int?
    /// Prefix each line with the time it was written (RFC 3339, nanoseconds).
    public var timestamps = false
    public var since: Date?
    public var until: Date?

    public init() {}

    /// Whether the index of timestamps is needed.
    var needsTimes: Bool { timestamps || since != nil || until != nil }

    /// Keeps the lines in [since, until] (a line without a time is kept only when neither
    /// is given), then the last `tail` of them.
    public func select(_ lines: [LogIndex.Line]) -> [LogIndex.Line] {
        var kept = lines.filter { line in
            if since == nil, until == nil { return true }
            guard let time = line.time else { return false }
            if let since, time < since { return false }
            if let until, time > until { return false }
            return true
        }
        if let tail { kept = Array(kept.suffix(max(tail, 0))) }
        return kept
    }

    /// A line as printed, with its newline if it had one.
    public func render(_ line: LogIndex.Line) -> String {
        var text = line.text + (line.complete ? "\n" : "")
        if timestamps, let time = line.time { text = Self.timestamp(time) + " " + text }
        return text
    }

    /// "2026-12-03T07:00:00.123456789Z", as podman's --timestamps.
    public static func timestamp(_ date: Date) -> String {
        let seconds = floor(date.timeIntervalSince1970)
        let nanos = Int(((date.timeIntervalSince1970 - seconds) * 1e9).rounded())
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? calendar.timeZone
        let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: Date(timeIntervalSince1970: seconds))
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ", parts.year ?? 0, parts.month ?? 0, parts.day ?? 0, parts.hour ?? 0, parts.minute ?? 0,
            parts.second ?? 0, min(nanos, 999_999_999))
    }
}

extension LogOptions {
    /// podman's --since/--until: an RFC 3339 time ("2026-12-03T07:00:00Z", fractions and
    /// offsets allowed), a Unix time in seconds ("1764745200.5"), or a duration before
    /// now ("90s", "10m", "2h").
    public static func parseTime(_ spec: String, now: Date = Date()) throws(RuntimeError) -> Date {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, factor) in units where spec.hasSuffix(suffix) {
            if let value = Double(spec.dropLast(suffix.count)), value >= 0 { return now.addingTimeInterval(-value * factor) }
            break
        }
        if let seconds = Double(spec), seconds >= 0 { return Date(timeIntervalSince1970: seconds) }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: spec) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        if let date = formatter.date(from: spec) { return date }
        throw RuntimeError(
            .invalidArgument, "invalid time '\(spec)': use RFC 3339 (2026-12-03T07:00:00Z), Unix seconds, or a duration before now (10m)")
    }
}
