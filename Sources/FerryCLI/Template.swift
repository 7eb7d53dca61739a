import ArgumentParser
import Foundation

/// The subset of Go's text/template that `podman ps/inspect --format` users write:
/// `{{.Field}}`, nested `{{.State.Pid}}`, `{{json .}}` / `{{json .Field}}`, a leading
/// `table` (a header row, then the rows), and podman's `\t` / `\n` escapes.
///
/// Field names match case-insensitively (`{{.Id}}` and `{{.ID}}` are the same), since
/// Ferry's JSON keys are camelCase where podman's Go fields are capitalized. Anything
/// else (pipelines, functions, conditionals) is refused with a message that says so.
struct Template: Equatable {
    enum Segment: Equatable {
        case text(String)
        /// A path of field names; empty is `.`, the whole value.
        case field([String])
        case json([String])
    }

    let segments: [Segment]
    /// `table ...`: print a header row first.
    let isTable: Bool

    struct Error: Swift.Error, CustomStringConvertible, Equatable {
        let description: String
    }

    init(_ source: String) throws(Error) {
        var text = source
        isTable = text.hasPrefix("table")
        if isTable {
            text = String(text.dropFirst("table".count))
            if text.first == " " { text.removeFirst() }
        }
        text = text.replacingOccurrences(of: "\\t", with: "\t").replacingOccurrences(of: "\\n", with: "\n")
        var segments: [Segment] = []
        var rest = Substring(text)
        while let open = rest.range(of: "{{") {
            if open.lowerBound > rest.startIndex { segments.append(.text(String(rest[..<open.lowerBound]))) }
            guard let close = rest[open.upperBound...].range(of: "}}") else {
                throw Error(description: "invalid --format template '\(source)': '{{' without '}}'")
            }
            segments.append(try Self.action(String(rest[open.upperBound..<close.lowerBound]), in: source))
            rest = rest[close.upperBound...]
        }
        if !rest.isEmpty { segments.append(.text(String(rest))) }
        self.segments = segments
    }

    private static func action(_ raw: String, in source: String) throws(Error) -> Segment {
        let words = raw.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        func path(_ word: String) throws(Error) -> [String] {
            guard word.hasPrefix(".") else {
                throw Error(description: "invalid --format template '\(source)': '\(raw.trimmingCharacters(in: .whitespaces))' is not a field such as .Names")
            }
            return word == "." ? [] : word.dropFirst().split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        }
        switch words.count {
        case 1: return .field(try path(words[0]))
        case 2 where words[0] == "json": return .json(try path(words[1]))
        default:
            throw Error(
                description: "invalid --format template '\(source)': only {{.Field}} and {{json .Field}} are supported, not '{{\(raw)}}'")
        }
    }

    /// The header row of a `table` template: each field replaced by its name in capitals
    /// (`headers` may name it otherwise, e.g. ID -> "CONTAINER ID").
    func header(_ headers: [String: String] = [:]) -> String {
        segments.map { segment in
            switch segment {
            case .text(let text): text
            case .field(let path), .json(let path):
                headers[path.joined(separator: ".").lowercased()] ?? path.last.map { $0.uppercased() } ?? ""
            }
        }.joined()
    }

    /// Renders the template against `value`.
    func render(_ value: TemplateValue) throws(Error) -> String {
        var output = ""
        for segment in segments {
            switch segment {
            case .text(let text): output += text
            case .field(let path): output += try lookup(path, in: value).text
            case .json(let path): output += try lookup(path, in: value).json
            }
        }
        return output
    }

    /// Encodes `value` with Ferry's JSON conventions and renders it.
    func render<T: Encodable>(encoding value: T) throws -> String {
        try render(try TemplateValue(encoding: value))
    }

    private func lookup(_ path: [String], in value: TemplateValue) throws(Error) -> TemplateValue {
        var current = value
        for name in path {
            guard case .object(let object) = current else {
                throw Error(description: "cannot evaluate field .\(path.joined(separator: ".")): '\(name)' is not inside an object")
            }
            if let exact = object[name] {
                current = exact
            } else if let key = object.keys.first(where: { $0.lowercased() == name.lowercased() }), let found = object[key] {
                current = found
            } else {
                let known = object.keys.sorted().joined(separator: ", ")
                throw Error(description: "cannot evaluate field .\(path.joined(separator: ".")): no field '\(name)' (known: \(known))")
            }
        }
        return current
    }
}

/// A JSON value a template walks: decoded from Ferry's own JSON, so booleans, numbers
/// and strings stay what they were.
enum TemplateValue: Decodable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([TemplateValue])
    case object([String: TemplateValue])

    init<T: Encodable>(encoding value: T) throws {
        self = try JSONDecoder().decode(TemplateValue.self, from: try JSONEncoder.ferry.encode(value))
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([TemplateValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: TemplateValue].self))
        }
    }

    /// As Go's templates print it: strings bare, lists as [a b], objects as JSON.
    var text: String {
        switch self {
        case .null: "<no value>"
        case .bool(let value): value ? "true" : "false"
        case .number(let value): value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
        case .string(let value): value
        case .array(let values): "[" + values.map(\.text).joined(separator: " ") + "]"
        case .object: json
        }
    }

    /// Compact JSON, keys sorted.
    var json: String {
        switch self {
        case .null: "null"
        case .bool(let value): value ? "true" : "false"
        case .number: text
        case .string(let value): Self.quoted(value)
        case .array(let values): "[" + values.map(\.json).joined(separator: ",") + "]"
        case .object(let object): "{" + object.keys.sorted().map { "\(Self.quoted($0)):\(object[$0]?.json ?? "null")" }.joined(separator: ",") + "}"
        }
    }

    private static func quoted(_ string: String) -> String {
        let data = (try? JSONEncoder().encode(string)) ?? Data("\"\"".utf8)
        return String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\\/", with: "/")
    }
}
