#if canImport(Glibc)
import Glibc
#endif
import IpactrBus
import IpactrSystem

/// Machines run as `ipactr@NAME.service` on a host whose systemd is on the
/// bus, instead of under a detached monitor: then systemd supervises the
/// monitor (Delegate=yes gives it the machine's cgroups), `systemctl` and
/// `journalctl -u` see it, and the monitor registers the machine with
/// systemd-machined (RegisterMachineWithNetwork, `Machined`).
///
/// The unit runs `/usr/local/bin/ipactr-worker monitor --delegated NAME` with the
/// default state root, so it is used only by a manager of that root with
/// that binary, and only when systemd has the unit (installed by
/// scripts/install.sh). Each call opens a connection of its own (sd-bus
/// connections are per thread).
public struct SystemdUnits: Sendable {
    public let busAddress: String
    static let destination = "org.freedesktop.systemd1"
    static let managerPath = "/org/freedesktop/systemd1"
    static let managerInterface = "org.freedesktop.systemd1.Manager"
    static let unitInterface = "org.freedesktop.systemd1.Unit"
    /// What ipactr@.service runs.
    public static let unitMonitor = "/usr/local/bin/ipactr-worker"

    public static func unitName(_ machine: String) -> String { "ipactr@\(machine).service" }

    /// The units to use, when systemd is on the bus at `busAddress`, knows
    /// ipactr@.service, and the unit would run this manager's monitor on its root.
    public static func available(busAddress: String, monitorExecutable: String, root: String, defaultRoot: String) -> SystemdUnits? {
        guard monitorExecutable == unitMonitor, root == defaultRoot,
              let bus = try? BusConnection(address: busAddress, description: "ipactr-units"),
              let reply = try? bus.call(destination: destination, path: managerPath, interface: managerInterface,
                                        member: "LoadUnit", [.string(unitName("probe"))]),
              let path = reply.first?.stringValue,
              let state = try? BusProxy(bus, destination, path, unitInterface).property("LoadState").stringValue,
              state == "loaded" else { return nil }
        return SystemdUnits(busAddress: busAddress)
    }

    private func manager() throws(IpactrError) -> BusProxy {
        BusProxy(try BusConnection(address: busAddress, description: "ipactr-units"), Self.destination, Self.managerPath,
                 Self.managerInterface)
    }

    /// Queues the start (StartUnit, mode replace); returns at once.
    public func start(_ machine: String) throws(IpactrError) {
        _ = try manager().call("StartUnit", [.string(Self.unitName(machine)), .string("replace")], timeout: 30_000_000)
    }

    /// The unit's ActiveState (active, activating, failed, inactive…), nil when it cannot be read.
    public func activeState(_ machine: String) -> String? {
        guard let m = try? manager(),
              let path = (try? m.call("LoadUnit", [.string(Self.unitName(machine))]))?.first?.stringValue else { return nil }
        return try? BusProxy(m.connection, Self.destination, path, Self.unitInterface).property("ActiveState").stringValue
    }

    /// Forgets a failed start, so the unit is not listed as failed.
    public func resetFailed(_ machine: String) {
        _ = try? manager().call("ResetFailedUnit", [.string(Self.unitName(machine))])
    }
}
