#if canImport(Glibc)
import Glibc
#endif
import Foundation
import IpactrImageStore
import IpactrOCI
import IpactrSystem
import Testing

/// Each bad input, fed to the real `ipactr import`: one `ipactr: …` line
/// naming the problem, a non-zero exit, and the store byte-for-byte as before.
@Suite struct BadInputTests {
    enum Case: String, CaseIterable {
        case wrongDigest, wrongSize, truncatedBlob, truncatedGzip, missingBlob, malformedManifest, malformedIndex
        case unknownLayerMediaType, unknownConfigMediaType, wrongDiffID
        case dotDot, absolute, symlinkThenFile, hardlinkOutside, hardlinkAbsolute, hardlinkThroughSymlink
        case symlinkInLowerLayer, hardlinkToLowerLayer, notAnImage
    }

    /// A store holding one good image, and a scratch area.
    struct Setup {
        let t = TempDir()
        var root: String { t.path + "/root" }
        var scratch: String { t.path + "/scratch" }
        /// Where escapes would land, were they followed.
        var outside: String { t.path + "/outside" }

        init() throws {
            _ = t.sub("scratch")
            _ = t.sub("outside")
            try buildRichLayout(t.sub("good"), scratch: scratch)
            let r = try ipactr(root, ["import", t.path + "/good", "good:1"])
            guard r.status == 0 else { throw IpactrError(.io, "good import failed: \(r.stderr)") }
        }

        /// A layout with one layer made of `entries` (and a good bottom layer when `onTopOfGood`).
        func layout(_ name: String, _ entries: [TarEntry], below: [TarEntry]? = nil) throws -> (String, LayoutBuilder) {
            let dir = t.path + "/" + name
            let b = try LayoutBuilder(dir)
            var layers: [(Descriptor, Digest)] = []
            if let below {
                try writeTar(scratch + "/\(name)-below.tar", below)
                layers.append(try b.layer(scratch + "/\(name)-below.tar", gzip: false))
            }
            try writeTar(scratch + "/\(name).tar", entries)
            layers.append(try b.layer(scratch + "/\(name).tar", gzip: false))
            try b.image(layers: layers)
            return (dir, b)
        }
    }

    /// Rewrites the (only) manifest of a layout through `edit`, fixing up index.json.
    static func editManifest(_ b: LayoutBuilder, _ edit: (inout ImageManifest) throws -> Void) throws {
        let index = try JSONDecoder().decode(ImageIndex.self, from: Data(readFile(b.dir + "/index.json")))
        var m = try JSONDecoder().decode(ImageManifest.self, from: Data(readFile(b.dir + "/blobs/sha256/" + index.manifests[0].digest.hex)))
        try edit(&m)
        try b.writeIndex([try b.json(m, MediaType.ociManifest)])
    }

    static func manifest(_ b: LayoutBuilder) throws -> ImageManifest {
        let index = try JSONDecoder().decode(ImageIndex.self, from: Data(readFile(b.dir + "/index.json")))
        return try JSONDecoder().decode(ImageManifest.self, from: Data(readFile(b.dir + "/blobs/sha256/" + index.manifests[0].digest.hex)))
    }

    /// Builds the bad input for `c`; returns the path to import and the text the error must contain.
    static func make(_ c: Case, _ s: Setup) throws -> (String, String) {
        let simple: [TarEntry] = [.dir("etc"), .file("etc/os-release", "ID=test\n")]
        switch c {
        case .wrongDigest:
            let (dir, b) = try s.layout("l", simple)
            let layer = try manifest(b).layers[0]
            var bytes = try readFile(b.dir + "/blobs/sha256/" + layer.digest.hex)
            bytes[600] ^= 0xff  // same size, different content
            try writeFileAtomically(b.dir + "/blobs/sha256/" + layer.digest.hex, bytes)
            return (dir, "layer 1 blob \(layer.digest): content has digest sha256:")
        case .wrongSize:
            let (dir, b) = try s.layout("l", simple)
            try editManifest(b) { $0.layers[0].size += 1 }
            let l = try manifest(b).layers[0]
            return (dir, "layer 1 blob \(l.digest) has \(l.size - 1) bytes, its descriptor says \(l.size)")
        case .truncatedBlob:
            let (dir, b) = try s.layout("l", simple)
            let l = try manifest(b).layers[0]
            try sh("truncate -s 1000 '\(b.dir)/blobs/sha256/\(l.digest.hex)'")
            return (dir, "layer 1 blob \(l.digest) has 1000 bytes, its descriptor says \(l.size)")
        case .truncatedGzip:
            // Digest and size describe the truncated bytes: only unpacking can tell.
            try writeTar(s.scratch + "/big.tar.gz", simple + [.file("big", String(repeating: "0123456789abcdef\n", count: 4000))], gzip: true)
            let full = try readFile(s.scratch + "/big.tar.gz")
            let b = try LayoutBuilder(s.t.path + "/tg")
            let d = try b.blob(Array(full.prefix(full.count / 2)), MediaType.ociLayerGzip)
            try b.image(layers: [(d, Digest(sha256Hex: String(repeating: "1", count: 64)))])
            return (b.dir, "layer \(d.digest):")
        case .missingBlob:
            let (dir, b) = try s.layout("l", simple)
            let cfg = try manifest(b).config
            try removeTree(b.dir + "/blobs/sha256/" + cfg.digest.hex)
            return (dir, "config blob \(cfg.digest) is missing from")
        case .malformedManifest:
            let (dir, b) = try s.layout("l", simple)
            var md = try b.blob(Array(#"{"schemaVersion": 2, "config": {"#.utf8), MediaType.ociManifest)
            md.annotations = nil
            try b.writeIndex([md])
            return (dir, "manifest \(md.digest): malformed JSON")
        case .malformedIndex:
            let (dir, b) = try s.layout("l", simple)
            try writeFileAtomically(b.dir + "/index.json", Array("[not json".utf8))
            return (dir, "index.json: malformed JSON")
        case .unknownLayerMediaType:
            let (dir, b) = try s.layout("l", simple)
            try editManifest(b) { $0.layers[0].mediaType = "application/x-rar" }
            return (dir, "layer 1 (sha256:")
        case .unknownConfigMediaType:
            let (dir, b) = try s.layout("l", simple)
            try editManifest(b) { $0.config.mediaType = "application/x-something+json" }
            return (dir, "unknown media type \"application/x-something+json\"")
        case .wrongDiffID:
            try writeTar(s.scratch + "/d.tar", simple)
            let b = try LayoutBuilder(s.t.path + "/wd")
            let (d, _) = try b.layer(s.scratch + "/d.tar", gzip: false)
            let wrong = Digest(sha256Hex: String(repeating: "2", count: 64))
            try b.image(layers: [(d, wrong)])
            return (b.dir, "uncompressed content has digest \(d.digest), the config says \(wrong)")
        case .dotDot:
            let (dir, _) = try s.layout("l", [.dir("etc"), .file("../../../../outside/x", "pwned")])
            return (dir, "entry \"../../../../outside/x\" refused: name contains \"..\"")
        case .absolute:
            let (dir, _) = try s.layout("l", [.file(s.outside + "/abs", "pwned")])
            return (dir, "entry \"\(s.outside)/abs\" refused: absolute name")
        case .symlinkThenFile:
            let (dir, _) = try s.layout("l", [.symlink("etc", s.outside), .file("etc/passwd", "pwned")])
            return (dir, "entry \"etc/passwd\" refused: path goes through the symlink \"etc\"")
        case .hardlinkOutside:
            let (dir, _) = try s.layout("l", [.hardlink("h", "../../../../../etc/passwd")])
            return (dir, "entry \"h\" refused: name contains \"..\"")
        case .hardlinkAbsolute:
            let (dir, _) = try s.layout("l", [.hardlink("h", "/etc/passwd")])
            return (dir, "entry \"h\" refused: absolute name")
        case .hardlinkThroughSymlink:
            let (dir, _) = try s.layout("l", [.symlink("s", "/etc"), .hardlink("h", "s/passwd")])
            return (dir, "entry \"h\" refused: path goes through the symlink \"s\"")
        case .symlinkInLowerLayer:
            let (dir, _) = try s.layout("l", [.file("d/passwd", "pwned")], below: [.symlink("d", s.outside)])
            return (dir, "entry \"d/…\" refused: \"d\" is a symlink in layer 1")
        case .hardlinkToLowerLayer:
            let (dir, _) = try s.layout("l", [.hardlink("h", "etc/passwd")], below: [.dir("etc"), .file("etc/passwd", "root")])
            return (dir, "entry \"h\" refused: hard link target \"etc/passwd\" is not in this layer")
        case .notAnImage:
            try writeTar(s.scratch + "/plain.tar", simple)
            return (s.scratch + "/plain.tar", "not an OCI image layout, oci-archive or docker-archive")
        }
    }

    @Test(arguments: Case.allCases)
    func refusedAndStoreUnchanged(_ c: Case) throws {
        let s = try Setup()
        let (input, expected) = try Self.make(c, s)
        let before = try snapshot(s.root)
        let r = try ipactr(s.root, ["import", input, "bad:1"])
        #expect(r.status != 0)
        #expect(r.status != 1, "a known bad input maps to a specific error code")
        #expect(r.stderr.hasPrefix("ipactr: "))
        #expect(r.stderr.filter { $0 == "\n" }.count == 1, "one line: \(r.stderr)")
        #expect(r.stderr.contains(expected), "\(r.stderr)")
        #expect(r.stdout.isEmpty)
        #expect(try snapshot(s.root) == before)
        #expect(try listDirectory(s.outside).isEmpty)
        #expect(try listDirectory(s.root + "/images/tmp").isEmpty)
        let images = try ipactr(s.root, ["images"])
        #expect(images.stdout.split(separator: "\n").count == 2)  // header + good:1
    }
}
