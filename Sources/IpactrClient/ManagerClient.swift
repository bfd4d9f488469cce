import IpactrBus
import IpactrSystem

/// A client of ipactrd's org.ipactr1.Manager, for the `ipactr` verbs (not
/// switched to it yet) and scripts. Blocking calls on a connection of its
/// own; use one client per thread, as sd-bus asks.
///
/// When nobody owns org.ipactr1 (and the bus cannot activate it) every call
/// fails with one line that says how to start the daemon.
public final class ManagerClient {
    public static let busName = "org.ipactr1"
    public static let managerPath = "/org/ipactr1"
    public static let managerInterface = "org.ipactr1.Manager"
    public static let machineInterface = "org.ipactr1.Machine"
    public static let imageInterface = "org.ipactr1.Image"

    public let connection: BusConnection
    private var manager: BusProxy { BusProxy(connection, Self.busName, Self.managerPath, Self.managerInterface) }

    /// A machine as ListMachines gives it.
    public struct MachineEntry: Sendable, Equatable {
        public var name: String
        public var state: String
        public var path: String
        public init(name: String, state: String, path: String) {
            self.name = name
            self.state = state
            self.path = path
        }
    }

    /// A machine's org.ipactr1.Machine properties.
    public struct Machine: Sendable, Equatable {
        public var name: String
        public var image: String
        public var state: String
        public var leader: UInt32
        public var uidRange: String
        public var ready: Bool
        public var statusText: String
        public var lastExitStatus: Int32
    }

    /// An image as ListImages gives it.
    public struct ImageEntry: Sendable, Equatable {
        public var name: String
        public var id: String
        public var size: UInt64
        public var path: String
    }

    /// Connects to the bus at `address` (default: the system bus, or $DBUS_SYSTEM_BUS_ADDRESS).
    public init(address: String = BusConnection.systemBusAddress) throws(IpactrError) {
        do {
            connection = try BusConnection(address: address, description: "ipactr")
        } catch {
            throw IpactrError(error.code, "cannot connect to the system bus at \(address): \(error.message)")
        }
    }

    /// One call to the manager, with "the daemon is not running" said plainly.
    private func call(_ member: String, _ arguments: [BusValue] = [], timeoutSeconds: Double = 0) throws(IpactrError) -> [BusValue] {
        do {
            return try manager.call(member, arguments, timeout: UInt64(max(0, timeoutSeconds) * 1_000_000))
        } catch {
            throw Self.explain(error)
        }
    }

    static func explain(_ error: IpactrError) -> IpactrError {
        let m = error.message
        // Also a failed bus activation (Error.Spawn.*): the activation file is
        // there but the daemon could not be started.
        if m.contains("org.freedesktop.DBus.Error.ServiceUnknown") || m.contains("org.freedesktop.DBus.Error.NameHasNoOwner")
            || m.contains("org.freedesktop.DBus.Error.Spawn.") {
            return IpactrError(.unsupported, "ipactrd is not running (start it with `systemctl start ipactrd`, or run `ipactrd` as root)")
        }
        return error
    }

    public func listMachines() throws(IpactrError) -> [MachineEntry] {
        guard let items = try call("ListMachines").first?.arrayValue else { throw IpactrError(.corrupt, "malformed ListMachines reply") }
        return items.compactMap { item in
            guard case .structure(let f) = item, f.count == 3, let n = f[0].stringValue, let s = f[1].stringValue,
                  let p = f[2].stringValue else { return nil }
            return MachineEntry(name: n, state: s, path: p)
        }
    }

    /// The machine's properties (GetMachine, then GetAll on its object).
    public func machine(_ name: String) throws(IpactrError) -> Machine {
        guard let path = try call("GetMachine", [.string(name)]).first?.stringValue else {
            throw IpactrError(.corrupt, "malformed GetMachine reply")
        }
        let p = try BusProxy(connection, Self.busName, path, Self.machineInterface).properties()
        func int(_ k: String) -> Int64 { p[k]?.int64Value ?? -1 }
        return Machine(name: p["Name"]?.stringValue ?? name, image: p["Image"]?.stringValue ?? "",
                       state: p["State"]?.stringValue ?? "", leader: UInt32(clamping: max(0, int("Leader"))),
                       uidRange: p["UIDRange"]?.stringValue ?? "", ready: p["Ready"]?.boolValue ?? false,
                       statusText: p["StatusText"]?.stringValue ?? "", lastExitStatus: Int32(clamping: int("LastExitStatus")))
    }

    /// Boots `image` as machine `name` (empty: the image's name) and returns
    /// once it is ready. `options` as BootMachine documents them (ipactrd's
    /// `BootOptions`); the call waits `timeoutSeconds` plus a margin.
    @discardableResult
    public func boot(image: String, name: String = "", options: [String: BusValue] = [:],
                     timeoutSeconds: UInt32 = 120) throws(IpactrError) -> String {
        var o = options
        o["TimeoutSec"] = .uint32(timeoutSeconds)
        guard let path = try call("BootMachine", [.string(image), .string(name), .properties(o)],
                                  timeoutSeconds: Double(timeoutSeconds) + 30).first?.stringValue else {
            throw IpactrError(.corrupt, "malformed BootMachine reply")
        }
        return path
    }

    public func start(_ name: String) throws(IpactrError) {
        _ = try call("StartMachine", [.string(name)], timeoutSeconds: 150)
    }

    /// Powers the machine off; returns PID 1's exit status (-1 if unknown).
    @discardableResult
    public func poweroff(_ name: String) throws(IpactrError) -> Int32 {
        guard case .int32(let status)? = try call("PoweroffMachine", [.string(name)], timeoutSeconds: 150).first else {
            throw IpactrError(.corrupt, "malformed PoweroffMachine reply")
        }
        return status
    }

    public func reboot(_ name: String) throws(IpactrError) { _ = try call("RebootMachine", [.string(name)], timeoutSeconds: 120) }
    public func terminate(_ name: String) throws(IpactrError) { _ = try call("TerminateMachine", [.string(name)], timeoutSeconds: 60) }
    public func kill(_ name: String, signal: Int32) throws(IpactrError) { _ = try call("KillMachine", [.string(name), .int32(signal)]) }
    public func remove(_ name: String) throws(IpactrError) { _ = try call("RemoveMachine", [.string(name)], timeoutSeconds: 120) }

    public func listImages() throws(IpactrError) -> [ImageEntry] {
        guard let items = try call("ListImages").first?.arrayValue else { throw IpactrError(.corrupt, "malformed ListImages reply") }
        return items.compactMap { item in
            guard case .structure(let f) = item, f.count == 4, let n = f[0].stringValue, let id = f[1].stringValue,
                  case .uint64(let size) = f[2], let p = f[3].stringValue else { return nil }
            return ImageEntry(name: n, id: id, size: size, path: p)
        }
    }

    public func removeImage(_ name: String) throws(IpactrError) { _ = try call("RemoveImage", [.string(name)], timeoutSeconds: 120) }
}
