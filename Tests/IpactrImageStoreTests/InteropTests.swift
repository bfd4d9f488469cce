#if canImport(Glibc)
import Glibc
#endif
import CIpactrShim
import Foundation
import IpactrImageStore
import IpactrOCI
import IpactrSystem
import IpactrTestSupport
import Testing

/// The store against the tools that write and read the same formats:
/// skopeo (oci-archive, docker-archive) and umoci (unpacking).
@Suite struct InteropTests {
    @Test func ociLayoutOciArchiveAndDockerArchiveRoundTrip() throws {
        let t = TempDir()
        try buildRichLayout(t.sub("layout"), scratch: t.sub("scratch"))
        let layout = t.path + "/layout"
        try sh("skopeo copy --insecure-policy -q oci:\(layout):latest oci-archive:\(t.path)/img.oci.tar")
        try sh("skopeo copy --insecure-policy -q oci:\(layout):latest docker-archive:\(t.path)/img.docker.tar:test/rich:1")
        let root = t.path + "/root"

        let a = try ipactr(root, ["import", layout, "from-layout"])
        #expect(a.status == 0, "\(a.stderr)")
        #expect(a.stdout.contains("from oci "))
        let b = try ipactr(root, ["import", t.path + "/img.oci.tar", "from-oci-archive"])
        #expect(b.status == 0, "\(b.stderr)")
        #expect(b.stdout.contains("from oci-archive "))
        // No NAME: docker-archive's RepoTags names it.
        let c = try ipactr(root, ["import", t.path + "/img.docker.tar"])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(c.stdout.contains("from docker-archive "))

        let json = try ipactr(root, ["images", "--json"])
        #expect(json.status == 0)
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
        let byName = Dictionary(uniqueKeysWithValues: rows.map { ($0["name"] as! String, $0) })
        #expect(byName.count == 3, "\(byName.keys)")
        let dockerName = try #require(byName.keys.first { $0.hasSuffix("test/rich:1") })
        // OCI layout and oci-archive: the same image, same id.
        #expect(byName["from-layout"]?["id"] as? String == byName["from-oci-archive"]?["id"] as? String)
        // (The manifest digest may differ: skopeo re-serialises the manifest it copies.)
        // docker-archive: skopeo rewrites config and manifest, but the layers are the same.
        #expect(byName["from-layout"]?["layers"] as? [String] == byName[dockerName]?["layers"] as? [String])
        // …and so they are stored once.
        #expect(try listDirectory(root + "/images/layers/sha256").count == 2)

        let table = try ipactr(root, ["images"])
        #expect(table.stdout.hasPrefix("NAME"))
        #expect(table.stdout.contains("from-layout"))
        let inspect = try ipactr(root, ["image", "inspect", "from-oci-archive"])
        #expect(inspect.status == 0)
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any])
        #expect((obj["layers"] as? [Any])?.count == 2)
        #expect(((obj["config"] as? [String: Any])?["rootfs"] as? [String: Any])?["type"] as? String == "layers")

        // rmi: shared layers stay until the last image using them goes.
        #expect(try ipactr(root, ["rmi", "from-layout", "from-oci-archive"]).status == 0)
        #expect(try listDirectory(root + "/images/layers/sha256").count == 2)
        #expect(try ipactr(root, ["rmi", dockerName]).status == 0)
        #expect(try listDirectory(root + "/images/layers/sha256").isEmpty)
        let prune = try ipactr(root, ["image", "prune"])
        #expect(prune.stdout == "removed 0 blobs and 0 layers\n")
    }

    /// `docker save`'s classic layout: `HEX.json` config, `ID/layer.tar`
    /// layers, a repeated layer stored once and symlinked; gzip'd as a whole.
    @Test func classicDockerSaveArchive() throws {
        let t = TempDir()
        try writeTar(t.path + "/a.tar", [.file("a", "a")])
        try writeTar(t.path + "/b.tar", [.file("b", "b")])
        let a = try readFile(t.path + "/a.tar"), b = try readFile(t.path + "/b.tar")
        let da = "sha256:" + sha256Hex(a), db = "sha256:" + sha256Hex(b)
        // Layers a, b, a again (docker dedups the third with a symlink).
        let config = Array(#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/a"]},"rootfs":{"type":"layers","diff_ids":["\#(da)","\#(db)","\#(da)"]}}"#.utf8)
        let cid = sha256Hex(config)
        let manifest = #"[{"Config":"\#(cid).json","RepoTags":["docker.io/library/classic:1"],"Layers":["l1/layer.tar","l2/layer.tar","l3/layer.tar"]}]"#
        try writeTar(t.path + "/save.tar", [
            .dir("l1"), TarEntry(name: "l1/layer.tar", kind: .bytes(a)), .file("l1/VERSION", "1.0"),
            .dir("l2"), TarEntry(name: "l2/layer.tar", kind: .bytes(b)),
            .dir("l3"), .symlink("l3/layer.tar", "../l1/layer.tar"),
            TarEntry(name: "\(cid).json", kind: .bytes(config)),
            .file("manifest.json", manifest),
            .file("repositories", #"{"classic":{"1":"l3"}}"#),
        ], gzip: true)
        let root = t.path + "/root"
        let r = try ipactr(root, ["import", t.path + "/save.tar"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("imported docker.io/library/classic:1 (\(cid.prefix(12)))"))
        let store = try ImageStore(root: root)
        let rec = try store.image("docker.io/library/classic:1")
        #expect(rec.diffIDs.map(\.description) == [da, db, da])
        #expect(try store.config(of: rec).config?.Cmd == ["/a"])
        #expect(try listDirectory(root + "/images/layers/sha256").count == 2)

        // A config whose name is its digest must hold to it.
        try writeTar(t.path + "/lie.tar", [
            .dir("l1"), TarEntry(name: "l1/layer.tar", kind: .bytes(a)),
            TarEntry(name: String(repeating: "4", count: 64) + ".json", kind: .bytes(config)),
            .file("manifest.json", #"[{"Config":"\#(String(repeating: "4", count: 64)).json","RepoTags":["x:1"],"Layers":["l1/layer.tar"]}]"#),
        ])
        let before = try snapshot(root)
        let lie = try ipactr(root, ["import", t.path + "/lie.tar"])
        #expect(lie.status == 8)
        #expect(lie.stderr.contains("has digest sha256:\(cid)"), "\(lie.stderr)")
        #expect(try snapshot(root) == before)
    }

    /// What a tree looks like, per path, for comparing two unpackers.
    static func describe(_ root: String) throws -> [String: String] {
        var out: [String: String] = [:]
        func walk(_ rel: String) throws {
            let p = rel.isEmpty ? root : root + "/" + rel
            let st = lstatOrNil(p)!
            let type = st.st_mode & S_IFMT
            var d = "type=\(String(type, radix: 8)) mode=\(String(st.st_mode & 0o7777, radix: 8)) uid=\(st.st_uid) gid=\(st.st_gid)"
            if type == S_IFREG { d += " size=\(st.st_size) mtime=\(st.st_mtim.tv_sec)" }
            if type == S_IFLNK {
                var buf = [CChar](repeating: 0, count: 4096)
                let n = readlink(p, &buf, 4095)
                d += " target=\(String(cString: Array(buf[0..<n]) + [0]))"
            }
            var names = [CChar](repeating: 0, count: 65536)
            let n = llistxattr(p, &names, names.count)
            if n > 0 {
                let keys = names[0..<n].split(separator: 0).map { String(cString: Array($0) + [0]) }.sorted()
                for k in keys {
                    var v = [UInt8](repeating: 0, count: 4096)
                    let m = lgetxattr(p, k, &v, v.count)
                    d += " xattr:\(k)=\(v[0..<max(m, 0)].map { String($0, radix: 16) }.joined(separator: ","))"
                }
            }
            out[rel.isEmpty ? "." : rel] = d
            if type == S_IFDIR {
                for n in try listDirectory(p) { try walk(rel.isEmpty ? n : rel + "/" + n) }
            }
        }
        try walk("")
        return out
    }

    @Test func flattenedRootfsMatchesUmoci() throws {
        let t = TempDir()
        try buildRichLayout(t.sub("layout"), scratch: t.sub("scratch"))
        try sh("umoci unpack --image \(t.path)/layout:latest \(t.path)/bundle >/dev/null")
        let store = try ImageStore(root: t.path + "/root")
        let (rec, _) = try store.importImage(from: t.path + "/layout", name: "rich")
        let mnt = t.sub("mnt")
        try store.mountRootfs(rec, at: mnt)
        t.mounts.append(mnt)
        defer { try? store.unmountRootfs(at: mnt); t.mounts.removeAll() }

        let ours = try Self.describe(mnt)
        let theirs = try Self.describe(t.path + "/bundle/rootfs")
        // umoci (as root, not rootless) adds no user.rootlesscontainers xattr:
        // checked, not stripped.
        #expect(!theirs.values.contains { $0.contains("user.rootlesscontainers") })
        #expect(Set(ours.keys) == Set(theirs.keys), "only ours: \(Set(ours.keys).subtracting(theirs.keys)), only umoci's: \(Set(theirs.keys).subtracting(ours.keys))")
        for k in ours.keys.sorted() where theirs[k] != nil {
            #expect(ours[k] == theirs[k], "\(k)")
        }
        // Sanity: the comparison saw the interesting entries.
        #expect(ours["usr/bin/ping"]?.contains("xattr:security.capability") == true)
        #expect(ours["usr/bin/su"]?.contains("mode=4755") == true)
        #expect(ours["removeme"] == nil)
        #expect(ours["opt/data/a"] == nil && ours["opt/data/c"] != nil)
    }

    /// An `ipactr import` killed half-way: ipactrd stops its worker, and the
    /// store is left as it was.
    @Test func killedImportLeavesStoreUnchanged() throws {
        let t = TempDir()
        try buildRichLayout(t.sub("layout"), scratch: t.sub("scratch"))
        try sh("skopeo copy --insecure-policy -q oci:\(t.path)/layout:latest oci-archive:\(t.path)/img.oci.tar")
        let root = t.path + "/root"
        let daemon = try IpactrDaemon(root: root)
        defer { daemon.stop() }
        #expect(try daemon.ipactr(["import", t.path + "/layout", "first"]).status == 0)
        let before = try snapshot(root)

        // Feed the archive through a fifo and stop half-way: the importer
        // blocks with its staging area half full; then kill it.
        let fifo = t.path + "/fifo"
        try syscall("mkfifo") { mkfifo(fifo, 0o600) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ipactrBinary)
        p.arguments = ["import", fifo, "second"]
        p.environment = daemon.environment
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let writer = try FD.open(fifo, O_WRONLY)
        let bytes = try readFile(t.path + "/img.oci.tar", limit: 1 << 30)
        try writeAll(writer.raw, Array(bytes.prefix(bytes.count - 1024)), what: "fifo")
        // Wait (no deadline: the importer must get there) for staged content.
        while (try? listDirectory(root + "/images/tmp"))?.contains(where: { $0.hasPrefix("stage-") }) != true && p.isRunning {
            usleep(10_000)
        }
        try #require(p.isRunning, "the importer must still be waiting for the rest of the archive")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal)
        // The caller's end of the job's lifeline closed: the daemon stops the worker.
        #expect(eventually(30) { !workerRuns("import", root: root) }, "the import worker outlived its caller")
        #expect(try snapshot(root) != before)  // the dead importer's staging area

        // The next writer cleans up; reading never needed to.
        #expect(try daemon.ipactr(["images"]).stdout.contains("first"))
        #expect(try daemon.ipactr(["rmi", "nosuch"]).status == 3)
        #expect(try snapshot(root) == before)
    }
}
