import Foundation
import IpactrSystem
import IpactrTestSupport
import Testing

/// The built `ipactr` binary (next to the test bundle).
private let ipactrBinary: String = {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.deletingLastPathComponent()
    while !FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent("ipactr").path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent("ipactr").path
}()

private let debianOCI = ProcessInfo.processInfo.environment["IPACTR_TEST_DEBIAN_OCI"] ?? "/var/cache/ipactr/images/debian/oci"

/// End to end, as a user does it: the debootstrap-made Debian image
/// (images/debian/build.sh) pushed with skopeo to a real registry, pulled
/// with `ipactr pull` into a store, and compared with `ipactr import` of the
/// same image as an oci-archive.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct PullIntoStoreTests {
    struct Row: Decodable { var name: String; var id: String }

    func images(_ cli: [String]) throws -> [Row] {
        try JSONDecoder().decode([Row].self, from: Data(try run(cli + ["images", "--json"]).utf8))
    }

    @Test(arguments: [RegistryFixture.Auth.anonymous, .basic, .token])
    func pulledDebianImageMatchesTheImportedArchive(auth: RegistryFixture.Auth) throws {
        let reg = try RegistryFixture(auth)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        try reg.push(layout: debianOCI, tag: "latest", to: "debian/systemd")
        let root = work.sub("store")
        // The CLI, against an ipactrd serving `root` on a private bus.
        let daemon = try IpactrDaemon(root: root)
        defer { daemon.stop() }
        let cli = ["/usr/bin/env", "DBUS_SYSTEM_BUS_ADDRESS=\(daemon.bus.address)", ipactrBinary]
        var pull = cli + ["pull", "--quiet"]
        if auth != .anonymous { pull += ["--creds", reg.creds] }
        // The pull is a job of ipactrd's: watch its signals while it runs.
        let signals = work.sub("monitor.json")
        let monitor = try spawn(["/usr/bin/busctl", "--address=\(daemon.bus.address)", "monitor", "--json=short", "org.ipactr1"],
                                stdout: signals, stderr: work.sub("monitor.err"))
        defer { killAndReap(monitor) }
        func seen() -> String { (try? String(contentsOfFile: signals, encoding: .utf8)) ?? "" }
        try #require(eventually(30) {
            _ = try? capture(["/usr/bin/busctl", "--address=\(daemon.bus.address)", "call", "org.ipactr1", "/", "org.freedesktop.DBus.Peer", "Ping"])
            return seen().contains("\"Ping\"")
        })
        _ = try run(pull + ["\(reg.host)/debian/systemd:latest"])
        #expect(eventually(30) { seen().contains("\"member\":\"JobRemoved\"") })
        let progress = jobProgress(seen())
        #expect(seen().contains("\"pull\",\"\(reg.host)/debian/systemd:latest\""), "no JobNew for the pull")
        #expect(seen().contains("\"/org/ipactr1/job/1\",\"done\"]"), "the pull job did not end as done")
        // Progress in bytes: a total, reached by what was fetched.
        #expect(progress.total > 0 && progress.done.last == progress.total, "\(progress)")
        #expect(progress.done == progress.done.sorted(), "progress went backwards: \(progress.done)")
        // The same image as an oci-archive, imported.
        let archive = work.sub("debian.oci.tar")
        _ = try run(["/usr/bin/skopeo", "copy", "-q", "oci:\(debianOCI)", "oci-archive:\(archive)"])
        _ = try run(cli + ["import", archive, "debian-archive"])

        let rows = try images(cli)
        let pulled = try #require(rows.first { $0.name == "\(reg.host)/debian/systemd:latest" })
        let imported = try #require(rows.first { $0.name == "debian-archive" })
        #expect(pulled.id == imported.id)
        // A second pull fetches nothing and changes nothing.
        let before = try run(["/usr/bin/find", root + "/images/blobs", "-type", "f"])
        _ = try run(pull + ["\(reg.host)/debian/systemd:latest"])
        #expect(try run(["/usr/bin/find", root + "/images/blobs", "-type", "f"]) == before)
    }

    /// `--tls-verify` and `--cert-dir` reach the pull through ipactrd: a
    /// self-signed https registry on 127.0.0.1 (loopback: insecure by
    /// default) is refused with --tls-verify=true, accepted with its CA.
    @Test func tlsFlagsReachThePullThroughIpactrd() throws {
        let secure = try RegistryFixture(.selfSignedTLS)
        defer { secure.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip])
        try secure.push(layout: image.layout)
        let daemon = try IpactrDaemon(root: work.sub("store"))
        defer { daemon.stop() }
        let ref = "\(secure.host)/test/img:1"

        let refused = try daemon.ipactr(["pull", "--quiet", "--tls-verify=true", ref])
        #expect(refused.status != 0)
        #expect(refused.stderr.hasPrefix("ipactr: ") && refused.stderr.contains("certificate"), "\(refused.stderr)")
        #expect(refused.stderr.filter { $0 == "\n" }.count == 1, "\(refused.stderr)")
        #expect(try daemon.ipactr(["images"]).stdout.contains(secure.host) == false)

        let certs = work.sub("certs")
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: secure.certificate, toPath: certs + "/registry.crt")
        let trusted = try daemon.ipactr(["pull", "--quiet", "--tls-verify=true", "--cert-dir", certs, ref])
        #expect(trusted.status == 0, "\(trusted.stderr)")
        #expect(try daemon.ipactr(["images"]).stdout.contains(ref))
    }

    /// kill -9 of ipactrd while it pulls: the pull's worker goes on and
    /// finishes, the caller gets one line, and the restarted daemon serves
    /// the whole image (nothing half-written in the store).
    @Test func aPullInterruptedByADaemonCrashIsFinished() throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        try reg.push(layout: debianOCI, tag: "latest", to: "debian/systemd")
        let root = work.sub("store")
        let daemon = try IpactrDaemon(root: root)
        defer { daemon.stop() }
        let ref = "\(reg.host)/debian/systemd:latest"
        let cli = try spawn([ipactrBinary, "pull", "--quiet", ref], stdout: work.sub("pull.out"), stderr: work.sub("pull.err"),
                            environment: daemon.environment)
        defer { killAndReap(cli) }
        func pullWorkerRuns() -> Bool {
            let needle = "ipactr-pull\0--root\0\(root)\0"
            return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).contains { entry in
                Int32(entry) != nil && String(decoding: FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") ?? Data(),
                                              as: UTF8.self).contains(needle)
            }
        }
        try #require(eventually(60) { pullWorkerRuns() }, "no pull worker started")
        daemon.kill()
        // The caller lost the daemon: one line, non-zero.
        var st: Int32 = 0
        while waitpid(cli, &st, 0) < 0 && errno == EINTR {}
        let err = (try? String(contentsOfFile: work.sub("pull.err"), encoding: .utf8)) ?? ""
        #expect(st != 0, "the pull returned success without its daemon")
        #expect(err.hasPrefix("ipactr: ") && err.filter { $0 == "\n" }.count == 1, "\(err)")
        // The worker finishes on its own.
        #expect(eventually(180) { !pullWorkerRuns() }, "the pull worker did not finish")
        try daemon.start()
        let listed = try daemon.ipactr(["images", "--json"])
        // The worker writes on the caller's stdout and stderr (files here): what it said, on failure.
        let said = ["pull.out", "pull.err"].map { (try? String(contentsOfFile: work.sub($0), encoding: .utf8)) ?? "" }.joined(separator: " | ")
        #expect(listed.stdout.contains("\"name\" : \"\(ref)\""), "\(listed.stdout) \(listed.stderr); the pull said: \(said)")
        #expect(try daemon.ipactr(["image", "inspect", ref]).status == 0)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: root + "/images/tmp")) ?? []).isEmpty)
    }
}

/// The BytesTotal and the BytesDone values a job announced (PropertiesChanged
/// of org.ipactr1.Job in `busctl monitor --json=short` output), in order.
func jobProgress(_ monitorOutput: String) -> (total: UInt64, done: [UInt64]) {
    var total: UInt64 = 0
    var done: [UInt64] = []
    for line in monitorOutput.split(separator: "\n") {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              object["member"] as? String == "PropertiesChanged",
              let data = (object["payload"] as? [String: Any])?["data"] as? [Any], data.count == 3,
              data[0] as? String == "org.ipactr1.Job", let changed = data[1] as? [String: Any] else { continue }
        func value(_ key: String) -> UInt64? { ((changed[key] as? [String: Any])?["data"] as? NSNumber)?.uint64Value }
        if let t = value("BytesTotal") { total = t }
        if let d = value("BytesDone") { done.append(d) }
    }
    return (total, done)
}
