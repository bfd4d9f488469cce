import Foundation
import Testing
import IpactrMachine
import IpactrSystem
import IpactrTestSupport

let debianOCI = TestImages.debian

/// A state root with the Debian systemd test image imported, a bus, and
/// ipactrd (the built binary) serving the root on it. Everything is torn
/// down in deinit, also when a test fails half-way: the daemon first, then
/// every machine (through the CLI), mounts, the root and the bus.
final class DaemonFixture {
    let root: String
    let bus: SystemBus
    let logDirectory: String
    private(set) var daemonPID: pid_t = 0
    static let name = "org.ipactr1"
    static let manager = "org.ipactr1.Manager"

    /// `unitRoot`: ipactrd's --unit-root (where `enable` links units offline).
    let unitRoot: String?

    init(importDebian: Bool = true, extraPolicy: String = "", unitRoot: String? = nil) throws {
        self.unitRoot = unitRoot
        root = "/var/tmp/ipactr-dtest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        logDirectory = root + "-logs"
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        bus = try SystemBus(extraPolicy: extraPolicy)
        do {
            try startDaemon()
            if importDebian {
                let r = try ipactr(["import", debianOCI, "debian"])
                guard r.status == 0 else { throw IpactrError(.io, "import: \(r.stderr) (scripts/test.sh builds the test image)") }
            }
        } catch {
            cleanup()
            throw error
        }
    }

    deinit { cleanup() }

    private func cleanup() {
        // Machines go through the daemon, as users remove them (a test may have crashed it).
        let manager = MachineManager(root: root)
        if !manager.names().isEmpty && daemonPID == 0 { try? startDaemon() }
        for name in manager.names() { _ = try? ipactr(["rm", "--force", name]) }
        if daemonPID > 0 { killAndReap(daemonPID) }
        daemonPID = 0
        let paths = MachinePaths(root: root)
        for point in Mount.mountPoints(under: paths.runRoot) { try? Mount.unmount(point) }
        for point in Mount.mountPoints(under: root) { try? Mount.unmount(point) }
        try? removeTree(root)
        try? removeTree(paths.runRoot)
        try? removeTree(logDirectory)
        bus.stop()
    }

    /// Starts ipactrd and waits until it owns its name.
    func startDaemon() throws {
        let n = Int.random(in: 0...1_000_000)
        daemonPID = try spawn([builtExecutable("ipactrd"), "--root", root, "--bus", bus.address,
                               "--monitor", builtExecutable("ipactr-worker")] + (unitRoot.map { ["--unit-root", $0] } ?? []),
                              stdout: logDirectory + "/ipactrd-\(n).out", stderr: logDirectory + "/ipactrd-\(n).err")
        let up = try eventually(60) {
            var st: Int32 = 0
            if waitpid(daemonPID, &st, WNOHANG) == daemonPID {
                daemonPID = 0
                let err = (try? String(contentsOfFile: logDirectory + "/ipactrd-\(n).err", encoding: .utf8)) ?? ""
                throw IpactrError(.io, "ipactrd exited: \(err)")
            }
            return try busctl(["status", Self.name]).status == 0
        }
        guard up else { throw IpactrError(.io, "ipactrd did not take \(Self.name)") }
    }

    /// kill -9 of the daemon, as a crash.
    func crashDaemon() {
        killAndReap(daemonPID)
        daemonPID = 0
    }

    @discardableResult
    func ipactr(_ args: [String]) throws -> Finished {
        try capture([builtExecutable("ipactr")] + args, environment: environment)
    }

    /// The CLI's environment: the private bus as the system bus.
    var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
        return env
    }

    func busctl(_ args: [String], asNobody: Bool = false) throws -> Finished {
        try capture(["/usr/bin/busctl", "--address=\(bus.address)"] + args, asNobody: asNobody)
    }

    /// `busctl call org.ipactr1 /org/ipactr1 org.ipactr1.Manager METHOD …`
    func call(_ method: String, _ args: [String] = [], asNobody: Bool = false) throws -> Finished {
        try busctl(["call", Self.name, "/org/ipactr1", Self.manager, method] + args, asNobody: asNobody)
    }

    /// `busctl get-property` of a machine ("s \"running\"" → "running" is left to the caller).
    func machineProperty(_ machine: String, _ property: String, asNobody: Bool = false) throws -> String {
        let path = try machinePath(machine)
        let r = try busctl(["get-property", Self.name, path, "org.ipactr1.Machine", property], asNobody: asNobody)
        guard r.status == 0 else { throw IpactrError(.io, "get-property \(property) of \(machine): \(r.stderr)") }
        return r.line
    }

    func machinePath(_ machine: String) throws -> String {
        let r = try call("GetMachine", ["s", machine])
        guard r.status == 0 else { throw IpactrError(.io, "GetMachine \(machine): \(r.stderr)") }
        // o "/org/ipactr1/machine/m1"
        return String(r.line.dropFirst(3).dropLast())
    }
}
