import ArgumentParser
import FerryStore
import FerrySystem
import Foundation
import Logging

/// Names the shell completion scripts (`ferry --generate-completion-script bash|zsh|fish`,
/// installed by `make install`) offer for arguments: they call back into ferry, which
/// reads the state root. Read-only: nothing is refreshed, created or removed, and a
/// missing or unreadable root offers nothing.
enum Completions {
    /// The root the command line being completed names (`--root DIR`), else FERRY_ROOT's,
    /// else the default.
    static func stateRoot(_ words: [String]) -> StateRoot? {
        var path = ProcessInfo.processInfo.environment["FERRY_ROOT"] ?? "/var/lib/ferry"
        for (index, word) in words.enumerated() {
            if word == "--root", index + 1 < words.count { path = words[index + 1] }
            if word.hasPrefix("--root=") { path = String(word.dropFirst("--root=".count)) }
        }
        guard Files.exists(path) else { return nil }
        return try? StateRoot(path: path)
    }

    @Sendable static func containers(_ words: [String], _ index: Int, _ prefix: String) -> [String] {
        guard let root = stateRoot(words) else { return [] }
        return ContainerStore(root: root).list().map(\.name).filter { $0.hasPrefix(prefix) }.sorted()
    }

    @Sendable static func images(_ words: [String], _ index: Int, _ prefix: String) -> [String] {
        guard let root = stateRoot(words), let images = try? ImageStore(root: root.path, logger: Logger(label: "ferry")).list() else { return [] }
        return images.flatMap(\.references).filter { $0.hasPrefix(prefix) }.sorted()
    }

    @Sendable static func volumes(_ words: [String], _ index: Int, _ prefix: String) -> [String] {
        guard let root = stateRoot(words) else { return [] }
        return VolumeStore(root: root).list().map(\.name).filter { $0.hasPrefix(prefix) }.sorted()
    }

    static let container = CompletionKind.custom(containers)
    static let image = CompletionKind.custom(images)
    static let volume = CompletionKind.custom(volumes)
}
