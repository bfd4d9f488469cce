#if canImport(Glibc)
import Glibc
#endif
import struct Crypto.SHA256
import Foundation
import IpactrOCI
import IpactrSystem
import SystemPackage

/// The content-addressed image store (see README.md in this module for the
/// on-disk layout and the atomicity rules).
///
/// Writes are staged in a private directory under `tmp/` and moved into
/// place only by `commitImage`, under the store lock; so a failed or killed
/// import or pull leaves the store as it was. `hasBlob`, `beginBlob` and the
/// writers may be used from several threads at once (parallel layer fetches);
/// everything else from one thread at a time.
public final class ImageStore: ContentSink {
    /// The ipactr state directory (`/var/lib/ipactr`, `--root`, `IPACTR_ROOT`).
    public let root: String
    /// The store's own directory, `ROOT/images`.
    public let path: String

    var blobsDir: String { path + "/blobs/sha256" }
    var layersDir: String { path + "/layers/sha256" }
    var tmpDir: String { path + "/tmp" }
    var refsPath: String { path + "/refs.json" }
    var lockPath: String { path + "/lock" }

    private var lock: FileLock?
    private var lockDepth = 0
    var stagingArea: Staging? {
        get { stagingMutex.withLock { _staging } }
        set { stagingMutex.withLock { _staging = newValue } }
    }
    private var _staging: Staging?
    private let stagingMutex = NSLock()

    /// `IPACTR_ROOT` when set, else `/var/lib/ipactr`.
    public static var defaultRoot: String {
        if let r = getenv("IPACTR_ROOT"), r.pointee != 0 { return String(cString: r) }
        return "/var/lib/ipactr"
    }

    /// Opens the store, creating it (mode 0700) when missing.
    public init(root: String = ImageStore.defaultRoot) throws {
        self.root = root
        self.path = root + "/images"
        try makeDirectories(root, mode: 0o700)
        // The layers hold setuid binaries: keep host users out of the whole tree.
        try syscall("chmod \(root)") { chmod(root, 0o700) }
        for d in [path, blobsDir, layersDir, tmpDir] { try makeDirectories(d, mode: 0o700) }
    }

    // MARK: - Locking

    /// Runs `body` holding the store's writer lock (re-entrant within this
    /// instance), after removing what killed writers left.
    func withLock<T>(_ body: () throws -> T) throws -> T {
        if lockDepth == 0 {
            lock = try FileLock(path: lockPath)
        }
        lockDepth += 1
        defer {
            lockDepth -= 1
            if lockDepth == 0 { lock = nil }
        }
        // Every time the lock is taken afresh: a writer may have died since.
        if lockDepth == 1 { try recover() }
        return try body()
    }

    /// Rolls back commits that were cut short (their journals list what they
    /// had moved in) and removes temp entries whose owner is gone (nobody
    /// holds their flock).
    private func recover() throws {
        let refs = try loadRefs()
        let live = Set(refs.images.values.flatMap(\.blobs))
        let liveLayers = Set(refs.images.values.flatMap(\.diffIDs))
        // Names-file temps of a killed writer (we hold the lock: nobody else writes one).
        for name in try listDirectory(path) where name.hasPrefix("refs.json.tmp-") {
            try removeTree(path + "/" + name)
        }
        for name in try listDirectory(tmpDir) {
            let p = tmpDir + "/" + name
            if name.hasPrefix("journal-") && !name.contains(".tmp-") {
                let j = try JSONDecoder().decode(Journal.self, from: Data(readFile(p)))
                try discard(blobs: j.blobs.filter { !live.contains($0) }, layers: j.layers.filter { !liveLayers.contains($0) })
                try removeTree(p)
            } else if FileLock.isUnlocked(p) {
                try removeTree(p)
            }
        }
    }

    // MARK: - References

    func loadRefs() throws -> RefsFile {
        guard lstatOrNil(refsPath) != nil else { return RefsFile() }
        do {
            return try JSONDecoder().decode(RefsFile.self, from: Data(readFile(refsPath)))
        } catch let e as IpactrError {
            throw e
        } catch {
            throw IpactrError(.corrupt, "\(refsPath) is damaged: \(error)")
        }
    }

    func saveRefs(_ refs: RefsFile) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileAtomically(refsPath, Array(try enc.encode(refs)))
    }

    /// All named images, sorted by name.
    public func images() throws -> [ImageRecord] {
        try loadRefs().images.values.sorted { $0.name < $1.name }
    }

    /// The image called `name`, or whose id (config digest) is or starts with `name`.
    public func image(_ name: String) throws -> ImageRecord {
        let refs = try loadRefs()
        if let r = refs.images[name] { return r }
        let hex = name.hasPrefix("sha256:") ? String(name.dropFirst(7)) : name
        if hex.count >= 4, hex.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) {
            let matches = Set(refs.images.values.filter { $0.id.hex.hasPrefix(hex) }.map(\.id))
            if matches.count == 1, let r = refs.images.values.filter({ $0.id == matches.first! }).min(by: { $0.name < $1.name }) {
                return r
            }
            if matches.count > 1 { throw IpactrError(.invalidArgument, "\"\(name)\" matches more than one image id") }
        }
        throw IpactrError(.notFound, "no image \"\(name)\"")
    }

    /// The parsed config of a stored image.
    public func config(of image: ImageRecord) throws -> ImageConfig {
        try decodeJSON(ImageConfig.self, readFile(blobsDir + "/" + image.id.hex), what: "config \(image.id)")
    }

    /// The parsed manifest of a stored image.
    public func manifest(of image: ImageRecord) throws -> ImageManifest {
        try decodeJSON(ImageManifest.self, readFile(blobsDir + "/" + image.digest.hex), what: "manifest \(image.digest)")
    }

    /// The unpacked tree of a layer (an overlayfs lower directory).
    public func layerPath(_ diffID: Digest) -> String { layersDir + "/" + diffID.hex + "/rootfs" }

    /// The unpacked layer trees of an image, top layer first (overlayfs `lowerdir=` order).
    public func lowerDirs(of image: ImageRecord) -> [String] { image.diffIDs.reversed().map(layerPath) }

    // MARK: - ContentSink

    var staging: Staging {
        get throws {
            try stagingMutex.withLock {
                if let s = _staging { return s }
                // Created under the lock: recovery (also under it) must never see
                // the directory between its mkdir and its flock, and take it for stale.
                let s = try withLock { try Staging(parent: tmpDir) }
                _staging = s
                return s
            }
        }
    }

    public func hasBlob(_ digest: Digest) -> Bool {
        if stagingArea?.blobSize(digest) != nil { return true }
        return lstatOrNil(blobsDir + "/" + digest.hex) != nil
    }

    public func beginBlob(_ digest: Digest, size: Int64?) throws -> any BlobWriter {
        try staging.beginBlob(expected: digest, size: size)
    }

    /// A writer for content whose digest is learnt by writing it (docker-archive
    /// layers, tars built from directories).
    func beginUnnamedBlob() throws -> StagedBlobWriter {
        try staging.beginBlob(expected: nil, size: nil)
    }

    /// Where a blob's bytes are: staged by this instance, or in the store.
    func blobPath(_ digest: Digest) -> String? {
        if let s = stagingArea, s.blobSize(digest) != nil { return s.blobPath(digest) }
        let p = blobsDir + "/" + digest.hex
        return lstatOrNil(p) != nil ? p : nil
    }

    /// Checks that a descriptor's blob is present and has the size it claims.
    func checkBlob(_ d: Descriptor, _ what: String) throws -> String {
        guard let p = blobPath(d.digest) else { throw IpactrError(.notFound, "\(what) blob \(d.digest) is missing") }
        let size = Int64(lstatOrNil(p)!.st_size)
        if size != d.size {
            throw IpactrError(.corrupt, "\(what) blob \(d.digest) has \(size) bytes, its descriptor says \(d.size)")
        }
        return p
    }

    // MARK: - Committing an image

    /// Records the image whose manifest and config and layer blobs have been
    /// written (through `beginBlob`, or earlier): checks them, unpacks the
    /// layers the store lacks, moves everything into place and names the
    /// image `name` (replacing what had that name). Nothing is visible until
    /// the names file is replaced, the last step.
    @discardableResult
    public func commitImage(manifestDigest: Digest, name: String) throws -> ImageRecord {
        try ImageName.validate(name)
        // Checking and unpacking (the slow part) need no lock: they write only
        // into our staging area. Under the lock it is done again, cheaply, to
        // catch a concurrent rmi or prune, and then the moves happen.
        _ = try prepare(manifestDigest)
        return try withLock {
            let (manifest, config, infos) = try prepare(manifestDigest)
            try checkAcrossLayers(config.rootfs.diff_ids, infos)
            let stage = try staging

            // Move into place. The journal lets the next writer undo the moves
            // when we die before the names file is replaced.
            let blobs = [manifestDigest, manifest.config.digest] + manifest.layers.map(\.digest)
            let newBlobs = Array(Set(blobs.filter { stage.blobSize($0) != nil && lstatOrNil(blobsDir + "/" + $0.hex) == nil })).sorted()
            let newLayers = Array(Set(config.rootfs.diff_ids.filter { stage.layers[$0] != nil && lstatOrNil(layersDir + "/" + $0.hex) == nil })).sorted()
            // Make the staged content durable before anything points at it.
            try stage.sync()
            let journal = tmpDir + "/journal-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).json"
            try writeFileAtomically(journal, Array(JSONEncoder().encode(Journal(blobs: newBlobs, layers: newLayers))))
            for d in newBlobs { try syscall("rename blob \(d)") { rename(stage.blobPath(d), blobsDir + "/" + d.hex) } }
            for d in newLayers { try syscall("rename layer \(d)") { rename(stage.layerDir(d), layersDir + "/" + d.hex) } }
            try fsyncPath(blobsDir)
            try fsyncPath(layersDir)

            let record = ImageRecord(name: name, digest: manifestDigest, id: manifest.config.digest,
                                     layerBlobs: manifest.layers.map(\.digest), diffIDs: config.rootfs.diff_ids,
                                     size: infos.reduce(0) { $0 + $1.size }, created: config.created)
            var refs = try loadRefs()
            let replaced = refs.images[name]
            refs.images[name] = record
            try saveRefs(refs)
            try removeTree(journal)
            for d in newBlobs { stage.forgetBlob(d) }
            for d in newLayers { stage.layers[d] = nil }
            // The image that had this name loses it: its content goes as with rmi.
            if let replaced, replaced != record { try discardUnused(replaced, refs) }
            return record
        }
    }

    /// Parses and checks manifest and config, checks every blob is present
    /// with its descriptor's size, and unpacks (into staging) each layer the
    /// store does not have. Idempotent: a second call finds everything done.
    private func prepare(_ manifestDigest: Digest) throws -> (ImageManifest, ImageConfig, [LayerInfo]) {
        guard let mpath = blobPath(manifestDigest) else { throw IpactrError(.notFound, "manifest blob \(manifestDigest) is missing") }
        let manifest = try decodeJSON(ImageManifest.self, readFile(mpath, limit: 4 << 20), what: "manifest \(manifestDigest)")
        if let mt = manifest.mediaType, !MediaType.isManifest(mt) {
            throw IpactrError(.unsupported, "manifest \(manifestDigest): unknown media type \"\(mt)\"")
        }
        guard manifest.schemaVersion == 2 else {
            throw IpactrError(.unsupported, "manifest \(manifestDigest): schemaVersion \(manifest.schemaVersion) is not supported")
        }
        guard MediaType.isConfig(manifest.config.mediaType) else {
            throw IpactrError(.unsupported, "config \(manifest.config.digest): unknown media type \"\(manifest.config.mediaType)\"")
        }
        let configBytes = try readFile(try checkBlob(manifest.config, "config"), limit: 16 << 20)
        let config = try decodeJSON(ImageConfig.self, configBytes, what: "config \(manifest.config.digest)")
        guard config.rootfs.type == "layers", config.rootfs.diff_ids.count == manifest.layers.count else {
            throw IpactrError(.corrupt, "config \(manifest.config.digest): \(config.rootfs.diff_ids.count) diff_ids for \(manifest.layers.count) layers")
        }
        for (i, l) in manifest.layers.enumerated() {
            guard MediaType.layerCompression(l.mediaType) != nil else {
                throw IpactrError(.unsupported, "layer \(i + 1) (\(l.digest)): unknown media type \"\(l.mediaType)\"")
            }
            _ = try checkBlob(l, "layer \(i + 1)")
        }
        let stage = try staging
        var infos: [LayerInfo] = []
        for (l, diffID) in zip(manifest.layers, config.rootfs.diff_ids) {
            if let info = try stage.layers[diffID] ?? storedLayer(diffID) {
                infos.append(info)
            } else {
                infos.append(try stage.unpackLayer(blobPath: blobPath(l.digest)!, expectedDiffID: diffID, what: "layer \(l.digest)"))
            }
        }
        return (manifest, config, infos)
    }

    /// The facts of a layer already in the store, or nil.
    func storedLayer(_ diffID: Digest) throws -> LayerInfo? {
        let p = layersDir + "/" + diffID.hex + "/layer.json"
        guard lstatOrNil(p) != nil else { return nil }
        return try decodeJSON(LayerInfo.self, readFile(p), what: "layer record \(diffID)")
    }

    func layerRoot(_ diffID: Digest) -> String {
        if let s = stagingArea, s.layers[diffID] != nil { return s.layerDir(diffID) + "/rootfs" }
        return layerPath(diffID)
    }

    /// A layer whose tar created a directory implicitly, where a lower layer
    /// has a symlink (or a file), would be written *through* that symlink by
    /// docker or umoci; overlayfs would hide the symlink instead. Either way
    /// the image means something odd: refused, as within a layer.
    private func checkAcrossLayers(_ diffIDs: [Digest], _ infos: [LayerInfo]) throws {
        for i in infos.indices.dropFirst() {
            for dir in infos[i].implicitDirs {
                for k in stride(from: i - 1, through: 0, by: -1) {
                    guard let st = lstatOrNil(layerRoot(diffIDs[k]) + "/" + dir) else { continue }
                    let fmt = st.st_mode & S_IFMT
                    if fmt == S_IFDIR { break }
                    if fmt == S_IFCHR && st.st_rdev == 0 { break }  // whited out below: a fresh dir
                    throw IpactrError(.invalidArgument, "layer \(diffIDs[i]): entry \"\(dir)/…\" refused: \"\(dir)\" is a \(fmt == S_IFLNK ? "symlink" : "non-directory") in layer \(k + 1)")
                }
            }
        }
    }

    // MARK: - Removal

    /// Removes the name; blobs and layers no other image uses go too.
    /// Returns the removed record.
    @discardableResult
    public func remove(_ name: String) throws -> ImageRecord {
        try withLock {
            var refs = try loadRefs()
            let record = try image(name)
            refs.images[record.name] = nil
            try saveRefs(refs)
            try discardUnused(record, refs)
            return record
        }
    }

    /// Removes the blobs and layers of `record` that no image in `refs` uses.
    private func discardUnused(_ record: ImageRecord, _ refs: RefsFile) throws {
        let blobsInUse = Set(refs.images.values.flatMap(\.blobs))
        let layersInUse = Set(refs.images.values.flatMap(\.diffIDs))
        try discard(blobs: record.blobs.filter { !blobsInUse.contains($0) },
                    layers: record.diffIDs.filter { !layersInUse.contains($0) })
    }

    /// Removes every blob and layer no named image uses. Returns how many of each.
    @discardableResult
    public func prune() throws -> (blobs: Int, layers: Int) {
        try withLock {
            let refs = try loadRefs()
            let blobsInUse = Set(refs.images.values.flatMap(\.blobs).map(\.hex))
            let layersInUse = Set(refs.images.values.flatMap(\.diffIDs).map(\.hex))
            let blobs = try listDirectory(blobsDir).filter { !blobsInUse.contains($0) }
            let layers = try listDirectory(layersDir).filter { !layersInUse.contains($0) }
            try discard(blobs: blobs.map { Digest(sha256Hex: $0) }, layers: layers.map { Digest(sha256Hex: $0) })
            return (blobs.count, layers.count)
        }
    }

    /// Renames doomed entries into a trash directory first (one rename each,
    /// so the store never shows a half-deleted layer), then deletes it.
    private func discard(blobs: [Digest], layers: [Digest]) throws {
        if blobs.isEmpty && layers.isEmpty { return }
        let trash = tmpDir + "/trash-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try syscall("mkdir \(trash)") { mkdir(trash, 0o700) }
        for d in Set(blobs) where lstatOrNil(blobsDir + "/" + d.hex) != nil {
            try syscall("rename \(d)") { rename(blobsDir + "/" + d.hex, trash + "/blob-" + d.hex) }
        }
        for d in Set(layers) where lstatOrNil(layersDir + "/" + d.hex) != nil {
            try syscall("rename \(d)") { rename(layersDir + "/" + d.hex, trash + "/layer-" + d.hex) }
        }
        try fsyncPath(blobsDir)
        try fsyncPath(layersDir)
        try removeTree(trash)
    }
}

struct Journal: Codable {
    var blobs: [Digest]
    var layers: [Digest]
}

func decodeJSON<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], what: String) throws -> T {
    do {
        return try JSONDecoder().decode(type, from: Data(bytes))
    } catch let DecodingError.dataCorrupted(ctx) {
        throw IpactrError(.corrupt, "\(what): malformed JSON: \(ctx.underlyingError.map { "\($0)" } ?? ctx.debugDescription)")
    } catch let DecodingError.keyNotFound(key, _) {
        throw IpactrError(.corrupt, "\(what): malformed JSON: missing \"\(key.stringValue)\"")
    } catch let DecodingError.typeMismatch(_, ctx) {
        throw IpactrError(.corrupt, "\(what): malformed JSON: wrong type at \(ctx.codingPath.map(\.stringValue).joined(separator: "."))")
    } catch let DecodingError.valueNotFound(_, ctx) {
        throw IpactrError(.corrupt, "\(what): malformed JSON: null at \(ctx.codingPath.map(\.stringValue).joined(separator: "."))")
    } catch {
        throw IpactrError(.corrupt, "\(what): malformed JSON: \(error)")
    }
}
