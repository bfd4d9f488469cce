import Foundation
import IpactrOCI
import IpactrRuntime
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The mount forms podman sends that runc understands: `tmpcopyup` tmpfs
/// mounts (--read-only, --systemd=always) and, on a hybrid cgroup host, a
/// `cgroup` mount without a cgroup namespace (runc's v1 layout).
@Suite(.serialized) struct PodmanMountTests {
    @Test func tmpcopyupCopiesWhatTheTmpfsHides() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let data = f.rootfs + "/data"
        try FileManager.default.createDirectory(atPath: data + "/sub", withIntermediateDirectories: true)
        try "file\n".write(toFile: data + "/f", atomically: true, encoding: .utf8)
        chmod(data + "/f", 0o604)
        chown(data + "/f", 123, 456)
        try "nested\n".write(toFile: data + "/sub/g", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: data + "/l", withDestinationPath: "f")
        chmod(data, 0o1777)
        f.spec.mounts?.append(.init(destination: "/data", type: "tmpfs", source: "tmpfs", options: ["rw", "nosuid", "nodev", "tmpcopyup"]))
        let out = try f.run(["sh", "-c", "cat /data/f /data/sub/g /data/l; stat -c '%a %u %g' /data/f /data; grep ' /data ' /proc/mounts | cut -d' ' -f3; echo new > /data/new"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "file\nnested\nfile\n604 123 456\n1777 0 0\ntmpfs\n", "\(out.stderr)")
        // The copy lived in the tmpfs: the rootfs is unchanged.
        #expect(!FileManager.default.fileExists(atPath: data + "/new"))
        #expect(try String(contentsOfFile: data + "/f", encoding: .utf8) == "file\n")
    }

    @Test func tmpcopyupNeedsATmpfs() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.mounts?.append(.init(destination: "/data", type: "bind", source: f.rootfs + "/tmp", options: ["rbind", "tmpcopyup"]))
        let out = try f.run(["true"])
        #expect(out.status != 0)
        #expect(out.stderr.contains("tmpcopyup needs a tmpfs mount"))
        #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(f.ids[0])))
    }

    /// Without a cgroup namespace, a `cgroup` mount on a hybrid host is
    /// runc's layout: a tmpfs with the container's cgroup of each v1
    /// hierarchy, which the container is in; `delete` removes them. With a
    /// cgroup namespace (and on pure v2) it stays cgroup2.
    @Test func cgroupMountWithoutNamespaceOnHybridHost() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.linux?.namespaces?.removeAll { $0.type == "cgroup" }
        let (id, out) = try f.runDetached(["sh", "-c", "grep ' /sys/fs/cgroup' /proc/self/mountinfo > /tmp/mounts; cat /proc/self/cgroup > /tmp/cgroup; touch /tmp/done; exec sleep 1000"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(f.eventually { FileManager.default.fileExists(atPath: f.rootfs + "/tmp/done") })
        let mounts = try String(contentsOfFile: f.rootfs + "/tmp/mounts", encoding: .utf8).split(separator: "\n")
        func fstype(_ line: Substring) -> Substring? {
            let halves = line.components(separatedBy: " - ")
            return halves.count == 2 ? Substring(halves[1].split(separator: " ")[0]) : nil
        }
        let hierarchy = try CgroupHierarchy.find()
        let v1 = V1Hierarchy.all()
        if hierarchy.hybrid {
            #expect(mounts.contains { $0.split(separator: " ")[4] == "/sys/fs/cgroup" && fstype($0) == "tmpfs" })
            let memory = try #require(v1.first { $0.controllers.contains("memory") })
            let dir = memory.directory(of: "/ipactr-runtime/" + id)
            // Bound read-only (the spec's mount is ro), rooted at the container's cgroup.
            let line = try #require(mounts.first { $0.split(separator: " ")[4] == "/sys/fs/cgroup/memory" })
            #expect(line.split(separator: " ")[3] == "/ipactr-runtime/" + id)
            #expect(line.split(separator: " ")[5].split(separator: ",").contains("ro"))
            let pid = try #require(try f.state(id)?.pid)
            #expect(try String(contentsOfFile: dir + "/cgroup.procs", encoding: .utf8) == "\(pid)\n")
            let inside = try String(contentsOfFile: f.rootfs + "/tmp/cgroup", encoding: .utf8)
            #expect(inside.contains(":memory:/ipactr-runtime/" + id + "\n"))
            #expect(try f.runtime(["delete", "--force", id]).status == 0)
            for h in v1 { #expect(!FileManager.default.fileExists(atPath: h.directory(of: "/ipactr-runtime/" + id))) }
        } else {
            #expect(mounts.contains { $0.split(separator: " ")[4] == "/sys/fs/cgroup" && fstype($0) == "cgroup2" })
        }
    }
}

/// What conmon and containerd's shim do around a failed create.
@Suite struct FailedCreateCompatTests {
    /// `delete --force` of a container that does not exist succeeds (as
    /// with runc) and removes a directory a killed create left; without
    /// --force it is still an error.
    @Test func forceDeleteOfMissingContainer() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let missing = try f.runtime(["delete", "--force", "no-such"])
        #expect(missing.status == 0, "\(missing.stderr)")
        #expect(missing.stderr.isEmpty)
        #expect(try f.runtime(["delete", "no-such"]).status != 0)
        // What a create killed before it wrote state.json leaves.
        let stale = f.stateRoot + "/stale"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: stale + "/lock", contents: nil)
        #expect(try f.runtime(["delete", "--force", "stale"]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: stale))
    }
}
