import Foundation
import Testing
@testable import IpactrMachine
import IpactrSystem
import IpactrTestSupport

let freeipaOCI = TestImages.freeipa

/// `ipactr boot freeipa` end to end (issue: the FreeIPA-shaped image): a
/// first boot that installs, the services answering from the host through
/// the published ports, a second boot on the same /data that skips the
/// install (read-only root, nothing written outside /data, /run, /tmp), and
/// a failed install reported as PID 1's exit status.
@Suite(.serialized) struct FreeIPABootTests {
    /// Unique per run, so a sighting on a command line can only be ours.
    static let password = "Secret123-\(UInt32.random(in: 100_000...999_999))"

    /// Host-side clients, with Kerberos pointed at the published KDC port and
    /// ipa.example.test resolving to loopback in a private mount namespace.
    final class HostClients {
        let dir: String
        let ports: [String: UInt16]
        init(ports: [String: UInt16]) throws {
            self.ports = ports
            dir = "/var/tmp/ipactr-ipa-clients-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try """
            [libdefaults]
              default_realm = EXAMPLE.TEST
              dns_lookup_kdc = false
              rdns = false
              dns_canonicalize_hostname = false
            [realms]
              EXAMPLE.TEST = {
                kdc = 127.0.0.1:\(ports["88"]!)
              }
            [domain_realm]
              ipa.example.test = EXAMPLE.TEST
            """.write(toFile: dir + "/krb5.conf", atomically: true, encoding: .utf8)
            let hosts = try String(contentsOfFile: "/etc/hosts", encoding: .utf8)
            try ("127.0.0.1 ipa.example.test\n" + hosts).write(toFile: dir + "/hosts", atomically: true, encoding: .utf8)
            try "\(FreeIPABootTests.password)\n".write(toFile: dir + "/password", atomically: true, encoding: .utf8)
        }
        deinit { try? FileManager.default.removeItem(atPath: dir) }

        var env: [String: String] {
            var e = ProcessInfo.processInfo.environment
            e["KRB5_CONFIG"] = dir + "/krb5.conf"
            e["KRB5CCNAME"] = "FILE:" + dir + "/ccache"
            e["LDAPSASL_NOCANON"] = "on"
            return e
        }

        func sh(_ script: String) throws -> Finished {
            // The bind of /etc/hosts stays inside this command's mount namespace.
            try capture(["/usr/bin/unshare", "-m", "/bin/sh", "-c", "mount --bind \(dir)/hosts /etc/hosts && \(script)"], environment: env)
        }
    }

    func publishArgs(_ ports: [String: UInt16]) -> [String] {
        var args: [String] = []
        for (inside, proto) in [("389", "tcp"), ("88", "tcp"), ("88", "udp"), ("80", "tcp"), ("53", "tcp"), ("53", "udp")] {
            args += ["--publish", "127.0.0.1:\(ports[inside]!):\(inside)/\(proto)"]
        }
        return args
    }

    @Test func installsAnswersFromTheHostAndRestartsFromData() throws {
        let f = try MachineFixture(images: [("freeipa", freeipaOCI)])
        let data = f.root + "-data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        defer { try? removeTree(data) }
        var ports: [String: UInt16] = [:]
        for p in ["389", "88", "80", "53"] { ports[p] = freeTCPAndUDPPort() }
        let clients = try HostClients(ports: ports)
        let common = ["--hostname", "ipa.example.test", "--volume", "\(data):/data"] + publishArgs(ports)

        // First boot: configuration runs, READY=1 comes when everything is up.
        // Meanwhile every process's command line is sampled: the password
        // must never be on one (the image passes it in files and on stdin).
        let sampler = CommandLineSampler(looking: Self.password)
        sampler.start()
        let boot = try f.ipactr(["boot", "freeipa", "--name", "ipa", "--timeout", "300",
                                 "--env", "PASSWORD=\(Self.password)", "--env", "IPA_SERVER_INSTALL_OPTS=-r EXAMPLE.TEST"] + common)
        let sightings = sampler.stop()
        try #require(boot.status == 0, "boot: \(boot.stderr)")
        #expect(sampler.samples > 10)
        // The sampler sees the one that does carry it: `ipactr boot … --env PASSWORD=…`…
        #expect(sightings.contains { $0.contains("ipactr") && $0.contains("boot") })
        // …and no other.
        #expect(sightings.filter { !$0.contains("ipactr") }.isEmpty, "password on a command line: \(sightings)")
        #expect(try f.systemState("ipa") == "running")
        #expect(try f.summary("ipa").systemState == "running")
        #expect(try f.summary("ipa").failedUnits == [])
        try expectServicesAnswer(f, clients)

        let off = try f.ipactr(["poweroff", "ipa"])
        #expect(off.line == "ipa stopped (exit status 0)", "\(off.stderr)")
        #expect(try f.ipactr(["rm", "ipa"]).status == 0)
        // The volume keeps the host's own ids (idmapped): dirsrv's files are 389's.
        #expect(try capture(["/usr/bin/find", data, "-user", "389", "-print", "-quit"]).line.isEmpty == false)
        // What the install leaves: its marker, and the KDC database it made.
        let installed = try capture(["/usr/bin/stat", "-c", "%i %Y", data + "/var/lib/ipa/configured", data + "/var/lib/krb5kdc/principal"]).line
        #expect(!installed.isEmpty)

        // Second boot, a new machine on the same /data, read-only root: no
        // install, the same answers, and nothing written outside /data, /run, /tmp.
        let again = try f.ipactr(["boot", "freeipa", "--name", "ipa2", "--read-only", "--timeout", "120"] + common)
        try #require(again.status == 0, "second boot: \(again.stderr)")
        #expect(try f.systemState("ipa2") == "running")
        // The install did not run again: its marker and the KDC database are the first boot's.
        #expect(try capture(["/usr/bin/stat", "-c", "%i %Y", data + "/var/lib/ipa/configured", data + "/var/lib/krb5kdc/principal"]).line == installed)
        try expectServicesAnswer(f, clients, machine: "ipa2")
        let upper = try capture(["/usr/bin/find", f.root + "/machines/ipa2/upper", "-mindepth", "1"])
        #expect(upper.line.isEmpty, "written outside /data, /run, /tmp: \(upper.stdout)")
        #expect(try f.ipactr(["poweroff", "ipa2"]).line == "ipa2 stopped (exit status 0)")
    }

    func expectServicesAnswer(_ f: MachineFixture, _ c: HostClients, machine: String = "ipa") throws {
        let p = c.ports
        let ldap = try capture(["/usr/bin/ldapsearch", "-x", "-LLL", "-H", "ldap://127.0.0.1:\(p["389"]!)", "-b", "dc=example,dc=test", "uid=testuser", "uid"])
        #expect(ldap.stdout.contains("uid: testuser"), "ldapsearch: \(ldap.stderr)")
        let kinit = try c.sh("kinit testuser@EXAMPLE.TEST < \(c.dir)/password >/dev/null && ldapwhoami -Q -Y GSSAPI -H ldap://ipa.example.test:\(p["389"]!)")
        #expect(kinit.line == "dn: uid=testuser,ou=people,dc=example,dc=test", "GSSAPI: \(kinit.stderr)")
        let http = try capture(["/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(p["80"]!)/"])
        #expect(http.line == "200")
        let soa = try capture(["/usr/bin/dig", "+short", "@127.0.0.1", "-p", String(p["53"]!), "SOA", "example.test"])
        #expect(soa.line.hasPrefix("ipa.example.test. hostmaster.example.test."))
        let srv = try capture(["/usr/bin/dig", "+short", "@127.0.0.1", "-p", String(p["53"]!), "SRV", "_kerberos._udp.example.test"])
        #expect(srv.line == "0 100 88 ipa.example.test.")
        #expect(try f.inside(machine, "getent -s sss passwd testuser | cut -d: -f1").line == "testuser")
    }

    /// The image declares /data a volume: without --volume the machine gets
    /// an anonymous one (writable under a read-only root), removed with `rm`.
    @Test func declaredVolumeGetsAnAnonymousOne() throws {
        let f = try MachineFixture(images: [("freeipa", freeipaOCI)])
        // A bad realm stops the install at once, after /data was checked writable (else exit 3).
        let boot = try f.ipactr(["boot", "freeipa", "--name", "anon", "--no-wait", "--read-only", "--hostname", "ipa.example.test",
                                 "--env", "PASSWORD=\(Self.password)", "--env", "IPA_SERVER_INSTALL_OPTS=-r not a realm!"])
        try #require(boot.status == 0, "\(boot.stderr)")
        let control = MachineControl(root: f.root, monitorExecutable: workerExecutable)
        #expect(eventually(60) { (try? f.summary("anon"))?.lastExitStatus != nil })
        #expect(control.waitStopped("anon", timeoutSeconds: 60))
        #expect(try f.summary("anon").lastExitStatus == 2)
        let volume = f.root + "/machines/anon/volumes/data"
        #expect(!(try FileManager.default.contentsOfDirectory(atPath: volume)).isEmpty)
        #expect(try f.ipactr(["rm", "anon"]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: volume))
    }

    @Test func aFailedInstallIsTheMachinesExitStatus() throws {
        let f = try MachineFixture(images: [("freeipa", freeipaOCI)])
        let data = f.root + "-bad-data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        defer { try? removeTree(data) }
        let boot = try f.ipactr(["boot", "freeipa", "--name", "bad", "--hostname", "ipa.example.test", "--volume", "\(data):/data:idmap",
                                 "--env", "PASSWORD=\(Self.password)", "--env", "IPA_SERVER_INSTALL_OPTS=-r not a realm!", "--timeout", "120"])
        #expect(boot.status != 0)
        #expect(boot.stderr.contains("ipactr: machine bad stopped during boot (PID 1 exit status 2)"), "\(boot.stderr)")
        try f.expectNothingLeft("bad", leader: nil)
    }
}

/// Reads every /proc/PID/cmdline in a loop on a thread of its own and keeps
/// the ones that contain a secret.
final class CommandLineSampler: @unchecked Sendable {
    let secret: String
    private let lock = NSLock()
    private var running = true
    private var hits = Set<String>()
    private(set) var samples = 0
    private let done = DispatchSemaphore(value: 0)

    init(looking secret: String) { self.secret = secret }

    func start() {
        Thread {
            while self.lock.withLock({ self.running }) {
                for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int(entry) != nil {
                    guard let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"), !data.isEmpty else { continue }
                    let line = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
                    if line.contains(self.secret) { _ = self.lock.withLock { self.hits.insert(line) } }
                }
                self.lock.withLock { self.samples += 1 }
            }
            self.done.signal()
        }.start()
    }

    /// Stops sampling and returns the command lines that held the secret.
    func stop() -> [String] {
        lock.withLock { running = false }
        done.wait()
        return lock.withLock { Array(hits) }
    }
}
