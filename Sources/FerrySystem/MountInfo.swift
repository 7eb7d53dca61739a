/// One line of /proc/PID/mountinfo (see proc(5)).
public struct MountInfoEntry: Equatable, Sendable {
    public var mountID: Int
    public var parentID: Int
    public var root: String
    public var mountPoint: String
    public var options: String
    public var optionalFields: [String]
    public var fsType: String
    public var source: String
    public var superOptions: String
}

public enum MountInfo {
    /// Parses mountinfo text. Malformed lines are skipped rather than fatal: the kernel's
    /// format is stable, but a partial read must not take the caller down.
    public static func parse(_ text: String) -> [MountInfoEntry] {
        text.split(separator: "\n").compactMap { parseLine(String($0)) }
    }

    static func parseLine(_ line: String) -> MountInfoEntry? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard fields.count >= 10, let separator = fields.firstIndex(of: "-"), separator >= 6,
            fields.count >= separator + 4,
            let mountID = Int(fields[0]), let parentID = Int(fields[1])
        else { return nil }
        return MountInfoEntry(
            mountID: mountID,
            parentID: parentID,
            root: unescape(fields[3]),
            mountPoint: unescape(fields[4]),
            options: fields[5],
            optionalFields: Array(fields[6..<separator]),
            fsType: fields[separator + 1],
            source: unescape(fields[separator + 2]),
            superOptions: fields[separator + 3]
        )
    }

    /// The kernel escapes space, tab, newline and backslash as \ooo octal.
    static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        let utf8 = Array(field.utf8)
        var i = 0
        while i < utf8.count {
            if utf8[i] == UInt8(ascii: "\\"), i + 3 < utf8.count {
                let digits = utf8[(i + 1)...(i + 3)]
                if digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "7") }),
                    let value = UInt8(String(decoding: digits, as: UTF8.self), radix: 8)
                {
                    bytes.append(value)
                    i += 4
                    continue
                }
            }
            bytes.append(utf8[i])
            i += 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The current process's mount table.
    public static func current() throws(SystemError) -> [MountInfoEntry] {
        parse(try Files.readString("/proc/self/mountinfo"))
    }
}
