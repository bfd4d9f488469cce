import Foundation
import IpactrImageStore
import IpactrOCI
import IpactrSystem

/// vfs_cap_data v2 granting cap_net_raw (bit 13) permitted+effective:
/// what `setcap cap_net_raw+ep` writes.
let netRawCapability = String(decoding: [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                         0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], as: UTF8.self)

/// Bottom layer: setuid, file capability, xattrs, owners, hard link, symlink,
/// and things the top layer removes or hides.
let richLayer1: [TarEntry] = [
    .dir("./"),
    .dir("etc"),
    .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
    .dir("usr"), .dir("usr/bin"),
    .file("usr/bin/su", "#!/bin/sh\necho su\n", mode: 0o4755),
    .hardlink("usr/bin/su-again", "usr/bin/su"),
    .file("usr/bin/ping", "ping binary\n", mode: 0o755, xattrs: ["security.capability": netRawCapability, "user.note": "pingy"]),
    .symlink("bin", "usr/bin"),
    .dir("opt"), .dir("opt/data", mode: 0o750, uid: 1000, gid: 1000),
    .file("opt/data/a", "aaa\n"), .file("opt/data/b", "bbb\n"),
    .file("removeme", "bye\n"),
    .dir("home"), .dir("home/user", mode: 0o700, uid: 1000, gid: 1000),
    .file("home/user/file", "mine\n", mode: 0o600, uid: 1000, gid: 1000),
    .file("sgid", "x", mode: 0o2755, gid: 5),
]

/// Top layer: a whiteout, an opaque directory, a new hard link and symlinks.
let richLayer2: [TarEntry] = [
    .dir("./"),
    .file(".wh.removeme", ""),
    .dir("opt"), .dir("opt/data", mode: 0o755, uid: 1000, gid: 1000),
    .file("opt/data/.wh..wh..opq", ""),
    .file("opt/data/c", "ccc\n", uid: 1000, gid: 1000),
    .dir("etc"),
    .file("etc/hostname", "box\n"),
    .hardlink("etc/hostname2", "etc/hostname"),
    .symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
    .dir("run"),
    TarEntry(name: "run/fifo", kind: .fifo, mode: 0o620),
]

/// Writes the two-layer image into an OCI layout at `dir` (tag `latest`):
/// layer 1 gzip, layer 2 plain.
@discardableResult
func buildRichLayout(_ dir: String, scratch: String) throws -> Descriptor {
    try writeTar(scratch + "/l1.tar.gz", richLayer1, gzip: true)
    try writeTar(scratch + "/l2.tar", richLayer2)
    let b = try LayoutBuilder(dir)
    return try b.image(layers: [b.layer(scratch + "/l1.tar.gz", gzip: true), b.layer(scratch + "/l2.tar", gzip: false)])
}
