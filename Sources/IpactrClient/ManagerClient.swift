import IpactrBus
import IpactrSystem

/// A client of ipactrd's org.ipactr1.Manager: every `ipactr` verb goes
/// through it. Blocking calls on a connection of its
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
            throw IpactrError(error.code, "cannot reach ipactrd: no system bus at \(address) (\(error.message)); "
                + "start dbus, then ipactrd (`systemctl start ipactrd`, or run `ipactrd` as root)")
        }
    }

    /// One call to the manager, with "the daemon is not running" said plainly.
    /// `timeoutSeconds`: 0 is sd-bus's default (25 s), infinity waits as long as it takes.
    private func call(_ member: String, _ arguments: [BusValue] = [], timeoutSeconds: Double = 0) throws(IpactrError) -> [BusValue] {
        do {
            // sd-bus reads UINT64_MAX as "no timeout".
            let usec = timeoutSeconds.isInfinite ? UInt64.max : UInt64(max(0, timeoutSeconds) * 1_000_000)
            return try manager.call(member, arguments, timeout: usec)
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
        // The bus policy refused the call before ipactrd saw it (its text names rules, not reasons).
        if m.contains("org.freedesktop.DBus.Error.AccessDenied"), let member = m.firstRange(of: "member=\"")
            .map({ m[$0.upperBound...].prefix { $0 != "\"" } }) {
            return IpactrError(.permissionDenied, "access denied: \(member) is only allowed for root (refused by the org.ipactr1 bus policy)")
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
        return try machine(fromPath: path)
    }

    /// The properties of the machine object at `path`.
    public func machine(fromPath path: String) throws(IpactrError) -> Machine {
        let p = try BusProxy(connection, Self.busName, path, Self.machineInterface).properties()
        func int(_ k: String) -> Int64 { p[k]?.int64Value ?? -1 }
        return Machine(name: p["Name"]?.stringValue ?? "", image: p["Image"]?.stringValue ?? "",
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

    /// Boots a stopped machine again; with `wait`, returns once it is ready.
    public func start(_ name: String, wait: Bool = true) throws(IpactrError) {
        _ = try call("StartMachine", [.string(name), .bool(wait)], timeoutSeconds: 150)
    }

    /// Powers the machine off (SIGKILL after `timeoutSeconds`, 0: the
    /// daemon's default of 90); returns PID 1's exit status (-1 if unknown).
    @discardableResult
    public func poweroff(_ name: String, timeoutSeconds: UInt32 = 0) throws(IpactrError) -> Int32 {
        let wait = Double(timeoutSeconds == 0 ? 90 : timeoutSeconds) + 30
        guard case .int32(let status)? = try call("PoweroffMachine", [.string(name), .uint32(timeoutSeconds)],
                                                  timeoutSeconds: wait).first else {
            throw IpactrError(.corrupt, "malformed PoweroffMachine reply")
        }
        return status
    }

    /// Starts the machine at host boot (ipactr@NAME.service in machines.target), or no longer.
    public func setEnabled(_ name: String, _ enabled: Bool) throws(IpactrError) {
        _ = try call(enabled ? "EnableMachine" : "DisableMachine", [.string(name)], timeoutSeconds: 120)
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

    /// Removes an image by name or id prefix; returns its name and id.
    @discardableResult
    public func removeImage(_ name: String) throws(IpactrError) -> (name: String, id: String) {
        let r = try call("RemoveImage", [.string(name)], timeoutSeconds: 120)
        guard r.count == 2, let n = r[0].stringValue, let id = r[1].stringValue else { throw IpactrError(.corrupt, "malformed RemoveImage reply") }
        return (n, id)
    }

    // MARK: What the CLI's verbs need beyond machine1's shape

    /// JSON array of machine summaries (`ipactr list --json`).
    public func describeMachines() throws(IpactrError) -> String { try string(call("DescribeMachines"), "DescribeMachines") }
    /// JSON machine summary (`ipactr status --json`, without the system state).
    public func describeMachine(_ name: String) throws(IpactrError) -> String {
        try string(call("DescribeMachine", [.string(name)]), "DescribeMachine")
    }
    /// JSON array of images (`ipactr images --json`).
    public func describeImages() throws(IpactrError) -> String { try string(call("DescribeImages"), "DescribeImages") }
    /// JSON of one image by name or id prefix (`ipactr image inspect`).
    public func inspectImage(_ name: String) throws(IpactrError) -> String {
        try string(call("InspectImage", [.string(name)]), "InspectImage")
    }

    /// `systemctl is-system-running` inside and the failed units; nil when it cannot be asked.
    public func systemState(_ name: String) throws(IpactrError) -> (state: String, failedUnits: [String])? {
        let r = try call("GetSystemState", [.string(name)], timeoutSeconds: 60)
        guard r.count == 2, let state = r[0].stringValue else { throw IpactrError(.corrupt, "malformed GetSystemState reply") }
        return state.isEmpty ? nil : (state, r[1].arrayValue?.compactMap(\.stringValue) ?? [])
    }

    /// The last `lines` lines of the machine's console (root only).
    public func consoleTail(_ name: String, lines: UInt32) throws(IpactrError) -> [String] {
        try call("ConsoleTail", [.string(name), .uint32(lines)]).first?.arrayValue?.compactMap(\.stringValue) ?? []
    }

    /// Console bytes from `offset`, and the offset after them (root only).
    public func readConsole(_ name: String, offset: UInt64) throws(IpactrError) -> (data: [UInt8], next: UInt64) {
        let r = try call("ReadConsole", [.string(name), .uint64(offset), .uint32(1 << 18)])
        guard r.count == 2, let items = r[0].arrayValue, case .uint64(let next) = r[1] else {
            throw IpactrError(.corrupt, "malformed ReadConsole reply")
        }
        return (items.compactMap { if case .byte(let b) = $0 { return b }; return nil }, next)
    }

    /// Runs `command` in the machine on `stdio` (three descriptors, sent to
    /// the daemon); returns its exit status.
    /// `lifeline`: the read end of a pipe whose writer the caller holds; a
    /// byte written there is a signal number for the command, its close a SIGHUP.
    public func exec(_ name: String, command: [String], environment: [String] = [], directory: String = "/",
                     stdio: [Int32], lifeline: Int32) throws(IpactrError) -> Int32 {
        try status(call("ExecMachine", [.string(name), .strings(command), .strings(environment), .string(directory)]
                        + (stdio + [lifeline]).map { .unixFD($0) }, timeoutSeconds: .infinity), "ExecMachine")
    }

    /// A login shell (or `command`) on a pty in the machine, relayed to
    /// `stdio` (a terminal); returns its exit status.
    public func shell(_ name: String, command: [String], term: String, stdio: [Int32], lifeline: Int32) throws(IpactrError) -> Int32 {
        try status(call("ShellMachine", [.string(name), .strings(command), .string(term)] + (stdio + [lifeline]).map { .unixFD($0) },
                        timeoutSeconds: .infinity), "ShellMachine")
    }

    /// Imports an image with a worker writing to `stdio`; `lifeline` is the
    /// read end of a pipe whose writer the caller holds (a byte or its
    /// close stops the import). format: auto, tar or fs. Returns the worker's status.
    public func importImage(format: String, source: String, name: String, stdio: [Int32], lifeline: Int32) throws(IpactrError) -> Int32 {
        try status(call("ImportImage", [.string(format), .string(source), .string(name)] + (stdio + [lifeline]).map { .unixFD($0) },
                        timeoutSeconds: .infinity), "ImportImage")
    }

    /// Pulls with a worker writing its progress to `stdio`; options as
    /// PullImage documents them. Returns the worker's status.
    public func pull(_ reference: String, options: [String: BusValue], stdio: [Int32], lifeline: Int32) throws(IpactrError) -> Int32 {
        try status(call("PullImage", [.string(reference), .properties(options)] + (stdio + [lifeline]).map { .unixFD($0) },
                        timeoutSeconds: .infinity), "PullImage")
    }

    /// Removes blobs and layers no image uses; returns how many of each.
    public func pruneImages() throws(IpactrError) -> (blobs: UInt32, layers: UInt32) {
        let r = try call("PruneImages", timeoutSeconds: 300)
        guard r.count == 2, case .uint32(let b) = r[0], case .uint32(let l) = r[1] else { throw IpactrError(.corrupt, "malformed PruneImages reply") }
        return (b, l)
    }

    private func string(_ reply: [BusValue], _ method: String) throws(IpactrError) -> String {
        guard let s = reply.first?.stringValue else { throw IpactrError(.corrupt, "malformed \(method) reply") }
        return s
    }

    private func status(_ reply: [BusValue], _ method: String) throws(IpactrError) -> Int32 {
        guard case .int32(let s)? = reply.first else { throw IpactrError(.corrupt, "malformed \(method) reply") }
        return s
    }
}
