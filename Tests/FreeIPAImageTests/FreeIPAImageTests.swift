import Foundation
import Testing
import IpactrOCI

/// The FreeIPA-shaped image (images/freeipa): its OCI layout read back with
/// ipactr's own image-spec types, and the whole systemd-nspawn run (install,
/// restart from /data, read-only root, failed installs) that `ipactr boot
/// freeipa` will be measured against. Needs root, debootstrap, umoci and
/// systemd-nspawn (scripts/deps.sh), as CI has; the image build is cached.
@Suite(.serialized) struct FreeIPAImageTests {
    static let repo = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let cache = URL(fileURLWithPath: ProcessInfo.processInfo.environment["IPACTR_IMAGE_CACHE"]
        ?? "/var/cache/ipactr/images").appendingPathComponent("freeipa")

    /// Runs a program; returns its exit status and its stdout + stderr.
    static func run(_ path: String, _ args: [String] = []) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        // Read before waiting: the scripts write more than a pipe buffer.
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func build() throws {
        let script = repo.appendingPathComponent("images/freeipa/build.sh").path
        let r = try run(script)
        #expect(r.status == 0, "build.sh failed:\n\(r.output.suffix(3000))")
        try #require(r.status == 0)
    }

    static func blob(_ layout: URL, _ digest: Digest) -> URL {
        layout.appendingPathComponent("blobs/\(digest.algorithm)/\(digest.hex)")
    }

    @Test func ociLayoutCarriesTheRunTimeContract() throws {
        try #require(getuid() == 0, "the image build needs root")
        try Self.build()
        let layout = Self.cache.appendingPathComponent("oci")
        let decoder = JSONDecoder()

        let index = try decoder.decode(ImageIndex.self, from: Data(contentsOf: layout.appendingPathComponent("index.json")))
        try #require(index.manifests.count == 1)
        let desc = index.manifests[0]
        #expect(desc.mediaType == MediaType.ociManifest)
        #expect(desc.annotations?["org.opencontainers.image.ref.name"] == "latest")
        #expect(desc.platform == .linuxAmd64)

        let manifest = try decoder.decode(ImageManifest.self, from: Data(contentsOf: Self.blob(layout, desc.digest)))
        try #require(manifest.layers.count == 1, "one layer")
        let layer = manifest.layers[0]
        #expect(MediaType.layerCompression(layer.mediaType) == .gzip)
        let layerPath = Self.blob(layout, layer.digest).path
        let size = try FileManager.default.attributesOfItem(atPath: layerPath)[.size] as? Int64
        #expect(size == layer.size)
        // The blob's name is its digest: the content must hash to it.
        let sum = try Self.run("/usr/bin/sha256sum", [layerPath])
        #expect(sum.output.split(separator: " ").first.map(String.init) == layer.digest.hex)

        let config = try decoder.decode(ImageConfig.self, from: Data(contentsOf: Self.blob(layout, manifest.config.digest)))
        #expect(config.rootfs.diff_ids.count == 1)
        #expect(config.architecture == "amd64" && config.os == "linux")
        let exec = try #require(config.config)
        #expect(exec.Cmd == ["/sbin/init"])
        #expect(exec.StopSignal == "SIGRTMIN+3")
        #expect(exec.Volumes.map { Set($0.keys) } == ["/data"])
        #expect(exec.ExposedPorts.map { Set($0.keys) } == [
            "53/tcp", "53/udp", "80/tcp", "443/tcp", "389/tcp", "636/tcp",
            "88/tcp", "88/udp", "464/tcp", "464/udp", "123/udp",
        ])
        #expect(exec.Labels?["org.opencontainers.image.title"] != nil)

        // The unpacked rootfs nspawn boots is the image's: the units are there.
        let rootfs = Self.cache.appendingPathComponent("rootfs")
        for path in ["usr/lib/systemd/system/container-ipa.target",
                     "usr/lib/systemd/system/ipa-server-configure-first.service",
                     "usr/libexec/ipa/ipa-server-configure-first"] {
            #expect(FileManager.default.fileExists(atPath: rootfs.appendingPathComponent(path).path), "\(path)")
        }
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: rootfs.appendingPathComponent("etc/systemd/system/default.target").path)
            .hasSuffix("container-ipa.target"))
        #expect(try String(contentsOf: rootfs.appendingPathComponent("etc/machine-id"), encoding: .utf8).isEmpty)
    }

    /// images/freeipa/nspawn-smoke.sh: first boot installs and every service
    /// answers (LDAP, kinit, GSSAPI LDAP, HTTP(S), DNS SOA + SRV, SSSD,
    /// certmonger); poweroff exits 0; the second boot on the same /data skips
    /// the install; the root is not written outside /data, /run, /tmp; a
    /// read-only root boots; a bad realm and a short hostname exit 2.
    @Test func bootsAndAnswersUnderSystemdNspawn() throws {
        try #require(getuid() == 0, "systemd-nspawn with user namespaces needs root")
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-nspawn"),
                     "systemd-nspawn is missing: run scripts/deps.sh")
        let script = Self.repo.appendingPathComponent("images/freeipa/nspawn-smoke.sh").path
        let r = try Self.run(script)
        // The whole run, for a look after a failure (the message keeps the tail).
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("ipactr-freeipa-nspawn-smoke.log")
        try? r.output.write(to: log, atomically: true, encoding: .utf8)
        #expect(r.status == 0, "nspawn-smoke.sh failed (whole output in \(log.path)):\n\(r.output.suffix(4000))")
        #expect(r.output.contains("nspawn-smoke: PASS"))
        #expect(r.output.contains("mode install"))
        #expect(r.output.contains("mode start"))
        #expect(r.output.contains("bad realm option: exit status 2"))
        #expect(!r.output.contains("not ok"))
    }
}
