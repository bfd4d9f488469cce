import Foundation
import IpactrTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A private podman (Debian's 4.3) driving the built `ipactr-runtime` for
/// one test: --root, --runroot, --tmpdir (conmon's exit files), config files
/// and a cgroup parent of its own, no network. `cleanup()` (from `defer`)
/// removes every container (conmon and the runtime with them), resets the
/// store, unmounts what is left under the directory, and removes the cgroup
/// parent from every hierarchy.
final class Podman {
    let dir: String
    let runtime: String
    /// `--cgroup-parent` of every container: podman puts conmon in
    /// `<parent>/conmon`, the runtime the container in `<parent>/libpod-<id>`.
    let cgroupParent: String
    private let environment: [String: String]

    init(runtime: String = RuntimeFixture.binary) throws {
        self.runtime = runtime
        var template = Array("/tmp/ipactr-podman-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw FixtureError("mkdtemp failed") }
        dir = String(cString: template)
        // A user-namespaced container's root (a mapped uid) must reach its rootfs under here.
        chmod(dir, 0o755)
        // For a user-namespaced container podman starts conmon, and so the
        // `podman container cleanup` that conmon runs when the container
        // exits, in a mount namespace of its own. It counts on shared
        // propagation (systemd makes / shared) to carry that cleanup's
        // unmount of userdata/shm back to the host. This host's / is
        // private: without a shared mount here, the host's shm mount stays,
        // and a `podman rm` racing that cleanup fails with EBUSY.
        guard mount(dir, dir, nil, UInt(MS_BIND), nil) == 0, mount(nil, dir, nil, UInt(MS_SHARED), nil) == 0 else {
            let reason = String(cString: strerror(errno))
            umount2(dir, Int32(MNT_DETACH))
            rmdir(dir)
            throw FixtureError("making \(dir) a shared mount: \(reason)")
        }
        cgroupParent = "/" + URL(fileURLWithPath: dir).lastPathComponent
        environment = [
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": dir,
            "CONTAINERS_CONF": dir + "/containers.conf",
            "CONTAINERS_STORAGE_CONF": dir + "/storage.conf",
            "CONTAINERS_REGISTRIES_CONF": dir + "/registries.conf",
        ]
        do {
            // podman's default rlimits (nofile 1048576, nproc 4194304) are
            // above this machine's hard limits (nofile 20000, and podman
            // hands conmon nproc 32768; root lacks CAP_SYS_RESOURCE), so
            // any runtime, runc included, fails to apply them: ask for
            // values within them. nproc counts every process of the uid on
            // the host, so it stays well above 1024.
            try """
                [containers]
                default_ulimits = ["nofile=1024:20000", "nproc=16384:16384"]
                [engine]
                cgroup_manager = "cgroupfs"
                events_logger = "file"
                """.write(toFile: dir + "/containers.conf", atomically: true, encoding: .utf8)
            try """
                [storage]
                driver = "overlay"
                graphroot = "\(dir)/root"
                runroot = "\(dir)/runroot"
                """.write(toFile: dir + "/storage.conf", atomically: true, encoding: .utf8)
            // No registries and no short-name aliases: nothing is ever pulled.
            try "unqualified-search-registries = []\n".write(toFile: dir + "/registries.conf", atomically: true, encoding: .utf8)
        } catch {
            cleanup()
            throw error
        }
    }

    /// `podman <globals> args…`.
    @discardableResult
    func callAsFunction(_ args: [String]) throws -> Finished {
        let globals = ["/usr/bin/podman", "--root", dir + "/root", "--runroot", dir + "/runroot", "--tmpdir", dir + "/tmp",
                       "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                       "--runtime", runtime, "--network-config-dir", dir + "/net", "--volumepath", dir + "/volumes"]
        return try capture(globals + args, environment: environment)
    }

    /// `podman run` (or `create`) with this fixture's cgroup parent, no
    /// network and no pulls, then `args`.
    @discardableResult
    func run(_ args: [String], verb: String = "run") throws -> Finished {
        try self([verb, "--pull", "never", "--network", "none", "--cgroup-parent", cgroupParent] + args)
    }

    /// Loads an oci-archive and names its image `localhost/NAME`.
    func load(_ archive: String, as name: String) throws {
        let out = try self(["load", "-q", "-i", archive])
        guard out.status == 0, let loaded = out.stdout.split(separator: "\n").last?.split(separator: " ").last else {
            throw FixtureError("podman load \(archive): \(out.stderr)")
        }
        let ref = String(loaded)
        let tag = try self(["tag", ref, "localhost/\(name):latest"])
        guard tag.status == 0 else { throw FixtureError("podman tag \(ref): \(tag.stderr)") }
        // untag IMAGE alone would remove every name.
        if ref != "localhost/\(name):latest" { _ = try self(["untag", ref, ref]) }
    }

    static func archive(_ layout: String, _ name: String) -> String {
        URL(fileURLWithPath: layout).deletingLastPathComponent().appendingPathComponent("\(name).oci.tar").path
    }

    func inspect(_ name: String, _ format: String) throws -> String {
        try self(["inspect", name, "--format", format]).line
    }

    /// Every cgroup mount of the host (v1 hierarchies and the v2 one).
    static func cgroupMounts() -> [String] {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard let dash = f.firstIndex(of: "-"), dash + 1 < f.count,
                  f[dash + 1] == "cgroup" || f[dash + 1] == "cgroup2" else { return nil }
            return String(f[4])
        }
    }

    /// Mounts under the fixture's directory, deepest first.
    func mounts() -> [String] {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line -> String? in
            let target = String(line.split(separator: " ")[4])
            return target.hasPrefix(dir + "/") || target == dir ? target : nil
        }.sorted { $0.count > $1.count }
    }

    /// conmon and container processes whose command line names this fixture.
    func processes() -> [pid_t] {
        let own = getpid()
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid_t($0) }.filter { pid in
            guard pid != own, let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return String(decoding: data, as: UTF8.self).contains(dir)
        }
    }

    /// What the containers left: container cgroups (libpod-*) under the
    /// parent in any hierarchy, mounts under the directory, conmon or
    /// container processes. Called after `podman rm -af`.
    func leftovers() -> [String] {
        var found: [String] = []
        for m in Self.cgroupMounts() {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: m + cgroupParent)) ?? []
            found += names.filter { $0.hasPrefix("libpod-") }.map { "cgroup \(m)\(cgroupParent)/\($0)" }
        }
        found += mounts().filter { $0 != dir && !$0.hasSuffix("/overlay") }.map { "mount \($0)" }
        found += processes().map { "process \($0): \(processCommand($0))" }
        return found
    }

    func cleanup() {
        _ = try? self(["rm", "--all", "--force", "--time", "0"])
        _ = try? self(["system", "reset", "--force"])
        // conmon is not our child: kill it and wait until it is gone, or its cgroup stays busy.
        for p in processes() { kill(p, SIGKILL) }
        eventually(30) { processes().isEmpty }
        for m in mounts() { umount2(m, Int32(MNT_DETACH)) }
        for m in Self.cgroupMounts() { Self.removeCgroupTree(m + cgroupParent) }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// rmdir of a cgroup directory, children first (cgroupfs files cannot be removed, only directories).
    static func removeCgroupTree(_ path: String) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { return }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] {
            var sub: ObjCBool = false
            if FileManager.default.fileExists(atPath: path + "/" + name, isDirectory: &sub), sub.boolValue {
                removeCgroupTree(path + "/" + name)
            }
        }
        rmdir(path)
    }
}

func processCommand(_ pid: pid_t) -> String {
    let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()
    return String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\0", with: " ")
}

/// The cgroup directory on the host that holds `controller` for `pid`: its
/// v1 hierarchy when one owns the controller (a hybrid host), else (and for
/// nil) the v2 one.
func hostCgroupDirectory(of pid: pid_t, controller: String?) throws -> (dir: String, v1: Bool) {
    let text = try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)
    var v2Path: String?
    for line in text.split(separator: "\n") {
        let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard f.count == 3 else { continue }
        if f[1].isEmpty { v2Path = String(f[2]); continue }
        guard let controller, f[1].split(separator: ",").contains(Substring(controller)) else { continue }
        for m in Podman.cgroupMounts() where URL(fileURLWithPath: m).lastPathComponent.split(separator: ",").contains(Substring(controller)) {
            return (m + f[2], true)
        }
    }
    guard let p = v2Path else { throw FixtureError("no cgroup of \(pid) holds \(controller)") }
    return (try RuntimeFixture.cgroup2Mount() + p, false)
}

/// `podman --runtime <built ipactr-runtime>` (issue 3): the same cases as the
/// containerd tests, plus a systemd container with --systemd=always. Each
/// test has its own podman store and checks that nothing is left behind.
@Suite(.serialized) struct PodmanTests {
    /// A fixture with the busybox image as localhost/busybox.
    func withBusybox(_ body: (Podman) throws -> Void) throws {
        let p = try Podman()
        defer { p.cleanup() }
        try p.load(Podman.archive(TestImages.busybox, "busybox"), as: "busybox")
        try body(p)
        let rm = try p(["rm", "--all", "--force", "--time", "0"])
        #expect(rm.status == 0, "podman rm: \(rm.stderr)")
        // conmon runs podman's cleanup after the container is gone, so it may outlive `rm` a little.
        #expect(eventually(60) { p.leftovers().isEmpty }, "\(p.leftovers())")
    }

    @Test func output() throws {
        try withBusybox { p in
            let out = try p.run(["--rm", "localhost/busybox", "sh", "-c", "echo hello; echo to-stderr >&2"])
            #expect(out.status == 0, "\(out.stderr)")
            #expect(out.stdout == "hello\n")
            #expect(out.stderr.contains("to-stderr"))
        }
    }

    @Test func exitCodes() throws {
        try withBusybox { p in
            #expect(try p.run(["--rm", "localhost/busybox", "sh", "-c", "exit 3"]).status == 3)
            #expect(try p.run(["--rm", "localhost/busybox", "true"]).status == 0)
            // A detached one: the exit code reaches podman through conmon.
            let id = try p.run(["-d", "localhost/busybox", "sh", "-c", "exit 42"])
            #expect(id.status == 0, "\(id.stderr)")
            #expect(try p(["wait", id.line]).line == "42")
        }
    }

    @Test func killIs137() throws {
        try withBusybox { p in
            let run = try p.run(["-d", "--name", "k", "localhost/busybox", "sleep", "1000"])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(try p(["kill", "k"]).status == 0)
            #expect(try p(["wait", "k"]).line == "137")
            #expect(try p.inspect("k", "{{.State.ExitCode}}") == "137")
        }
    }

    @Test func termTrapIs143() throws {
        try withBusybox { p in
            // The shell is PID 1: without the trap it would ignore SIGTERM.
            let run = try p.run(["-d", "--name", "t", "localhost/busybox", "sh", "-c",
                                 "trap 'exit 143' TERM; touch /tmp/ready; while :; do sleep 0.1; done"])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(eventually(60) { (try? p(["exec", "t", "test", "-e", "/tmp/ready"]).status) == 0 })
            #expect(try p(["kill", "--signal", "TERM", "t"]).status == 0)
            #expect(try p(["wait", "t"]).line == "143")
        }
    }

    @Test func execExitCode() throws {
        try withBusybox { p in
            let run = try p.run(["-d", "--name", "e", "localhost/busybox", "sleep", "1000"])
            #expect(run.status == 0, "\(run.stderr)")
            let out = try p(["exec", "e", "sh", "-c", "echo inside $$; exit 7"])
            #expect(out.status == 7)
            #expect(out.stdout.hasPrefix("inside "))
            // In the container's pid namespace: its init is PID 1, sleep.
            #expect(try p(["exec", "e", "cat", "/proc/1/cmdline"]).stdout.hasPrefix("sleep"))
            #expect(try p(["exec", "e", "true"]).status == 0)
        }
    }

    @Test func pauseAndResume() throws {
        try withBusybox { p in
            let run = try p.run(["-d", "--name", "pz", "localhost/busybox", "sleep", "1000"])
            #expect(run.status == 0, "\(run.stderr)")
            let pid = pid_t(try p.inspect("pz", "{{.State.Pid}}")) ?? 0
            let cg = try hostCgroupDirectory(of: pid, controller: nil)
            #expect(try p(["pause", "pz"]).status == 0)
            #expect(try p.inspect("pz", "{{.State.Status}}") == "paused")
            // Frozen from the host's point of view too.
            #expect(try String(contentsOfFile: cg.dir + "/cgroup.freeze", encoding: .utf8) == "1\n")
            #expect(try String(contentsOfFile: cg.dir + "/cgroup.events", encoding: .utf8).contains("frozen 1"))
            #expect(try p(["unpause", "pz"]).status == 0)
            #expect(try p.inspect("pz", "{{.State.Status}}") == "running")
            #expect(try String(contentsOfFile: cg.dir + "/cgroup.freeze", encoding: .utf8) == "0\n")
            #expect(try p(["exec", "pz", "true"]).status == 0)
        }
    }

    @Test func uidAndGidMaps() throws {
        try withBusybox { p in
            let run = try p.run(["-d", "--name", "u", "--uidmap", "0:200000:65536", "--gidmap", "0:300000:65536",
                                 "localhost/busybox", "sleep", "1000"])
            #expect(run.status == 0, "\(run.stderr)")
            let inside = try p(["exec", "u", "cat", "/proc/self/uid_map", "/proc/self/gid_map"])
            let rows = inside.stdout.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
            #expect(rows == ["0 200000 65536", "0 300000 65536"])
            // From the host: the container's root is the mapped ids.
            let pid = try p.inspect("u", "{{.State.Pid}}")
            let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
            #expect(status.contains("Uid:\t200000\t200000\t200000\t200000"))
            #expect(status.contains("Gid:\t300000\t300000\t300000\t300000"))
        }
    }

    @Test func memoryLimitSeenFromHost() throws {
        try withBusybox { p in
            let run = try p.run(["-d", "--name", "m", "--memory", "64m", "localhost/busybox", "sleep", "1000"])
            #expect(run.status == 0, "\(run.stderr)")
            let pid = pid_t(try p.inspect("m", "{{.State.Pid}}")) ?? 0
            let cg = try hostCgroupDirectory(of: pid, controller: "memory")
            #expect(cg.dir.hasSuffix(p.cgroupParent + "/libpod-" + (try p.inspect("m", "{{.Id}}"))))
            let mib64 = String(64 << 20)
            if cg.v1 {
                // Hybrid host: v1 owns memory. podman asks for swap = 2 × memory (memory+swap in v1).
                #expect(try String(contentsOfFile: cg.dir + "/memory.limit_in_bytes", encoding: .utf8) == mib64 + "\n")
                #expect(try String(contentsOfFile: cg.dir + "/memory.memsw.limit_in_bytes", encoding: .utf8) == String(128 << 20) + "\n")
            } else {
                #expect(try String(contentsOfFile: cg.dir + "/memory.max", encoding: .utf8) == mib64 + "\n")
            }
        }
    }

    @Test func readOnlyRoot() throws {
        try withBusybox { p in
            let out = try p.run(["--rm", "--read-only", "localhost/busybox", "sh", "-c",
                                 "touch /x 2>/dev/null && echo root-writable; touch /tmp/ok && echo tmp-writable"])
            #expect(out.status == 0, "\(out.stderr)")
            // podman puts tmpfs (with tmpcopyup) on /tmp, /var/tmp and /run.
            #expect(out.stdout == "tmp-writable\n")
        }
    }

    @Test func readOnlyBindMount() throws {
        try withBusybox { p in
            let src = p.dir + "/src"
            try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
            try "from-host\n".write(toFile: src + "/f", atomically: true, encoding: .utf8)
            let out = try p.run(["--rm", "-v", "\(src):/mnt:ro", "localhost/busybox", "sh", "-c",
                                 "cat /mnt/f; touch /mnt/new 2>/dev/null && echo writable; grep ' /mnt ' /proc/mounts"])
            #expect(out.status == 0, "\(out.stderr)")
            let lines = out.stdout.split(separator: "\n")
            #expect(lines.first == "from-host")
            #expect(!out.stdout.contains("writable\n"))
            #expect(lines.last.map { $0.split(separator: " ")[3].split(separator: ",").contains("ro") } == true)
            #expect(!FileManager.default.fileExists(atPath: src + "/new"))
        }
    }

    /// podman --systemd=always with the Debian image whose init is systemd:
    /// it boots, is running, and `podman stop` (the image's StopSignal,
    /// SIGRTMIN+3) shuts it down cleanly: exit status 0, no SIGKILL (137).
    @Test func systemdContainer() throws {
        let p = try Podman()
        defer { p.cleanup() }
        try p.load(Podman.archive(TestImages.debian, "debian"), as: "debian")
        let run = try p.run(["-d", "--name", "sd", "--systemd=always", "--stop-timeout", "60", "localhost/debian", "/sbin/init"])
        #expect(run.status == 0, "\(run.stderr)")
        guard run.status == 0 else { return }
        #expect(try p(["exec", "sd", "cat", "/proc/1/comm"]).line == "systemd")
        let state = try p(["exec", "sd", "systemctl", "is-system-running", "--wait"])
        let failed = try p(["exec", "sd", "systemctl", "--failed", "--no-legend"]).stdout
        #expect(state.line == "running", "\(state.stderr) failed units: \(failed)")
        let stop = try p(["stop", "sd"])
        #expect(stop.status == 0, "\(stop.stderr)")
        #expect(try p.inspect("sd", "{{.State.Status}}") == "exited")
        // 137 would mean podman gave up waiting and sent SIGKILL.
        #expect(try p.inspect("sd", "{{.State.ExitCode}}") == "0")
        let rm = try p(["rm", "--all", "--force", "--time", "0"])
        #expect(rm.status == 0, "\(rm.stderr)")
        // conmon runs podman's cleanup after the container is gone, so it may outlive `rm` a little.
        #expect(eventually(60) { p.leftovers().isEmpty }, "\(p.leftovers())")
    }
}
