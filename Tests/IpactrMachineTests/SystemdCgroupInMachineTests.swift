import Foundation
import IpactrOCI
import IpactrSystem
import IpactrTestSupport
import Testing

/// `ipactr-runtime --systemd-cgroup` under a real systemd: the Debian test
/// image booted with ipactr (PID 1 systemd, its own system bus), the built
/// ipactr-runtime and a busybox bundle bound in, the Swift runtime libraries
/// bound at the path the debug build's RUNPATH names. The container's cgroup
/// is a transient scope made by that systemd (issue 3).
@Suite(.serialized) struct SystemdCgroupInMachineTests {
    /// A busybox bundle that needs nothing the machine's user namespace
    /// forbids (no device nodes: /dev stays the rootfs's directory).
    static func makeBundle(at dir: String) throws {
        let rootfs = dir + "/rootfs"
        let fm = FileManager.default
        for d in ["bin", "proc", "dev", "tmp", "sys"] { try fm.createDirectory(atPath: rootfs + "/" + d, withIntermediateDirectories: true) }
        try fm.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
        for applet in ["sh", "sleep", "cat", "true"] { try fm.createSymbolicLink(atPath: rootfs + "/bin/" + applet, withDestinationPath: "busybox") }
        let out = try capture([builtExecutable("ipactr-runtime"), "spec", "--bundle", dir])
        guard out.status == 0 else { throw IpactrError(.io, "spec: \(out.stderr)") }
        var spec = try JSONDecoder().decode(RuntimeSpec.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json")))
        spec.process?.terminal = false
        spec.process?.args = ["sleep", "1000"]
        spec.root?.readonly = true
        // The machine holds no CAP_AUDIT_* (ContainerInterface): ask for none.
        spec.process?.capabilities = nil
        spec.mounts = spec.mounts?.filter { $0.destination == "/proc" }
        try JSONEncoder().encode(spec).write(to: URL(fileURLWithPath: dir + "/config.json"))
    }

    /// config.json with `cgroupsPath` (and optional resources) in a copy of the bundle's config.
    static func config(_ dir: String, cgroupsPath: String, resources: String?) throws -> String {
        var spec = try JSONDecoder().decode(RuntimeSpec.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json")))
        spec.linux?.cgroupsPath = cgroupsPath
        if let r = resources { spec.linux?.resources = try JSONDecoder().decode(RuntimeSpec.Resources.self, from: Data(r.utf8)) }
        return String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
    }

    @Test func transientScopeUnderSystemd() throws {
        let f = try MachineFixture()
        let bundle = f.root + "-sdcg-bundle"
        try Self.makeBundle(at: bundle)
        defer { try? removeTree(bundle) }
        let binDir = URL(fileURLWithPath: builtExecutable("ipactr-runtime")).deletingLastPathComponent().path
        let boot = try f.ipactr(["boot", "debian", "--name", "sdcg", "--timeout", "180", "--nesting",
                                 "--volume", "\(binDir):/mnt/bin:ro", "--volume", "/opt/swift:/opt/swift:ro",
                                 "--volume", "\(bundle):/mnt/bundle:ro"])
        try #require(boot.status == 0, "\(boot.stderr)")
        let leader = try f.leader("sdcg")
        defer {
            _ = try? f.ipactr(["terminate", "sdcg"])
            try? f.expectNothingLeft("sdcg", leader: leader)
        }
        _ = try f.systemState("sdcg")
        func inside(_ command: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> Finished {
            let r = try f.inside("sdcg", command)
            #expect(r.status == 0, "\(command): \(r.stdout) \(r.stderr)", sourceLocation: sourceLocation)
            return r
        }
        let rt = "/mnt/bin/ipactr-runtime --systemd-cgroup --root /run/sdcg-test"
        // Bundles per container (the machine's /run is writable; /mnt/bundle is not).
        func bundleFor(_ name: String, resources: String? = nil) throws -> String {
            let json = try Self.config(bundle, cgroupsPath: "system.slice:ipactr-test:\(name)", resources: resources)
            let b = "/run/sdcg-bundles/\(name)"
            _ = try inside("mkdir -p \(b) && ln -sfn /mnt/bundle/rootfs \(b)/rootfs && cat > \(b)/config.json <<'EOF'\n\(json)\nEOF")
            return b
        }

        // What the machine's systemd can limit here: the controllers its
        // system.slice offers (on this hybrid host v2 has hugetlb at most).
        let offered = Set(try inside("cat /sys/fs/cgroup/system.slice/cgroup.controllers").line.split(separator: " ").map(String.init))

        print("SystemdCgroupInMachineTests: system.slice offers [\(offered.sorted().joined(separator: " "))]")
        // run --detach: the scope is active, with the init in its cgroup.procs and Delegate=yes.
        let resources: String?
        if offered.contains("pids") {
            resources = #"{"pids":{"limit":42}}"#
        } else if offered.contains("hugetlb") {
            resources = #"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}"#
        } else {
            resources = nil
        }
        let b1 = try bundleFor("c1", resources: resources)
        let run = try inside("\(rt) run --detach --bundle \(b1) c1")
        try #require(run.status == 0)
        let unit = "ipactr-test-c1.scope"
        let scope = "/sys/fs/cgroup/system.slice/\(unit)"
        #expect(try inside("systemctl is-active \(unit)").line == "active")
        #expect(try inside("systemctl show -p Delegate --value \(unit)").line == "yes")
        #expect(try inside("systemctl show -p ControlGroup --value \(unit)").line == "/system.slice/\(unit)")
        let pid = try inside("\(rt) state c1 | sed -n 's/.*\"pid\" *: *\\([0-9]*\\).*/\\1/p'").line
        #expect(!pid.isEmpty && pid != "0")
        #expect(try inside("cat \(scope)/cgroup.procs").stdout.split(separator: "\n").map(String.init).contains(pid))
        #expect(try inside("\(rt) ps --format json c1").stdout.contains(pid))
        // The limit, enforced where this host can: TasksMax through systemd, or hugetlb through the cgroup files.
        if offered.contains("pids") {
            #expect(try inside("systemctl show -p TasksMax --value \(unit)").line == "42")
            #expect(try inside("cat \(scope)/pids.max").line == "42")
        } else if offered.contains("hugetlb") {
            #expect(try inside("cat \(scope)/hugetlb.2MB.max").line == "4194304")
        }
        // pause/resume freeze the scope's cgroup; exec joins it.
        _ = try inside("\(rt) pause c1")
        #expect(try inside("\(rt) state c1").stdout.contains("\"paused\""))
        #expect(try inside("cat \(scope)/cgroup.freeze").line == "1")
        _ = try inside("\(rt) resume c1")
        #expect(try inside("\(rt) state c1").stdout.contains("\"running\""))
        let ex = try inside("\(rt) exec c1 cat /proc/self/cgroup")
        #expect(ex.stdout.split(separator: "\n").contains("0::/"), "\(ex.stdout) \(ex.stderr)")
        // Every later verb uses the state's manager, flag or not.
        _ = try inside("/mnt/bin/ipactr-runtime --root /run/sdcg-test delete --force c1")
        #expect(try f.inside("sdcg", "systemctl is-active \(unit)").line != "active")
        #expect(try inside("test ! -e \(scope) && echo gone").line == "gone")
        #expect(try f.inside("sdcg", "systemctl list-units --all --no-legend \(unit)").line.isEmpty)
        #expect(try inside("kill -0 \(pid) 2>/dev/null || echo dead").line == "dead")

        // A limit nothing here can enforce (no pids controller for systemd nor
        // for the cgroup files): refused in one line after the scope started,
        // and the scope is stopped again, nothing left.
        if !offered.contains("pids") {
            let b4 = try bundleFor("c4", resources: #"{"pids":{"limit":42}}"#)
            let r = try f.inside("sdcg", "\(rt) run --detach --bundle \(b4) c4")
            #expect(r.status != 0)
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("pids limit"), "\(r.stderr)")
            #expect(try f.inside("sdcg", "systemctl list-units --all --no-legend ipactr-test-c4.scope").line.isEmpty)
            #expect(try inside("test ! -e /sys/fs/cgroup/system.slice/ipactr-test-c4.scope && echo gone").line == "gone")
            #expect(try inside("ls /run/sdcg-test").stdout.isEmpty)
        }

        // create / start / delete, the default slice of an empty one.
        let b2 = try bundleFor("c2")
        _ = try inside("sed -i 's/system.slice:ipactr-test:c2/:ipactr-test:c2/' \(b2)/config.json")
        _ = try inside("\(rt) create --bundle \(b2) c2")
        #expect(try inside("systemctl is-active ipactr-test-c2.scope").line == "active")
        _ = try inside("\(rt) start c2")
        #expect(try inside("\(rt) state c2").stdout.contains("\"running\""))
        _ = try inside("\(rt) delete --force c2")
        #expect(try inside("test ! -e /sys/fs/cgroup/system.slice/ipactr-test-c2.scope && echo gone").line == "gone")

        // A taken unit name: one line, and the other unit stays.
        _ = try inside("systemd-run --unit ipactr-test-c3 --scope --quiet sleep 1000 >/dev/null 2>&1 & sleep 1; systemctl is-active ipactr-test-c3.scope")
        let b3 = try bundleFor("c3")
        let taken = try f.inside("sdcg", "\(rt) run --detach --bundle \(b3) c3")
        #expect(taken.status != 0)
        #expect(taken.stderr.split(separator: "\n").count == 1 && taken.stderr.contains("ipactr-test-c3.scope already exists"), "\(taken.stderr)")
        #expect(try inside("systemctl is-active ipactr-test-c3.scope").line == "active")
        #expect(try inside("ls /run/sdcg-test").stdout.isEmpty)
    }
}
