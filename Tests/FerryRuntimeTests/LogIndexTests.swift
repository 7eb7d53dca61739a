import Foundation
import Testing

@testable import FerryRuntime

/// Dating log lines from the index of chunk times, and podman's --tail/--since/--until.
@Suite struct LogIndexTests {
    let t0 = Date(timeIntervalSince1970: 1_764_745_200)

    @Test func entriesRoundTripAndATornLineIsIgnored() {
        let entries = [LogIndex.Entry(offset: 0, time: t0), LogIndex.Entry(offset: 12, time: t0.addingTimeInterval(1.5))]
        let bytes = entries.flatMap(\.line) + Array("40 17".utf8.dropLast(1)) + Array("x".utf8)
        let parsed = LogIndex.parse(bytes)
        #expect(parsed.count == 2)
        #expect(parsed.map(\.offset) == [0, 12])
        #expect(abs((parsed.last?.time.timeIntervalSince1970 ?? 0) - t0.addingTimeInterval(1.5).timeIntervalSince1970) < 1e-6)
    }

    @Test func aLineTakesTheTimeOfItsFirstByte() {
        // Chunk 1 at t0: "one\ntw"; chunk 2 at t0+1: "o\nthree\n"; then "four" unfinished.
        let log = Array("one\ntwo\nthree\nfour".utf8)
        let entries = [
            LogIndex.Entry(offset: 0, time: t0), LogIndex.Entry(offset: 6, time: t0 + 1), LogIndex.Entry(offset: 14, time: t0 + 2),
        ]
        let all = LogIndex.lines(log, entries: entries)
        #expect(all.lines.map(\.text) == ["one", "two", "three", "four"])
        #expect(all.lines.map(\.time) == [t0, t0, t0 + 1, t0 + 2])
        #expect(all.lines.last?.complete == false)
        let complete = LogIndex.lines(log, entries: entries, includePartial: false)
        #expect(complete.lines.count == 3 && complete.end == 14)
        let rest = LogIndex.lines(log, entries: entries, from: complete.end)
        #expect(rest.lines.map(\.text) == ["four"])
        // Lines of an older Ferry's log, before the index began, have no time.
        #expect(LogIndex.lines(log, entries: [LogIndex.Entry(offset: 8, time: t0)]).lines.map(\.time) == [nil, nil, t0, t0])
    }

    @Test func selectAndRender() {
        let lines =
            (0..<5).map { LogIndex.Line(text: "l\($0)", time: t0 + Double($0), complete: true) } + [
                LogIndex.Line(text: "old", time: nil, complete: true)
            ]
        var options = LogOptions()
        options.tail = 2
        #expect(options.select(lines).map(\.text) == ["l4", "old"])
        options.tail = nil
        options.since = t0 + 1
        options.until = t0 + 3
        #expect(options.select(lines).map(\.text) == ["l1", "l2", "l3"])
        options.tail = 1
        #expect(options.select(lines).map(\.text) == ["l3"])
        options.timestamps = true
        #expect(options.render(lines[0]) == "2025-12-03T07:00:00.000000000Z l0\n")
        #expect(LogOptions.timestamp(t0 + 0.25) == "2025-12-03T07:00:00.250000000Z")
    }

    @Test func timesAsPodmanTakesThem() throws {
        let now = t0
        #expect(try LogOptions.parseTime("10m", now: now) == now - 600)
        #expect(try LogOptions.parseTime("90s", now: now) == now - 90)
        #expect(try LogOptions.parseTime("1764745200", now: now) == t0)
        #expect(try LogOptions.parseTime("2025-12-03T07:00:00Z", now: now) == t0)
        #expect(try LogOptions.parseTime("2025-12-03T08:00:00.5+01:00", now: now) == t0 + 0.5)
        for bad in ["yesterday", "-5", "10x", ""] {
            #expect(throws: RuntimeError.self, "\(bad)") { try LogOptions.parseTime(bad, now: now) }
        }
    }
}
