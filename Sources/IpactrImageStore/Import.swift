#if canImport(Glibc)
import Glibc
#endif
import CArchive
import Foundation
import IpactrOCI
import IpactrSystem
import SystemPackage

/// The image formats `importImage` recognises.
public enum ImportFormat: String, Sendable {
    case ociLayout = "oci"
    case ociArchive = "oci-archive"
    case dockerArchive = "docker-archive"
}

extension ImageStore {
    /// Throws away blobs and layers written since the last `commitImage`
    /// (a fetch that failed half-way). Also done when the process ends.
    public func abortStaged() {
        stagingArea = nil
    }

    /// Runs an import; on failure nothing it staged survives.
    func staged<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            abortStaged()
            throw error
        }
    }

    /// Imports an OCI image layout directory, an oci-archive or a
    /// docker-archive tarball (told apart by their contents). `name` defaults
    /// to the name the archive records (docker-archive `RepoTags`, or an OCI
    /// `org.opencontainers.image.ref.name` that is a full name).
    @discardableResult
    public func importImage(from path: String, name: String?) throws -> (ImageRecord, ImportFormat) {
        if let name { try ImageName.validate(name) }
        guard let st = statOrNil(path) else { throw IpactrError(.notFound, "\(path): no such file or directory") }
        return try staged {
            if (st.st_mode & S_IFMT) == S_IFDIR {
                guard lstatOrNil(path + "/index.json") != nil else {
                    throw IpactrError(.invalidArgument, "\(path): not an OCI image layout (no index.json)")
                }
                try checkLayoutVersion(readFile(path + "/oci-layout", limit: 4096), path)
                let source = LayoutDirectory(dir: path, store: self)
                return (try importOCI(index: readFile(path + "/index.json"), source: source, name: name, origin: path), .ociLayout)
            }
            let archive = try ArchiveContents(path: path, store: self)
            if let index = archive.small["index.json"] {
                if let v = archive.small["oci-layout"] { try checkLayoutVersion(v, path) }
                return (try importOCI(index: index, source: archive, name: name, origin: path), .ociArchive)
            }
            if let manifest = archive.small["manifest.json"] {
                return (try importDockerArchive(manifest: manifest, archive: archive, name: name, origin: path), .dockerArchive)
            }
            throw IpactrError(.invalidArgument, "\(path): not an OCI image layout, oci-archive or docker-archive (no index.json or manifest.json)")
        }
    }

    private func checkLayoutVersion(_ bytes: [UInt8], _ path: String) throws {
        struct Layout: Decodable { var imageLayoutVersion: String }
        let l = try decodeJSON(Layout.self, bytes, what: "\(path): oci-layout")
        guard l.imageLayoutVersion.hasPrefix("1.") else {
            throw IpactrError(.unsupported, "\(path): OCI layout version \(l.imageLayoutVersion) is not supported")
        }
    }

    // MARK: OCI layout / oci-archive

    private func importOCI(index bytes: [UInt8], source: BlobSource, name: String?, origin: String) throws -> ImageRecord {
        let index = try decodeJSON(ImageIndex.self, bytes, what: "\(origin): index.json")
        if let mt = index.mediaType, !MediaType.isIndex(mt) {
            throw IpactrError(.unsupported, "\(origin): index.json: unknown media type \"\(mt)\"")
        }
        let (desc, refName) = try chooseManifest(index, source: source, name: name, origin: origin)
        try source.stage(desc, "manifest")
        let manifest = try decodeJSON(ImageManifest.self, readFile(blobPath(desc.digest)!, limit: 4 << 20), what: "manifest \(desc.digest)")
        guard MediaType.isManifest(manifest.mediaType ?? desc.mediaType) else {
            throw IpactrError(.unsupported, "manifest \(desc.digest): unknown media type \"\(manifest.mediaType ?? desc.mediaType)\"")
        }
        try source.stage(manifest.config, "config")
        for (i, l) in manifest.layers.enumerated() {
            guard MediaType.layerCompression(l.mediaType) != nil else {
                throw IpactrError(.unsupported, "layer \(i + 1) (\(l.digest)): unknown media type \"\(l.mediaType)\"")
            }
            try source.stage(l, "layer \(i + 1)")
        }
        guard let finalName = name ?? refName else {
            throw IpactrError(.invalidArgument, "\(origin) does not name its image: give a NAME")
        }
        return try commitImage(manifestDigest: desc.digest, name: finalName)
    }

    /// The manifest to import: the only one, or the one `name` (or its tag)
    /// is annotated with, or the linux/amd64 one; nested indexes are followed.
    private func chooseManifest(_ index: ImageIndex, source: BlobSource, name: String?, origin: String, depth: Int = 0) throws -> (Descriptor, String?) {
        var candidates = index.manifests
        if candidates.count > 1, let name {
            let tag = name.split(separator: ":").last.map(String.init)
            let named = candidates.filter { d in
                let r = d.annotations?["org.opencontainers.image.ref.name"] ?? d.annotations?["io.containerd.image.name"]
                return r == name || r == tag
            }
            if !named.isEmpty { candidates = named }
        }
        if candidates.count > 1 {
            candidates = candidates.filter { $0.platform.map { $0.os == "linux" && $0.architecture == "amd64" } ?? false }
        }
        guard candidates.count == 1, let d = candidates.first else {
            throw IpactrError(.invalidArgument, "\(origin): index.json lists \(index.manifests.count) images and none is unambiguously the one to import")
        }
        if MediaType.isIndex(d.mediaType) {
            guard depth < 4 else { throw IpactrError(.corrupt, "\(origin): indexes nested too deep") }
            try source.stage(d, "index")
            let nested = try decodeJSON(ImageIndex.self, readFile(blobPath(d.digest)!), what: "index \(d.digest)")
            return try chooseManifest(nested, source: source, name: nil, origin: origin, depth: depth + 1)
        }
        guard MediaType.isManifest(d.mediaType) else {
            throw IpactrError(.unsupported, "\(origin): manifest \(d.digest): unknown media type \"\(d.mediaType)\"")
        }
        let ref = d.annotations?["io.containerd.image.name"] ?? d.annotations?["org.opencontainers.image.ref.name"]
        // A bare tag ("latest") is not a name; a full reference is.
        let refName = ref.flatMap { r in (r.contains("/") || r.contains(":")) && (try? ImageName.validate(r)) != nil ? r : nil }
        return (d, refName)
    }

    // MARK: docker-archive

    private func importDockerArchive(manifest bytes: [UInt8], archive: ArchiveContents, name: String?, origin: String) throws -> ImageRecord {
        struct Entry: Decodable { var Config: String; var RepoTags: [String]?; var Layers: [String] }
        let entries = try decodeJSON([Entry].self, bytes, what: "\(origin): manifest.json")
        var chosen = entries
        if chosen.count > 1, let name { chosen = chosen.filter { $0.RepoTags?.contains(name) ?? false } }
        guard chosen.count == 1, let entry = chosen.first else {
            throw IpactrError(.invalidArgument, "\(origin): manifest.json lists \(entries.count) images; give the NAME of one of them")
        }
        let (configDigest, configSize) = try archive.file(entry.Config, origin: origin)
        // "HEX.json" and "blobs/sha256/HEX" name their content: hold them to it.
        let base = entry.Config.split(separator: "/").last.map(String.init) ?? ""
        let claimed = base.hasSuffix(".json") ? String(base.dropLast(5)) : base
        if claimed.count == 64, claimed.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }), claimed != configDigest.hex {
            throw IpactrError(.corrupt, "\(origin): config \(entry.Config) has digest \(configDigest)")
        }
        let configBytes = try readFile(blobPath(configDigest)!)
        let config = try decodeJSON(ImageConfig.self, configBytes, what: "\(origin): config \(entry.Config)")
        var layers: [Descriptor] = []
        for l in entry.Layers {
            let (d, size) = try archive.file(l, origin: origin)
            let type: String
            switch try compression(of: blobPath(d)!, what: "\(origin): layer \(l)") {
            case .none: type = MediaType.ociLayer
            case .gzip: type = MediaType.ociLayerGzip
            case .zstd: type = MediaType.ociLayerZstd
            }
            layers.append(Descriptor(mediaType: type, digest: d, size: size))
        }
        // The layer tars are checked against the config's diff_ids when unpacked.
        guard config.rootfs.diff_ids.count == layers.count else {
            throw IpactrError(.corrupt, "\(origin): config lists \(config.rootfs.diff_ids.count) diff_ids for \(layers.count) layers")
        }
        let manifest = ImageManifest(config: Descriptor(mediaType: MediaType.ociConfig, digest: configDigest, size: configSize), layers: layers)
        let mdigest = try stageJSON(manifest)
        guard let finalName = name ?? entry.RepoTags?.first else {
            throw IpactrError(.invalidArgument, "\(origin) does not name its image: give a NAME")
        }
        return try commitImage(manifestDigest: mdigest, name: finalName)
    }

    func stageJSON<T: Encodable>(_ value: T) throws -> Digest {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let bytes = try enc.encode(value)
        let w = try beginUnnamedBlob()
        try bytes.withUnsafeBytes { try w.write($0) }
        return try w.finish()
    }

    // MARK: plain root file systems

    /// Imports a tarball of a root file system (plain, gzip or zstd) as a
    /// one-layer image, as `machinectl import-tar` does. The tarball becomes
    /// the layer blob as it is.
    @discardableResult
    public func importRootfsTar(_ path: String, name: String) throws -> ImageRecord {
        try ImageName.validate(name)
        guard let st = statOrNil(path), (st.st_mode & S_IFMT) == S_IFREG else {
            throw IpactrError(.notFound, "\(path): not a regular file")
        }
        return try staged {
            let w = try beginUnnamedBlob()
            try copyFile(path, into: w)
            let d = try w.finish()
            return try commitSingleLayer(blob: d, origin: path, name: name, comment: "ipactr import-tar")
        }
    }

    /// Imports a directory holding a root file system as a one-layer image
    /// (like `machinectl import-fs`): the tree is archived (pax, with xattrs)
    /// into an uncompressed layer blob. Other mounts below `dir` are skipped.
    @discardableResult
    public func importDirectory(_ dir: String, name: String) throws -> ImageRecord {
        try ImageName.validate(name)
        guard let st = statOrNil(dir), (st.st_mode & S_IFMT) == S_IFDIR else {
            throw IpactrError(.notFound, "\(dir): not a directory")
        }
        return try staged {
            let w = try beginUnnamedBlob()
            try TarWriter.archive(directory: dir, into: w)
            let d = try w.finish()
            return try commitSingleLayer(blob: d, origin: dir, name: name, comment: "ipactr import-fs")
        }
    }

    private func commitSingleLayer(blob: Digest, origin: String, name: String, comment: String) throws -> ImageRecord {
        let path = blobPath(blob)!
        let type: String
        switch try compression(of: path, what: origin) {
        case .none: type = MediaType.ociLayer
        case .gzip: type = MediaType.ociLayerGzip
        case .zstd: type = MediaType.ociLayerZstd
        }
        let info = try staging.unpackLayer(blobPath: path, expectedDiffID: nil, what: origin)
        let now = ISO8601DateFormatter().string(from: Date())
        let config = ImageConfig(rootfs: .init(diffIDs: [info.diffID]), created: now)
        let configDigest = try stageJSON(config)
        let manifest = try ImageManifest(
            config: Descriptor(mediaType: MediaType.ociConfig, digest: configDigest, size: staging.blobSize(configDigest)!),
            layers: [Descriptor(mediaType: type, digest: blob, size: staging.blobSize(blob)!)])
        return try commitImage(manifestDigest: try stageJSON(manifest), name: name)
    }

    /// The compression of a blob, from its first bytes.
    func compression(of path: String, what: String) throws -> LayerCompression {
        let fd = try FD.open(path, O_RDONLY)
        var magic = [UInt8](repeating: 0, count: 6)
        let n = try magic.withUnsafeMutableBytes { (b) throws in try syscall("read \(path)") { read(fd.raw, b.baseAddress, 6) } }
        let m = magic[0..<n]
        if m.starts(with: [0x1f, 0x8b]) { return .gzip }
        if m.starts(with: [0x28, 0xb5, 0x2f, 0xfd]) { return .zstd }
        if m.starts(with: [0xfd, 0x37, 0x7a, 0x58, 0x5a]) || m.starts(with: [0x42, 0x5a, 0x68]) {
            throw IpactrError(.unsupported, "\(what): xz and bzip2 compression are not supported (use gzip, zstd or none)")
        }
        return .none
    }

    func copyFile(_ path: String, into w: BlobWriter) throws {
        let fd = try FD.open(path, O_RDONLY)
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buf.deallocate() }
        while true {
            let n = try syscall("read \(path)") { read(fd.raw, buf.baseAddress, buf.count) }
            if n == 0 { return }
            try w.write(UnsafeRawBufferPointer(rebasing: buf[0..<n]))
        }
    }
}

func statOrNil(_ path: String) -> stat? {
    var st = stat()
    return stat(path, &st) == 0 ? st : nil
}

/// Where an importer's blobs come from.
protocol BlobSource {
    /// Puts the blob of `d` into the store's staging area (unless the store
    /// has it), verifying its size and digest.
    func stage(_ d: Descriptor, _ what: String) throws
}

/// An OCI image layout directory: blobs are copied in through a verifying writer.
struct LayoutDirectory: BlobSource {
    let dir: String
    let store: ImageStore

    func stage(_ d: Descriptor, _ what: String) throws {
        if store.hasBlob(d.digest) {
            _ = try store.checkBlob(d, what)
            return
        }
        let p = "\(dir)/blobs/\(d.digest.algorithm)/\(d.digest.hex)"
        guard let st = lstatOrNil(p), (st.st_mode & S_IFMT) == S_IFREG else {
            throw IpactrError(.notFound, "\(what) blob \(d.digest) is missing from \(dir)")
        }
        if Int64(st.st_size) != d.size {
            throw IpactrError(.corrupt, "\(what) blob \(d.digest) has \(st.st_size) bytes, its descriptor says \(d.size)")
        }
        let w = try store.beginBlob(d.digest, size: d.size)
        do {
            try store.copyFile(p, into: w)
            try w.commit()
        } catch {
            w.abort()
            throw IpactrError(.corrupt, "\(what) \((error as? IpactrError)?.message ?? "\(error)")")
        }
    }
}

/// The files of a tarball (oci-archive, docker-archive), read in one pass:
/// regular files are written into staging by content digest, the few small
/// top-level JSON files are kept in memory. Nothing is written by path, so
/// names in the archive cannot point anywhere.
final class ArchiveContents: BlobSource {
    var small: [String: [UInt8]] = [:]
    var files: [String: (Digest, Int64)] = [:]
    var links: [String: String] = [:]
    let store: ImageStore
    let origin: String

    init(path: String, store: ImageStore) throws {
        self.store = store
        origin = path
        guard let a = archive_read_new() else { throw IpactrError(.internalError, "archive_read_new failed") }
        defer { archive_read_free(a) }
        archive_read_support_filter_gzip(a)
        archive_read_support_filter_zstd(a)
        archive_read_support_format_tar(a)
        guard archive_read_open_filename(a, path, 1 << 20) == ARCHIVE_OK else {
            throw IpactrError(.invalidArgument, "\(path): \(archiveError(a))")
        }
        var entry: OpaquePointer?
        while true {
            let r = archive_read_next_header(a, &entry)
            if r == ARCHIVE_EOF { break }
            if r < ARCHIVE_WARN { throw IpactrError(.corrupt, "\(path): \(archiveError(a))") }
            guard let c = archive_entry_pathname(entry), let raw = String(validatingCString: c) else { continue }
            let name = Self.normalize(raw)
            if let h = archive_entry_hardlink(entry) {
                links[name] = Self.normalize(String(cString: h))
                continue
            }
            switch archive_entry_filetype(entry) {
            case AE_IFLNK:
                // Relative to the link's directory, as docker save writes them.
                let target = String(cString: archive_entry_symlink(entry))
                let dir = name.split(separator: "/").dropLast().joined(separator: "/")
                links[name] = Self.normalize(target.hasPrefix("/") ? target : (dir.isEmpty ? target : dir + "/" + target))
            case AE_IFREG:
                let size = archive_entry_size(entry)
                if !name.contains("/") && size <= 16 << 20 && (name.hasSuffix(".json") || name == "oci-layout" || name == "repositories") {
                    var bytes = [UInt8](repeating: 0, count: Int(size))
                    let n = bytes.withUnsafeMutableBytes { archive_read_data(a, $0.baseAddress, $0.count) }
                    guard n == size else { throw IpactrError(.corrupt, "\(path): \(name): \(archiveError(a))") }
                    // (Staged only when used as a blob: see `file`.)
                    small[name] = bytes
                    continue
                }
                let w = try store.beginUnnamedBlob()
                var buf: UnsafeRawPointer?
                var len = 0
                var off: la_int64_t = 0
                while true {
                    let r = archive_read_data_block(a, &buf, &len, &off)
                    if r == ARCHIVE_EOF { break }
                    if r < ARCHIVE_WARN { throw IpactrError(.corrupt, "\(path): \(name): \(archiveError(a))") }
                    try w.write(UnsafeRawBufferPointer(start: buf, count: len))
                }
                files[name] = (try w.finish(), size)
            default:
                continue
            }
        }
    }

    static func normalize(_ p: String) -> String {
        var out: [Substring] = []
        for c in p.split(separator: "/") {
            if c == "." { continue }
            if c == "..", !out.isEmpty { out.removeLast(); continue }
            out.append(c)
        }
        return out.joined(separator: "/")
    }

    /// A file of the archive (following links), by its name in the archive.
    func file(_ name: String, origin: String) throws -> (Digest, Int64) {
        var n = Self.normalize(name)
        for _ in 0..<16 {
            if let f = files[n] { return f }
            if let small = small[n] {
                let w = try store.beginUnnamedBlob()
                try small.withUnsafeBytes { try w.write($0) }
                let f = (try w.finish(), Int64(small.count))
                files[n] = f
                return f
            }
            guard let next = links[n] else { break }
            n = next
        }
        throw IpactrError(.notFound, "\(origin): \(name) is missing from the archive")
    }

    func stage(_ d: Descriptor, _ what: String) throws {
        let name = "blobs/\(d.digest.algorithm)/\(d.digest.hex)"
        let got: (Digest, Int64)
        do { got = try file(name, origin: origin) } catch {
            throw IpactrError(.notFound, "\(what) blob \(d.digest) is missing from \(origin)")
        }
        if got.1 != d.size { throw IpactrError(.corrupt, "\(what) blob \(d.digest) has \(got.1) bytes, its descriptor says \(d.size)") }
        if got.0 != d.digest { throw IpactrError(.corrupt, "\(what) blob \(d.digest): content has digest \(got.0)") }
    }
}
