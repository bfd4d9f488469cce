import Foundation
import IpactrOCI
import IpactrRuntime
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The mount forms podman sends that runc understands: `tmpcopyup` tmpfs
/// mounts (--read-only, --systemd=always).
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
}
