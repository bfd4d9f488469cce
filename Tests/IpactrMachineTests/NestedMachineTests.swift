import Foundation
import Testing
import IpactrMachine
import IpactrSystem
import IpactrTestSupport

/// ipactr on a real systemd host, end to end (issue 5): an outer machine
/// (the Debian test image, which has systemd-container) gets ipactr
/// installed the way a user installs it (scripts/install.sh copies the
/// static build, the units and the bus policy, and starts ipactrd.service);
/// inside it a nested machine is booted (as ipactr@inner.service: ipactrd
/// runs machines as units where systemd has the unit) and enabled. After a reboot of the
/// outer machine, ipactr@inner.service started the nested machine at boot,
/// machined has it registered (`machinectl list`), and ipactr inside lists
/// it running.
///
/// The outer machine is booted with --nesting (unmasked proc and sysfs for
/// the nested runtime, see ContainerInterface). The nested machine has the identity range: the outer owns only its 65536
/// ids, so a fresh range cannot be mapped in there (DESIGN.md §3). The
/// outer's /var/lib/ipactr is a volume: overlayfs (the outer's root) cannot
/// be the upper layer of the nested machine's overlay.
@Suite(.serialized) struct NestedMachineTests {
    @Test func nestedMachineStartsAtBootUnderItsUnitAndIsRegisteredWithMachined() throws {
        let staticBin = try #require(ProcessInfo.processInfo.environment["IPACTR_TEST_STATIC_BIN"],
                                     "scripts/test.sh builds the static binaries (swift build -c release --static-swift-stdlib) and sets IPACTR_TEST_STATIC_BIN")
        let f = try MachineFixture()
        let lib = f.root + "-outer-lib"
        try FileManager.default.createDirectory(atPath: lib, withIntermediateDirectories: true)
        defer { try? removeTree(lib) }
        let images = URL(fileURLWithPath: debianOCI).deletingLastPathComponent().path
        let boot = try f.ipactr(["boot", "debian", "--name", "outer", "--timeout", "180", "--nesting",
                                 "--volume", "\(lib):/var/lib/ipactr", "--volume", "\(staticBin):/mnt/bin:ro",
                                 "--volume", "\(repositoryRoot):/mnt/src:ro", "--volume", "\(images):/mnt/image:ro"])
        try #require(boot.status == 0, "\(boot.stderr)")
        let leader = try f.leader("outer")
        defer { _ = try? f.ipactr(["terminate", "outer"]) }

        /// What the nested machine's unit logged (for a failure's message).
        func innerJournal() -> String {
            "journal of ipactr@inner.service:\n" + ((try? f.inside("outer", "journalctl -b -u ipactr@inner.service --no-pager -n 60").stdout) ?? "")
        }
        func inside(_ command: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> Finished {
            let r = try f.inside("outer", command)
            #expect(r.status == 0, "\(command): \(r.stderr)", sourceLocation: sourceLocation)
            return r
        }
        // As a user installs it: binaries, units, bus policy; ipactrd.service enabled and started.
        let install = try inside("/mnt/src/scripts/install.sh /mnt/bin")
        #expect(install.stdout.contains("install: ipactrd is running"), "\(install.stdout) \(install.stderr)")
        #expect(try inside("systemctl is-enabled ipactrd.service").line == "enabled")

        _ = try inside("ipactr import /mnt/image/oci debian")
        let nested = try inside("ipactr boot debian --name inner --uid-range identity --timeout 120")
        #expect(nested.stdout.contains("inner is running"), "\(nested.stdout)\n\(innerJournal())")
        // On a systemd host ipactrd runs machines as units, registered with machined
        // (by the monitor, beside PID 1's start: READY=1 does not wait for machined).
        #expect(try inside("systemctl is-active ipactr@inner.service").line == "active")
        #expect(eventually(60) { (try? f.inside("outer", "machinectl list --no-legend --no-pager").stdout.contains("inner")) == true },
                "inner is not registered with machined")
        // A fresh range cannot be mapped in a machine that owns only its 65536 ids: the
        // unit fails, the boot says so in one line, and nothing of the machine is left.
        let fresh = try f.inside("outer", "ipactr boot debian --name fresh --uid-range 1048576 --timeout 60")
        #expect(fresh.status != 0)
        #expect(fresh.stderr.split(separator: "\n").last?.hasPrefix("ipactr: cannot boot machine fresh: ipactr@fresh.service is failed") == true,
                "\(fresh.stderr)")
        #expect(try inside("ipactr list").stdout.contains("fresh") == false)
        #expect(try f.inside("outer", "systemctl is-failed ipactr@fresh.service").line != "failed")
        _ = try inside("ipactr enable inner")
        #expect(try inside("systemctl is-enabled ipactr@inner.service").line == "enabled")
        #expect(try inside("systemctl is-enabled machines.target").line == "enabled")
        _ = try inside("ipactr poweroff inner")

        // The outer machine reboots; its systemd starts the nested machine at boot.
        // (`reboot` returns once systemd has the request: ready again means a new PID 1.)
        let oldLeader = try f.leader("outer")
        #expect(try f.ipactr(["reboot", "outer"]).status == 0)
        #expect(eventually(180) {
            guard let s = try? f.summary("outer") else { return false }
            return s.ready && s.state == "running" && s.leader != nil && s.leader != oldLeader
        }, "outer did not come back with a new PID 1")
        #expect(try f.systemState("outer") == "running",
                "\((try? f.inside("outer", "systemctl list-units --failed --no-legend --no-pager; systemctl list-jobs --no-pager").stdout) ?? "")\n\(innerJournal())")
        #expect(eventually(180) { (try? f.inside("outer", "systemctl is-active ipactr@inner.service").line) == "active" },
                "ipactr@inner.service did not become active")
        #expect(eventually(60) { (try? f.inside("outer", "machinectl list --no-legend --no-pager").stdout.contains("inner")) == true },
                "inner is not registered with machined after the reboot")
        let unit = try inside("machinectl show inner --property=Unit --value")
        #expect(unit.line == "ipactr@inner.service")
        let list = try inside("ipactr list")
        #expect(list.stdout.split(separator: "\n").contains { $0.hasPrefix("inner ") && $0.contains(" running ") }, "\(list.stdout)")
        // machined's leader is the nested PID 1 ipactr knows, and it is systemd.
        let machinedLeader = try inside("machinectl show inner --property=Leader --value").line
        let ipactrLeader = try inside("ipactr status --json inner | sed -n 's/.*\"leader\" : \\([0-9]*\\).*/\\1/p'").line
        #expect(!machinedLeader.isEmpty && machinedLeader == ipactrLeader)
        #expect(try inside("ipactr exec inner systemctl is-system-running --wait").line == "running")
        // Its console is kept for `ipactr logs` under the unit too.
        #expect(try inside("ipactr logs inner").stdout.contains("Reached target"))

        // Powering the outer machine off stops the nested one through its unit, cleanly.
        #expect(try f.ipactr(["poweroff", "outer"]).status == 0)
        try f.expectNothingLeft("outer", leader: leader)
    }
}
