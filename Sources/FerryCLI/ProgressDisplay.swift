import ArgumentParser
import FerrySystem
import Foundation

/// Shows a long operation's progress on a terminal: one line on stderr, redrawn in place
/// ("exporting checkpoint/pages-1.img  512.0 MiB / 1.0 GiB  50%  210.3 MiB/s  ETA 2s"),
/// ended with a newline when the operation finishes. Nothing at all when stderr is not a
/// terminal (scripts, logs) or with -q.
final class ProgressDisplay: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()
    private let start = ContinuousClock.now
    private var lastDraw: ContinuousClock.Instant?
    private var lastPhase = ""
    private var open = false

    private init(fd: Int32) {
        self.fd = fd
    }

    /// The sink a command hands to the operation: `.none` unless `fd` is a terminal.
    static func sink(quiet: Bool, fd: Int32 = 2) -> ProgressSink {
        guard !quiet, isatty(fd) == 1 else { return .none }
        let display = ProgressDisplay(fd: fd)
        latest.lock.lock()
        latest.display = display
        latest.lock.unlock()
        return ProgressSink { display.show($0) }
    }

    private func show(_ update: ProgressUpdate) {
        lock.lock()
        defer { lock.unlock() }
        let now = ContinuousClock.now
        // Redrawing for every member would flood a slow terminal: a few times a second,
        // and always for a new phase and the last update.
        if let lastDraw, !update.finished, update.phase == lastPhase, now - lastDraw < .milliseconds(200) { return }
        lastDraw = now
        lastPhase = update.phase
        let text = Self.line(update, elapsed: now - start)
        // \r and "erase to the end of the line" redraw in place.
        var bytes = Array("\r\u{1B}[K\(text)".utf8)
        if update.finished { bytes.append(UInt8(ascii: "\n")) }
        open = !update.finished
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// The display that has drawn last, so that an error does not land on its line.
    private static let latest = Latest()

    private final class Latest: @unchecked Sendable {
        let lock = NSLock()
        var display: ProgressDisplay?
    }

    /// Ends a line left open by an operation that failed half-way.
    static func endOpenLine() {
        latest.lock.lock()
        let display = latest.display
        latest.lock.unlock()
        guard let display else { return }
        display.lock.lock()
        defer { display.lock.unlock() }
        if display.open { _ = "\n".withCString { write(display.fd, $0, 1) } }
        display.open = false
    }

    /// The text of one update: phase, bytes, percent, rate and ETA as far as known.
    static func line(_ update: ProgressUpdate, elapsed: Duration) -> String {
        var parts = [update.phase]
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rate = seconds > 0 ? Double(update.doneBytes) / seconds : 0
        if let total = update.totalBytes, total > 0 {
            parts.append("\(Output.bytes(update.doneBytes)) / \(Output.bytes(total))")
            let percent = update.finished ? 100 : min(99, Int(Double(update.doneBytes) * 100 / Double(total)))
            parts.append("\(percent)%")
            if update.doneBytes > 0 { parts.append("\(Output.bytes(Int64(rate)))/s") }
            if !update.finished, rate > 0 { parts.append("ETA \(duration(Double(total - update.doneBytes) / rate))") }
        } else if update.doneBytes > 0 {
            parts.append(Output.bytes(update.doneBytes))
            if update.finished { parts.append("100%") }
        }
        if update.finished || update.doneBytes == 0 { parts.append("(\(duration(seconds)))") }
        return parts.joined(separator: "  ")
    }

    /// "0.4s", "12s", "3m05s".
    static func duration(_ seconds: Double) -> String {
        if seconds < 10 { return String(format: "%.1fs", max(seconds, 0)) }
        let whole = Int(seconds.rounded())
        return whole < 60 ? "\(whole)s" : String(format: "%dm%02ds", whole / 60, whole % 60)
    }
}

/// `-q/--quiet` of the commands that show progress.
struct ProgressOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "Show no progress (it is shown only when stderr is a terminal).")
    var quiet = false

    var sink: ProgressSink { ProgressDisplay.sink(quiet: quiet) }
}
