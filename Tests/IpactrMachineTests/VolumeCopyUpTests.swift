import Foundation
import Testing
import IpactrTestSupport
@testable import IpactrMachine
import IpactrSystem
import CIpactrShim

/// Anonymous volumes (the image's config `Volumes`) start with the image's
/// content at their path, once, as podman and docker do.
@Suite(.serialized) struct VolumeCopyUpTests {
    @Test func anonymousVolumeGetsTheImagesContentOnce() throws {
        let f = try MachineFixture(images: [])
        let layout = f.root + "-seeded-oci"
        defer { try? removeTree(layout) }
        try makeSeededImage(at: layout)
        let imported = try f.ipactr(["import", layout, "seeded"])
        try #require(imported.status == 0, "import: \(imported.stderr)")

        let boot = try f.ipactr(["boot", "seeded", "--name", "cu"])
        try #require(boot.status == 0, "boot: \(boot.stderr)")
        // Inside: the image's files with their owners, modes and links.
        #expect(try f.inside("cu", "stat -c '%u:%g %a' /srv/seeded/owned").line == "389:389 640")
        #expect(try f.inside("cu", "cat /srv/seeded/owned").line == "from-image")
        #expect(try f.inside("cu", "readlink /srv/seeded/link").line == "owned")
        #expect(try f.inside("cu", "cat /srv/seeded/sub/deep && stat -c %u:%g /srv/seeded/sub").line == "deep\n0:0")
        // It is a volume (a mount of its own), not the root's overlay.
        #expect(try f.inside("cu", "grep -c ' /srv/seeded ' /proc/self/mountinfo").line == "1")
        // On the host, the (idmapped) volume holds the image's own ids and xattrs.
        let volume = f.root + "/machines/cu/volumes/srv-seeded"
        #expect(owner(of: volume + "/owned")! == (389, 389))
        var value = [UInt8](repeating: 0, count: 64)
        let n = getxattr(volume + "/owned", "user.ipactr", &value, value.count)
        #expect(n > 0 && String(decoding: value[0..<max(n, 0)], as: UTF8.self) == "seeded")

        // What the machine does there persists; no second copy-up.
        #expect(try f.inside("cu", "rm /srv/seeded/owned && echo mine > /srv/seeded/written").status == 0)
        #expect(try f.ipactr(["poweroff", "cu"]).status == 0)
        let start = try f.ipactr(["start", "cu"])
        try #require(start.status == 0, "start: \(start.stderr)")
        #expect(try f.inside("cu", "cat /srv/seeded/written").line == "mine")
        #expect(try f.inside("cu", "test -e /srv/seeded/owned").status != 0)
        #expect(try f.inside("cu", "cat /srv/seeded/sub/deep").line == "deep")
        let leader = try f.leader("cu")
        #expect(try f.ipactr(["poweroff", "cu"]).status == 0)
        try f.expectNothingLeft("cu", leader: leader)
        #expect(!FileManager.default.fileExists(atPath: f.paths.run("cu") + "/copyup"))
    }
}

/// An OCI layout: the Debian test image plus a layer with /srv/seeded, which
/// the config declares a volume.
func makeSeededImage(at layout: String) throws {
    let debian = debianOCI
    func json(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }
    func blob(_ dir: String, _ digest: String) -> String { dir + "/blobs/sha256/" + digest.dropFirst("sha256:".count) }
    func sha256(_ path: String) throws -> String {
        let r = try capture(["sha256sum", path])
        guard r.status == 0, let hex = r.stdout.split(separator: " ").first else { throw IpactrError(.io, "sha256sum \(path)") }
        return "sha256:" + hex
    }
    func write(_ data: Data) throws -> (String, Int) {
        let tmp = layout + "/blobs/tmp"
        try data.write(to: URL(fileURLWithPath: tmp))
        let digest = try sha256(tmp)
        try FileManager.default.moveItem(atPath: tmp, toPath: blob(layout, digest))
        return (digest, data.count)
    }
    try FileManager.default.createDirectory(atPath: layout + "/blobs/sha256", withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: debian + "/oci-layout", toPath: layout + "/oci-layout")
    let index = try json(debian + "/index.json")
    let manifestDigest = (index["manifests"] as! [[String: Any]])[0]["digest"] as! String
    var manifest = try json(blob(debian, manifestDigest))
    var layers = manifest["layers"] as! [[String: Any]]
    for layer in layers {
        let digest = layer["digest"] as! String
        // Hard links: the Debian layer is large and the cache is on the same disk.
        if link(blob(debian, digest), blob(layout, digest)) != 0 {
            try FileManager.default.copyItem(atPath: blob(debian, digest), toPath: blob(layout, digest))
        }
    }

    // The new layer: files with owners, a mode, a symlink, a subdirectory, an xattr.
    let tree = layout + "-tree"
    defer { try? removeTree(tree) }
    try FileManager.default.createDirectory(atPath: tree + "/srv/seeded/sub", withIntermediateDirectories: true)
    try "from-image\n".write(toFile: tree + "/srv/seeded/owned", atomically: false, encoding: .utf8)
    try "deep\n".write(toFile: tree + "/srv/seeded/sub/deep", atomically: false, encoding: .utf8)
    #expect(chown(tree + "/srv/seeded/owned", 389, 389) == 0)
    #expect(chmod(tree + "/srv/seeded/owned", 0o640) == 0)
    #expect(symlink("owned", tree + "/srv/seeded/link") == 0)
    #expect(setxattr(tree + "/srv/seeded/owned", "user.ipactr", "seeded", 6, 0) == 0)
    let tar = layout + "/layer.tar"
    let packed = try capture(["tar", "--xattrs", "--xattrs-include=user.*", "--numeric-owner", "-C", tree, "-cf", tar, "srv"])
    guard packed.status == 0 else { throw IpactrError(.io, "tar: \(packed.stderr)") }
    let layerDigest = try sha256(tar)
    let layerSize = (try FileManager.default.attributesOfItem(atPath: tar)[.size] as! NSNumber).intValue
    try FileManager.default.moveItem(atPath: tar, toPath: blob(layout, layerDigest))
    layers.append(["mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layerSize])

    var config = try json(blob(debian, (manifest["config"] as! [String: Any])["digest"] as! String))
    var exec = config["config"] as? [String: Any] ?? [:]
    exec["Volumes"] = ["/srv/seeded": [String: Any]()]
    config["config"] = exec
    var rootfs = config["rootfs"] as! [String: Any]
    rootfs["diff_ids"] = (rootfs["diff_ids"] as! [String]) + [layerDigest]
    config["rootfs"] = rootfs
    let (configDigest, configSize) = try write(try JSONSerialization.data(withJSONObject: config))
    manifest["config"] = ["mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize]
    manifest["layers"] = layers
    manifest.removeValue(forKey: "annotations")
    let (newManifest, manifestSize) = try write(try JSONSerialization.data(withJSONObject: manifest))
    let newIndex: [String: Any] = [
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [["mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": newManifest, "size": manifestSize]],
    ]
    try JSONSerialization.data(withJSONObject: newIndex).write(to: URL(fileURLWithPath: layout + "/index.json"))
}
