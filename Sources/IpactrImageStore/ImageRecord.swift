import IpactrOCI
import IpactrSystem

/// One named image in the store: what `ipactr images` lists and what a
/// machine's rootfs is built from.
public struct ImageRecord: Codable, Sendable, Equatable {
    /// The reference it is known by: `repo:tag` or a plain name.
    public var name: String
    /// Digest of the manifest.
    public var digest: Digest
    /// Digest of the config blob: the image id.
    public var id: Digest
    /// Layer blobs (as stored, possibly compressed), bottom first.
    public var layerBlobs: [Digest]
    /// Uncompressed layer digests (config `rootfs.diff_ids`), bottom first;
    /// each names a directory under `layers/sha256/`.
    public var diffIDs: [Digest]
    /// Bytes of file content in the unpacked layers.
    public var size: Int64
    /// The config's `created` time (RFC 3339), when it has one.
    public var created: String?

    /// Every blob this image keeps alive.
    public var blobs: [Digest] { [digest, id] + layerBlobs }

    /// The first 12 hex digits of the id, as `docker images` shows it.
    public var shortID: String { String(id.hex.prefix(12)) }
}

/// The names file, `refs.json`: replaced as a whole (temp + rename) on every change.
struct RefsFile: Codable {
    var version = 1
    var images: [String: ImageRecord] = [:]
}

/// Per-layer facts kept beside the unpacked tree in `layers/sha256/HEX/layer.json`.
public struct LayerInfo: Codable, Sendable {
    public var diffID: Digest
    public var size: Int64
    public var entries: Int
    /// Character and block devices in the tar that were not created (see README).
    public var skippedDevices: [String]
    /// Parent directories the tar used without listing them; checked against
    /// the layers below at commit (a symlink there would be a cross-layer escape).
    public var implicitDirs: [String]
}

/// Names: `repo[:tag]` with the repository charset of the distribution spec
/// (lower case, digits, `._-/`); tags as there. Plain names such as `debian` are kept as given.
public enum ImageName {
    public static func validate(_ name: String) throws {
        var repo = Substring(name), tag: Substring?
        if let colon = name.lastIndex(of: ":"), !name[name.index(after: colon)...].contains("/") {
            repo = name[..<colon]
            tag = name[name.index(after: colon)...]
        }
        let parts = repo.split(separator: "/", omittingEmptySubsequences: false)
        let repoOK = !repo.isEmpty && repo.count <= 255 && parts.enumerated().allSatisfy { i, part in
            // The first of several components may be a registry host with a port (localhost:5000/x).
            !part.isEmpty && part.utf8.allSatisfy { c in
                (0x61...0x7a).contains(c) || (0x30...0x39).contains(c) || c == 0x2e || c == 0x5f || c == 0x2d
                    || (c == 0x3a && i == 0 && parts.count > 1)
            } && part.utf8.first.map { (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) } == true
        }
        let tagOK = tag.map { t in
            !t.isEmpty && t.count <= 128 && t.first != "." && t.first != "-" && t.utf8.allSatisfy { c in
                (0x61...0x7a).contains(c) || (0x41...0x5a).contains(c) || (0x30...0x39).contains(c) || c == 0x2e || c == 0x5f || c == 0x2d
            }
        } ?? true
        if !repoOK || !tagOK {
            throw IpactrError(.invalidArgument, "invalid image name \"\(name)\" (want NAME or NAME:TAG, lower-case letters, digits, '.', '_', '-', '/')")
        }
    }
}
