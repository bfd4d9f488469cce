import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Bad input: one clear error line, a non-zero exit, nothing left behind.
@Suite(.serialized) struct MalformedConfigTests {
    func expectRefused(_ f: RuntimeFixture, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let id = f.newID()
        let out = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(out.status != 0, sourceLocation: sourceLocation)
        #expect(out.stderr.hasPrefix("ipactr-runtime: "), "\(out.stderr)", sourceLocation: sourceLocation)
        #expect(out.stderr.contains(message), "\(out.stderr)", sourceLocation: sourceLocation)
        #expect(out.stderr.split(separator: "\n").count == 1, sourceLocation: sourceLocation)
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: f.stateRoot)) ?? []
        #expect(leftovers.isEmpty, "state left: \(leftovers)", sourceLocation: sourceLocation)
        #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(id)), sourceLocation: sourceLocation)
        // No process of ours runs in the rootfs.
        #expect(!processesUsing(f.rootfs), sourceLocation: sourceLocation)
    }

    @Test func badJSON() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        try "{\"ociVersion\": \"1.2.0\", \"process\": ".write(toFile: f.bundle + "/config.json", atomically: true, encoding: .utf8)
        try expectRefused(f, "config.json: not valid JSON")
    }

    @Test func unknownNamespace() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.linux?.namespaces?.append(.init(type: "bogus"))
        try f.writeSpec()
        try expectRefused(f, "unknown namespace type \"bogus\"")
    }

    @Test func mountTargetEscapingThroughSymlink() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let host = f.dir + "/outside"
        try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
        // ../../.. from rootfs/escape climbs out of the rootfs on the host.
        try FileManager.default.createSymbolicLink(atPath: f.rootfs + "/escape", withDestinationPath: "../../outside")
        f.spec.mounts?.append(.init(destination: "/escape/m", type: "tmpfs", source: "tmpfs"))
        try f.writeSpec()
        try expectRefused(f, "mount destination /escape/m: a symlink leads outside the rootfs")
        #expect(!FileManager.default.fileExists(atPath: host + "/m"))
    }

    @Test func impossibleMapping() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        IsolationTests.userns(&f.spec)
        // Two container ranges overlapping: the kernel refuses the map.
        f.spec.linux?.uidMappings = [.init(containerID: 0, hostID: 100000, size: 65536), .init(containerID: 1000, hostID: 300000, size: 10)]
        try f.writeSpec()
        try expectRefused(f, "linux.uidMappings 0:100000:65536,1000:300000:10: the kernel refused the mapping")
    }

    @Test func unmappedUser() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        IsolationTests.userns(&f.spec)
        f.spec.process?.user = .init(uid: 70000, gid: 0)
        try f.writeSpec()
        try expectRefused(f, "process.user.uid 70000 is not mapped")
    }

    @Test func missingExecutable() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.args = ["no-such-binary"]
        try f.writeSpec()
        try expectRefused(f, "exec no-such-binary: executable file not found in $PATH")
    }

    @Test func failingMountReportsStage() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.mounts?.append(.init(destination: "/data", type: "nosuchfs", source: "x"))
        try f.writeSpec()
        try expectRefused(f, "mount nosuchfs on /data: No such device")
    }

    @Test func duplicateIDIsRefusedAndKeepsTheFirst() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.args = ["sleep", "1000"]
        try f.writeSpec()
        let id = f.newID()
        #expect(try f.runtime(["create", "--bundle", f.bundle, id]).status == 0)
        let again = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(again.status != 0)
        #expect(again.stderr == "ipactr-runtime: container \(id) already exists\n")
        #expect(try f.state(id)?.status == "created")
    }
}

/// True when a live process has its root or cwd inside `dir`.
func processesUsing(_ dir: String) -> Bool {
    for e in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int32(e) != nil {
        if processGone(Int32(e)!) { continue }
        for link in ["root", "cwd"] {
            if let t = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(e)/\(link)"), t.hasPrefix(dir) { return true }
        }
    }
    return false
}
