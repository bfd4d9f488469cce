import CSystemd
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// One D-Bus value of any type. Containers keep their element types, so an
/// empty array or dictionary still has a signature.
public indirect enum BusValue: Hashable, Sendable {
    case byte(UInt8)
    case bool(Bool)
    case int16(Int16)
    case uint16(UInt16)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case uint64(UInt64)
    case double(Double)
    case string(String)
    case objectPath(String)
    case signature(String)
    /// A file descriptor. Appending one to a message sends a duplicate; a
    /// descriptor read from a message is a fresh duplicate the reader owns
    /// and must close.
    case unixFD(Int32)
    /// `a<elementSignature>`: every element has that signature.
    case array(elementSignature: String, [BusValue])
    /// `a{<key><value>}`: keys are of a basic type; entry order is kept.
    case dict(keySignature: String, valueSignature: String, [BusDictEntry])
    /// `(…)`: at least one member.
    case structure([BusValue])
    /// `v`: the value carries its own signature.
    case variant(BusValue)

    /// The value's D-Bus type signature (one complete type).
    public var signature: String {
        switch self {
        case .byte: return "y"
        case .bool: return "b"
        case .int16: return "n"
        case .uint16: return "q"
        case .int32: return "i"
        case .uint32: return "u"
        case .int64: return "x"
        case .uint64: return "t"
        case .double: return "d"
        case .string: return "s"
        case .objectPath: return "o"
        case .signature: return "g"
        case .unixFD: return "h"
        case .array(let element, _): return "a" + element
        case .dict(let key, let value, _): return "a{" + key + value + "}"
        case .structure(let members): return "(" + members.map(\.signature).joined() + ")"
        case .variant: return "v"
        }
    }
}

/// One entry of a `.dict` value.
public struct BusDictEntry: Hashable, Sendable {
    public var key: BusValue
    public var value: BusValue
    public init(_ key: BusValue, _ value: BusValue) {
        self.key = key
        self.value = value
    }
}

// Shorthands for the shapes the ipactr API uses most.
public extension BusValue {
    /// `as`
    static func strings(_ values: [String]) -> BusValue {
        .array(elementSignature: "s", values.map(BusValue.string))
    }

    /// `a{sv}`, keys sorted so the wire form is stable.
    static func properties(_ values: [String: BusValue]) -> BusValue {
        .dict(keySignature: "s", valueSignature: "v",
              values.keys.sorted().map { BusDictEntry(.string($0), .variant(values[$0]!)) })
    }

    var stringValue: String? {
        switch self {
        case .string(let s), .objectPath(let s), .signature(let s): return s
        case .variant(let v): return v.stringValue
        default: return nil
        }
    }

    var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        if case .variant(let v) = self { return v.boolValue }
        return nil
    }

    /// Any integer type, widened; nil when it does not fit.
    var int64Value: Int64? {
        switch self {
        case .byte(let x): return Int64(x)
        case .int16(let x): return Int64(x)
        case .uint16(let x): return Int64(x)
        case .int32(let x): return Int64(x)
        case .uint32(let x): return Int64(x)
        case .int64(let x): return x
        case .uint64(let x): return Int64(exactly: x)
        case .variant(let v): return v.int64Value
        default: return nil
        }
    }

    /// Elements of an array, or nil for any other type.
    var arrayValue: [BusValue]? {
        if case .array(_, let items) = self { return items }
        if case .variant(let v) = self { return v.arrayValue }
        return nil
    }

    /// An `a{s…}` dictionary as a Swift dictionary (variants unwrapped).
    var stringDictValue: [String: BusValue]? {
        switch self {
        case .dict("s", _, let entries):
            var out: [String: BusValue] = [:]
            for e in entries {
                guard case .string(let k) = e.key else { return nil }
                if case .variant(let inner) = e.value { out[k] = inner } else { out[k] = e.value }
            }
            return out
        case .variant(let v): return v.stringDictValue
        default: return nil
        }
    }
}

/// D-Bus type signatures: validation and splitting into complete types,
/// following the specification's grammar and limits.
public enum BusSignature {
    static let basicTypes = Set("ybnqiuxtdsogh".utf8)

    /// Splits a signature into its complete types ("sa{sv}i" → ["s", "a{sv}", "i"]).
    /// Throws `invalidArgument` when the signature is not valid.
    public static func split(_ signature: String) throws(IpactrError) -> [String] {
        let bytes = Array(signature.utf8)
        guard bytes.count <= 255 else {
            throw IpactrError(.invalidArgument, "D-Bus signature longer than 255 characters")
        }
        var parts: [String] = []
        var i = 0
        while i < bytes.count {
            let end = try completeType(bytes, i, arrayDepth: 0, structDepth: 0, signature)
            parts.append(String(decoding: bytes[i..<end], as: UTF8.self))
            i = end
        }
        return parts
    }

    /// True when `signature` is exactly one complete type.
    public static func isSingleCompleteType(_ signature: String) -> Bool {
        (try? split(signature).count == 1) ?? false
    }

    /// Returns the index after the complete type that starts at `i`.
    private static func completeType(_ b: [UInt8], _ i: Int, arrayDepth: Int, structDepth: Int,
                                     _ whole: String) throws(IpactrError) -> Int {
        func bad(_ why: String) -> IpactrError {
            IpactrError(.invalidArgument, "invalid D-Bus signature \"\(whole)\": \(why)")
        }
        guard i < b.count else { throw bad("incomplete type") }
        let c = b[i]
        if basicTypes.contains(c) || c == UInt8(ascii: "v") { return i + 1 }
        switch c {
        case UInt8(ascii: "a"):
            guard arrayDepth < 32 else { throw bad("arrays nested too deeply") }
            if i + 1 < b.count, b[i + 1] == UInt8(ascii: "{") {
                guard i + 2 < b.count, basicTypes.contains(b[i + 2]) else {
                    throw bad("dictionary key must be a basic type")
                }
                let end = try completeType(b, i + 3, arrayDepth: arrayDepth + 1, structDepth: structDepth + 1, whole)
                guard end < b.count, b[end] == UInt8(ascii: "}") else {
                    throw bad("dictionary entry must hold exactly a key and a value")
                }
                return end + 1
            }
            return try completeType(b, i + 1, arrayDepth: arrayDepth + 1, structDepth: structDepth, whole)
        case UInt8(ascii: "("):
            guard structDepth < 32 else { throw bad("structs nested too deeply") }
            var j = i + 1
            guard j < b.count, b[j] != UInt8(ascii: ")") else { throw bad("empty struct") }
            while j < b.count, b[j] != UInt8(ascii: ")") {
                j = try completeType(b, j, arrayDepth: arrayDepth, structDepth: structDepth + 1, whole)
            }
            guard j < b.count else { throw bad("unterminated struct") }
            return j + 1
        default:
            throw bad("unexpected '\(Character(Unicode.Scalar(c)))'")
        }
    }
}

/// Object path escaping, done by sd-bus itself so ipactr's paths match what
/// systemd tools produce (`sd_bus_path_encode`/`sd_bus_path_decode`).
public enum BusPath {
    /// `prefix` + "/" + the escaped `name` ("/org/ipactr1/machine" + "web-1"
    /// → "/org/ipactr1/machine/web_2d1").
    public static func encode(prefix: String, name: String) throws(IpactrError) -> String {
        var out: UnsafeMutablePointer<CChar>?
        let r = sd_bus_path_encode(prefix, name, &out)
        guard r >= 0, let out else {
            throw IpactrError(.invalidArgument, "cannot make an object path from \"\(prefix)\" and \"\(name)\"")
        }
        defer { free(out) }
        return String(cString: out)
    }

    /// The name under `prefix`, or nil when `path` is not directly below it.
    public static func decode(_ path: String, prefix: String) -> String? {
        var out: UnsafeMutablePointer<CChar>?
        guard sd_bus_path_decode(path, prefix, &out) > 0, let out else { return nil }
        defer { free(out) }
        return String(cString: out)
    }

    /// True for a syntactically valid object path.
    public static func isValid(_ path: String) -> Bool {
        guard path.hasPrefix("/") else { return false }
        if path == "/" { return true }
        guard !path.hasSuffix("/") else { return false }
        for element in path.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            guard !element.isEmpty, element.utf8.allSatisfy({ isNameByte($0) }) else { return false }
        }
        return true
    }

    static func isNameByte(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
            || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "_")
    }
}

/// Interface and member names, checked when objects are described so a typo
/// fails at registration rather than as a confusing reply.
enum BusNames {
    static func isValidInterface(_ name: String) -> Bool {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 2, name.utf8.count <= 255 else { return false }
        return parts.allSatisfy { isValidMember(String($0)) }
    }

    static func isValidMember(_ name: String) -> Bool {
        guard let first = name.utf8.first, name.utf8.count <= 255 else { return false }
        guard !(first >= UInt8(ascii: "0") && first <= UInt8(ascii: "9")) else { return false }
        return name.utf8.allSatisfy(BusPath.isNameByte)
    }
}
