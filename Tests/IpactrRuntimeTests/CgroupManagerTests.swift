import Foundation
import IpactrOCI
import IpactrSystem
import IpactrSystemdCgroup
import IpactrTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `--cgroup-manager=disabled` (crun's): no cgroup made or joined, the
/// container stays in the caller's cgroup, limits refused, ps/kill/delete work.
@Suite(.serialized) struct DisabledCgroupManagerTests {
    /// `ipactr-runtime --cgroup-manager=disabled --root <private> args…`.
    @discardableResult
    func disabled(_ f: RuntimeFixture, _ args: [String]) throws -> Output {
        try RuntimeFixture.exec([RuntimeFixture.binary, "--cgroup-manager=disabled", "--root", f.stateRoot] + args)
    }

    /// Every directory of every cgroup hierarchy (v2 and v1) whose path contains `needle`.
    func cgroupDirs(containing needle: String) throws -> [String] {
        let text = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        var mounts: [String] = []
        for line in text.split(separator: "\n") where line.contains(" - cgroup2 ") || line.contains(" - cgroup ") {
            mounts.append(String(line.split(separator: " ")[4]))
        }
        #expect(!mounts.isEmpty)
        var found: [String] = []
        for m in mounts {
            guard let e = FileManager.default.enumerator(atPath: m) else { continue }
            while let rel = e.nextObject() as? String {
                if (e.fileAttributes?[.type] as? FileAttributeType) == .typeDirectory, rel.contains(needle) { found.append(m + "/" + rel) }
            }
        }
        return found
    }

    /// /proc/PID/cgroup, every hierarchy's line.
    func cgroupLines(_ pid: String) throws -> [String] {
        try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8).split(separator: "\n").map(String.init).sorted()
    }

    @Test func staysInCallersCgroupAndMakesNone() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let tag = "ipactr-disabled-" + UUID().uuidString.prefix(8).lowercased()
        f.spec.linux?.cgroupsPath = "/" + tag
        // A payload with a child, so ps and kill --all have two processes.
        f.spec.process?.args = ["sh", "-c", "sleep 1000 & touch /tmp/ready; wait"]
        try f.writeSpec()
        let id = f.newID()
        let out = try disabled(f, ["run", "--detach", "--bundle", f.bundle, id])
        #expect(out.status == 0, "\(out.stderr)")
        guard out.status == 0, let pid = try f.state(id)?.pid else { return }
        #expect(f.eventually { FileManager.default.fileExists(atPath: f.rootfs + "/tmp/ready") })

        // The init is in ours (v2 line and every v1 line): `exec` keeps the
        // caller's cgroups, so the test process's own are the caller's.
        let caller = try cgroupLines("self")
        #expect(try cgroupLines(String(pid)) == caller)
        #expect(try cgroupDirs(containing: tag).isEmpty)
        #expect(try cgroupDirs(containing: id).isEmpty)
        let state = try String(contentsOfFile: f.stateRoot + "/" + id + "/state.json", encoding: .utf8)
        #expect(state.contains("\"cgroupManager\":\"disabled\""))

        // ps: found by the pid namespace (init and its sleep), without the
        // --cgroup-manager flag (the state says which manager).
        let ps = try f.runtime(["ps", "--format", "json", id])
        #expect(ps.status == 0, "\(ps.stderr)")
        let pids = (try? JSONDecoder().decode([Int32].self, from: Data(ps.stdout.utf8))) ?? []
        #expect(pids.count == 2 && pids.contains(pid), "\(ps.stdout)")

        // exec joins the namespaces and stays in the caller's cgroup too.
        let ex = try f.runtime(["exec", id, "cat", "/proc/self/cgroup"])
        #expect(ex.status == 0, "\(ex.stderr)")
        #expect(ex.stdout.split(separator: "\n").contains("0::/"), "\(ex.stdout)")

        // pause, resume and update need a cgroup: one line each, non-zero.
        for args in [["pause", id], ["resume", id]] {
            let r = try f.runtime(args)
            #expect(r.status != 0)
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("no cgroup"), "\(r.stderr)")
        }
        try Data(#"{"pids":{"limit":10}}"#.utf8).write(to: URL(fileURLWithPath: f.dir + "/res.json"))
        let up = try f.runtime(["update", "--resources", f.dir + "/res.json", id])
        #expect(up.status != 0)
        #expect(up.stderr.split(separator: "\n").count == 1 && up.stderr.contains("no cgroup"), "\(up.stderr)")
        #expect(try f.state(id)?.status == "running")

        // kill --all reaches both processes.
        let k = try f.runtime(["kill", "--all", id, "KILL"])
        #expect(k.status == 0, "\(k.stderr)")
        #expect(f.eventually { pids.allSatisfy { processGone($0) } })
        let d = try f.runtime(["delete", id])
        #expect(d.status == 0, "\(d.stderr)")
        #expect(!FileManager.default.fileExists(atPath: f.stateRoot + "/" + id))
        #expect(try cgroupDirs(containing: tag).isEmpty)
    }

    @Test func withoutPidNamespacePsIsTheInit() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.linux?.namespaces?.removeAll { $0.type == "pid" }
        f.spec.process?.args = ["sleep", "1000"]
        try f.writeSpec()
        let id = f.newID()
        let out = try disabled(f, ["create", "--bundle", f.bundle, id])
        #expect(out.status == 0, "\(out.stderr)")
        guard out.status == 0, let pid = try f.state(id)?.pid else { return }
        let ps = try f.runtime(["ps", "--format", "json", id])
        #expect(ps.stdout.filter { !$0.isWhitespace } == "[\(pid)]", "\(ps.stdout) \(ps.stderr)")
        // delete --force of a running container leaves nothing.
        #expect(try disabled(f, ["start", id]).status == 0)
        let d = try f.runtime(["delete", "--force", id])
        #expect(d.status == 0, "\(d.stderr)")
        #expect(processGone(pid))
        #expect(!FileManager.default.fileExists(atPath: f.stateRoot + "/" + id))
        #expect(try cgroupDirs(containing: id).isEmpty)
    }

    @Test func cgroupMountShowsTheNamespaceView() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        // New cgroup namespace (the default spec's), rooted where the init
        // was born: the caller's cgroup. The mount shows that, as "/".
        f.spec.process?.args = ["sh", "-c", "cat /proc/self/cgroup; test -e /sys/fs/cgroup/cgroup.procs && echo mounted"]
        try f.writeSpec()
        let r = try RuntimeFixture.exec([RuntimeFixture.binary, "--cgroup-manager", "disabled", "--root", f.stateRoot, "run", "--bundle", f.bundle, f.newID()])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.split(separator: "\n").contains("0::/"), "\(r.stdout)")
        #expect(r.stdout.contains("mounted"), "\(r.stdout)")
    }

    @Test func memoryLimitRefusedLeavingNothing() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let tag = "ipactr-disabled-" + UUID().uuidString.prefix(8).lowercased()
        f.spec.linux?.cgroupsPath = "/" + tag
        f.spec.linux?.resources = RuntimeSpec.Resources(memory: .init(limit: 64 << 20))
        f.spec.process?.args = ["true"]
        try f.writeSpec()
        let id = f.newID()
        let out = try disabled(f, ["create", "--bundle", f.bundle, id])
        #expect(out.status != 0)
        #expect(out.stderr.split(separator: "\n").count == 1, "\(out.stderr)")
        #expect(out.stderr.contains("memory.limit") && out.stderr.contains("disabled"), "\(out.stderr)")
        #expect(!FileManager.default.fileExists(atPath: f.stateRoot + "/" + id))
        #expect(try cgroupDirs(containing: tag).isEmpty)
        #expect(try cgroupDirs(containing: id).isEmpty)
        // Device rules alone need no cgroup here (not enforced on v2): accepted.
        f.spec.linux?.resources = try JSONDecoder().decode(RuntimeSpec.Resources.self, from: Data(#"{"devices":[{"allow":false,"access":"rwm"}]}"#.utf8))
        try f.writeSpec()
        let ok = try disabled(f, ["run", "--bundle", f.bundle, f.newID()])
        #expect(ok.status == 0, "\(ok.stderr)")
    }

    @Test func unknownManagerIsOneLine() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let r = try RuntimeFixture.exec([RuntimeFixture.binary, "--cgroup-manager=cgroupv3", "--root", f.stateRoot, "list"])
        #expect(r.status != 0)
        #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("cgroupfs, systemd or disabled"), "\(r.stderr)")
    }
}

/// `--systemd-cgroup` (`--cgroup-manager=systemd`) on a host without systemd
/// (this CI host: PID 1 is not systemd, no system bus), and its names.
/// Inside a real systemd: SystemdCgroupInMachineTests (IpactrMachineTests).
@Suite(.serialized) struct SystemdCgroupManagerTests {
    static let refusal = "ipactr-runtime: --systemd-cgroup needs systemd (org.freedesktop.systemd1 on the system bus)"

    func expectRefusedLeavingNothing(_ flag: String, environment: [String: String]) throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let tag = "ipactr-sd-" + UUID().uuidString.prefix(8).lowercased()
        f.spec.linux?.cgroupsPath = "system.slice:ipactr-test:\(tag)"
        f.spec.process?.args = ["true"]
        try f.writeSpec()
        for verb in ["run", "create"] {
            let id = f.newID()
            let r = try RuntimeFixture.exec([RuntimeFixture.binary, flag, "--root", f.stateRoot, verb, "--bundle", f.bundle, id],
                                            environment: environment)
            #expect(r.status != 0)
            #expect(r.stderr == Self.refusal + "\n", "\(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: f.stateRoot + "/" + id))
            #expect(try DisabledCgroupManagerTests().cgroupDirs(containing: tag).isEmpty)
            #expect(try DisabledCgroupManagerTests().cgroupDirs(containing: id).isEmpty)
        }
    }

    /// No system bus at all (as on this CI host, whatever host runs the test).
    var environmentWithoutBus: [String: String] {
        var e = ProcessInfo.processInfo.environment
        e["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/ipactr-test/system_bus_socket"
        return e
    }

    @Test func refusedWithoutSystemBus() throws {
        try expectRefusedLeavingNothing("--systemd-cgroup", environment: environmentWithoutBus)
        try expectRefusedLeavingNothing("--cgroup-manager=systemd", environment: environmentWithoutBus)
    }

    @Test func refusedOnABusWithoutSystemd() throws {
        // A system bus is there, but nobody owns org.freedesktop.systemd1 on it.
        let bus = try SystemBus()
        defer { bus.stop() }
        var e = ProcessInfo.processInfo.environment
        e["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
        try expectRefusedLeavingNothing("--systemd-cgroup", environment: e)
    }

    @Test func malformedCgroupsPathIsOneLine() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        for path in ["/not/systemd/style", "system.slice:only-two", "system.slice:p:", "bad--x.slice:p:n", "system.slice:p:sub.slice"] {
            f.spec.linux?.cgroupsPath = path
            try f.writeSpec()
            let id = f.newID()
            let r = try RuntimeFixture.exec([RuntimeFixture.binary, "--systemd-cgroup", "--root", f.stateRoot, "create", "--bundle", f.bundle, id])
            #expect(r.status != 0)
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("cgroupsPath \(path)"), "\(path): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: f.stateRoot + "/" + id))
        }
    }

    @Test func namesFollowRunc() throws {
        let m = SystemdCgroupManager()
        #expect(try SystemdCgroupManager.expand(slice: "system.slice") == "/system.slice")
        #expect(try SystemdCgroupManager.expand(slice: "a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice")
        #expect(try SystemdCgroupManager.expand(slice: "-.slice") == "")
        #expect(throws: IpactrError.self) { try SystemdCgroupManager.expand(slice: "a--b.slice") }
        #expect(throws: IpactrError.self) { try SystemdCgroupManager.expand(slice: "system") }
        let d = try m.unit(cgroupsPath: nil, id: "c1")
        #expect(d.slice == "system.slice" && d.unit == "ipactr-runtime-c1.scope")
        let k = try m.unit(cgroupsPath: ":cri-containerd:abc", id: "x")
        #expect(k.slice == "system.slice" && k.unit == "cri-containerd-abc.scope")
        let p = try m.unit(cgroupsPath: "machine.slice::libpod-1.scope", id: "x")
        #expect(p.slice == "machine.slice" && p.unit == "libpod-1.scope")
    }
}

extension SystemdCgroupManagerTests {
    @Test func featuresClaimSystemdCgroups() throws {
        let out = try RuntimeFixture.exec([RuntimeFixture.binary, "features"])
        #expect(out.status == 0, "\(out.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any]
        let cgroup = (json?["linux"] as? [String: Any])?["cgroup"] as? [String: Any]
        #expect(cgroup?["systemd"] as? Bool == true)
        #expect(cgroup?["systemdUser"] as? Bool == false)
        #expect(cgroup?["v2"] as? Bool == true)
    }
}
