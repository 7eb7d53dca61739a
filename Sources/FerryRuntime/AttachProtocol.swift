import FerrySystem

/// What `ferry attach` sends a detached terminal container's supervisor over the
/// container's attach socket. Each frame: one type byte, a big-endian UInt16 length, the
/// payload. The supervisor answers with the terminal's output as it comes, unframed.
public enum AttachFrame: Equatable, Sendable {
    /// Keys for the container's terminal.
    case input([UInt8])
    /// Our terminal's new size, for the container's (TIOCSWINSZ on its master).
    case resize(WindowSize)

    /// The socket's name in the container's directory.
    public static let socketName = "attach.sock"

    public var encoded: [UInt8] {
        switch self {
        case .input(let bytes):
            let count = min(bytes.count, Int(UInt16.max))
            return [0, UInt8(count >> 8), UInt8(count & 0xff)] + bytes[0..<count]
        case .resize(let size):
            return [1, 0, 4, UInt8(size.rows >> 8), UInt8(size.rows & 0xff), UInt8(size.columns >> 8), UInt8(size.columns & 0xff)]
        }
    }

    /// Takes the complete frames off the front of `buffer`, leaving a partial one; an
    /// unknown type or a malformed resize ends the stream (nil).
    public static func decode(_ buffer: inout [UInt8]) -> [AttachFrame]? {
        var frames: [AttachFrame] = []
        while buffer.count >= 3 {
            let length = Int(buffer[1]) << 8 | Int(buffer[2])
            guard buffer.count >= 3 + length else { break }
            let payload = Array(buffer[3..<3 + length])
            switch buffer[0] {
            case 0:
                frames.append(.input(payload))
            case 1 where length == 4:
                frames.append(.resize(WindowSize(rows: UInt16(payload[0]) << 8 | UInt16(payload[1]), columns: UInt16(payload[2]) << 8 | UInt16(payload[3]))))
            default:
                return nil
            }
            buffer.removeFirst(3 + length)
        }
        return frames
    }
}

/// podman's detach keys: a comma-separated sequence, each a single character or
/// `ctrl-X` (X one of a-z, @, [, \, ], ^, _); the default ctrl-p,ctrl-q; "" for none.
public struct DetachKeys: Equatable, Sendable {
    public let sequence: [UInt8]

    public static let podmanDefault = DetachKeys(sequence: [0x10, 0x11])

    public init(sequence: [UInt8]) {
        self.sequence = sequence
    }

    public init(parsing text: String) throws(RuntimeError) {
        if text.isEmpty {
            sequence = []
            return
        }
        var keys: [UInt8] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let key = part.lowercased()
            if key.hasPrefix("ctrl-"), key.count == 6, let character = key.last?.asciiValue {
                switch character {
                case UInt8(ascii: "a")...UInt8(ascii: "z"): keys.append(character - UInt8(ascii: "a") + 1)
                case UInt8(ascii: "@"): keys.append(0)
                case UInt8(ascii: "["), UInt8(ascii: "\\"), UInt8(ascii: "]"), UInt8(ascii: "^"), UInt8(ascii: "_"): keys.append(character - 0x40)
                default: throw RuntimeError(.invalidArgument, "invalid detach key '\(part)': ctrl- takes a-z, @, [, \\, ], ^ or _")
                }
            } else if part.count == 1, let character = part.first?.asciiValue, character >= 0x20, character < 0x7f {
                keys.append(character)
            } else {
                throw RuntimeError(.invalidArgument, "invalid detach key '\(part)': expected one character or ctrl-X")
            }
        }
        sequence = keys
    }
}

/// Watches the keys typed into `ferry attach` for the detach sequence: keys that may
/// start it are held back until it is complete (detach) or broken (they are passed on).
public struct DetachKeyMatcher: Sendable {
    public let keys: DetachKeys
    private var held: [UInt8] = []

    public init(_ keys: DetachKeys) {
        self.keys = keys
    }

    /// The bytes to pass on, and whether the sequence is complete (what follows it in
    /// `input` is dropped).
    public mutating func feed(_ input: some Sequence<UInt8>) -> (forward: [UInt8], detach: Bool) {
        let sequence = keys.sequence
        guard !sequence.isEmpty else { return (Array(input), false) }
        var forward: [UInt8] = []
        for byte in input {
            held.append(byte)
            if held == sequence {
                held = []
                return (forward, true)
            }
            // Keep the longest held suffix that is still a prefix of the sequence.
            while !held.isEmpty, !sequence.starts(with: held) {
                forward.append(held.removeFirst())
            }
        }
        return (forward, false)
    }
}
