import CSystemd
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import IpactrSystem
import Logging
import SystemPackage

/// Serves D-Bus objects described by `BusObject`s on one connection.
///
/// ```swift
/// let server = try BusServer(systemBus: "ipactrd")
/// try server.register(path: "/org/ipactr1", BusObject([
///     BusInterface("org.ipactr1.Manager", methods: [
///         BusMethod("GetMachine", inputs: [BusArgument("name", "s")],
///                   outputs: [BusArgument("machine", "o")]) { call in … },
///         BusMethod("Boot", inputs: [BusArgument("name", "s")], access: .root) { call in … },
///     ], properties: [BusProperty("Version", "s", emitsChange: .const) { .string("1") }],
///        signals: [BusSignal("MachineNew", [BusArgument("name", "s"), BusArgument("machine", "o")])]),
/// ]))
/// try await server.requestName("org.ipactr1")
/// ```
///
/// Threading: sd-bus connections are not thread-safe, so the server's
/// connection lives on one dedicated thread that runs a blocking loop
/// (`sd_bus_process`, then `poll` on the bus fd). Other threads never touch
/// it: they hand work to the loop with `perform` (a queue plus a socket pair
/// that wakes the `poll`; plain `sd_bus_wait` could not be woken that way). Method
/// handlers and property getters are `async`: the loop decodes a call, checks
/// it, then runs the handler in a Task and posts the reply back to the loop
/// thread, so a slow handler never stalls the bus. Call `stop()` to end it.
///
/// Dispatch is in Swift: one `sd_bus_add_fallback` on "/" receives every
/// method call to this connection, and the server answers
/// org.freedesktop.DBus.Introspectable and .Properties itself from the
/// declarative descriptions (sd-bus's vtable macros cannot be expanded from
/// Swift, and the descriptions also give the introspection XML and argument
/// checks). org.freedesktop.DBus.Peer (Ping, GetMachineId) is answered by
/// sd-bus's built-in handler, which runs before any object callback.
public final class BusServer: @unchecked Sendable {
    public static let propertiesInterface = "org.freedesktop.DBus.Properties"
    public static let introspectableInterface = "org.freedesktop.DBus.Introspectable"
    public static let peerInterface = "org.freedesktop.DBus.Peer"
    static let standardInterfaces: Set<String> = [propertiesInterface, introspectableInterface, peerInterface]

    // SD_BUS_CREDS_EUID: a 64-bit enum constant, spelled out for Swift.
    private static let credsEUID: UInt64 = 1 << 4
    private static let methodCallType: UInt8 = 1

    public let address: String
    private let description: String
    private let logger: Logger

    private enum State { case starting, running, stopping, closed }
    // Guarded by `lock`.
    private let lock = PthreadLock()
    private var objects: [String: BusObject] = [:]
    private var queue: [(BusConnection?) -> Void] = []
    private var state = State.starting
    private var startError: IpactrError?

    private let wakeFD: Int32
    private let wakeWriteFD: Int32
    private let finished = DispatchSemaphore(value: 0)
    // Touched only on the loop thread.
    private var connection: BusConnection?
    private var slot: OpaquePointer?
    private var nameWatch: OpaquePointer?
    /// Caller uids by unique name. Asking the bus costs a round trip per call;
    /// a unique name is never reused and its connection's credentials are
    /// fixed when it connects, so an entry stays right until the name leaves
    /// the bus (NameOwnerChanged), when it is dropped.
    private var uidByName: [String: uid_t] = [:]

    /// Connects to the bus at `address` and starts the loop thread. Objects
    /// can be registered and the name requested afterwards.
    public init(address: String, description: String = "ipactr-server",
                logger: Logger = Logger(label: "ipactr.bus")) throws(IpactrError) {
        self.address = address
        self.description = description
        self.logger = logger
        // A socket pair wakes the loop's poll: Glibc's Swift module exports
        // neither eventfd nor pipe2, and socketpair sets CLOEXEC atomically
        // (another thread may fork at any time).
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue)
        if socketpair(AF_UNIX, type, 0, &fds) < 0 { throw IpactrError.syscall("socketpair", Errno(rawValue: errno)) }
        wakeFD = fds[0]
        wakeWriteFD = fds[1]
        let ready = DispatchSemaphore(value: 0)
        // The thread keeps the server alive until the loop ends.
        _ = try startThread(detached: true) { self.loop(ready: ready) }
        ready.wait()
        let failure = lock.withLock { startError }
        if let failure {
            finished.wait()
            throw failure
        }
    }

    /// Connects to the system bus (`$DBUS_SYSTEM_BUS_ADDRESS` or the default).
    public convenience init(systemBus description: String = "ipactr-server",
                            logger: Logger = Logger(label: "ipactr.bus")) throws(IpactrError) {
        try self.init(address: BusConnection.systemBusAddress, description: description, logger: logger)
    }

    // MARK: Objects

    /// Serves `object` at `path`. Throws `exists` when the path is taken and
    /// `invalidArgument` for a malformed description.
    public func register(path: String, _ object: BusObject) throws(IpactrError) {
        guard BusPath.isValid(path) else { throw IpactrError(.invalidArgument, "not a valid D-Bus object path: \(path)") }
        var names = Set<String>()
        for iface in object.interfaces {
            try iface.validate()
            guard names.insert(iface.name).inserted else {
                throw IpactrError(.invalidArgument, "interface \(iface.name) listed twice for \(path)")
            }
        }
        lock.lock()
        defer { lock.unlock() }
        guard objects[path] == nil else { throw IpactrError(.exists, "a D-Bus object is already served at \(path)") }
        objects[path] = object
    }

    /// Stops serving the object at `path` (a no-op when there is none).
    public func unregister(path: String) {
        lock.withLock { _ = objects.removeValue(forKey: path) }
    }

    /// The object at `path`, and whether `path` is a node (an object, the
    /// parent of one, or the root).
    private func lookup(_ path: String) -> (object: BusObject?, isNode: Bool) {
        lock.withLock {
            if let object = objects[path] { return (object, true) }
            let prefix = path == "/" ? "/" : path + "/"
            return (nil, path == "/" || objects.keys.contains { $0.hasPrefix(prefix) })
        }
    }

    /// Names of the child nodes of `path`, for introspection.
    private func children(of path: String) -> [String] {
        lock.withLock {
            let prefix = path == "/" ? "/" : path + "/"
            var children = Set<String>()
            for p in objects.keys where p.hasPrefix(prefix) {
                if let first = p.dropFirst(prefix.count).split(separator: "/").first { children.insert(String(first)) }
            }
            return children.sorted()
        }
    }

    // MARK: Work from other threads

    /// Runs `body` with the connection on the loop thread and returns its result.
    public func perform<T>(_ body: @escaping (BusConnection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            post { connection in
                guard let connection else {
                    continuation.resume(throwing: IpactrError(.io, "the D-Bus connection to \(self.address) is closed"))
                    return
                }
                continuation.resume(with: Result { try body(connection) })
            }
        }
    }

    /// Queues `work` for the loop thread; it gets nil when the loop has ended.
    private func post(_ work: @escaping (BusConnection?) -> Void) {
        let accepted = lock.withLock { () -> Bool in
            guard state == .running || state == .stopping else { return false }
            queue.append(work)
            return true
        }
        guard accepted else { return work(nil) }
        wake()
    }

    private func wake() {
        var one: UInt8 = 1
        _ = write(wakeWriteFD, &one, 1)
    }

    /// Takes a well-known name (after registering objects, so no caller finds
    /// the name without its objects).
    public func requestName(_ name: String) async throws {
        try await perform { try $0.requestName(name) }
    }

    /// The connection's unique name.
    public func uniqueName() async throws -> String {
        try await perform { $0.uniqueName }
    }

    /// Unique names whose uid is cached (for tests).
    func cachedCallers() async throws -> Set<String> {
        try await perform { _ in Set(self.uidByName.keys) }
    }

    /// Emits a signal declared by the object at `path`; the arguments must
    /// match the declaration (so introspection tells listeners the truth).
    public func emitSignal(path: String, interface: String, member: String, _ arguments: [BusValue] = []) async throws {
        guard let declared = lookup(path).object?.interface(interface)?.signal(member) else {
            throw IpactrError(.invalidArgument, "no signal \(interface).\(member) is declared at \(path)")
        }
        let signature = arguments.map(\.signature).joined()
        guard signature == declared.signature else {
            throw IpactrError(.invalidArgument,
                              "signal \(interface).\(member) takes (\(declared.signature)), got (\(signature))")
        }
        try await perform { try $0.emitSignal(path: path, interface: interface, member: member, arguments) }
    }

    /// Emits org.freedesktop.DBus.Properties.PropertiesChanged for `names`:
    /// properties declared `.true` are sent with their current value (read
    /// through their getters), `.invalidates` ones by name only.
    public func propertiesChanged(path: String, interface: String, _ names: [String]) async throws {
        guard let iface = lookup(path).object?.interface(interface) else {
            throw IpactrError(.notFound, "no interface \(interface) is served at \(path)")
        }
        var changed: [BusDictEntry] = []
        var invalidated: [String] = []
        for name in names {
            guard let p = iface.property(name) else {
                throw IpactrError(.invalidArgument, "\(interface) has no property \(name)")
            }
            switch p.emitsChange {
            case .true: changed.append(BusDictEntry(.string(name), .variant(try await Self.value(of: p, interface))))
            case .invalidates: invalidated.append(name)
            case .const, .false:
                throw IpactrError(.invalidArgument, "property \(interface).\(name) is declared not to emit changes")
            }
        }
        let body: [BusValue] = [.string(interface), .dict(keySignature: "s", valueSignature: "v", changed), .strings(invalidated)]
        try await perform {
            try $0.emitSignal(path: path, interface: Self.propertiesInterface, member: "PropertiesChanged", body)
        }
    }

    /// Ends the loop, closes the connection (flushing what is queued) and
    /// waits for the thread. Pending and later `perform`s fail. Do not call
    /// from a handler running on the loop thread.
    public func stop() {
        let wasRunning = lock.withLock { () -> Bool in
            guard state == .running else { return false }
            state = .stopping
            return true
        }
        if wasRunning { wake() }
        wait()
    }

    /// Blocks until the loop has ended (after `stop()` or a lost connection).
    public func wait() {
        finished.wait()
        finished.signal()
    }

    deinit {
        close(wakeFD)
        close(wakeWriteFD)
    }

    // MARK: The loop thread

    private func loop(ready: DispatchSemaphore) {
        let c: BusConnection
        do {
            c = try BusConnection(address: address, description: description)
            var s: OpaquePointer?
            try BusMarshal.check(sd_bus_add_fallback(c.bus, &s, "/", BusServer.callback,
                                                     Unmanaged.passUnretained(self).toOpaque()),
                                 "register D-Bus object callback")
            var w: OpaquePointer?
            try BusMarshal.check(sd_bus_add_match(c.bus, &w, Self.nameLostRule, BusServer.nameLost,
                                                  Unmanaged.passUnretained(self).toOpaque()),
                                 "watch D-Bus names")
            connection = c
            slot = s
            nameWatch = w
        } catch {
            lock.withLock {
                startError = error
                state = .closed
            }
            ready.signal()
            finished.signal()
            return
        }
        lock.withLock { state = .running }
        ready.signal()

        run(c)

        let leftover = lock.withLock { () -> [(BusConnection?) -> Void] in
            state = .closed
            defer { queue = [] }
            return queue
        }
        for work in leftover { work(nil) }
        sd_bus_slot_unref(slot)
        sd_bus_slot_unref(nameWatch)
        slot = nil
        nameWatch = nil
        connection = nil
        finished.signal()
    }

    private func run(_ c: BusConnection) {
        while true {
            let (work, stopping) = lock.withLock { () -> ([(BusConnection?) -> Void], Bool) in
                defer { queue = [] }
                return (queue, state == .stopping)
            }
            for w in work { w(c) }
            if stopping { return }

            let r = sd_bus_process(c.bus, nil)
            if r < 0 {
                logger.error("D-Bus connection to \(address) lost: \(Errno(rawValue: -r))")
                return
            }
            if r > 0 { continue }

            var fds = [
                pollfd(fd: sd_bus_get_fd(c.bus), events: Int16(truncatingIfNeeded: sd_bus_get_events(c.bus)), revents: 0),
                pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
            ]
            var until: UInt64 = 0
            var timeout: Int32 = -1
            if sd_bus_get_timeout(c.bus, &until) >= 0, until != UInt64.max {
                let now = BusConnection.monotonicMicroseconds()
                timeout = until <= now ? 0 : Int32(clamping: (until - now + 999) / 1000)
            }
            if poll(&fds, 2, timeout) < 0, errno != EINTR {
                logger.error("poll on the D-Bus connection failed: \(Errno(rawValue: errno))")
                return
            }
            if fds[1].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                while read(wakeFD, &drain, drain.count) > 0 {}
            }
        }
    }

    private static let callback: sd_bus_message_handler_t = { m, userdata, _ in
        guard let m, let userdata else { return 0 }
        return Unmanaged<BusServer>.fromOpaque(userdata).takeUnretainedValue().dispatch(m)
    }

    private static let nameLostRule = "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
        + "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg2=''"

    private static let nameLost: sd_bus_message_handler_t = { m, userdata, _ in
        guard let m, let userdata, case .string(let name)? = try? BusMarshal.readOne(m) else { return 0 }
        let server = Unmanaged<BusServer>.fromOpaque(userdata).takeUnretainedValue()
        server.uidByName.removeValue(forKey: name)
        return 0
    }

    // MARK: Dispatch (loop thread)

    private func dispatch(_ m: OpaquePointer) -> Int32 {
        var type: UInt8 = 0
        guard sd_bus_message_get_type(m, &type) >= 0, type == Self.methodCallType, let c = connection else { return 0 }
        func str(_ p: UnsafePointer<CChar>?) -> String? { p.map { String(cString: $0) } }
        let path = str(sd_bus_message_get_path(m)) ?? "/"
        let interface = str(sd_bus_message_get_interface(m))
        let member = str(sd_bus_message_get_member(m)) ?? ""
        let signature = str(sd_bus_message_get_signature(m, 1)) ?? ""

        let node = lookup(path)
        guard node.isNode else {
            replyError(c, m, BusError(BusError.unknownObject, "Unknown object '\(path)'."))
            return 1
        }
        if interface == Self.peerInterface {
            return 0  // sd-bus answers Peer before this callback; never reached.
        }
        if interface == Self.introspectableInterface || (interface == nil && member == "Introspect") {
            guard member == "Introspect" else { return unknownMethod(c, m, interface, member) }
            guard signature.isEmpty else { return invalidArgs(c, m, signature, "", Self.introspectableInterface, member) }
            reply(c, m, [.string(BusIntrospection.xml(object: node.object, children: children(of: path)))])
            return 1
        }
        if interface == Self.propertiesInterface {
            return properties(c, m, path, node.object, member, signature)
        }

        let candidates = node.object?.interfaces.filter { interface == nil || $0.name == interface } ?? []
        if let interface, candidates.isEmpty {
            replyError(c, m, BusError(BusError.unknownInterface, "Unknown interface '\(interface)' at \(path)."))
            return 1
        }
        guard let (iface, method) = candidates.lazy.compactMap({ i in i.method(member).map { (i, $0) } }).first else {
            return unknownMethod(c, m, interface, member)
        }
        guard signature == method.inputSignature else {
            return invalidArgs(c, m, signature, method.inputSignature, iface.name, member)
        }
        let arguments: [BusValue]
        do { arguments = try BusMarshal.readAll(m) } catch {
            replyError(c, m, BusError(BusError.invalidArgs, "Cannot read the arguments: \(error)"))
            return 1
        }
        let caller = self.caller(m)
        if method.access == .root, !caller.isRoot {
            replyError(c, m, Self.denied("\(iface.name).\(member)", caller))
            return 1
        }
        let call = BusCall(path: path, interface: iface.name, member: member, arguments: arguments, caller: caller)
        let handler = method.handler
        respond(m, outputSignature: method.outputSignature, "\(iface.name).\(member)") { try await handler(call) }
        return 1
    }

    private func properties(_ c: BusConnection, _ m: OpaquePointer, _ path: String, _ object: BusObject?,
                            _ member: String, _ signature: String) -> Int32 {
        let expected = ["Get": "ss", "GetAll": "s", "Set": "ssv"]
        guard let want = expected[member] else { return unknownMethod(c, m, Self.propertiesInterface, member) }
        guard signature == want else { return invalidArgs(c, m, signature, want, Self.propertiesInterface, member) }
        guard let args = try? BusMarshal.readAll(m), let ifaceName = args[0].stringValue else {
            replyError(c, m, BusError(BusError.invalidArgs, "Cannot read the arguments."))
            return 1
        }
        // An empty interface name means "any interface", as the spec allows.
        let interfaces = (object?.interfaces ?? []).filter { ifaceName.isEmpty || $0.name == ifaceName }
        if !ifaceName.isEmpty, interfaces.isEmpty {
            replyError(c, m, BusError(BusError.unknownInterface, "Unknown interface '\(ifaceName)' at \(path)."))
            return 1
        }
        if member == "GetAll" {
            let props = interfaces.flatMap { i in i.properties.map { (i.name, $0) } }
            respond(m, outputSignature: "a{sv}", "Properties.GetAll") {
                var entries: [BusDictEntry] = []
                for (i, p) in props {
                    entries.append(BusDictEntry(.string(p.name), .variant(try await Self.value(of: p, i))))
                }
                return [.dict(keySignature: "s", valueSignature: "v", entries)]
            }
            return 1
        }
        let name = args[1].stringValue ?? ""
        guard let (iface, property) = interfaces.lazy.compactMap({ i in i.property(name).map { (i, $0) } }).first else {
            replyError(c, m, BusError(BusError.unknownProperty, "Unknown property '\(name)' of interface '\(ifaceName)'."))
            return 1
        }
        if member == "Get" {
            respond(m, outputSignature: "v", "Properties.Get") { [.variant(try await Self.value(of: property, iface.name))] }
            return 1
        }
        guard let setter = property.set else {
            replyError(c, m, BusError(BusError.propertyReadOnly, "Property '\(name)' is not writable."))
            return 1
        }
        let caller = self.caller(m)
        if property.setAccess == .root, !caller.isRoot {
            replyError(c, m, Self.denied("setting \(iface.name).\(name)", caller))
            return 1
        }
        guard case .variant(let value) = args[2], value.signature == property.signature else {
            replyError(c, m, BusError(BusError.invalidArgs,
                                      "Property '\(name)' has type '\(property.signature)', got '\(args[2].stringValue ?? (args[2].variantSignature))'."))
            return 1
        }
        let emits = property.emitsChange == .true || property.emitsChange == .invalidates
        respond(m, outputSignature: "", "Properties.Set") {
            try await setter(value, caller)
            // Every successful Set is announced, so no setter can forget to.
            if emits { try await self.propertiesChanged(path: path, interface: iface.name, [name]) }
            return []
        }
        return 1
    }

    private static func value(of p: BusProperty, _ interface: String) async throws -> BusValue {
        let v = try await p.get()
        guard v.signature == p.signature else {
            throw IpactrError(.internalError, "property \(interface).\(p.name) is declared \(p.signature) but read as \(v.signature)")
        }
        return v
    }

    private static func denied(_ what: String, _ caller: BusCaller) -> IpactrError {
        let who = caller.uid.map { "uid \($0)" } ?? "a caller of unknown uid"
        return IpactrError(.permissionDenied, "\(what) is only allowed for root, not for \(who)")
    }

    private func unknownMethod(_ c: BusConnection, _ m: OpaquePointer, _ interface: String?, _ member: String) -> Int32 {
        replyError(c, m, BusError(BusError.unknownMethod, "Unknown method '\(member)' or interface '\(interface ?? "")'."))
        return 1
    }

    private func invalidArgs(_ c: BusConnection, _ m: OpaquePointer, _ got: String, _ want: String,
                             _ interface: String, _ member: String) -> Int32 {
        replyError(c, m, BusError(BusError.invalidArgs,
                                  "Invalid arguments '\(got)' to call \(interface).\(member)(), expecting '\(want)'."))
        return 1
    }

    /// The caller's uid, from the bus (sd-bus asks dbus-daemon's
    /// GetConnectionCredentials, i.e. the peer credentials of its socket).
    private func caller(_ m: OpaquePointer) -> BusCaller {
        let sender = sd_bus_message_get_sender(m).map { String(cString: $0) }
        if let sender, let uid = uidByName[sender] { return BusCaller(uniqueName: sender, uid: uid) }
        var creds: OpaquePointer?
        var uid: uid_t?
        if sd_bus_query_sender_creds(m, Self.credsEUID, &creds) >= 0, let creds {
            var u: uid_t = 0
            if sd_bus_creds_get_euid(creds, &u) >= 0 { uid = u }
            sd_bus_creds_unref(creds)
        }
        if let sender, let uid, sender.hasPrefix(":") {
            // A bound, in case NameOwnerChanged were ever missed.
            if uidByName.count >= 4096 { uidByName.removeAll() }
            uidByName[sender] = uid
        }
        return BusCaller(uniqueName: sender, uid: uid)
    }

    /// Runs `body` in a Task and sends its values (or its error) as the reply
    /// to `m`, back on the loop thread.
    private func respond(_ m: OpaquePointer, outputSignature: String, _ what: String,
                         _ body: @escaping @Sendable () async throws -> [BusValue]) {
        sd_bus_message_ref(m)
        let message = MessageRef(m)
        Task {
            let result: Result<[BusValue], Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            self.post { c in
                defer { sd_bus_message_unref(message.pointer) }
                guard let c else { return }
                switch result {
                case .success(let values):
                    let got = values.map(\.signature).joined()
                    if got == outputSignature {
                        self.reply(c, message.pointer, values)
                    } else {
                        self.logger.error("\(what) returned (\(got)), declared (\(outputSignature))")
                        self.replyError(c, message.pointer, IpactrError(.internalError, "\(what) returned a malformed reply"))
                    }
                case .failure(let error):
                    self.replyError(c, message.pointer, error)
                }
            }
        }
    }

    private func reply(_ c: BusConnection, _ m: OpaquePointer, _ values: [BusValue]) {
        guard sd_bus_message_get_expect_reply(m) > 0 else { return }
        var r: OpaquePointer?
        do {
            try BusMarshal.check(sd_bus_message_new_method_return(m, &r), "new D-Bus reply")
            defer { sd_bus_message_unref(r) }
            try BusMarshal.append(values, to: r!)
            try BusMarshal.check(sd_bus_send(c.bus, r, nil), "send D-Bus reply")
        } catch {
            logger.error("cannot reply: \(error)")
            replyError(c, m, IpactrError(.internalError, "cannot build the reply: \(error)"))
        }
    }

    private func replyError(_ c: BusConnection, _ m: OpaquePointer, _ error: Error) {
        guard sd_bus_message_get_expect_reply(m) > 0 else { return }
        let (name, message) = BusErrorMapping.reply(for: error)
        var e = sd_bus_error(name: nil, message: nil, _need_free: 0)
        defer { sd_bus_error_free(&e) }
        _ = sd_bus_error_set(&e, name, message)
        let r = sd_bus_reply_method_error(m, &e)
        if r < 0 { logger.error("cannot send D-Bus error \(name): \(Errno(rawValue: -r))") }
    }
}

/// An sd-bus message reference carried into a Task; only dereferenced back
/// on the loop thread.
private struct MessageRef: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}

extension BusValue {
    var variantSignature: String {
        if case .variant(let v) = self { return v.signature }
        return signature
    }
}
