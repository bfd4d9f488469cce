import Foundation
import Testing
import IpactrTestSupport
@testable import IpactrMachine
import IpactrSystem

/// `ipactr-worker monitor --delegated NAME` as ipactr@NAME.service runs it
/// (Type=notify, Delegate=yes): with $NOTIFY_SOCKET set it tells the service
/// manager READY=1 once the machine's systemd has, and STOPPING=1 on the way
/// down; with --delegated the machine lives below the cgroup it was started
/// in. A NotifySocket plays systemd, a fresh cgroup plays the unit's.
@Suite(.serialized) struct MonitorNotifyTests {
    /// A monitor started like a unit's main process; killed and reaped in deinit.
    final class UnitMonitor {
        let directory: String
        let systemd: NotifySocket
        var pid: pid_t = 0

        init(_ f: MachineFixture, name: String, cgroup: String?) throws {
            directory = "/tmp/ipactr-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
            systemd = try NotifySocket(path: directory + "/notify")
            var env = ProcessInfo.processInfo.environment
            env["NOTIFY_SOCKET"] = systemd.path
            var argv = [workerExecutable, "monitor", name, "--root", f.root]
            if let cgroup {
                // Into the "unit's" cgroup first, as systemd puts ExecStart there.
                argv = ["/bin/sh", "-c", "echo $$ > \(cgroup)/cgroup.procs && exec \"$0\" \"$@\"",
                        workerExecutable, "monitor", "--delegated", name, "--root", f.root]
            }
            do {
                pid = try spawn(argv, stdout: directory + "/out", stderr: directory + "/err", environment: env)
            } catch {
                try? removeTree(directory)
                throw error
            }
        }

        var output: String {
            ["/out", "/err"].map { (try? String(contentsOfFile: directory + $0, encoding: .utf8)) ?? "" }.joined()
        }

        /// Messages until one satisfies `done` (bounded so a broken monitor cannot hang the test).
        func receive(until done: (NotifySocket.Message) -> Bool) throws -> [NotifySocket.Message] {
            var got: [NotifySocket.Message] = []
            for _ in 0..<240 {
                if let m = try systemd.receive(timeoutMilliseconds: 500) {
                    got.append(m)
                    if done(m) { break }
                }
            }
            return got
        }

        /// The monitor's exit status after it ended.
        func wait() -> Int32 {
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
            pid = 0
            return (st & 0x7f) == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
        }

        deinit {
            if pid > 0 {
                kill(pid, SIGKILL)
                _ = wait()
            }
            try? removeTree(directory)
        }
    }

    /// A stopped machine, as `ipactr boot` + `poweroff` leave one for its unit.
    func stoppedMachine(_ f: MachineFixture, _ name: String) throws {
        try #require(try f.ipactr(["boot", "debian", "--name", name]).status == 0)
        try #require(try f.ipactr(["poweroff", name]).status == 0)
    }

    @Test func monitorNotifiesItsServiceManager() throws {
        let f = try MachineFixture()
        try stoppedMachine(f, "unit1")
        let m = try UnitMonitor(f, name: "unit1", cgroup: nil)
        let ready = try #require(try m.receive { $0.ready }.last, "no message from the monitor: \(m.output)")
        #expect(ready.ready)
        #expect(ready.status == "machine unit1 is running")
        // READY=1 means the machine is up, not merely started.
        let s = try f.summary("unit1")
        #expect(s.state == "running" && s.ready)

        // SIGTERM is what systemd sends the unit's main process (KillMode=mixed).
        kill(m.pid, SIGTERM)
        #expect(try m.receive { $0.stopping }.last?.stopping == true)
        #expect(m.wait() == 0)
        #expect(try f.summary("unit1").state == "stopped")
    }

    @Test func delegatedMonitorKeepsTheMachineInItsUnitsCgroup() throws {
        let f = try MachineFixture()
        try stoppedMachine(f, "unit2")
        let unitPath = "/ipactr-test-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let unit = try cgroup2Mount() + unitPath
        try FileManager.default.createDirectory(atPath: unit, withIntermediateDirectories: false)
        defer { rmdir(unit) }
        do {
            let m = try UnitMonitor(f, name: "unit2", cgroup: unit)
            try #require(try m.receive { $0.ready }.last?.ready == true, "no READY=1: \(m.output)")
            let leader = try f.leader("unit2")
            // Seen from the host's cgroup namespace: all below the unit's cgroup.
            #expect(try v2Cgroup(of: leader) == unitPath + "/payload/init.scope")
            #expect(try v2Cgroup(of: m.pid) == unitPath + "/supervisor")
            #expect(!FileManager.default.fileExists(atPath: try cgroup2Mount() + f.paths.cgroup("unit2")))

            kill(m.pid, SIGTERM)
            #expect(m.wait() == 0)
            // The unit's cgroup stays (it is the service manager's), emptied.
            #expect(FileManager.default.fileExists(atPath: unit))
            #expect(!FileManager.default.fileExists(atPath: unit + "/payload"))
            #expect(!FileManager.default.fileExists(atPath: unit + "/supervisor"))
            #expect(try String(contentsOfFile: unit + "/cgroup.procs", encoding: .utf8).isEmpty)
        }
        #expect(try f.summary("unit2").state == "stopped")
    }

    @Test func delegatedNeedsACgroupOfItsOwn() throws {
        let f = try MachineFixture()
        try stoppedMachine(f, "unit3")
        // The test process may sit in the root cgroup or not; run the monitor
        // from the root cgroup explicitly.
        let r = try capture(["/bin/sh", "-c", "echo $$ > \(try cgroup2Mount())/cgroup.procs && exec \"$0\" \"$@\"",
                             workerExecutable, "monitor", "--delegated", "unit3", "--root", f.root])
        #expect(r.status != 0)
        #expect(r.stderr == "ipactr: --delegated: the monitor runs in the root cgroup, not in a cgroup delegated to it\n")
        #expect(try f.summary("unit3").state == "stopped")
    }
}

/// A process's cgroup on the v2 hierarchy (the "0::" line; a hybrid host lists v1 ones too).
func v2Cgroup(of pid: pid_t) throws -> String? {
    try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8).split(separator: "\n")
        .first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) }
}
