import Foundation
import IpactrSystem

/// ipactrd (the built binary) serving `root` on a private system bus, as
/// every `ipactr` verb needs it. `ipactr(_:)` runs the CLI against it.
/// Stopped by `stop()` or deinit (SIGKILL: the daemon keeps nothing a
/// crash could lose; machines run under their own monitors).
public final class IpactrDaemon {
    public let root: String
    public let bus: SystemBus
    public let logDirectory: String
    public private(set) var pid: pid_t = 0

    public init(root: String, bus: SystemBus? = nil) throws {
        self.root = root
        self.bus = try bus ?? SystemBus()
        logDirectory = self.bus.directory + "/ipactrd-logs"
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        do { try start() } catch {
            self.bus.stop()
            throw error
        }
    }

    deinit { stop() }

    /// The environment the CLI gets: ours, with the private bus as the system bus.
    public var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
        return env
    }

    /// Starts ipactrd and waits until it owns org.ipactr1.
    public func start() throws {
        let n = Int.random(in: 0...1_000_000)
        let err = logDirectory + "/ipactrd-\(n).err"
        pid = try spawn([builtExecutable("ipactrd"), "--root", root, "--bus", bus.address, "--monitor", builtExecutable("ipactr-worker")],
                        stdout: logDirectory + "/ipactrd-\(n).out", stderr: err)
        let up = try eventually(60) {
            var st: Int32 = 0
            if waitpid(pid, &st, WNOHANG) == pid {
                pid = 0
                throw IpactrError(.io, "ipactrd exited: \((try? String(contentsOfFile: err, encoding: .utf8)) ?? "")")
            }
            return try capture(["/usr/bin/busctl", "--address=\(bus.address)", "status", "org.ipactr1"]).status == 0
        }
        guard up else { throw IpactrError(.io, "ipactrd did not take org.ipactr1") }
    }

    /// SIGKILL, as a crash; `start()` brings it back.
    public func kill() {
        if pid > 0 { killAndReap(pid) }
        pid = 0
    }

    public func stop() {
        kill()
        bus.stop()
    }

    /// `ipactr ARGS…` against this daemon.
    @discardableResult
    public func ipactr(_ args: [String], asNobody: Bool = false) throws -> Finished {
        try capture([builtExecutable("ipactr")] + args, environment: environment, asNobody: asNobody)
    }
}
