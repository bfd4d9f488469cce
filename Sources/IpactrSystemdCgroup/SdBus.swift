import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// The few sd-bus calls the systemd manager makes, with libsystemd loaded by
/// `dlopen` on first use. Why not IpactrBus: linking it (it imports
/// Foundation, and libsystemd brings libgcrypt, lz4, zstd, lzma) made every
/// `ipactr-runtime` command start 2.4× slower (`--version` 5.9 → 14.2 ms,
/// debug build), systemd or not. Only non-variadic sd-bus functions
/// (DESIGN.md §7). One connection, used on the thread that made it.
final class SdBus {
    /// One D-Bus value, as far as this client needs them.
    indirect enum Value {
        case string(String), objectPath(String), bool(Bool), uint32(UInt32), uint64(UInt64)
        case array(String, [Value])
        case structure([Value])
        case variant(Value)

        var signature: String {
            switch self {
            case .string: return "s"
            case .objectPath: return "o"
            case .bool: return "b"
            case .uint32: return "u"
            case .uint64: return "t"
            case .array(let element, _): return "a" + element
            case .structure(let members): return "(" + members.map(\.signature).joined() + ")"
            case .variant: return "v"
            }
        }
    }

    /// sd_bus_error's layout.
    struct BusError {
        var name: UnsafePointer<CChar>? = nil
        var message: UnsafePointer<CChar>? = nil
        var needFree: Int32 = 0
    }

    typealias Bus = OpaquePointer
    typealias Msg = OpaquePointer
    struct API {
        let new: @convention(c) (UnsafeMutablePointer<Bus?>) -> Int32
        let setAddress: @convention(c) (Bus, UnsafePointer<CChar>) -> Int32
        let setBusClient: @convention(c) (Bus, Int32) -> Int32
        let start: @convention(c) (Bus) -> Int32
        let flushCloseUnref: @convention(c) (Bus?) -> Bus?
        let newMethodCall: @convention(c) (Bus, UnsafeMutablePointer<Msg?>, UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafePointer<CChar>) -> Int32
        let appendBasic: @convention(c) (Msg, CChar, UnsafeRawPointer) -> Int32
        let openContainer: @convention(c) (Msg, CChar, UnsafePointer<CChar>) -> Int32
        let closeContainer: @convention(c) (Msg) -> Int32
        let enterContainer: @convention(c) (Msg, CChar, UnsafePointer<CChar>) -> Int32
        let readBasic: @convention(c) (Msg, CChar, UnsafeMutableRawPointer) -> Int32
        let call: @convention(c) (Bus, Msg, UInt64, UnsafeMutableRawPointer, UnsafeMutablePointer<Msg?>) -> Int32
        let messageUnref: @convention(c) (Msg?) -> Msg?
        let errorFree: @convention(c) (UnsafeMutableRawPointer) -> Void
        let process: @convention(c) (Bus, UnsafeMutablePointer<Msg?>) -> Int32
        let wait: @convention(c) (Bus, UInt64) -> Int32
        let isSignal: @convention(c) (Msg, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Int32
    }

    nonisolated(unsafe) static var loaded: API?

    static func load() throws(IpactrError) -> API {
        if let api = loaded { return api }
        guard let h = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL) else {
            throw IpactrError(.unsupported, "cannot load libsystemd.so.0: \(dlerror().map { String(cString: $0) } ?? "")")
        }
        var missing: String?
        func sym<T>(_ name: String, _ type: T.Type) -> T {
            guard let p = dlsym(h, name) else {
                missing = name
                return unsafeBitCast(dlsym(h, "sd_bus_new")!, to: type)
            }
            return unsafeBitCast(p, to: type)
        }
        let api = API(
            new: sym("sd_bus_new", (@convention(c) (UnsafeMutablePointer<Bus?>) -> Int32).self),
            setAddress: sym("sd_bus_set_address", (@convention(c) (Bus, UnsafePointer<CChar>) -> Int32).self),
            setBusClient: sym("sd_bus_set_bus_client", (@convention(c) (Bus, Int32) -> Int32).self),
            start: sym("sd_bus_start", (@convention(c) (Bus) -> Int32).self),
            flushCloseUnref: sym("sd_bus_flush_close_unref", (@convention(c) (Bus?) -> Bus?).self),
            newMethodCall: sym("sd_bus_message_new_method_call", (@convention(c) (Bus, UnsafeMutablePointer<Msg?>, UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafePointer<CChar>) -> Int32).self),
            appendBasic: sym("sd_bus_message_append_basic", (@convention(c) (Msg, CChar, UnsafeRawPointer) -> Int32).self),
            openContainer: sym("sd_bus_message_open_container", (@convention(c) (Msg, CChar, UnsafePointer<CChar>) -> Int32).self),
            closeContainer: sym("sd_bus_message_close_container", (@convention(c) (Msg) -> Int32).self),
            enterContainer: sym("sd_bus_message_enter_container", (@convention(c) (Msg, CChar, UnsafePointer<CChar>) -> Int32).self),
            readBasic: sym("sd_bus_message_read_basic", (@convention(c) (Msg, CChar, UnsafeMutableRawPointer) -> Int32).self),
            call: sym("sd_bus_call", (@convention(c) (Bus, Msg, UInt64, UnsafeMutableRawPointer, UnsafeMutablePointer<Msg?>) -> Int32).self),
            messageUnref: sym("sd_bus_message_unref", (@convention(c) (Msg?) -> Msg?).self),
            errorFree: sym("sd_bus_error_free", (@convention(c) (UnsafeMutableRawPointer) -> Void).self),
            process: sym("sd_bus_process", (@convention(c) (Bus, UnsafeMutablePointer<Msg?>) -> Int32).self),
            wait: sym("sd_bus_wait", (@convention(c) (Bus, UInt64) -> Int32).self),
            isSignal: sym("sd_bus_message_is_signal", (@convention(c) (Msg, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Int32).self))
        if let missing { throw IpactrError(.unsupported, "libsystemd.so.0 has no \(missing)") }
        loaded = api
        return api
    }

    let api: API
    let bus: Bus
    /// Signals that arrived (while waiting for replies, or in `waitFor`).
    var signals: [(member: String, body: [String])] = []

    /// The system bus ($DBUS_SYSTEM_BUS_ADDRESS, else the standard socket).
    init() throws(IpactrError) {
        api = try SdBus.load()
        var address = "unix:path=/run/dbus/system_bus_socket"
        if let env = getenv("DBUS_SYSTEM_BUS_ADDRESS"), env.pointee != 0 { address = String(cString: env) }
        var b: Bus?
        var r = api.new(&b)
        guard r >= 0, let b else { throw SdBus.failure("sd_bus_new", r) }
        r = api.setAddress(b, address)
        if r >= 0 { r = api.setBusClient(b, 1) }
        if r >= 0 { r = api.start(b) }
        if r < 0 {
            _ = api.flushCloseUnref(b)
            throw SdBus.failure("connect to the system bus at \(address)", r)
        }
        bus = b
    }

    deinit { _ = api.flushCloseUnref(bus) }

    /// A negative sd-bus return as an error ("what: strerror").
    func failure(_ what: String, _ r: Int32) -> IpactrError { SdBus.failure(what, r) }
    static func failure(_ what: String, _ r: Int32) -> IpactrError {
        IpactrError(.io, "\(what): \(String(cString: strerror(-r)))")
    }

    func append(_ m: Msg, _ v: Value) -> Int32 {
        switch v {
        case .string(let s), .objectPath(let s):
            return s.withCString { p in
                // sd-bus takes the string itself (not a pointer to it) for s and o.
                api.appendBasic(m, CChar(UInt8(ascii: v.signature == "s" ? "s" : "o")), UnsafeRawPointer(p))
            }
        case .bool(let b):
            var x: Int32 = b ? 1 : 0
            return api.appendBasic(m, CChar(UInt8(ascii: "b")), &x)
        case .uint32(let u):
            var x = u
            return api.appendBasic(m, CChar(UInt8(ascii: "u")), &x)
        case .uint64(let t):
            var x = t
            return api.appendBasic(m, CChar(UInt8(ascii: "t")), &x)
        case .array(let element, let items):
            var r = api.openContainer(m, CChar(UInt8(ascii: "a")), element)
            for i in items where r >= 0 { r = append(m, i) }
            return r >= 0 ? api.closeContainer(m) : r
        case .structure(let members):
            let inner = members.map(\.signature).joined()
            var r = api.openContainer(m, CChar(UInt8(ascii: "r")), inner)
            for i in members where r >= 0 { r = append(m, i) }
            return r >= 0 ? api.closeContainer(m) : r
        case .variant(let inner):
            var r = api.openContainer(m, CChar(UInt8(ascii: "v")), inner.signature)
            if r >= 0 { r = append(m, inner) }
            return r >= 0 ? api.closeContainer(m) : r
        }
    }

    /// Calls a method; `read` gets the reply (before it is freed). A D-Bus
    /// error reply becomes an IpactrError whose message ends with its name.
    func call<T>(_ destination: String, _ path: String, _ interface: String, _ member: String, _ args: [Value],
                 read: (Msg) -> T) throws(IpactrError) -> T {
        var m: Msg?
        var r = api.newMethodCall(bus, &m, destination, path, interface, member)
        guard r >= 0, let m else { throw failure("D-Bus call \(member)", r) }
        defer { _ = api.messageUnref(m) }
        for a in args where r >= 0 { r = append(m, a) }
        if r < 0 { throw failure("D-Bus call \(member): append arguments", r) }
        var error = BusError()
        var reply: Msg?
        r = withUnsafeMutableBytes(of: &error) { api.call(bus, m, 0, $0.baseAddress!, &reply) }
        defer {
            _ = api.messageUnref(reply)
            withUnsafeMutableBytes(of: &error) { api.errorFree($0.baseAddress!) }
        }
        if r < 0 {
            if let name = error.name {
                let text = error.message.map { String(cString: $0) } ?? ""
                throw IpactrError(.io, "\(text) (\(String(cString: name)))")
            }
            throw failure("D-Bus call \(interface).\(member)", r)
        }
        return read(reply!)
    }

    /// Reads one basic string-like value ("s" or "o") from `m`.
    func readString(_ m: Msg, _ type: Character) -> String? {
        var p: UnsafePointer<CChar>?
        guard api.readBasic(m, CChar(UInt8(ascii: type.unicodeScalars.first!)), &p) > 0, let p else { return nil }
        return String(cString: p)
    }

    func readBool(_ m: Msg) -> Bool? {
        var x: Int32 = 0
        guard api.readBasic(m, CChar(UInt8(ascii: "b")), &x) > 0 else { return nil }
        return x != 0
    }

    /// A string property (org.freedesktop.DBus.Properties.Get → v containing s).
    func stringProperty(_ destination: String, _ path: String, _ interface: String, _ name: String) throws(IpactrError) -> String? {
        try call(destination, path, "org.freedesktop.DBus.Properties", "Get", [.string(interface), .string(name)]) { m in
            guard api.enterContainer(m, CChar(UInt8(ascii: "v")), "s") > 0 else { return nil }
            return readString(m, "s")
        }
    }

    /// Processes incoming messages, keeping the signals, until `done` says so.
    /// Throws `busy` after `timeout` seconds (a guard against a peer that never
    /// answers, not a measurement).
    func waitFor(timeout: Double, _ done: () -> Bool) throws(IpactrError) {
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        while !done() {
            var m: Msg?
            let r = api.process(bus, &m)
            if r < 0 { throw failure("process D-Bus messages", r) }
            if let m {
                if api.isSignal(m, nil, nil) > 0 { keepSignal(m) }
                _ = api.messageUnref(m)
            }
            if r > 0 { continue }
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let left = timeout - (Double(now.tv_sec - start.tv_sec) + Double(now.tv_nsec - start.tv_nsec) / 1e9)
            if left <= 0 { throw IpactrError(.busy, "no expected D-Bus message within \(timeout) s") }
            _ = api.wait(bus, UInt64(left * 1_000_000))
        }
    }

    /// systemd's JobRemoved(u id, o job, s unit, s result), as [job, unit, result].
    func keepSignal(_ m: Msg) {
        guard api.isSignal(m, "org.freedesktop.systemd1.Manager", "JobRemoved") > 0 else { return }
        var id: UInt32 = 0
        guard api.readBasic(m, CChar(UInt8(ascii: "u")), &id) > 0,
              let job = readString(m, "o"), let unit = readString(m, "s"), let result = readString(m, "s") else { return }
        signals.append(("JobRemoved", [job, unit, result]))
    }
}
