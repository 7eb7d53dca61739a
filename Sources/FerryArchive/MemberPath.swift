/// Checks and normalizes the path of an archive member before anything is written.
///
/// A member path must be relative and free of ".." so that prefixing it with the
/// destination keeps it inside; libarchive's SECURE_SYMLINKS then covers symlinks met on
/// the way. Refusing (rather than stripping "/" or ".." as tar does) means a hostile or
/// broken image fails loudly instead of being silently rearranged.
enum MemberPath {
    /// Why a member path was refused.
    enum Refusal: Error, Equatable {
        case absolute
        case parentComponent
        case empty

        var reason: String {
            switch self {
            case .absolute: "absolute path"
            case .parentComponent: "path contains '..'"
            case .empty: "empty path"
            }
        }
    }

    /// The member's components joined by "/", without empty or "." components; an empty
    /// result means the destination root itself (tar writes it as "./").
    static func normalize(_ path: [UInt8]) throws(Refusal) -> [UInt8] {
        if path.isEmpty { throw .empty }
        if path.first == slash { throw .absolute }
        var components: [ArraySlice<UInt8>] = []
        for component in path.split(separator: slash, omittingEmptySubsequences: true) {
            if component.elementsEqual([dot]) { continue }
            if component.elementsEqual([dot, dot]) { throw .parentComponent }
            components.append(component)
        }
        return Array(components.joined(separator: [slash]))
    }

    /// `base` + "/" + `relative`, or whichever of the two is not empty.
    static func join(_ base: [UInt8], _ relative: [UInt8]) -> [UInt8] {
        if base.isEmpty { return relative }
        if relative.isEmpty { return base }
        return base + [slash] + relative
    }

    static let slash = UInt8(ascii: "/")
    static let dot = UInt8(ascii: ".")
}
