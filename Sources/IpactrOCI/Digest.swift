/// An OCI content digest, `algorithm:hex`. Only sha256 is accepted, as the
/// image-spec requires of implementations that write content.
public struct Digest: Hashable, Codable, Sendable, CustomStringConvertible, Comparable {
    public let algorithm: String
    public let hex: String

    public init(parsing string: String) throws(DigestError) {
        guard let colon = string.firstIndex(of: ":") else { throw DigestError(string) }
        let alg = String(string[..<colon]), hex = String(string[string.index(after: colon)...])
        guard alg == "sha256", hex.count == 64,
              hex.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) })
        else { throw DigestError(string) }
        self.algorithm = alg
        self.hex = hex
    }

    public init(sha256Hex hex: String) {
        self.algorithm = "sha256"
        self.hex = hex
    }

    public var description: String { "\(algorithm):\(hex)" }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        self = try Digest(parsing: s)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public static func < (a: Digest, b: Digest) -> Bool { a.description < b.description }
}

public struct DigestError: Error, CustomStringConvertible {
    public let text: String
    init(_ text: String) { self.text = text }
    public var description: String { "invalid digest \"\(text)\" (want sha256:<64 lowercase hex>)" }
}
