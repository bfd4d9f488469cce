import IpactrBus
import IpactrMachine
import IpactrSystem

/// BootMachine's third argument, an `a{sv}` in the style of machine1's
/// option dictionaries: every key is optional, an unknown key or a value of
/// the wrong type is an error (so a typo never boots a different machine).
///
/// | key           | type | meaning (as `ipactr boot`'s option)                  |
/// |---------------|------|------------------------------------------------------|
/// | Volumes       | as   | `/HOST:/CONTAINER[:ro][:noidmap]` (`--volume`)       |
/// | Tmpfs         | as   | paths (`--tmpfs`)                                    |
/// | Environment   | as   | `K=V` for PID 1 (`--env`)                            |
/// | Hostname      | s    | `--hostname`                                         |
/// | Network       | s    | `private` (default) or `host`                        |
/// | Publish       | as   | `[IP:]HOSTPORT:PORT[/udp]` (`--publish`)             |
/// | ReadOnly      | b    | `--read-only`                                        |
/// | Ephemeral     | b    | `--ephemeral`                                        |
/// | UIDRangeBase  | u    | first host uid of the range (`--uid-range BASE`);    |
/// |               |      | 0: the identity range (`--uid-range identity`)       |
/// | RootfsMode    | s    | `idmapped-overlay` or `shifted-copy` (`--rootfs`)    |
/// | TimeoutSec    | u    | seconds to wait for READY=1 (default 120)            |
/// | NoWait        | b    | return once started, before READY=1 (`--no-wait`)    |
/// | Nesting       | b    | may run machines of its own (`--nesting`)            |
public struct BootOptions: Sendable {
    public var machine = MachineOptions()
    public var timeoutSeconds: Double = 120
    /// False with NoWait: BootMachine returns once the monitor runs.
    public var wait = true

    public static let keys: [String: String] = [
        "Volumes": "as", "Tmpfs": "as", "Environment": "as", "Hostname": "s", "Network": "s", "Publish": "as",
        "ReadOnly": "b", "Ephemeral": "b", "UIDRangeBase": "u", "RootfsMode": "s", "TimeoutSec": "u", "NoWait": "b", "Nesting": "b",
    ]

    public init() {}

    /// Decodes the dictionary; throws `invalidArgument` naming the bad key.
    public init(parsing dict: [String: BusValue]) throws(IpactrError) {
        for (key, value) in dict {
            guard let want = Self.keys[key] else {
                throw IpactrError(.invalidArgument, "unknown boot option \"\(key)\" (known: \(Self.keys.keys.sorted().joined(separator: ", ")))")
            }
            guard value.signature == want else {
                throw IpactrError(.invalidArgument, "boot option \(key) takes type \"\(want)\", got \"\(value.signature)\"")
            }
        }
        func strings(_ key: String) -> [String] { dict[key]?.arrayValue?.compactMap(\.stringValue) ?? [] }
        machine.volumes = try strings("Volumes").map { (s: String) throws(IpactrError) in try MachineOptions.Volume(parsing: s) }
        machine.tmpfs = strings("Tmpfs")
        machine.environment = strings("Environment")
        machine.hostname = dict["Hostname"]?.stringValue
        if let net = dict["Network"]?.stringValue {
            guard let n = MachineOptions.Network(rawValue: net) else {
                throw IpactrError(.invalidArgument, "boot option Network must be \"private\" or \"host\", not \"\(net)\"")
            }
            machine.network = n
        }
        machine.publish = try strings("Publish").map { (s: String) throws(IpactrError) in try PortForwarder.Rule(parsing: s) }
        machine.readOnly = dict["ReadOnly"]?.boolValue ?? false
        machine.ephemeral = dict["Ephemeral"]?.boolValue ?? false
        if case .uint32(let base)? = dict["UIDRangeBase"] { machine.uidRangeBase = base }
        if let mode = dict["RootfsMode"]?.stringValue {
            guard let m = MachineRootfs.Mode(rawValue: mode) else {
                throw IpactrError(.invalidArgument, "boot option RootfsMode must be \"idmapped-overlay\" or \"shifted-copy\", not \"\(mode)\"")
            }
            machine.rootfsMode = m
        }
        wait = !(dict["NoWait"]?.boolValue ?? false)
        if dict["Nesting"]?.boolValue == true { machine.nesting = true }
        if case .uint32(let t)? = dict["TimeoutSec"] {
            guard t > 0 else { throw IpactrError(.invalidArgument, "boot option TimeoutSec must be positive") }
            timeoutSeconds = Double(t)
        }
    }
}
