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

func xattr(_ path: String, _ name: String) -> [UInt8]? {
    var buf = [UInt8](repeating: 0, count: 4096)
    let n = lgetxattr(path, name, &buf, buf.count)
    return n < 0 ? nil : Array(buf[0..<n])
}

@Suite struct StoreTests {
    @Test func importsOCILayoutIntoOverlayLowerFormat() throws {
        let t = TempDir()
        let md = try buildRichLayout(t.sub("layout"), scratch: t.sub("scratch"))
        let store = try ImageStore(root: t.path + "/root")
        let (rec, format) = try store.importImage(from: t.path + "/layout", name: "rich:1")
        #expect(format == .ociLayout)
        #expect(rec.digest == md.digest)
        #expect(rec.diffIDs.count == 2)
        #expect(try store.images().map(\.name) == ["rich:1"])

        // Store directory is private: layers hold setuid binaries.
        #expect(lstatOrNil(t.path + "/root")!.st_mode & 0o777 == 0o700)

        let l1 = store.layerPath(rec.diffIDs[0]), l2 = store.layerPath(rec.diffIDs[1])
        let su = lstatOrNil(l1 + "/usr/bin/su")!
        #expect(su.st_mode & 0o7777 == 0o4755)
        #expect(lstatOrNil(l1 + "/sgid")!.st_mode & 0o7777 == 0o2755)
        #expect(lstatOrNil(l1 + "/sgid")!.st_gid == 5)
        #expect(su.st_nlink == 2)
        #expect(lstatOrNil(l1 + "/usr/bin/su-again")!.st_ino == su.st_ino)
        #expect(xattr(l1 + "/usr/bin/ping", "security.capability") == Array(netRawCapability.utf8))
        #expect(xattr(l1 + "/usr/bin/ping", "user.note") == Array("pingy".utf8))
        #expect(lstatOrNil(l1 + "/home/user/file")!.st_uid == 1000)
        #expect(lstatOrNil(l1 + "/usr/bin/su")!.st_mtim.tv_sec == 1_700_000_000)
        #expect(lstatOrNil(l1 + "/opt/data")!.st_mtim.tv_sec == 1_700_000_000)

        // Whiteout: a 0/0 character device; opaque dir: the trusted xattr.
        let wh = lstatOrNil(l2 + "/removeme")!
        #expect(wh.st_mode & S_IFMT == S_IFCHR && wh.st_rdev == 0)
        #expect(lstatOrNil(l2 + "/.wh.removeme") == nil)
        #expect(xattr(l2 + "/opt/data", "trusted.overlay.opaque") == Array("y".utf8))
        #expect(lstatOrNil(l2 + "/opt/data/.wh..wh..opq") == nil)
        #expect(lstatOrNil(l2 + "/run/fifo")!.st_mode & S_IFMT == S_IFIFO)
        #expect(lstatOrNil(l2 + "/run/fifo")!.st_mode & 0o777 == 0o620)
    }

    @Test func flattenedRootfsMountsAsOverlay() throws {
        let t = TempDir()
        try buildRichLayout(t.sub("layout"), scratch: t.sub("scratch"))
        let store = try ImageStore(root: t.path + "/root")
        let (rec, _) = try store.importImage(from: t.path + "/layout", name: "rich")
        let mnt = t.sub("mnt")
        try store.mountRootfs(rec, at: mnt)
        t.mounts.append(mnt)
        defer { try? store.unmountRootfs(at: mnt); t.mounts.removeAll() }
        #expect(lstatOrNil(mnt + "/removeme") == nil)
        #expect(try listDirectory(mnt + "/opt/data").sorted() == ["c"])
        #expect(try String(decoding: readFile(mnt + "/etc/passwd"), as: UTF8.self).hasPrefix("root:"))
        #expect(try String(decoding: readFile(mnt + "/etc/hostname2"), as: UTF8.self) == "box\n")
    }

    /// 60 layers: their store paths alone would overflow mount(2)'s options page.
    @Test func manyLayerImageMounts() throws {
        let t = TempDir()
        let scratch = t.sub("scratch")
        let b = try LayoutBuilder(t.sub("layout"))
        var layers: [(Descriptor, Digest)] = []
        for i in 0..<60 {
            try writeTar(scratch + "/\(i).tar", [.file("layer", "\(i)"), .file("only-\(i)", "")])
            layers.append(try b.layer(scratch + "/\(i).tar", gzip: false))
        }
        try b.image(layers: layers)
        let store = try ImageStore(root: t.path + "/root")
        let (rec, _) = try store.importImage(from: b.dir, name: "tall")
        #expect(store.lowerDirs(of: rec).joined(separator: ":").utf8.count > 4096)
        let mnt = t.sub("mnt")
        try store.mountRootfs(rec, at: mnt)
        t.mounts.append(mnt)
        defer { try? store.unmountRootfs(at: mnt); t.mounts.removeAll() }
        #expect(try String(decoding: readFile(mnt + "/layer"), as: UTF8.self) == "59")
        #expect(try listDirectory(mnt).count == 61)
    }

    @Test func sharedLayersAreUnpackedOnceAndCountedOnRemoval() throws {
        let t = TempDir()
        let scratch = t.sub("scratch")
        try writeTar(scratch + "/base.tar.gz", richLayer1, gzip: true)
        try writeTar(scratch + "/a.tar", [.file("a", "a")])
        try writeTar(scratch + "/b.tar", [.file("b", "b")])
        let la = try LayoutBuilder(t.sub("A")), lb = try LayoutBuilder(t.sub("B"))
        try la.image(layers: [la.layer(scratch + "/base.tar.gz", gzip: true), la.layer(scratch + "/a.tar", gzip: false)])
        try lb.image(layers: [lb.layer(scratch + "/base.tar.gz", gzip: true), lb.layer(scratch + "/b.tar", gzip: false)])

        let store = try ImageStore(root: t.path + "/root")
        let (a, _) = try store.importImage(from: t.path + "/A", name: "a")
        let (b, _) = try store.importImage(from: t.path + "/B", name: "b")
        #expect(a.diffIDs[0] == b.diffIDs[0])
        let layers = { try listDirectory(t.path + "/root/images/layers/sha256").sorted() }
        #expect(try layers().count == 3)

        try store.remove("a")
        #expect(try layers() == [b.diffIDs[0].hex, b.diffIDs[1].hex].sorted())
        #expect(lstatOrNil(store.layerPath(b.diffIDs[0]) + "/usr/bin/su") != nil)
        // Re-using a name drops what only the old image used.
        try store.importImage(from: t.path + "/A", name: "b2")
        try store.importImage(from: t.path + "/B", name: "b2")
        #expect(try layers() == [b.diffIDs[0].hex, b.diffIDs[1].hex].sorted())
        try store.remove("b2")
        try store.remove(b.shortID)  // by id prefix
        #expect(try layers().isEmpty)
        #expect(try listDirectory(t.path + "/root/images/blobs/sha256").isEmpty)
        #expect(try store.images().isEmpty)
        #expect(throws: IpactrError.self) { try store.remove("b") }
    }

    /// The path `ipactr pull` takes: blobs written through ContentSink (here
    /// from several threads at once), then `commitImage`.
    @Test func contentSinkThenCommitImage() throws {
        let t = TempDir()
        let md = try buildRichLayout(t.sub("layout"), scratch: t.sub("scratch"))
        let layout = t.path + "/layout"
        let manifest = try JSONDecoder().decode(ImageManifest.self, from: Data(readFile(layout + "/blobs/sha256/" + md.digest.hex)))
        let descriptors = [md, manifest.config] + manifest.layers
        let store = try ImageStore(root: t.path + "/root")
        #expect(!descriptors.contains { store.hasBlob($0.digest) })
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: descriptors.count) { i in
            do {
                let d = descriptors[i]
                let w = try store.beginBlob(d.digest, size: d.size)
                let bytes = try readFile(layout + "/blobs/sha256/" + d.digest.hex, limit: 1 << 30)
                // In small pieces, as a network read would hand them over.
                for start in stride(from: 0, to: bytes.count, by: 100) {
                    try bytes[start..<min(start + 100, bytes.count)].withUnsafeBytes { try w.write($0) }
                }
                try w.commit()
            } catch {
                failures.add("\(error)")
            }
        }
        #expect(failures.list.isEmpty, "\(failures.list)")
        #expect(descriptors.allSatisfy { store.hasBlob($0.digest) })
        // Staged, not yet in the store: nothing is visible before the commit.
        #expect(try listDirectory(t.path + "/root/images/blobs/sha256").isEmpty)
        let rec = try store.commitImage(manifestDigest: md.digest, name: "localhost:5000/rich:1")
        #expect(rec.id == manifest.config.digest)
        #expect(try listDirectory(t.path + "/root/images/blobs/sha256").count == 4)
        #expect(try store.image("localhost:5000/rich:1").diffIDs.count == 2)

        // A blob whose bytes do not match its digest is refused at commit.
        let w = try store.beginBlob(Digest(sha256Hex: String(repeating: "3", count: 64)), size: 3)
        try Array("abc".utf8).withUnsafeBytes { try w.write($0) }
        #expect(throws: IpactrError.self) { try w.commit() }
        w.abort()
        // …and one longer than announced, as soon as it is.
        let w2 = try store.beginBlob(Digest(sha256Hex: String(repeating: "3", count: 64)), size: 2)
        #expect(throws: IpactrError.self) { try Array("abc".utf8).withUnsafeBytes { try w2.write($0) } }
        w2.abort()
    }

    @Test func pruneRemovesUnreferencedContentOnly() throws {
        let t = TempDir()
        try buildRichLayout(t.sub("layout"), scratch: t.sub("scratch"))
        let store = try ImageStore(root: t.path + "/root")
        try store.importImage(from: t.path + "/layout", name: "keep")
        let before = try snapshot(t.path + "/root/images/blobs")
        // A blob a fetch committed but never used, and a layer nobody names.
        let stray = Array("stray".utf8)
        let w = try store.beginBlob(Digest(sha256Hex: sha256Hex(stray)), size: Int64(stray.count))
        try stray.withUnsafeBytes { try w.write($0) }
        try w.commit()
        try store.importImage(from: t.path + "/layout", name: "gone")
        try FileManager.default.createDirectory(atPath: t.path + "/root/images/layers/sha256/" + String(repeating: "e", count: 64) + "/rootfs", withIntermediateDirectories: true)
        store.abortStaged()
        let (blobs, layers) = try store.prune()
        #expect(blobs == 0)  // the stray blob was only staged; abortStaged dropped it
        #expect(layers == 1)
        #expect(try snapshot(t.path + "/root/images/blobs") == before)
        #expect(try store.images().map(\.name) == ["gone", "keep"])
    }

    /// A tar cannot set overlayfs's own xattrs (a redirect or an opaque flag
    /// would change what the merged tree shows); other trusted.* ones stay.
    @Test func overlayXattrsFromTheTarAreDropped() throws {
        let t = TempDir()
        try writeTar(t.path + "/l.tar", [.dir("d", xattrs: ["trusted.overlay.redirect": "/etc", "trusted.overlay.opaque": "y", "trusted.other": "1"]),
                                         TarEntry(name: "link", kind: .symlink("/etc"), mode: 0o777, xattrs: ["trusted.label": "on-a-symlink"])])
        let store = try ImageStore(root: t.path + "/root")
        let rec = try store.importRootfsTar(t.path + "/l.tar", name: "x")
        let d = store.layerPath(rec.diffIDs[0]) + "/d"
        #expect(xattr(store.layerPath(rec.diffIDs[0]) + "/link", "trusted.label") == Array("on-a-symlink".utf8))
        #expect(xattr(d, "trusted.overlay.redirect") == nil)
        #expect(xattr(d, "trusted.overlay.opaque") == nil)
        #expect(xattr(d, "trusted.other") == Array("1".utf8))
    }

    @Test func deviceNodesAreSkippedAndRecorded() throws {
        let t = TempDir()
        try writeTar(t.path + "/l.tar", [.dir("dev"), TarEntry(name: "dev/sda", kind: .charDevice(8, 0), mode: 0o666),
                                         TarEntry(name: "dev/null", kind: .charDevice(1, 3), mode: 0o666), .file("ok", "1")])
        let store = try ImageStore(root: t.path + "/root")
        let rec = try store.importRootfsTar(t.path + "/l.tar", name: "devs")
        let l = store.layerPath(rec.diffIDs[0])
        #expect(lstatOrNil(l + "/dev/sda") == nil)
        #expect(lstatOrNil(l + "/dev/null") == nil)
        #expect(lstatOrNil(l + "/ok") != nil)
        let info = try JSONDecoder().decode(LayerInfo.self, from: Data(readFile(parentDirectory(l) + "/layer.json")))
        #expect(info.skippedDevices == ["dev/sda", "dev/null"])
    }

    @Test func importTarGzipZstdAndImportFs() throws {
        let t = TempDir()
        try writeTar(t.path + "/root.tar", richLayer1)
        try sh("gzip -k '\(t.path)/root.tar' && zstd -q -k '\(t.path)/root.tar'")
        let store = try ImageStore(root: t.path + "/root")
        let plain = try store.importRootfsTar(t.path + "/root.tar", name: "plain")
        let gz = try store.importRootfsTar(t.path + "/root.tar.gz", name: "gz")
        let zst = try store.importRootfsTar(t.path + "/root.tar.zst", name: "zst")
        // Same uncompressed tar: one layer directory serves all three.
        #expect(plain.diffIDs == gz.diffIDs && gz.diffIDs == zst.diffIDs)
        #expect(try store.manifest(of: gz).layers[0].mediaType == MediaType.ociLayerGzip)
        #expect(try store.manifest(of: zst).layers[0].mediaType == MediaType.ociLayerZstd)
        #expect(try listDirectory(t.path + "/root/images/layers/sha256").count == 1)

        // import-fs of the unpacked tree gives back the same tree.
        let fs = try store.importDirectory(store.layerPath(plain.diffIDs[0]), name: "fs")
        #expect(fs.diffIDs != plain.diffIDs)  // a new tar, so a new layer
        #expect(try snapshot(store.layerPath(fs.diffIDs[0])) == snapshot(store.layerPath(plain.diffIDs[0])))
        #expect(xattr(store.layerPath(fs.diffIDs[0]) + "/usr/bin/ping", "security.capability") == Array(netRawCapability.utf8))
    }

    @Test func recoveryUndoesInterruptedCommitsAndStaleTemps() throws {
        let t = TempDir()
        try buildRichLayout(t.sub("layout"), scratch: t.sub("scratch"))
        let root = t.path + "/root"
        do {
            let store = try ImageStore(root: root)
            try store.importImage(from: t.path + "/layout", name: "rich")
        }
        let before = try snapshot(root + "/images")
        // What a writer killed mid-commit leaves: a staging dir nobody locks,
        // a blob and a layer moved in, and the journal listing them.
        let fake = String(repeating: "a", count: 64), fakeLayer = String(repeating: "b", count: 64)
        try sh("mkdir -p \(root)/images/tmp/stage-1-1/blobs && echo x > \(root)/images/tmp/stage-1-1/blobs/f")
        try sh("echo x > \(root)/images/blobs/sha256/\(fake) && mkdir -p \(root)/images/layers/sha256/\(fakeLayer)/rootfs")
        try sh("echo x > \(root)/images/refs.json.tmp-1-2")
        try writeFileAtomically(root + "/images/tmp/journal-1-1.json",
                                Array(#"{"blobs":["sha256:\#(fake)"],"layers":["sha256:\#(fakeLayer)"]}"#.utf8))
        #expect(try snapshot(root + "/images") != before)
        // The next writer (here a failing rmi) recovers first.
        let r = try ipactr(root, ["rmi", "nosuch"])
        #expect(r.status == 3)
        #expect(r.stderr == "ipactr: no image \"nosuch\"\n")
        #expect(try snapshot(root + "/images") == before)
    }

    @Test func namesAreValidated() throws {
        for bad in ["", "UPPER", "a b", "x:", ":tag", "a//b", "-x"] {
            #expect(throws: IpactrError.self) { try ImageName.validate(bad) }
        }
        for good in ["debian", "debian:12", "library/debian:bookworm-slim", "localhost:5000/x/y:1", "127.0.0.1:5000/debian"] {
            #expect(throws: Never.self) { try ImageName.validate(good) }
        }
    }
}

/// Collects errors from concurrent work.
final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ s: String) { lock.withLock { items.append(s) } }
    var list: [String] { lock.withLock { items } }
}

/// The verbs as a user runs them.
@Suite struct CLITests {
    @Test func importTarImportFsAndRootFromEnvironment() throws {
        let t = TempDir()
        try writeTar(t.path + "/rootfs.tar", richLayer1)
        try sh("gzip '\(t.path)/rootfs.tar'")
        let root = t.path + "/root"
        let a = try ipactr(root, ["import-tar", t.path + "/rootfs.tar.gz", "debian"])
        #expect(a.status == 0, "\(a.stderr)")
        #expect(a.stdout.hasPrefix("imported debian ("))
        let b = try ipactr(root, ["import-fs", t.sub("scratch"), "empty:1"])
        #expect(b.status == 0, "\(b.stderr)")

        let listed = try ipactr(root, ["images"])
        let lines = listed.stdout.split(separator: "\n")
        #expect(lines.count == 3)
        #expect(lines[0].split(separator: " ", omittingEmptySubsequences: true) == ["NAME", "ID", "SIZE", "CREATED"])
        #expect(lines[1].hasPrefix("debian "))
        #expect(lines[2].hasPrefix("empty:1 "))
        let after = try ipactr(root, ["image", "inspect", "debian"])
        #expect(after.status == 0)
        #expect(after.stdout.contains("\"name\" : \"debian\""))
        #expect(lstatOrNil(root)!.st_mode & 0o777 == 0o700)
    }

    @Test func badArgumentsGetOneLineAndChangeNothing() throws {
        let t = TempDir()
        let root = t.path + "/root"
        try writeTar(t.path + "/rootfs.tar", richLayer1)
        #expect(try ipactr(root, ["import-tar", t.path + "/rootfs.tar", "ok"]).status == 0)
        let before = try snapshot(root)
        let cases: [([String], Int32, String)] = [
            (["import-tar", t.path + "/rootfs.tar", "Bad Name"], 2, "ipactr: invalid image name \"Bad Name\""),
            (["import-tar", t.path + "/nope.tar", "x"], 3, "ipactr: \(t.path)/nope.tar: not a regular file"),
            (["import", t.path + "/nope"], 3, "ipactr: \(t.path)/nope: no such file or directory"),
            (["import-fs", t.path + "/rootfs.tar", "x"], 3, "ipactr: \(t.path)/rootfs.tar: not a directory"),
            (["image", "inspect", "nosuch"], 3, "ipactr: no image \"nosuch\""),
            (["rmi", "nosuch"], 3, "ipactr: no image \"nosuch\""),
        ]
        for (args, status, message) in cases {
            let r = try ipactr(root, args)
            #expect(r.status == status, "\(args)")
            #expect(r.stderr.hasPrefix(message), "\(args): \(r.stderr)")
            #expect(r.stderr.filter { $0 == "\n" }.count == 1, "\(args): \(r.stderr)")
            #expect(try snapshot(root) == before, "\(args)")
        }
        let usage = try ipactr(root, ["rmi"])
        #expect(usage.status == 64)
    }

    @Test func concurrentImportsAreSerialised() throws {
        let t = TempDir()
        let scratch = t.sub("scratch")
        try writeTar(scratch + "/base.tar.gz", richLayer1, gzip: true)
        var procs: [Process] = []
        let daemon = try IpactrDaemon(root: t.path + "/root")
        defer { daemon.stop() }
        for i in 0..<4 {
            try writeTar(scratch + "/\(i).tar", [.file("f\(i)", "\(i)")])
            let b = try LayoutBuilder(t.sub("L\(i)"))
            try b.image(layers: [b.layer(scratch + "/base.tar.gz", gzip: true), b.layer(scratch + "/\(i).tar", gzip: false)])
        }
        for i in 0..<4 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: ipactrBinary)
            p.arguments = ["import", t.path + "/L\(i)", "img\(i)"]
            p.environment = daemon.environment
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            procs.append(p)
        }
        for p in procs { p.waitUntilExit(); #expect(p.terminationStatus == 0) }
        let store = try ImageStore(root: t.path + "/root")
        #expect(try store.images().map(\.name) == ["img0", "img1", "img2", "img3"])
        // One shared base layer plus one per image; nothing left in tmp.
        #expect(try listDirectory(t.path + "/root/images/layers/sha256").count == 5)
        #expect(try listDirectory(t.path + "/root/images/tmp").isEmpty)
    }
}
