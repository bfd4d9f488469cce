import CSystemd
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Writes `BusValue`s into and reads them out of sd-bus messages with the
/// non-variadic calls (`sd_bus_message_append_basic`, `…_open_container`,
/// `…_read_basic`, `…_enter_container`): Swift cannot call
/// `sd_bus_message_append`/`_read`, which take C varargs.
enum BusMarshal {
    static func ascii(_ c: Unicode.Scalar) -> CChar { CChar(bitPattern: UInt8(ascii: c)) }

    static func check(_ r: Int32, _ what: @autoclosure () -> String) throws(IpactrError) {
        if r < 0 { throw IpactrError.syscall(what(), Errno(rawValue: -r)) }
    }

    static func append(_ values: [BusValue], to m: OpaquePointer) throws(IpactrError) {
        for v in values { try append(v, to: m) }
    }

    static func append(_ value: BusValue, to m: OpaquePointer) throws(IpactrError) {
        func basic<T>(_ type: Unicode.Scalar, _ x: T) throws(IpactrError) {
            var x = x
            let r = withUnsafePointer(to: &x) { sd_bus_message_append_basic(m, ascii(type), $0) }
            try check(r, "append D-Bus value of type \(type)")
        }
        func text(_ type: Unicode.Scalar, _ s: String) throws(IpactrError) {
            // For string types append_basic takes the string itself, not a pointer to it.
            let r = s.withCString { sd_bus_message_append_basic(m, ascii(type), $0) }
            if r == -EINVAL, type != "s" {
                throw IpactrError(.invalidArgument, "not a valid D-Bus \(type == "o" ? "object path" : "signature"): \"\(s)\"")
            }
            try check(r, "append D-Bus string")
        }
        func open(_ type: Unicode.Scalar, _ contents: String) throws(IpactrError) {
            try check(sd_bus_message_open_container(m, ascii(type), contents), "open D-Bus container \(type)\(contents)")
        }
        func close() throws(IpactrError) {
            try check(sd_bus_message_close_container(m), "close D-Bus container")
        }

        switch value {
        case .byte(let x): try basic("y", x)
        case .bool(let b): try basic("b", Int32(b ? 1 : 0))
        case .int16(let x): try basic("n", x)
        case .uint16(let x): try basic("q", x)
        case .int32(let x): try basic("i", x)
        case .uint32(let x): try basic("u", x)
        case .int64(let x): try basic("x", x)
        case .uint64(let x): try basic("t", x)
        case .double(let x): try basic("d", x)
        case .unixFD(let fd): try basic("h", fd)
        case .string(let s): try text("s", s)
        case .objectPath(let s): try text("o", s)
        case .signature(let s): try text("g", s)
        case .array(let element, let items):
            try open("a", element)
            for item in items {
                guard item.signature == element else {
                    throw IpactrError(.invalidArgument, "array of \(element) holds a value of type \(item.signature)")
                }
                try append(item, to: m)
            }
            try close()
        case .dict(let key, let val, let entries):
            try open("a", "{" + key + val + "}")
            for e in entries {
                guard e.key.signature == key, e.value.signature == val else {
                    throw IpactrError(.invalidArgument,
                                      "dictionary a{\(key)\(val)} holds an entry of types \(e.key.signature), \(e.value.signature)")
                }
                try open("e", key + val)
                try append(e.key, to: m)
                try append(e.value, to: m)
                try close()
            }
            try close()
        case .structure(let members):
            guard !members.isEmpty else { throw IpactrError(.invalidArgument, "a D-Bus struct needs at least one member") }
            try open("r", members.map(\.signature).joined())
            for member in members { try append(member, to: m) }
            try close()
        case .variant(let inner):
            try open("v", inner.signature)
            try append(inner, to: m)
            try close()
        }
    }

    /// Reads every remaining value at the current level of `m`.
    static func readAll(_ m: OpaquePointer) throws(IpactrError) -> [BusValue] {
        var out: [BusValue] = []
        while let v = try readOne(m) { out.append(v) }
        return out
    }

    /// Reads the next value, or returns nil at the end of the current container.
    /// The types come from the message itself (`sd_bus_message_peek_type`), so
    /// any signature can be read, including empty arrays.
    static func readOne(_ m: OpaquePointer) throws(IpactrError) -> BusValue? {
        var type: CChar = 0
        var contentsPtr: UnsafePointer<CChar>?
        let r = sd_bus_message_peek_type(m, &type, &contentsPtr)
        try check(r, "read D-Bus message")
        if r == 0 { return nil }
        let contents = contentsPtr.map { String(cString: $0) } ?? ""

        func basic<T>(_ initial: T) throws(IpactrError) -> T {
            var x = initial
            let r = withUnsafeMutablePointer(to: &x) { sd_bus_message_read_basic(m, type, $0) }
            try check(r, "read D-Bus value")
            return x
        }
        func text() throws(IpactrError) -> String {
            var p: UnsafePointer<CChar>?
            try check(sd_bus_message_read_basic(m, type, &p), "read D-Bus string")
            return p.map { String(cString: $0) } ?? ""
        }
        func enter(_ t: CChar, _ c: String) throws(IpactrError) {
            try check(sd_bus_message_enter_container(m, t, c), "enter D-Bus container")
        }
        func exit() throws(IpactrError) {
            try check(sd_bus_message_exit_container(m), "leave D-Bus container")
        }

        switch Unicode.Scalar(UInt8(bitPattern: type)) {
        case "y": return .byte(try basic(UInt8(0)))
        case "b": return .bool(try basic(Int32(0)) != 0)
        case "n": return .int16(try basic(Int16(0)))
        case "q": return .uint16(try basic(UInt16(0)))
        case "i": return .int32(try basic(Int32(0)))
        case "u": return .uint32(try basic(UInt32(0)))
        case "x": return .int64(try basic(Int64(0)))
        case "t": return .uint64(try basic(UInt64(0)))
        case "d": return .double(try basic(Double(0)))
        case "s": return .string(try text())
        case "o": return .objectPath(try text())
        case "g": return .signature(try text())
        case "h":
            // The message owns its descriptor; hand the reader its own copy.
            let fd = try basic(Int32(-1))
            let copy = fcntl(fd, F_DUPFD_CLOEXEC, 3)
            if copy < 0 { throw IpactrError.syscall("duplicate D-Bus file descriptor", Errno(rawValue: errno)) }
            return .unixFD(copy)
        case "a":
            try enter(type, contents)
            if contents.hasPrefix("{") {
                // contents is "{KV}": K is one basic type, V the rest.
                let inner = contents.dropFirst().dropLast()
                let key = String(inner.prefix(1))
                let val = String(inner.dropFirst())
                var entries: [BusDictEntry] = []
                while try peekIsEntry(m) {
                    try enter(ascii("e"), key + val)
                    guard let k = try readOne(m), let v = try readOne(m) else {
                        throw IpactrError(.corrupt, "D-Bus dictionary entry without key or value")
                    }
                    try exit()
                    entries.append(BusDictEntry(k, v))
                }
                try exit()
                return .dict(keySignature: key, valueSignature: val, entries)
            }
            let items = try readAll(m)
            try exit()
            return .array(elementSignature: contents, items)
        case "r":
            try enter(type, contents)
            let members = try readAll(m)
            try exit()
            return .structure(members)
        case "v":
            try enter(type, contents)
            guard let inner = try readOne(m) else { throw IpactrError(.corrupt, "empty D-Bus variant") }
            try exit()
            return .variant(inner)
        default:
            throw IpactrError(.corrupt, "unexpected D-Bus type '\(type)' in message")
        }
    }

    private static func peekIsEntry(_ m: OpaquePointer) throws(IpactrError) -> Bool {
        var type: CChar = 0
        let r = sd_bus_message_peek_type(m, &type, nil)
        try check(r, "read D-Bus dictionary")
        return r > 0 && type == ascii("e")
    }
}

/// A received message, copied out of sd-bus so it can leave the bus thread.
public struct BusMessage: Sendable {
    public enum Kind: Sendable { case methodCall, methodReturn, error, signal }
    public var kind: Kind
    public var sender: String?
    public var destination: String?
    public var path: String?
    public var interface: String?
    public var member: String?
    public var errorName: String?
    public var signature: String
    public var body: [BusValue]

    init(_ m: OpaquePointer) throws(IpactrError) {
        var type: UInt8 = 0
        _ = sd_bus_message_get_type(m, &type)
        switch type {
        case 1: kind = .methodCall
        case 2: kind = .methodReturn
        case 3: kind = .error
        default: kind = .signal
        }
        func s(_ p: UnsafePointer<CChar>?) -> String? { p.map { String(cString: $0) } }
        sender = s(sd_bus_message_get_sender(m))
        destination = s(sd_bus_message_get_destination(m))
        path = s(sd_bus_message_get_path(m))
        interface = s(sd_bus_message_get_interface(m))
        member = s(sd_bus_message_get_member(m))
        errorName = s(sd_bus_message_get_error(m)?.pointee.name)
        signature = s(sd_bus_message_get_signature(m, 1)) ?? ""
        _ = sd_bus_message_rewind(m, 1)
        body = try BusMarshal.readAll(m)
    }
}
