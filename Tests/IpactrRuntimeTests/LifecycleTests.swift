import Foundation
import IpactrOCI
import Testing
@testable import IpactrRuntime
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// Drives the built `ipactr-runtime` the way containerd's shim does.
@Suite(.serialized) struct LifecycleTests {
    @Test func runPassesOutputAndExitCode() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let out = try f.run(["sh", "-c", "echo hello from $(hostname); echo oops >&2; exit 7"])
        #expect(out.status == 7)
        #expect(out.stdout == "hello from ipactr\n")
        #expect(out.stderr == "oops\n")
        // run deletes what it made once the payload exits.
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.stateRoot).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(f.ids[0])))
    }

    @Test func createStartKillDelete() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.args = ["sh", "-c", "echo started > /tmp/marker; exec sleep 1000"]
        try f.writeSpec()
        let id = f.newID()
        let pidFile = f.dir + "/pid"
        let created = try f.runtime(["create", "--bundle", f.bundle, "--pid-file", pidFile, id])
        #expect(created.status == 0, "\(created.stderr)")
        let st = try #require(try f.state(id))
        #expect(st.status == "created")
        let pid = try #require(st.pid)
        #expect(pid > 0)
        #expect(try String(contentsOfFile: pidFile, encoding: .utf8) == "\(pid)")
        // process.args has not run yet: no side effect before start.
        #expect(!FileManager.default.fileExists(atPath: f.rootfs + "/tmp/marker"))
        // The init already sits in its own cgroup.
        let cg = try f.cgroupDir(id)
        #expect(try String(contentsOfFile: cg + "/cgroup.procs", encoding: .utf8).contains("\(pid)"))

        #expect(try f.runtime(["start", id]).status == 0)
        #expect(f.eventually { FileManager.default.fileExists(atPath: f.rootfs + "/tmp/marker") })
        #expect(try f.state(id)?.status == "running")
        // A second start is refused.
        let again = try f.runtime(["start", id])
        #expect(again.status != 0)
        #expect(again.stderr.hasPrefix("ipactr-runtime: cannot start container"))

        let ps = try f.runtime(["ps", "--format", "json", id])
        #expect(try JSONDecoder().decode([Int32].self, from: Data(ps.stdout.utf8)) == [pid])

        // Running containers are not deleted without --force.
        #expect(try f.runtime(["delete", id]).status != 0)
        #expect(try f.runtime(["kill", id, "KILL"]).status == 0)
        #expect(try f.eventually { try f.state(id)?.status == "stopped" })
        #expect(try f.runtime(["delete", id]).status == 0)
        #expect(try f.state(id) == nil)
        #expect(!FileManager.default.fileExists(atPath: f.stateRoot + "/" + id))
        #expect(!FileManager.default.fileExists(atPath: cg))
        #expect(processGone(pid))
    }

    @Test func deleteForceKillsRunningContainer() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let (id, started) = try f.runDetached(["sleep", "1000"])
        #expect(started.status == 0, "\(started.stderr)")
        let pid = try #require(try f.state(id)?.pid)
        #expect(try f.state(id)?.status == "running")
        #expect(try f.runtime(["delete", "--force", id]).status == 0)
        #expect(processGone(pid))
        #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(id)))
    }

    @Test func killBySignalNameReachesInit() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        // PID 1 gets only signals it handles: trap TERM and exit 143 like a shell.
        let (id, started) = try f.runDetached(["sh", "-c", "trap 'echo got > /tmp/term; exit 143' TERM; while true; do sleep 0.05; done"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(try f.runtime(["kill", id, "SIGTERM"]).status == 0)
        #expect(try f.eventually { try f.state(id)?.status == "stopped" })
        #expect(try String(contentsOfFile: f.rootfs + "/tmp/term", encoding: .utf8) == "got\n")
    }

    @Test func pauseAndResume() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let (id, started) = try f.runDetached(["sleep", "1000"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(try f.runtime(["pause", id]).status == 0)
        #expect(try f.state(id)?.status == "paused")
        let cg = try f.cgroupDir(id)
        #expect(try String(contentsOfFile: cg + "/cgroup.events", encoding: .utf8).contains("frozen 1"))
        #expect(try f.runtime(["resume", id]).status == 0)
        #expect(try f.state(id)?.status == "running")
        #expect(try String(contentsOfFile: cg + "/cgroup.events", encoding: .utf8).contains("frozen 0"))
    }

    @Test func listShowsContainers() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.args = ["sleep", "1000"]
        try f.writeSpec()
        let a = f.newID()
        #expect(try f.runtime(["create", "--bundle", f.bundle, a]).status == 0)
        let out = try f.runtime(["list", "--format", "json"])
        let list = try JSONDecoder().decode([RuntimeState].self, from: Data(out.stdout.utf8))
        #expect(list.map(\.id) == [a])
        #expect(list.first?.status == "created")
    }
}

/// Errors reach --log in the format go-runc parses (the last JSON line's msg).
@Suite struct LogTests {
    @Test func errorGoesToJSONLog() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let log = f.dir + "/log.json"
        let out = try RuntimeFixture.exec([RuntimeFixture.binary, "--root", f.stateRoot, "--log", log, "--log-format", "json", "state", "missing"])
        #expect(out.status != 0)
        #expect(out.stderr == "ipactr-runtime: container missing does not exist\n")
        let line = try #require(try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").last)
        let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String]
        #expect(obj?["level"] == "error")
        #expect(obj?["msg"] == "container missing does not exist")
    }
}

@Suite struct SignalTests {
    @Test func parsesNamesAndNumbers() throws {
        #expect(try parseSignal("9") == SIGKILL)
        #expect(try parseSignal("KILL") == SIGKILL)
        #expect(try parseSignal("SIGTERM") == SIGTERM)
        #expect(try parseSignal("RTMIN+3") == __libc_current_sigrtmin() + 3)
        #expect(try parseSignal("SIGRTMIN+4") == __libc_current_sigrtmin() + 4)
        #expect(throws: (any Error).self) { try parseSignal("NOPE") }
        #expect(throws: (any Error).self) { try parseSignal("0") }
    }
}

/// `exec`: a second process in the running container's namespaces and cgroup.
@Suite(.serialized) struct ExecTests {
    @Test func execJoinsContainerAndPassesExitCode() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        IsolationTests.userns(&f.spec)
        f.spec.hostname = "inside"
        let (id, started) = try f.runDetached(["sleep", "1000"])
        #expect(started.status == 0, "\(started.stderr)")
        let out = try f.runtime(["exec", "--env", "X=42", "--cwd", "/tmp", id, "sh", "-c",
                                 "hostname; echo $X; pwd; cat /proc/self/uid_map | tr -s ' '; grep '^0::' /proc/self/cgroup; ps -o pid,args | grep -c '^ *1 sleep 1000$'; exit 5"])
        #expect(out.status == 5, "\(out.stderr)")
        #expect(out.stdout == "inside\n42\n/tmp\n 0 100000 65536\n0::/\n1\n")
    }

    @Test func execDetachedWritesPidFile() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let (id, started) = try f.runDetached(["sleep", "1000"])
        #expect(started.status == 0, "\(started.stderr)")
        let pidFile = f.dir + "/exec.pid"
        let out = try f.runtime(["exec", "--detach", "--pid-file", pidFile, id, "sleep", "999"])
        #expect(out.status == 0, "\(out.stderr)")
        let pid = try #require(Int32(try String(contentsOfFile: pidFile, encoding: .utf8)))
        let ps = try f.runtime(["ps", "--format", "json", id])
        #expect(try JSONDecoder().decode([Int32].self, from: Data(ps.stdout.utf8)).contains(pid))
    }

    @Test func execInStoppedContainerIsRefused() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let (id, started) = try f.runDetached(["true"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(try f.eventually { try f.state(id)?.status == "stopped" })
        let out = try f.runtime(["exec", id, "true"])
        #expect(out.status != 0)
        #expect(out.stderr == "ipactr-runtime: cannot exec in container \(id): it is stopped\n")
    }
}

/// create → start → delete many times: the init must never be lost between
/// `create` exiting and `start` (a parent-death signal once killed it there).
@Suite struct RepeatedLifecycleTests {
    @Test func manyCycles() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.args = ["true"]
        try f.writeSpec()
        let id = f.newID()
        for i in 0..<25 {
            let c = try f.runtime(["create", "--bundle", f.bundle, id])
            #expect(c.status == 0, "cycle \(i): \(c.stderr)")
            let s = try f.runtime(["start", id])
            #expect(s.status == 0, "cycle \(i): \(s.stderr)")
            let d = try f.runtime(["delete", "--force", id])
            #expect(d.status == 0, "cycle \(i): \(d.stderr)")
            if c.status != 0 || s.status != 0 || d.status != 0 { break }
        }
    }
}
