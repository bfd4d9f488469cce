/// A reference to an image in a registry: `[HOST[:PORT]/]REPO[:TAG][@sha256:…]`,
/// parsed as the distribution spec and containers/image do.
public struct ImageReference: Hashable, Sendable, CustomStringConvertible {
    public var registry: String
    public var repository: String
    public var tag: String?
    public var digest: Digest?

    public static let defaultRegistry = "docker.io"

    public init(parsing text: String) throws(ReferenceError) {
        var rest = Substring(text)
        var digest: Digest?
        if let at = rest.firstIndex(of: "@") {
            do { digest = try Digest(parsing: String(rest[rest.index(after: at)...])) } catch { throw ReferenceError(text, "bad digest") }
            rest = rest[..<at]
        }
        var registry = ImageReference.defaultRegistry
        if let slash = rest.firstIndex(of: "/") {
            let first = rest[..<slash]
            // The first component is a host when it looks like one (as docker decides).
            if first.contains(".") || first.contains(":") || first == "localhost" {
                registry = String(first)
                rest = rest[rest.index(after: slash)...]
            }
        }
        var tag: String?
        if let colon = rest.lastIndex(of: ":") {
            tag = String(rest[rest.index(after: colon)...])
            rest = rest[..<colon]
        }
        let repo = String(rest)
        guard !repo.isEmpty, ImageReference.isValidRepository(repo) else { throw ReferenceError(text, "bad repository name") }
        if let tag, !ImageReference.isValidTag(tag) { throw ReferenceError(text, "bad tag") }
        if tag == nil && digest == nil { tag = "latest" }
        self.registry = registry
        self.repository = (registry == ImageReference.defaultRegistry && !repo.contains("/")) ? "library/\(repo)" : repo
        self.tag = tag
        self.digest = digest
    }

    static func isValidRepository(_ s: String) -> Bool {
        s.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { part in
            !part.isEmpty && part.utf8.allSatisfy { c in
                (0x61...0x7a).contains(c) || (0x30...0x39).contains(c) || c == 0x2e || c == 0x5f || c == 0x2d
            } && (part.first!.isLetter || part.first!.isNumber)
        }
    }

    static func isValidTag(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 128 && s.utf8.allSatisfy { c in
            (0x61...0x7a).contains(c) || (0x41...0x5a).contains(c) || (0x30...0x39).contains(c) || c == 0x2e || c == 0x5f || c == 0x2d
        } && s.first != "." && s.first != "-"
    }

    /// What the registry is asked for: the digest when there is one, else the tag.
    public var manifestReference: String { digest?.description ?? tag ?? "latest" }

    public var description: String {
        var s = "\(registry)/\(repository)"
        if let tag { s += ":\(tag)" }
        if let digest { s += "@\(digest)" }
        return s
    }
}

public struct ReferenceError: Error, CustomStringConvertible {
    public let text: String
    public let reason: String
    init(_ text: String, _ reason: String) { self.text = text; self.reason = reason }
    public var description: String { "invalid image reference \"\(text)\": \(reason)" }
}
