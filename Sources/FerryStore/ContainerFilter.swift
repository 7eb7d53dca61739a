import Foundation

/// `ps --filter KEY=VALUE`, as podman reads it: several values of one key match any of
/// them, different keys must all match.
///   name=web     the name contains "web" (podman matches names as a regular expression;
///                a plain substring is what people type)
///   id=3f2a      the id starts with "3f2a"
///   status=exited  created, running, paused, checkpointing, exited or checkpointed
public struct ContainerFilter: Sendable, Equatable {
    public enum Key: String, Sendable, CaseIterable {
        case name, id, status
    }

    public static let statuses = ["created", "running", "paused", "checkpointing", "exited", "checkpointed"]

    public private(set) var values: [Key: [String]] = [:]

    public init() {}

    /// Parses each "KEY=VALUE".
    public init(_ specs: [String]) throws(StoreError) {
        for spec in specs {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let key = Key(rawValue: parts[0]), !parts[1].isEmpty else {
                let keys = Key.allCases.map(\.rawValue).joined(separator: ", ")
                throw StoreError(.invalidArgument, "invalid filter '\(spec)': use KEY=VALUE with KEY one of \(keys)")
            }
            if key == .status, !Self.statuses.contains(parts[1]) {
                throw StoreError(.invalidArgument, "invalid filter '\(spec)': status is one of \(Self.statuses.joined(separator: ", "))")
            }
            values[key, default: []].append(parts[1])
        }
    }

    /// A status filter names the states to show, so it implies `ps -a`.
    public var selectsStatus: Bool { values[.status] != nil }

    public func matches(_ record: ContainerRecord) -> Bool {
        values.allSatisfy { key, wanted in
            wanted.contains { value in
                switch key {
                case .name: record.name.contains(value)
                case .id: record.id.hasPrefix(value)
                case .status: record.status.stateName == value
                }
            }
        }
    }
}
