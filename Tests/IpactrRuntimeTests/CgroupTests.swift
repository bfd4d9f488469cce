import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// runtime-spec's cgroup-ownership rule, checked file by file from the host.
@Suite(.serialized) struct CgroupOwnershipTests {
    /// Starts `sleep` in a user namespace (0 → 100000) and returns the
    /// ownership of every file in its cgroup.
    func owners(cgroupns: Bool, cgroupMountOptions: [String]) throws -> (dir: (uid: UInt32, gid: UInt32)?, files: [String: (uid: UInt32, gid: UInt32)], inside: Output) {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        IsolationTests.userns(&f.spec)
        if !cgroupns { f.spec.linux?.namespaces?.removeAll { $0.type == "cgroup" } }
        f.spec.mounts = f.spec.mounts?.map { m in
            var m = m
            if m.destination == "/sys/fs/cgroup" { m.options = cgroupMountOptions }
            return m
        }
        let (id, out) = try f.runDetached(["sh", "-c", "echo $$ > /sys/fs/cgroup/cgroup.procs && echo joined > /tmp/w; touch /tmp/done; exec sleep 1000"])
        guard out.status == 0 else { return (nil, [:], out) }
        _ = f.eventually { FileManager.default.fileExists(atPath: f.rootfs + "/tmp/done") }
        let cg = try f.cgroupDir(id)
        var files: [String: (UInt32, UInt32)] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: cg) {
            files[name] = owner(cg + "/" + name)
        }
        let w = (try? String(contentsOfFile: f.rootfs + "/tmp/w", encoding: .utf8)) ?? ""
        return (owner(cg), files, Output(status: 0, stdout: w, stderr: ""))
    }

    static var delegateFiles: Set<String> {
        let t = (try? String(contentsOfFile: "/sys/kernel/cgroup/delegate", encoding: .utf8)) ?? ""
        let names = t.split(whereSeparator: { $0 == "\n" || $0 == " " }).map(String.init)
        return Set(names.isEmpty ? ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] : names)
    }

    @Test func delegatedWithCgroupnsAndReadWriteMount() throws {
        let r = try owners(cgroupns: true, cgroupMountOptions: ["nosuid", "noexec", "nodev", "rw"])
        #expect(r.inside.status == 0, "\(r.inside.stderr)")
        #expect(r.dir?.uid == 100000 && r.dir?.gid == 100000)
        #expect(!r.files.isEmpty)
        for (name, o) in r.files {
            if Self.delegateFiles.contains(name) {
                #expect(o.uid == 100000 && o.gid == 100000, "\(name) should belong to the container's root")
            } else {
                #expect(o.uid == 0 && o.gid == 0, "\(name) must stay root's")
            }
        }
        // The payload can use its delegation: it wrote its own cgroup.procs.
        #expect(r.inside.stdout == "joined\n")
    }

    @Test func leftAloneWithReadOnlyMount() throws {
        let r = try owners(cgroupns: true, cgroupMountOptions: ["nosuid", "noexec", "nodev", "ro"])
        #expect(r.inside.status == 0, "\(r.inside.stderr)")
        #expect(r.dir?.uid == 0)
        for (name, o) in r.files { #expect(o.uid == 0 && o.gid == 0, "\(name)") }
    }

    @Test func leftAloneWithoutCgroupNamespace() throws {
        let r = try owners(cgroupns: false, cgroupMountOptions: ["nosuid", "noexec", "nodev", "rw"])
        #expect(r.inside.status == 0, "\(r.inside.stderr)")
        #expect(r.dir?.uid == 0)
        for (name, o) in r.files { #expect(o.uid == 0 && o.gid == 0, "\(name)") }
    }

    @Test func cgroupNamespaceIsRootedAtContainerCgroup() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let out = try f.run(["cat", "/proc/self/cgroup"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout.split(separator: "\n").contains("0::/"))
    }

    @Test func absoluteCgroupsPath() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let path = "/ipactr-test-\(UUID().uuidString.prefix(8))/inner"
        f.spec.linux?.cgroupsPath = path
        f.spec.process?.args = ["sleep", "1000"]
        try f.writeSpec()
        let id = f.newID()
        #expect(try f.runtime(["create", "--bundle", f.bundle, id]).status == 0)
        let dir = try RuntimeFixture.cgroup2Mount() + path
        defer { rmdir(String(dir.dropLast("/inner".count))) }
        let pid = try #require(try f.state(id)?.pid)
        #expect(try String(contentsOfFile: dir + "/cgroup.procs", encoding: .utf8) == "\(pid)\n")
        #expect(try f.runtime(["delete", "--force", id]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: dir))
    }

    /// v2 where the memory controller is on v2; on a hybrid host v1 owns
    /// it, and the limit goes to the v1 memory hierarchy (as runc does).
    @Test func memoryAndPidsLimitsApplied() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.linux?.resources = .init(memory: .init(limit: 64 << 20), pids: .init(limit: 42))
        f.spec.process?.args = ["sleep", "1000"]
        try f.writeSpec()
        let id = f.newID()
        let out = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(out.status == 0, "\(out.stderr)")
        let pid = try #require(try f.state(id)?.pid)
        let v2 = try RuntimeFixture.cgroup2Mount()
        let controllers = try String(contentsOfFile: v2 + "/cgroup.controllers", encoding: .utf8)
            .split(whereSeparator: { $0 == " " || $0 == "\n" })
        var memDir = try f.cgroupDir(id), memFile = "memory.max", pidsDir = memDir
        if !controllers.contains("memory") {
            memDir = "/sys/fs/cgroup/memory/ipactr-runtime/" + id
            memFile = "memory.limit_in_bytes"
        }
        if !controllers.contains("pids") { pidsDir = "/sys/fs/cgroup/pids/ipactr-runtime/" + id }
        #expect(try String(contentsOfFile: memDir + "/" + memFile, encoding: .utf8) == "\(64 << 20)\n")
        #expect(try String(contentsOfFile: memDir + "/cgroup.procs", encoding: .utf8) == "\(pid)\n")
        #expect(try String(contentsOfFile: pidsDir + "/pids.max", encoding: .utf8) == "42\n")
        #expect(try String(contentsOfFile: pidsDir + "/cgroup.procs", encoding: .utf8) == "\(pid)\n")
        #expect(try f.runtime(["delete", "--force", id]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: memDir))
        #expect(!FileManager.default.fileExists(atPath: pidsDir))
    }

    @Test func updateChangesPidsLimit() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let (id, started) = try f.runDetached(["sleep", "1000"])
        #expect(started.status == 0, "\(started.stderr)")
        let pid = try #require(try f.state(id)?.pid)
        let file = f.dir + "/res.json"
        try #"{"pids": {"limit": 17}}"#.write(toFile: file, atomically: true, encoding: .utf8)
        let out = try f.runtime(["update", "--resources", file, id])
        #expect(out.status == 0, "\(out.stderr)")
        let controllers = try String(contentsOfFile: RuntimeFixture.cgroup2Mount() + "/cgroup.controllers", encoding: .utf8)
        let dir = controllers.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("pids")
            ? try f.cgroupDir(id) : "/sys/fs/cgroup/pids/ipactr-runtime/" + id
        #expect(try String(contentsOfFile: dir + "/pids.max", encoding: .utf8) == "17\n")
        #expect(try String(contentsOfFile: dir + "/cgroup.procs", encoding: .utf8) == "\(pid)\n")
        #expect(try f.runtime(["delete", "--force", id]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: dir))
    }

    @Test func limitWithoutAnyControllerIsRefused() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        // io.weight has no v1 translation here and io is not on this v2 hierarchy
        // (on hosts where it is, the write succeeds).
        f.spec.linux?.resources = .init(unified: ["io.weight": "default 100"])
        f.spec.process?.args = ["sleep", "1000"]
        try f.writeSpec()
        let id = f.newID()
        let out = try f.runtime(["create", "--bundle", f.bundle, id])
        let controllers = try String(contentsOfFile: RuntimeFixture.cgroup2Mount() + "/cgroup.controllers", encoding: .utf8)
        if controllers.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("io") {
            #expect(out.status == 0, "\(out.stderr)")
        } else {
            #expect(out.status != 0)
            #expect(out.stderr.hasPrefix("ipactr-runtime: unified io.weight: the io controller is not available"))
            #expect(out.stderr.split(separator: "\n").count == 1)
            #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(id)))
            #expect(try FileManager.default.contentsOfDirectory(atPath: f.stateRoot).isEmpty)
        }
    }
}
