#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import IpactrBus
import IpactrSystem

/// Registration with systemd-machined (org.freedesktop.machine1), so that
/// `machinectl list/status/shell` and `journalctl -M` see the machine.
///
/// Only a monitor that runs as its own unit (ipactr@NAME.service, the
/// `--delegated` mode) registers, with RegisterMachineWithNetwork: machined
/// finds the unit from PID 1's cgroup, below the unit's. CreateMachine (for
/// a machine outside any unit) is not used: machined would move PID 1 into a
/// machine-NAME.scope of its own after PID 1 has set up its cgroup
/// namespace and its delegated subtree, leaving it outside both. On a
/// systemd host, ipactrd runs machines as units instead.
///
/// Without machined on the system bus (or without a system bus) nothing
/// happens and nothing fails.
enum Machined {
    static let busName = "org.freedesktop.machine1"
    static let path = "/org/freedesktop/machine1"
    static let interface = "org.freedesktop.machine1.Manager"

    /// Registers; returns whether machined took it. Failures other than
    /// "machined is not there" are returned as a message for the log.
    static func register(name: String, uuid: String, leader: pid_t, rootDirectory: String) -> (registered: Bool, problem: String?) {
        guard let bus = try? BusConnection.system(description: "ipactr-monitor") else { return (false, nil) }
        let id = uuidBytes(uuid)
        do {
            try bus.call(destination: busName, path: path, interface: interface, member: "RegisterMachineWithNetwork", [
                .string(name), .array(elementSignature: "y", id.map { .byte($0) }), .string("ipactr"), .string("container"),
                .uint32(UInt32(leader)), .string(rootDirectory), .array(elementSignature: "i", []),
            ])
            return (true, nil)
        } catch {
            return (false, absent(error) ? nil : "cannot register \(name) with systemd-machined: \(error.message)")
        }
    }

    /// A registration made on a thread of its own; `finish` waits for it.
    final class Registration: @unchecked Sendable {
        private var thread: pthread_t?
        private var registered = false

        init(name: String, uuid: String, leader: pid_t, rootDirectory: String) throws {
            thread = try startThread(detached: false) { [self] in
                let (ok, problem) = Machined.register(name: name, uuid: uuid, leader: leader, rootDirectory: rootDirectory)
                if let problem { fputs("ipactr-worker monitor: \(problem)\n", stderr) }
                registered = ok
            }
        }

        /// Whether machined took the machine (then it must be unregistered).
        func finish() -> Bool {
            if let t = thread { joinThread(t) }
            thread = nil
            return registered
        }
    }

    static func unregister(name: String) {
        guard let bus = try? BusConnection.system(description: "ipactr-monitor") else { return }
        _ = try? bus.call(destination: busName, path: path, interface: interface, member: "UnregisterMachine", [.string(name)])
    }

    /// machined is not on the bus and cannot be activated (no systemd).
    static func absent(_ error: IpactrError) -> Bool {
        ["ServiceUnknown", "NameHasNoOwner", "Error.Spawn.", "not connected", "No such file"].contains { error.message.contains($0) }
    }

    /// The record's UUID as the 16 bytes machined wants (all zero if malformed: machined then picks none).
    static func uuidBytes(_ uuid: String) -> [UInt8] {
        let hex = Array(uuid.lowercased().filter { $0.isHexDigit })
        guard hex.count == 32 else { return [UInt8](repeating: 0, count: 16) }
        return stride(from: 0, to: 32, by: 2).map { UInt8(String(hex[$0...$0 + 1]), radix: 16) ?? 0 }
    }
}
