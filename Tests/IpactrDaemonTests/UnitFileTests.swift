import Foundation
import IpactrTestSupport
import Testing
import IpactrSystem

/// The shipped units pass `systemd-analyze verify` (present on this host
/// although PID 1 is not systemd). Verified in a scratch root that has the
/// host's systemd units and the binaries at /usr/local/bin, where the
/// README's install puts them, so the check covers the ExecStart paths too.
@Suite struct UnitFileTests {
    /// Makes the scratch root; `binaries` false leaves /usr/local/bin empty.
    func scratchRoot(binaries: Bool = true, extraUnits: [String: String] = [:]) throws -> String {
        let root = "/var/tmp/ipactr-units-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: root + "/usr/local/bin", withIntermediateDirectories: true)
            try fm.createDirectory(atPath: root + "/etc/systemd/system", withIntermediateDirectories: true)
            try fm.createDirectory(atPath: root + "/usr/lib/systemd", withIntermediateDirectories: true)
            try fm.copyItem(atPath: "/lib/systemd/system", toPath: root + "/usr/lib/systemd/system")
            if binaries {
                for b in ["ipactr", "ipactrd", "ipactr-worker"] { try fm.copyItem(atPath: builtExecutable(b), toPath: root + "/usr/local/bin/" + b) }
            }
            for unit in ["ipactrd.service", "ipactr@.service"] {
                try fm.copyItem(atPath: repositoryRoot + "/units/" + unit, toPath: root + "/etc/systemd/system/" + unit)
            }
            for (name, text) in extraUnits { try text.write(toFile: root + "/etc/systemd/system/" + name, atomically: true, encoding: .utf8) }
        } catch {
            try? removeTree(root)
            throw error
        }
        return root
    }

    func verify(_ root: String, _ units: [String]) throws -> Finished {
        try capture(["/usr/bin/systemd-analyze", "verify", "--root=\(root)"] + units.map { "/etc/systemd/system/" + $0 })
    }

    @Test func shippedUnitsVerify() throws {
        let root = try scratchRoot()
        defer { try? removeTree(root) }
        let r = try verify(root, ["ipactrd.service", "ipactr@m1.service"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.isEmpty, "\(r.stderr)")
    }

    @Test func unitsSayWhatTheDesignAsks() throws {
        let daemon = try String(contentsOfFile: repositoryRoot + "/units/ipactrd.service", encoding: .utf8)
        #expect(daemon.contains("\nType=dbus\n") && daemon.contains("\nBusName=org.ipactr1\n"))
        #expect(daemon.contains("\nExecStart=/usr/local/bin/ipactrd\n"))
        let machine = try String(contentsOfFile: repositoryRoot + "/units/ipactr@.service", encoding: .utf8)
        for line in ["Type=notify", "Delegate=yes", "KillMode=mixed", "WantedBy=machines.target", "ExecStart=/usr/local/bin/ipactr-worker monitor --delegated %i"] {
            #expect(machine.contains("\n" + line + "\n"), "\(line) missing")
        }
        let activation = try String(contentsOfFile: repositoryRoot + "/units/org.ipactr1.service", encoding: .utf8)
        #expect(activation.contains("\nExec=/usr/local/bin/ipactrd\n") && activation.contains("\nSystemdService=ipactrd.service\n"))
    }

    /// The check has teeth: a missing binary and a broken unit both fail it.
    @Test func verifyCatchesMistakes() throws {
        let bare = try scratchRoot(binaries: false)
        defer { try? removeTree(bare) }
        let missing = try verify(bare, ["ipactr@m1.service"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("/usr/local/bin/ipactr-worker is not executable"), "\(missing.stderr)")

        let broken = try scratchRoot(extraUnits: ["broken.service": "[Service]\nType=notify\nExecStart=relative/path\n"])
        defer { try? removeTree(broken) }
        #expect(try verify(broken, ["broken.service"]).status != 0)
    }
}
