/// A user's name for an image: `NAME[:TAG]`, the tag defaulting to "latest".
///
/// NAME is lowercase letters, digits and the separators '.', '_', '-', '/', starting with
/// a letter or digit, without "..", empty components or a trailing '/', at most 128
/// characters; "sha256" is reserved so that "sha256:<hex>" always means a digest.
/// TAG is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. References are keys in the image index,
/// never paths, but a strict grammar keeps them unambiguous in CLI output and scripts.
public struct ImageReference: Hashable, Codable, Sendable, CustomStringConvertible {
    /// The tag of a reference written without one.
    public static let defaultTag = "latest"

    /// The part before the colon ("library/debian").
    public let name: String
    /// The part after the colon ("bookworm"), or "latest".
    public let tag: String

    /// Parses "NAME[:TAG]".
    public init(_ string: String) throws(StoreError) {
        guard !string.isEmpty else {
            throw StoreError(.invalidReference, "invalid image reference '': the name is empty")
        }
        // The tag follows the last ':', unless a '/' comes after it (then the ':' is part
        // of the name, which the name check rejects with a clearer message).
        if let colon = string.lastIndex(of: ":"), !string[colon...].contains("/") {
            try self.init(name: String(string[..<colon]), tag: String(string[string.index(after: colon)...]))
        } else {
            try self.init(name: string, tag: Self.defaultTag)
        }
    }

    /// A reference from its two parts, both validated.
    public init(name: String, tag: String = ImageReference.defaultTag) throws(StoreError) {
        try Self.validate(name: name)
        try Self.validate(tag: tag)
        self.name = name
        self.tag = tag
    }

    /// "NAME:TAG", the form stored in the index.
    public var description: String { "\(name):\(tag)" }

    /// Decodes the "NAME:TAG" string form, validating it.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        try self.init(container.decode(String.self))
    }

    /// Encodes as the "NAME:TAG" string.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    // MARK: - Grammar

    private static let lowercaseAndDigits = Set("abcdefghijklmnopqrstuvwxyz0123456789")
    private static let nameCharacters = lowercaseAndDigits.union("._-/")
    private static let tagFirst = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
    private static let tagCharacters = tagFirst.union(".-")

    private static func validate(name: String) throws(StoreError) {
        func invalid(_ reason: String) -> StoreError {
            StoreError(.invalidReference, "invalid image name '\(name)': \(reason)")
        }
        if name.isEmpty { throw invalid("the name is empty") }
        if name.count > 128 { throw invalid("the name is longer than 128 characters") }
        if !name.allSatisfy({ nameCharacters.contains($0) }) {
            throw invalid("use only lowercase letters, digits and the separators '.', '_', '-', '/'")
        }
        if let first = name.first, !lowercaseAndDigits.contains(first) {
            throw invalid("the name must start with a lowercase letter or digit")
        }
        if name.contains("..") { throw invalid("the name must not contain '..'") }
        if name.contains("//") || name.hasSuffix("/") { throw invalid("the name must not have an empty '/' component") }
        if name == "sha256" { throw invalid("'sha256' is reserved for image digests (sha256:<hex>)") }
    }

    private static func validate(tag: String) throws(StoreError) {
        guard let first = tag.first, tagFirst.contains(first), tag.count <= 128,
            tag.allSatisfy({ tagCharacters.contains($0) })
        else {
            throw StoreError(
                .invalidReference,
                "invalid image tag '\(tag)': a tag is a letter, digit or '_' followed by up to 127 letters, digits, '_', '.' or '-'"
            )
        }
    }
}
