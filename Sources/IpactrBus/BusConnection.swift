import CSystemd
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One sd-bus connection. sd-bus connections are not thread-safe: a
/// `BusConnection` must be created, used and released on one thread (the CLI's
/// main thread, or a `BusServer`'s loop thread). Hence no `Sendable`.
public final class BusConnection {
    let bus: OpaquePointer
    /// The address this connection was opened with.
    public let address: String

    /// Default system bus address, overridden by `$DBUS_SYSTEM_BUS_ADDRESS` as
    /// every D-Bus client does (the tests point it at a private dbus-daemon).
    public static var systemBusAddress: String {
        if let env = getenv("DBUS_SYSTEM_BUS_ADDRESS"), env.pointee != 0 { return String(cString: env) }
        return "unix:path=/run/dbus/system_bus_socket"
    }

    /// Opens the system bus (see `systemBusAddress`).
    public static func system(description: String? = nil) throws(IpactrError) -> BusConnection {
        try BusConnection(address: systemBusAddress, description: description)
    }

    /// Connects to a message bus at `address` (`unix:path=…`) and says Hello.
    public init(address: String, description: String? = nil) throws(IpactrError) {
        var b: OpaquePointer?
        try BusMarshal.check(sd_bus_new(&b), "sd_bus_new")
        guard let b else { throw IpactrError(.internalError, "sd_bus_new returned no bus") }
        var r = sd_bus_set_address(b, address)
        if r >= 0, let description { r = sd_bus_set_description(b, description) }
        if r >= 0 { r = sd_bus_set_bus_client(b, 1) }
        if r >= 0 { r = sd_bus_start(b) }
        // sd_bus_start only starts connecting; waiting for the unique name makes
        // "no bus there" or "not allowed to connect" fail here, in one place.
        var unique: UnsafePointer<CChar>?
        if r >= 0 { r = sd_bus_get_unique_name(b, &unique) }
        if r < 0 {
            sd_bus_flush_close_unref(b)
            throw IpactrError.syscall("cannot connect to the D-Bus bus at \(address)", Errno(rawValue: -r))
        }
        bus = b
        self.address = address
    }

    deinit {
        sd_bus_flush_close_unref(bus)
    }

    /// This connection's unique name (":1.42").
    public var uniqueName: String {
        var p: UnsafePointer<CChar>?
        guard sd_bus_get_unique_name(bus, &p) >= 0, let p else { return "" }
        return String(cString: p)
    }

    /// Takes a well-known name. Throws `exists` when another connection owns
    /// it and `permissionDenied` when the bus policy forbids owning it.
    public func requestName(_ name: String) throws(IpactrError) {
        let r = sd_bus_request_name(bus, name, 0)
        if r >= 0 || r == -EALREADY { return }
        switch r {
        case -EEXIST: throw IpactrError(.exists, "the bus name \(name) is owned by another process")
        case -EACCES, -EPERM: throw IpactrError(.permissionDenied, "the bus policy does not allow owning \(name)")
        default: throw IpactrError.syscall("request bus name \(name)", Errno(rawValue: -r))
        }
    }

    /// Gives a well-known name back.
    public func releaseName(_ name: String) throws(IpactrError) {
        try BusMarshal.check(sd_bus_release_name(bus, name), "release bus name \(name)")
    }

    /// Calls a method and waits for its reply. A D-Bus error reply is thrown as
    /// the `IpactrError` the server threw (see `BusErrorMapping`).
    /// - Parameter interface: may be empty, to call `member` on whichever interface has it.
    /// - Parameter timeout: microseconds; 0 means sd-bus's default (25 s).
    @discardableResult
    public func call(destination: String, path: String, interface: String, member: String,
                     _ arguments: [BusValue] = [], timeout: UInt64 = 0) throws(IpactrError) -> [BusValue] {
        var m: OpaquePointer?
        // An empty interface leaves the field out; the server then finds the member by name.
        let r0 = interface.isEmpty
            ? sd_bus_message_new_method_call(bus, &m, destination, path, nil, member)
            : sd_bus_message_new_method_call(bus, &m, destination, path, interface, member)
        try BusMarshal.check(r0, "D-Bus call \(interface).\(member)")
        defer { sd_bus_message_unref(m) }
        try BusMarshal.append(arguments, to: m!)
        var error = sd_bus_error(name: nil, message: nil, _need_free: 0)
        defer { sd_bus_error_free(&error) }
        var reply: OpaquePointer?
        let r = sd_bus_call(bus, m, timeout, &error, &reply)
        defer { sd_bus_message_unref(reply) }
        if r < 0 { throw BusErrorMapping.error(&error, r, "D-Bus call \(interface).\(member) on \(path)") }
        return try BusMarshal.readAll(reply!)
    }

    /// Reads one property through org.freedesktop.DBus.Properties.Get.
    public func getProperty(destination: String, path: String, interface: String,
                            _ name: String) throws(IpactrError) -> BusValue {
        let reply = try call(destination: destination, path: path, interface: BusServer.propertiesInterface,
                             member: "Get", [.string(interface), .string(name)])
        guard reply.count == 1, case .variant(let value) = reply[0] else {
            throw IpactrError(.corrupt, "Properties.Get of \(name) returned \(reply.map(\.signature).joined())")
        }
        return value
    }

    /// Sets one property through org.freedesktop.DBus.Properties.Set.
    public func setProperty(destination: String, path: String, interface: String,
                            _ name: String, _ value: BusValue) throws(IpactrError) {
        try call(destination: destination, path: path, interface: BusServer.propertiesInterface,
                 member: "Set", [.string(interface), .string(name), .variant(value)])
    }

    /// Sends a signal from `path`.
    public func emitSignal(path: String, interface: String, member: String,
                           _ arguments: [BusValue] = []) throws(IpactrError) {
        var m: OpaquePointer?
        try BusMarshal.check(sd_bus_message_new_signal(bus, &m, path, interface, member),
                             "D-Bus signal \(interface).\(member) on \(path)")
        defer { sd_bus_message_unref(m) }
        try BusMarshal.append(arguments, to: m!)
        try BusMarshal.check(sd_bus_send(bus, m, nil), "send D-Bus signal \(interface).\(member)")
    }

    /// Subscribes to messages matching `rule` (D-Bus match rule syntax, e.g.
    /// "type='signal',interface='org.ipactr1.Manager'"). `handler` runs on this
    /// connection's thread while it processes; the match lasts as long as the
    /// returned token (release it on this thread).
    public func addMatch(_ rule: String, _ handler: @escaping (BusMessage) -> Void) throws(IpactrError) -> BusMatch {
        let box = Unmanaged.passRetained(MatchBox(handler))
        var slot: OpaquePointer?
        let r = sd_bus_add_match(bus, &slot, rule, { m, userdata, _ in
            guard let m, let userdata else { return 0 }
            let box = Unmanaged<MatchBox>.fromOpaque(userdata).takeUnretainedValue()
            if let message = try? BusMessage(m) { box.handler(message) }
            return 0
        }, box.toOpaque())
        if r < 0 {
            box.release()
            throw IpactrError.syscall("add D-Bus match \(rule)", Errno(rawValue: -r))
        }
        // The slot owns the box from here: sd-bus calls this when the slot goes.
        sd_bus_slot_set_destroy_callback(slot) { userdata in
            if let userdata { Unmanaged<MatchBox>.fromOpaque(userdata).release() }
        }
        return BusMatch(slot: slot!, connection: self)
    }

    /// Processes queued and incoming messages (running match handlers and,
    /// for a server, object callbacks) until `done` returns true. Throws
    /// `busy` when `timeout` seconds pass first: a guard against a peer that
    /// never answers, not a measurement.
    public func process(until done: () -> Bool, timeout: Double) throws(IpactrError) {
        let deadline = BusConnection.monotonicMicroseconds() + UInt64(timeout * 1_000_000)
        while !done() {
            let r = sd_bus_process(bus, nil)
            try BusMarshal.check(r, "process D-Bus messages")
            if r > 0 { continue }
            let now = BusConnection.monotonicMicroseconds()
            if now >= deadline {
                throw IpactrError(.busy, "no expected D-Bus message within \(timeout) s")
            }
            let w = sd_bus_wait(bus, deadline - now)
            if w < 0, w != -EINTR { try BusMarshal.check(w, "wait for D-Bus messages") }
        }
    }

    static func monotonicMicroseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
    }
}

final class MatchBox {
    let handler: (BusMessage) -> Void
    init(_ handler: @escaping (BusMessage) -> Void) { self.handler = handler }
}

/// A subscription made with `BusConnection.addMatch`; removed when released.
public final class BusMatch {
    let slot: OpaquePointer
    // Keeps the connection open for as long as the subscription exists.
    let connection: BusConnection
    init(slot: OpaquePointer, connection: BusConnection) {
        self.slot = slot
        self.connection = connection
    }
    deinit { sd_bus_slot_unref(slot) }
}

/// One remote object's interface, so a client names destination, path and
/// interface once: `BusProxy(bus, "org.ipactr1", "/org/ipactr1",
/// "org.ipactr1.Manager").call("ListMachines")`. Same threading rule as its
/// connection.
public struct BusProxy {
    public let connection: BusConnection
    public let destination: String
    public let path: String
    public let interface: String

    public init(_ connection: BusConnection, _ destination: String, _ path: String, _ interface: String) {
        self.connection = connection
        self.destination = destination
        self.path = path
        self.interface = interface
    }

    @discardableResult
    public func call(_ member: String, _ arguments: [BusValue] = [], timeout: UInt64 = 0) throws(IpactrError) -> [BusValue] {
        try connection.call(destination: destination, path: path, interface: interface, member: member,
                            arguments, timeout: timeout)
    }

    public func property(_ name: String) throws(IpactrError) -> BusValue {
        try connection.getProperty(destination: destination, path: path, interface: interface, name)
    }

    public func setProperty(_ name: String, _ value: BusValue) throws(IpactrError) {
        try connection.setProperty(destination: destination, path: path, interface: interface, name, value)
    }

    /// All properties of the interface (Properties.GetAll), variants unwrapped.
    public func properties() throws(IpactrError) -> [String: BusValue] {
        let reply = try connection.call(destination: destination, path: path, interface: BusServer.propertiesInterface,
                                        member: "GetAll", [.string(interface)])
        guard reply.count == 1, let dict = reply[0].stringDictValue else {
            throw IpactrError(.corrupt, "Properties.GetAll of \(interface) returned \(reply.map(\.signature).joined())")
        }
        return dict
    }
}
