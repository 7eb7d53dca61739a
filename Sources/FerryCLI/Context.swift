import FerryRuntime
import FerryStore
import Foundation
import Logging

/// What a command needs to act on one state root.
struct Context {
    let root: StateRoot
    let runtime: ContainerRuntime
    let logger: Logger

    init(_ options: GlobalOptions) throws {
        try ContainerRuntime.requireRoot()
        logger = Logger(label: "ferry")
        root = try StateRoot(path: options.rootPath)
        runtime = ContainerRuntime(root: root, logger: logger)
    }
}

/// Printing helpers shared by the commands.
enum Output {
    static func json<T: Encodable>(_ value: T) throws {
        let data = try JSONEncoder.ferry.encode(value)
        print(String(decoding: data, as: UTF8.self))
    }

    /// A left-aligned text table, as `podman ps` prints.
    static func table(_ header: [String], _ rows: [[String]]) {
        tableLines(header, rows).forEach { print($0) }
    }

    /// The lines of `table`.
    static func tableLines(_ header: [String], _ rows: [[String]]) -> [String] {
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count {
                widths[index] = max(widths[index], cell.count)
            }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index] + 2, withPad: " ", startingAt: 0)
            }.joined()
        }
        return [line(header)] + rows.map(line)
    }

    /// "5 seconds ago", "3 minutes ago"...
    static func ago(_ date: Date, now: Date = Date()) -> String {
        let seconds = Int(now.timeIntervalSince(date))
        switch seconds {
        case ..<1: return "just now"
        case ..<60: return "\(seconds) second\(seconds == 1 ? "" : "s") ago"
        case ..<3600: return "\(seconds / 60) minute\(seconds / 60 == 1 ? "" : "s") ago"
        case ..<86400: return "\(seconds / 3600) hour\(seconds / 3600 == 1 ? "" : "s") ago"
        default: return "\(seconds / 86400) day\(seconds / 86400 == 1 ? "" : "s") ago"
        }
    }

    static func bytes(_ count: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
    }
}
