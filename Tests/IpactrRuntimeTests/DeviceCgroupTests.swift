import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// linux.resources.devices on cgroup v2 (an eBPF device program on the
/// container's cgroup): a rootful container that may mknod still cannot
/// open a host device its rules do not allow, while the devices every
/// container needs (null, zero, …) keep working.
@Suite(.serialized) struct DeviceCgroupTests {
    /// A block device every host has that opening cannot harm: loop0 (7:0;
    /// the host's own disk may not be opened even by root on a CI runner).
    func hostBlockDevice() throws -> (Int64, Int64) {
        var st = stat()
        guard stat("/sys/dev/block/7:0", &st) == 0 || stat("/dev/loop0", &st) == 0 else {
            throw FixtureError("no loop device (7:0) on this host: the loop driver is needed")
        }
        return (7, 0)
    }

    /// A container with CAP_MKNOD (no user namespace) and the given device rules.
    func fixture(_ rules: [RuntimeSpec.DeviceRule]) throws -> RuntimeFixture {
        let f = try RuntimeFixture()
        let caps = ["CAP_MKNOD", "CAP_DAC_OVERRIDE", "CAP_KILL"]
        f.spec.process?.capabilities = .init(bounding: caps, effective: caps, inheritable: [], permitted: caps, ambient: [])
        if f.spec.linux?.resources == nil { f.spec.linux?.resources = RuntimeSpec.Resources() }
        f.spec.linux?.resources?.devices = rules
        return f
    }

    func script(major: Int64, minor: Int64) -> [String] {
        ["/bin/sh", "-c", """
            /bin/busybox mknod /tmp/disk b \(major) \(minor) && echo made
            (exec 3</tmp/disk) 2>/dev/null && echo disk-opened || echo disk-denied
            /bin/busybox mknod /tmp/kmsg c 1 11
            echo ipactr-device-test > /tmp/kmsg 2>/dev/null && echo kmsg-written || echo kmsg-denied
            echo x > /dev/null && head -c 1 /dev/zero >/dev/null && echo null-zero-ok
            """]
    }

    @Test func denyAllLeavesTheUsualDevicesAndRefusesTheRest() throws {
        let (major, minor) = try hostBlockDevice()
        let f = try fixture([RuntimeSpec.DeviceRule(allow: false, type: nil, major: nil, minor: nil, access: "rwm")])
        defer { f.cleanup() }
        let out = try f.run(script(major: major, minor: minor))
        #expect(out.status == 0, "\(out.stderr)")
        // mknod is allowed (runc's defaults), opening the host's disk is not.
        #expect(out.stdout == "made\ndisk-denied\nkmsg-denied\nnull-zero-ok\n", "\(out.stdout) \(out.stderr)")
    }

    /// Rules are read as v1 read them: the last one that matches decides,
    /// access by access.
    @Test func anAllowRuleOpensJustWhatItSays() throws {
        let (major, minor) = try hostBlockDevice()
        let f = try fixture([
            RuntimeSpec.DeviceRule(allow: false, type: nil, major: nil, minor: nil, access: "rwm"),
            RuntimeSpec.DeviceRule(allow: true, type: "b", major: major, minor: minor, access: "r"),
            RuntimeSpec.DeviceRule(allow: true, type: "c", major: 1, minor: 11, access: "r"),
        ])
        defer { f.cleanup() }
        let out = try f.run(script(major: major, minor: minor))
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "made\ndisk-opened\nkmsg-denied\nnull-zero-ok\n", "\(out.stdout) \(out.stderr)")
    }

    /// Without a deny rule there is nothing to enforce (as a v1 cgroup
    /// without rules): the block device opens, /dev/kmsg takes a line.
    @Test func withoutADenyRuleNothingIsFiltered() throws {
        let (major, minor) = try hostBlockDevice()
        let f = try fixture([])
        defer { f.cleanup() }
        let out = try f.run(script(major: major, minor: minor))
        #expect(out.stdout == "made\ndisk-opened\nkmsg-written\nnull-zero-ok\n", "\(out.stdout) \(out.stderr)")
    }

    @Test func aMalformedRuleIsRefusedAndLeavesNothing() throws {
        let f = try fixture([RuntimeSpec.DeviceRule(allow: false, type: "x", major: nil, minor: nil, access: "rwm")])
        defer { f.cleanup() }
        let out = try f.run(["/bin/true"])
        #expect(out.status != 0)
        #expect(out.stderr == "ipactr-runtime: linux.resources.devices: type \"x\" is not a, b or c\n")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: f.stateRoot)) ?? []).isEmpty)
    }
}
