#if canImport(Glibc)
import Glibc
#endif
import CArchive
import struct Crypto.SHA256
import IpactrTestSupport
import Foundation
import IpactrImageStore
import IpactrOCI
import IpactrSystem

/// A temp directory removed (with anything mounted below it unmounted) when released.
final class TempDir {
    let path: String
    var mounts: [String] = []

    init(_ tag: String = "ipactr-store-test") {
        var template = Array("/var/tmp/\(tag)-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit {
        for m in mounts.reversed() { umount2(m, Int32(MNT_DETACH)) }
        try? removeTree(path)
    }

    func sub(_ name: String) -> String {
        let p = path + "/" + name
        try? makeDirectories(p, mode: 0o755)
        return p
    }
}

/// One entry of a test tarball.
struct TarEntry {
    enum Kind { case file(String), bytes([UInt8]), dir, symlink(String), hardlink(String), fifo, charDevice(UInt32, UInt32) }
    var name: String
    var kind: Kind
    var mode: UInt32 = 0o644
    var uid: Int64 = 0
    var gid: Int64 = 0
    var mtime: Int = 1_700_000_000
    var xattrs: [String: String] = [:]

    static func file(_ name: String, _ content: String, mode: UInt32 = 0o644, uid: Int64 = 0, gid: Int64 = 0, xattrs: [String: String] = [:]) -> TarEntry {
        TarEntry(name: name, kind: .file(content), mode: mode, uid: uid, gid: gid, xattrs: xattrs)
    }
    static func dir(_ name: String, mode: UInt32 = 0o755, uid: Int64 = 0, gid: Int64 = 0, xattrs: [String: String] = [:]) -> TarEntry {
        TarEntry(name: name, kind: .dir, mode: mode, uid: uid, gid: gid, xattrs: xattrs)
    }
    static func symlink(_ name: String, _ target: String) -> TarEntry { TarEntry(name: name, kind: .symlink(target), mode: 0o777) }
    static func hardlink(_ name: String, _ target: String) -> TarEntry { TarEntry(name: name, kind: .hardlink(target)) }
}

/// Writes a pax tar (optionally gzip-compressed) with libarchive, byte for
/// byte as given: names are not cleaned, so escape attempts reach the unpacker.
func writeTar(_ path: String, _ entries: [TarEntry], gzip: Bool = false) throws {
    let a = archive_write_new()!
    defer { archive_write_free(a) }
    archive_write_set_format_pax_restricted(a)
    if gzip { archive_write_add_filter_gzip(a) }
    guard archive_write_open_filename(a, path) == ARCHIVE_OK else { throw IpactrError(.io, "open \(path)") }
    for t in entries {
        let e = archive_entry_new()!
        defer { archive_entry_free(e) }
        archive_entry_set_pathname(e, t.name)
        archive_entry_set_uid(e, t.uid)
        archive_entry_set_gid(e, t.gid)
        archive_entry_set_mtime(e, t.mtime, 0)
        for (k, v) in t.xattrs { archive_entry_xattr_add_entry(e, k, v, v.utf8.count) }
        var data: [UInt8] = []
        switch t.kind {
        case .file(let c):
            data = Array(c.utf8)
            archive_entry_set_filetype(e, 0o100000)
            archive_entry_set_size(e, Int64(data.count))
        case .bytes(let b):
            data = b
            archive_entry_set_filetype(e, 0o100000)
            archive_entry_set_size(e, Int64(data.count))
        case .dir:
            archive_entry_set_filetype(e, 0o040000)
        case .symlink(let target):
            archive_entry_set_filetype(e, 0o120000)
            archive_entry_set_symlink(e, target)
        case .hardlink(let target):
            archive_entry_set_filetype(e, 0o100000)
            archive_entry_set_hardlink(e, target)
            archive_entry_set_size(e, 0)
        case .fifo:
            archive_entry_set_filetype(e, 0o010000)
        case .charDevice(let maj, let min):
            archive_entry_set_filetype(e, 0o020000)
            archive_entry_set_rdevmajor(e, dev_t(maj))
            archive_entry_set_rdevminor(e, dev_t(min))
        }
        archive_entry_set_perm(e, mode_t(t.mode))
        guard archive_write_header(a, e) == ARCHIVE_OK else { throw IpactrError(.io, "tar header \(t.name)") }
        if !data.isEmpty { _ = data.withUnsafeBytes { archive_write_data(a, $0.baseAddress, $0.count) } }
    }
    archive_write_close(a)
}

func sha256Hex(_ bytes: [UInt8]) -> String {
    SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}

func sha256File(_ path: String) throws -> String { sha256Hex(try readFile(path, limit: 1 << 30)) }

/// Builds an OCI image layout directory by hand: blobs, manifest, config, index.
struct LayoutBuilder {
    let dir: String

    init(_ dir: String) throws {
        self.dir = dir
        try makeDirectories(dir + "/blobs/sha256", mode: 0o755)
        try writeFileAtomically(dir + "/oci-layout", Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8), mode: 0o644)
    }

    /// Adds a blob; returns its descriptor.
    @discardableResult
    func blob(_ bytes: [UInt8], _ mediaType: String) throws -> Descriptor {
        let hex = sha256Hex(bytes)
        try writeFileAtomically(dir + "/blobs/sha256/" + hex, bytes, mode: 0o644)
        return Descriptor(mediaType: mediaType, digest: Digest(sha256Hex: hex), size: Int64(bytes.count))
    }

    func json<T: Encodable>(_ v: T, _ mediaType: String) throws -> Descriptor {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return try blob(Array(enc.encode(v)), mediaType)
    }

    /// Adds a layer from a tar file; returns (descriptor, diffID).
    func layer(_ tarPath: String, gzip: Bool) throws -> (Descriptor, Digest) {
        let bytes = try readFile(tarPath, limit: 1 << 30)
        let diff: Digest
        if gzip {
            let raw = tarPath + ".raw"
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "gzip -dc '\(tarPath)' > '\(raw)'"]
            try p.run()
            p.waitUntilExit()
            diff = Digest(sha256Hex: try sha256File(raw))
        } else {
            diff = Digest(sha256Hex: sha256Hex(bytes))
        }
        return (try blob(bytes, gzip ? MediaType.ociLayerGzip : MediaType.ociLayer), diff)
    }

    /// Writes config, manifest and index.json for `layers`; returns the manifest descriptor.
    @discardableResult
    func image(layers: [(Descriptor, Digest)], tag: String = "latest") throws -> Descriptor {
        let config = ImageConfig(rootfs: .init(diffIDs: layers.map(\.1)), created: "2026-01-01T00:00:00Z")
        let cd = try json(config, MediaType.ociConfig)
        let manifest = ImageManifest(config: cd, layers: layers.map(\.0))
        var md = try json(manifest, MediaType.ociManifest)
        md.annotations = ["org.opencontainers.image.ref.name": tag]
        try writeIndex([md])
        return md
    }

    func writeIndex(_ manifests: [Descriptor]) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        try writeFileAtomically(dir + "/index.json", Array(enc.encode(ImageIndex(manifests: manifests))), mode: 0o644)
    }
}

/// A recursive listing of a tree with content hashes: two equal snapshots
/// mean the tree is byte-for-byte the same (mtimes aside).
func snapshot(_ root: String) throws -> [String] {
    var out: [String] = []
    func walk(_ rel: String) throws {
        let p = rel.isEmpty ? root : root + "/" + rel
        guard let st = lstatOrNil(p) else { return }
        var line = "\(rel.isEmpty ? "." : rel) mode=\(String(st.st_mode, radix: 8)) uid=\(st.st_uid) gid=\(st.st_gid)"
        switch st.st_mode & S_IFMT {
        case S_IFREG: line += " size=\(st.st_size) sha256=\(try sha256File(p))"
        case S_IFLNK:
            var buf = [CChar](repeating: 0, count: 4096)
            let n = readlink(p, &buf, 4095)
            line += " -> \(String(cString: Array(buf[0..<max(n, 0)]) + [0]))"
        case S_IFCHR, S_IFBLK: line += " rdev=\(st.st_rdev)"
        default: break
        }
        out.append(line)
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for n in try listDirectory(p).sorted() { try walk(rel.isEmpty ? n : rel + "/" + n) }
        }
    }
    try walk("")
    return out
}

/// Result of running a program.
struct Run {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program to completion, capturing its output.
func run(_ exe: String, _ args: [String], env: [String: String]? = nil) throws -> Run {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    if let env { p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 } }
    // Output goes to files, so a chatty child can never block on a full pipe.
    let t = TempDir("ipactr-run")
    FileManager.default.createFile(atPath: t.path + "/out", contents: nil)
    FileManager.default.createFile(atPath: t.path + "/err", contents: nil)
    p.standardOutput = FileHandle(forWritingAtPath: t.path + "/out")
    p.standardError = FileHandle(forWritingAtPath: t.path + "/err")
    try p.run()
    p.waitUntilExit()
    let o = try readFile(t.path + "/out", limit: 1 << 30), e = try readFile(t.path + "/err", limit: 1 << 30)
    return Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

/// Runs a shell command line; throws when it fails.
@discardableResult
func sh(_ command: String) throws -> String {
    let r = try run("/bin/sh", ["-c", command])
    if r.status != 0 { throw IpactrError(.io, "\(command): exit \(r.status): \(r.stderr)") }
    return r.stdout
}

/// The `ipactr` executable built next to the test bundle.
var ipactrBinary: String {
    let me = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL
    var dir = me.deletingLastPathComponent()
    // The bundle may be a directory (…/ipactrPackageTests.xctest/…) or a file.
    while !FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent("ipactr").path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent("ipactr").path
}

/// Runs `ipactr args…` against an ipactrd serving ROOT (started for the
/// call on a private bus, and stopped after it).
func ipactr(_ root: String, _ args: [String]) throws -> Run {
    let daemon = try IpactrDaemon(root: root)
    defer { daemon.stop() }
    let r = try daemon.ipactr(args)
    return Run(status: r.status, stdout: r.stdout, stderr: r.stderr)
}

/// Whether an `ipactr-worker VERB` of `root` runs (ipactrd's child).
func workerRuns(_ verb: String, root: String) -> Bool {
    let needle = "worker\0\(verb)\0--root\0\(root)\0"
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int32(entry) != nil {
        if let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"),
           String(decoding: data, as: UTF8.self).contains(needle) { return true }
    }
    return false
}
