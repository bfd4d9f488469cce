import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Idmapped bind mounts from config.json (`idmap`, `ridmap`, per-mount
/// uidMappings/gidMappings) and joining another container's user and pid
/// namespaces by path.
@Suite(.serialized) struct IdmapJoinTests {
    /// The container's user namespace: 0…65535 → host 100000…165535.
    static func userns(_ spec: inout RuntimeSpec) {
        spec.linux?.namespaces?.append(.init(type: "user"))
        spec.linux?.uidMappings = [.init(containerID: 0, hostID: 100000, size: 65536)]
        spec.linux?.gidMappings = [.init(containerID: 0, hostID: 100000, size: 65536)]
    }

    /// A host directory (on the host's disk, under the fixture) with `a`
    /// owned by 1000:1000 and `b` by 0:0.
    static func hostDir(_ f: RuntimeFixture, _ name: String) throws -> String {
        let d = f.dir + "/" + name
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        for (file, id) in [("a", UInt32(1000)), ("b", UInt32(0))] {
            FileManager.default.createFile(atPath: d + "/" + file, contents: Data("x".utf8))
            #expect(chown(d + "/" + file, id, id) == 0)
        }
        return d
    }

    /// Mount points under the fixture's directory, as the host sees them.
    static func mountsUnder(_ dir: String) -> [String] {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map { String($0.split(separator: " ")[4]) }.filter { $0.hasPrefix(dir + "/") }
    }

    @Test func idmapShowsHostOwnersAndWritesThrough() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        Self.userns(&f.spec)
        // The rootfs belongs to host root: a mapped root cannot make mount points there.
        for d in ["plain", "r", "i"] { try FileManager.default.createDirectory(atPath: f.rootfs + "/" + d, withIntermediateDirectories: true) }
        let src = try Self.hostDir(f, "idmapped")
        let plain = try Self.hostDir(f, "plain")
        f.spec.mounts?.append(.init(destination: "/data", type: "bind", source: src, options: ["bind", "idmap"]))
        f.spec.mounts?.append(.init(destination: "/plain", type: "bind", source: plain, options: ["bind"]))
        let out = try f.run(["sh", "-c", "stat -c '%u:%g' /data/a /data/b /plain/a /plain/b; touch /data/new; mkdir /data/dir"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stderr == "")
        // Through the idmapped mount the host's owners appear unchanged; without
        // it they are unmapped in the container's namespace (overflow id).
        #expect(out.stdout == "1000:1000\n0:0\n65534:65534\n65534:65534\n")
        // The container's root (host 100000) writes as host root through the mount.
        #expect(owner(src + "/new").map { [$0.uid, $0.gid] } == [0, 0])
        #expect(owner(src + "/dir").map { [$0.uid, $0.gid] } == [0, 0])
    }

    @Test func ridmapMapsSubmountsIdmapDoesNot() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        Self.userns(&f.spec)
        for d in ["plain", "r", "i"] { try FileManager.default.createDirectory(atPath: f.rootfs + "/" + d, withIntermediateDirectories: true) }
        let top = try Self.hostDir(f, "top")
        let inner = try Self.hostDir(f, "inner")
        let sub = top + "/sub"
        try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
        #expect(mount(inner, sub, nil, UInt(MS_BIND), nil) == 0)
        defer { umount2(sub, Int32(MNT_DETACH)) }
        f.spec.mounts?.append(.init(destination: "/r", type: "bind", source: top, options: ["rbind", "ridmap"]))
        f.spec.mounts?.append(.init(destination: "/i", type: "bind", source: top, options: ["rbind", "idmap"]))
        let out = try f.run(["sh", "-c", "stat -c '%u:%g' /r/a /r/sub/a /i/a /i/sub/a"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "1000:1000\n1000:1000\n1000:1000\n65534:65534\n")
    }

    @Test func perMountMappingsDifferFromTheContainers() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        Self.userns(&f.spec)
        let src = try Self.hostDir(f, "permount")
        #expect(chown(src, 1000, 1000) == 0)
        // Files of host uid/gid 1000 appear as host 100000: the container's root.
        var m = RuntimeSpec.Mount(destination: "/data", type: "bind", source: src, options: ["bind"])
        m.uidMappings = [.init(containerID: 1000, hostID: 100000, size: 1)]
        m.gidMappings = [.init(containerID: 1000, hostID: 100000, size: 1)]
        f.spec.mounts?.append(m)
        let out = try f.run(["sh", "-c", "stat -c '%u:%g' /data/a /data/b /data; touch /data/new"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "0:0\n65534:65534\n0:0\n")
        #expect(owner(src + "/new").map { [$0.uid, $0.gid] } == [1000, 1000])
    }

    /// Refused at create with one line naming the mount; nothing left behind.
    @Test(arguments: ["overlapping mapping", "procfs source", "not a bind"])
    func refusedIdmapLeavesNothing(_ kind: String) throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        Self.userns(&f.spec)
        let src = try Self.hostDir(f, "refused")
        var m = RuntimeSpec.Mount(destination: "/data", type: "bind", source: src, options: ["bind", "idmap"])
        let expected: String
        switch kind {
        case "overlapping mapping":
            m.uidMappings = [.init(containerID: 0, hostID: 200000, size: 10), .init(containerID: 5, hostID: 300000, size: 10)]
            m.gidMappings = [.init(containerID: 0, hostID: 200000, size: 10)]
            expected = "mount /data: the kernel refused the id mapping"
        case "procfs source":
            m.source = "/proc/sys"
            expected = "does not support idmapped mounts"
        default:
            m = .init(destination: "/data", type: "tmpfs", source: "tmpfs", options: ["ridmap"])
            expected = "need a bind mount"
        }
        f.spec.mounts?.append(m)
        f.spec.process?.args = ["true"]
        try f.writeSpec()
        let id = f.newID()
        let out = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(out.status != 0)
        let lines = out.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(out.stderr)")
        #expect(out.stderr.contains("mount /data"), "\(out.stderr)")
        #expect(out.stderr.contains(expected), "\(out.stderr)")
        #expect(try f.state(id) == nil)
        #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(id)))
        #expect(!FileManager.default.fileExists(atPath: f.stateRoot + "/" + id))
        #expect(Self.mountsUnder(f.dir).isEmpty)
    }

    @Test func joinsAnotherContainersUserAndPidNamespaces() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        Self.userns(&f.spec)
        f.spec.process?.args = ["sleep", "1001"]
        try f.writeSpec()
        let first = f.newID()
        var out = try f.runtime(["create", "--bundle", f.bundle, first])
        #expect(out.status == 0, "\(out.stderr)")
        out = try f.runtime(["start", first])
        #expect(out.status == 0, "\(out.stderr)")
        let pid = try #require(try f.state(first)?.pid)

        // The second: joins the first's user and pid namespaces, new others.
        f.spec.linux?.uidMappings = nil
        f.spec.linux?.gidMappings = nil
        let joined = (f.spec.linux?.namespaces ?? []).map { ns in
            ns.type == "user" || ns.type == "pid" ? RuntimeSpec.Namespace(type: ns.type, path: "/proc/\(pid)/ns/\(ns.type)") : ns
        }
        f.spec.linux?.namespaces = joined
        f.spec.process?.args = ["sleep", "1002"]
        try f.writeSpec()
        let second = f.newID()
        out = try f.runtime(["create", "--bundle", f.bundle, second])
        #expect(out.status == 0, "\(out.stderr)")
        out = try f.runtime(["start", second])
        #expect(out.status == 0, "\(out.stderr)")

        let hostUser = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/user")
        let hostPid = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/pid")
        out = try f.runtime(["exec", second, "sh", "-c", "busybox readlink /proc/self/ns/user; busybox readlink /proc/self/ns/pid; id -u; ps -o args"])
        #expect(out.status == 0, "\(out.stderr)")
        let lines = out.stdout.split(separator: "\n").map(String.init)
        #expect(Array(lines.prefix(3)) == [hostUser, hostPid, "0"])
        #expect(lines.contains("sleep 1001"), "\(out.stdout)")
        out = try f.runtime(["exec", first, "ps", "-o", "args"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout.split(separator: "\n").contains("sleep 1002"), "\(out.stdout)")
        // The second's init is not its pid namespace's init, and runs as the first's mapped root.
        let secondPid = try #require(try f.state(second)?.pid)
        let status = try String(contentsOfFile: "/proc/\(secondPid)/status", encoding: .utf8)
        let nspid = status.split(separator: "\n").first { $0.hasPrefix("NSpid:") }.map { $0.split(separator: "\t").map(String.init) }
        #expect(nspid?.count == 3 && nspid?.last != "1", "\(String(describing: nspid))")
        #expect(status.contains("Uid:\t100000\t100000\t100000\t100000"))

        // A user the joined namespace does not map: refused at create, nothing left.
        f.spec.process?.user = .init(uid: 70000, gid: 0)
        try f.writeSpec()
        let third = f.newID()
        out = try f.runtime(["create", "--bundle", f.bundle, third])
        #expect(out.status != 0)
        #expect(out.stderr.split(separator: "\n").count == 1, "\(out.stderr)")
        #expect(out.stderr.contains("is not mapped in the user namespace /proc/\(pid)/ns/user"), "\(out.stderr)")
        #expect(try f.state(third) == nil)
        #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(third)))
    }
}
