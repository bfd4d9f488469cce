import Foundation
import Testing
import IpactrMachine
import IpactrSystem

/// The repository root, for the shipped files under units/.
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A built executable of this package (`swift build` puts them beside the test bundle).
func builtExecutable(_ name: String) -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.deletingLastPathComponent()
    while !FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent(name).path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent(name).path
}

let debianOCI = ProcessInfo.processInfo.environment["IPACTR_TEST_DEBIAN_OCI"] ?? "/var/cache/ipactr/images/debian/oci"

struct Finished {
    var status: Int32
    var stdout: String
    var stderr: String
    var line: String { stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
}

/// Starts argv with posix_spawn (output to files, an empty signal mask
/// whatever the calling thread blocks); returns its pid.
func spawn(_ argv: [String], stdout: String, stderr: String, asNobody: Bool = false) throws -> pid_t {
    let argv = asNobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv : argv
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attr, &none)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
    let cArgs = argv.map { strdup($0) } + [nil]
    defer { cArgs.forEach { free($0) } }
    var pid: pid_t = 0
    let r = posix_spawnp(&pid, argv[0], &actions, &attr, cArgs, environ)
    guard r == 0 else { throw IpactrError(.io, "spawn \(argv[0]): \(String(cString: strerror(r)))") }
    return pid
}

/// Runs argv to completion.
func capture(_ argv: [String], asNobody: Bool = false) throws -> Finished {
    let dir = "/var/tmp/ipactr-dcapture-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let pid = try spawn(argv, stdout: dir + "/out", stderr: dir + "/err", asNobody: asNobody)
    var st: Int32 = 0
    while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
    return Finished(status: (st & 0x7f) == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f),
                    stdout: (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? "",
                    stderr: (try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? "")
}

func killAndReap(_ pid: pid_t) {
    kill(pid, SIGKILL)
    var st: Int32 = 0
    while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
}

/// Polls `condition` every 50 ms, at most `seconds` (a guard against a hung
/// test, not a timing assertion).
@discardableResult
func eventually(_ seconds: Double = 60, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        usleep(50_000)
    }
    return try condition()
}

/// A private dbus-daemon configured like Debian's system bus (its default
/// policy), with the shipped org.ipactr1.conf included, on a socket in a
/// temp dir that nobody can reach.
final class SystemBus {
    let directory: String
    let address: String
    private var pid: pid_t = 0

    init(extraPolicy: String = "") throws {
        var template = Array("/tmp/ipactr-dbus-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw IpactrError(.io, "mkdtemp failed") }
        directory = String(cString: template)
        chmod(directory, 0o755)
        address = "unix:path=\(directory)/bus"
        let config = """
            <!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
             "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
            <busconfig>
              <type>system</type>
              <auth>EXTERNAL</auth>
              <listen>\(address)</listen>
              <policy context="default">
                <allow user="*"/>
                <deny own="*"/>
                <deny send_type="method_call"/>
                <allow send_type="signal"/>
                <allow send_requested_reply="true" send_type="method_return"/>
                <allow send_requested_reply="true" send_type="error"/>
                <allow receive_type="method_call"/>
                <allow receive_type="method_return"/>
                <allow receive_type="error"/>
                <allow receive_type="signal"/>
                <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
                <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
                <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
              </policy>
              <policy user="root">
                <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
              </policy>
              <include>\(repositoryRoot)/units/org.ipactr1.conf</include>
              \(extraPolicy)
            </busconfig>
            """
        do {
            try config.write(toFile: directory + "/system.conf", atomically: true, encoding: .utf8)
            pid = try spawn(["/usr/bin/dbus-daemon", "--config-file=\(directory)/system.conf", "--nofork", "--nopidfile",
                             "--print-address=1"], stdout: directory + "/address", stderr: directory + "/log")
            // It prints its address once the socket listens.
            let up = eventually(30) { ((try? String(contentsOfFile: directory + "/address", encoding: .utf8)) ?? "").contains("\n") }
            guard up else { throw IpactrError(.io, "dbus-daemon did not start: \((try? String(contentsOfFile: directory + "/log", encoding: .utf8)) ?? "")") }
        } catch {
            stop()
            throw error
        }
    }

    func stop() {
        if pid > 0 { killAndReap(pid) }
        pid = 0
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { stop() }
}

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

    init(importDebian: Bool = true, extraPolicy: String = "") throws {
        root = "/var/tmp/ipactr-dtest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        logDirectory = root + "-logs"
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        bus = try SystemBus(extraPolicy: extraPolicy)
        do {
            if importDebian {
                let r = try ipactr(["import", debianOCI, "debian"])
                guard r.status == 0 else { throw IpactrError(.io, "import: \(r.stderr) (scripts/test.sh builds the test image)") }
            }
            try startDaemon()
        } catch {
            cleanup()
            throw error
        }
    }

    deinit { cleanup() }

    private func cleanup() {
        if daemonPID > 0 { killAndReap(daemonPID) }
        daemonPID = 0
        let manager = MachineManager(root: root)
        for name in manager.names() { _ = try? ipactr(["rm", "--force", name]) }
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
                               "--monitor", builtExecutable("ipactr")],
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
        try capture([builtExecutable("ipactr"), "--root", root] + args)
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
