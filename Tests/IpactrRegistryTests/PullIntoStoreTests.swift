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
        _ = try run(pull + ["\(reg.host)/debian/systemd:latest"])
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
}
