import Testing
@testable import IpactrMachine
import IpactrSystem
import IpactrOCI
import Foundation
import IpactrTestSupport

@Suite struct UIDRangeTests {
    @Test func allocatesAlignedInContainerRange() throws {
        let r = try UIDRangeAllocator(reserved: [], hostIDs: []).allocate(for: "a")
        #expect(r.base % 65536 == 0)
        #expect(r.base >= UIDRange.containerRangeStart)
        #expect(r.end <= UInt64(UIDRange.containerRangeEnd))
        #expect(r.count == 65536)
    }

    @Test func stableForTheSameName() throws {
        let a = UIDRangeAllocator(reserved: [], hostIDs: [])
        #expect(try a.allocate(for: "freeipa") == a.allocate(for: "freeipa"))
    }

    @Test func avoidsMachinesUsersAndSubuid() throws {
        let first = try UIDRangeAllocator(reserved: [], hostIDs: []).allocate(for: "m")
        // The same name with its first choice taken by a machine…
        let second = try UIDRangeAllocator(reserved: [first], hostIDs: []).allocate(for: "m")
        #expect(second != first)
        #expect(!second.overlaps(first))
        // …or by a host user inside it, or a subordinate range crossing it.
        let third = try UIDRangeAllocator(reserved: [], hostIDs: [first.base + 5]).allocate(for: "m")
        #expect(!third.contains(first.base + 5))
        let sub = UIDRange(base: first.base - 10, count: 20)
        let fourth = try UIDRangeAllocator(reserved: [sub], hostIDs: []).allocate(for: "m")
        #expect(!fourth.overlaps(sub))
    }

    @Test func explicitBaseIsChecked() {
        let a = UIDRangeAllocator(reserved: [UIDRange(base: 524288)], hostIDs: [655360 + 1000])
        #expect(throws: IpactrError.self) { try a.check(UIDRange(base: 524289)) }
        #expect(throws: IpactrError.self) { try a.check(UIDRange(base: 524288)) }
        #expect(throws: IpactrError.self) { try a.check(UIDRange(base: 655360)) }
        #expect(throws: Never.self) { try a.check(UIDRange(base: 720896)) }
    }

    @Test func readsHostFiles() throws {
        let dir = "/tmp/ipactr-uidtest-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "root:x:0:0::/root:/bin/sh\nbig:x:1048600:1048600::/:/bin/sh\n".write(toFile: "\(dir)/passwd", atomically: true, encoding: .utf8)
        try "root:x:0:\n".write(toFile: "\(dir)/group", atomically: true, encoding: .utf8)
        try "alice:100000:65536\n".write(toFile: "\(dir)/subuid", atomically: true, encoding: .utf8)
        try "".write(toFile: "\(dir)/subgid", atomically: true, encoding: .utf8)
        let a = UIDRangeAllocator.fromHost(machines: [], etc: dir)
        #expect(a.hostIDs.contains(1048600))
        #expect(a.reserved == [UIDRange(base: 100000, count: 65536)])
        #expect(throws: IpactrError.self) { try a.check(UIDRange(base: 1048576)) }
    }
}

@Suite struct StopSignalTests {
    @Test func imageStopSignalUnlessItIsSIGTERM() {
        var config = IpactrOCI.ImageConfig.ExecConfig()
        #expect(MachineMonitor.stopSignal(nil) == SIGRTMIN_VALUE + 4)
        config.StopSignal = "SIGRTMIN+3"
        #expect(MachineMonitor.stopSignal(config) == SIGRTMIN_VALUE + 3)
        config.StopSignal = "SIGTERM"
        #expect(MachineMonitor.stopSignal(config) == SIGRTMIN_VALUE + 4)
        config.StopSignal = "nonsense"
        #expect(MachineMonitor.stopSignal(config) == SIGRTMIN_VALUE + 4)
    }
}
