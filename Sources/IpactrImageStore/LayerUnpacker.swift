#if canImport(Glibc)
import Glibc
#endif
import CArchive
import CArchiveShim
import CIpactrShim
import struct Crypto.SHA256
import IpactrOCI
import IpactrSystem
import SystemPackage

/// Unpacks one layer tarball into a directory in overlayfs "lower" format.
///
/// Reading is libarchive's; writing is done here with *at() calls relative to
/// descriptors of directories inside the layer, resolved one component at a
/// time with `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)`: nothing is ever
/// followed, so nothing can land outside the layer. Entries that try (`..`,
/// absolute names, paths through symlinks, hard links out of the layer) are
/// refused with an error naming them.
final class LayerUnpacker {
    /// Where errors point: "layer sha256:…".
    let what: String
    private let rootFD: FD
    private var info: LayerInfo
    /// Directories whose mtime is set at the end (adding children changes it).
    private var dirTimes: [(path: String, times: [timespec])] = []
    /// Parent directories created because the tar did not list them first.
    private var implicitDirs: Set<String> = []
    private var explicitDirs: Set<String> = []
    /// Open directories of the layer by path, so most entries cost one
    /// openat2 at most. Dropped whenever a directory is removed.
    private var dirCache: [String: FD] = [:]

    /// `root` must be an empty directory.
    init(root: String, what: String) throws {
        self.what = what
        rootFD = try FD.open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        info = LayerInfo(diffID: Digest(sha256Hex: String(repeating: "0", count: 64)), size: 0, entries: 0, skippedDevices: [], implicitDirs: [])
    }

    /// Unpacks the (possibly gzip/zstd compressed) tar at `blobPath`, hashing
    /// the uncompressed stream; fails when that hash is not `expectedDiffID`.
    func unpack(blobPath: String, expectedDiffID: Digest?) throws -> LayerInfo {
        // Outer archive: decompression only ("raw" format), so the tar stream
        // can be hashed on its way into the inner (tar) reader in one pass.
        let source = try DecompressedSource(path: blobPath, what: what)
        guard let inner = archive_read_new() else { throw IpactrError(.internalError, "archive_read_new failed") }
        defer { archive_read_free(inner) }
        archive_read_support_format_tar(inner)
        let ctx = Unmanaged.passUnretained(source).toOpaque()
        guard archive_read_open(inner, ctx, nil, { a, ctx, buf in
            let src = Unmanaged<DecompressedSource>.fromOpaque(ctx!).takeUnretainedValue()
            return src.next(a, buf!)
        }, nil) == ARCHIVE_OK else {
            throw source.error ?? IpactrError(.corrupt, "\(what): not a tar archive: \(archiveError(inner))")
        }
        var entry: OpaquePointer?
        while true {
            let r = archive_read_next_header(inner, &entry)
            if r == ARCHIVE_EOF { break }
            if r < ARCHIVE_WARN {
                throw source.error ?? IpactrError(.corrupt, "\(what): \(archiveError(inner))")
            }
            try extract(entry!, inner)
        }
        let diffID = try source.finish()
        if let expectedDiffID, diffID != expectedDiffID {
            throw IpactrError(.corrupt, "\(what): uncompressed content has digest \(diffID), the config says \(expectedDiffID)")
        }
        try finishDirectoryTimes()
        info.diffID = diffID
        info.implicitDirs = implicitDirs.subtracting(explicitDirs).sorted()
        return info
    }

    private func refuse(_ name: String, _ why: String) -> IpactrError {
        IpactrError(.invalidArgument, "\(what): entry \"\(name)\" refused: \(why)")
    }

    /// Splits a tar name into components, refusing absolute names and `..`.
    private func components(_ name: String, entry: String) throws -> [String] {
        if name.hasPrefix("/") { throw refuse(entry, "absolute name") }
        var out: [String] = []
        for c in name.split(separator: "/", omittingEmptySubsequences: true) {
            if c == "." { continue }
            if c == ".." { throw refuse(entry, "name contains \"..\"") }
            out.append(String(c))
        }
        return out
    }

    /// Opens (creating missing ones) the directory `comps` below the root,
    /// one component at a time, never following a symlink.
    /// `linkTarget`: set when resolving a hard link's target (nothing is created then).
    private func openDirectory(_ comps: ArraySlice<String>, entry: String, linkTarget: String? = nil) throws -> FD {
        let create = linkTarget == nil
        if comps.isEmpty { return rootFD }
        // Start from the deepest directory already open.
        var start = comps.startIndex
        var cur: FD? = nil
        var soFar = ""
        for i in stride(from: comps.endIndex, to: comps.startIndex, by: -1) {
            let key = comps[comps.startIndex..<i].joined(separator: "/")
            if let fd = dirCache[key] {
                cur = fd
                soFar = key
                start = i
                break
            }
        }
        if start == comps.endIndex { return cur! }
        if dirCache.count > 256 { dirCache.removeAll() }
        for comp in comps[start...] {
            soFar = soFar.isEmpty ? comp : soFar + "/" + comp
            let dir = cur?.raw ?? rootFD.raw
            var fd = ipactr_openat2(dir, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0,
                                    IPACTR_RESOLVE_BENEATH | IPACTR_RESOLVE_NO_SYMLINKS | IPACTR_RESOLVE_NO_MAGICLINKS)
            if fd < 0 && errno == ENOENT && create {
                if mkdirat(dir, comp, 0o755) != 0 && errno != EEXIST {
                    throw IpactrError.syscall("\(what): entry \"\(entry)\": mkdir \(soFar)", Errno(rawValue: errno))
                }
                implicitDirs.insert(soFar)
                fd = ipactr_openat2(dir, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0,
                                    IPACTR_RESOLVE_BENEATH | IPACTR_RESOLVE_NO_SYMLINKS | IPACTR_RESOLVE_NO_MAGICLINKS)
            }
            if fd < 0 {
                let err = errno
                var st = stat()
                // O_DIRECTORY|O_NOFOLLOW on a symlink reports ENOTDIR or ELOOP: say which it was.
                if (err == ENOTDIR || err == ELOOP) && fstatat(dir, comp, &st, AT_SYMLINK_NOFOLLOW) == 0 && (st.st_mode & S_IFMT) == S_IFLNK {
                    throw refuse(entry, "path goes through the symlink \"\(soFar)\"")
                }
                switch err {
                case ELOOP: throw refuse(entry, "path goes through the symlink \"\(soFar)\"")
                case ENOTDIR: throw refuse(entry, "\"\(soFar)\" is not a directory")
                case EXDEV: throw refuse(entry, "path leaves the layer at \"\(soFar)\"")
                case ENOENT: throw refuse(entry, "hard link target \"\(linkTarget ?? soFar)\" is not in this layer")
                default: throw IpactrError.syscall("\(what): entry \"\(entry)\": open \(soFar)", Errno(rawValue: err))
                }
            }
            cur = FD(fd)
            dirCache[soFar] = cur
        }
        return cur!
    }

    /// Removes what is at `name` in `dir` so the entry can take its place, as
    /// tar does; a directory is kept when the entry is one too.
    private func clear(_ dir: Int32, _ name: String, keepDirectory: Bool, entry: String) throws {
        var st = stat()
        guard fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            if keepDirectory { return }
            if unlinkat(dir, name, AT_REMOVEDIR) != 0 {
                throw refuse(entry, "it would replace a non-empty directory")
            }
            dirCache.removeAll()
            return
        }
        try syscall("\(what): entry \"\(entry)\": unlink") { unlinkat(dir, name, 0) }
    }

    /// Runs `make` (an *at() call creating `name`); when something is already
    /// there, clears it as tar would and runs `make` once more. Layers are
    /// mostly fresh trees, so this saves a stat per entry.
    private func create(_ dir: Int32, _ name: String, entry: String, _ stage: String, _ make: () -> Int32) throws -> Int32 {
        var r = make()
        if r < 0 && errno == EEXIST {
            try clear(dir, name, keepDirectory: false, entry: entry)
            r = make()
        }
        if r < 0 { throw IpactrError.syscall("\(what): entry \"\(entry)\": \(stage)", Errno(rawValue: errno)) }
        return r
    }

    private func extract(_ e: OpaquePointer, _ a: OpaquePointer) throws {
        guard let cname = archive_entry_pathname_utf8(e) ?? archive_entry_pathname(e) else {
            throw IpactrError(.corrupt, "\(what): entry without a name")
        }
        guard let name = String(validatingCString: cname) else {
            throw IpactrError(.invalidArgument, "\(what): entry \"\(String(cString: cname))\" refused: name is not UTF-8")
        }
        info.entries += 1
        let comps = try components(name, entry: name)
        let type = archive_entry_filetype(e)
        let hardlink = archive_entry_hardlink_utf8(e) ?? archive_entry_hardlink(e)

        if comps.isEmpty {
            // "./": the layer root itself; only its metadata can be taken.
            guard type == AE_IFDIR else { throw refuse(name, "names the layer root but is not a directory") }
            try applyMetadata(fd: rootFD.raw, e, entry: name)
            dirTimes.append(("", times(e)))
            return
        }
        let base = comps.last!
        let parentFD = try openDirectory(comps.dropLast(), entry: name)
        let parent = parentFD.raw

        if base.hasPrefix(".wh.") {
            if base == ".wh..wh..opq" {
                try setXattr(fd: parent, "trusted.overlay.opaque", Array("y".utf8), entry: name)
                return
            }
            // Other ".wh..wh." names are aufs bookkeeping (docker ignores them too).
            if base.hasPrefix(".wh..wh.") { return }
            let victim = String(base.dropFirst(4))
            if victim.isEmpty || victim == "." || victim == ".." { throw refuse(name, "bad whiteout name") }
            // overlayfs whiteout: a 0/0 character device.
            _ = try create(parent, victim, entry: name, "mknod whiteout") { mknodat(parent, victim, S_IFCHR | 0, 0) }
            return
        }

        if let hardlink, type != AE_IFDIR {
            guard let targetName = String(validatingCString: hardlink) else { throw refuse(name, "link target is not UTF-8") }
            let tcomps = try components(targetName, entry: name)
            guard let tbase = tcomps.last else { throw refuse(name, "hard link to the layer root") }
            let tparentFD = try openDirectory(tcomps.dropLast(), entry: name, linkTarget: targetName)
            let tparent = tparentFD.raw
            var st = stat()
            if fstatat(tparent, tbase, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                throw refuse(name, "hard link target \"\(targetName)\" is not in this layer")
            }
            if (st.st_mode & S_IFMT) == S_IFDIR { throw refuse(name, "hard link to a directory") }
            if tcomps == comps { return }
            _ = try create(parent, base, entry: name, "link") { linkat(tparent, tbase, parent, base, 0) }
            return
        }

        switch type {
        case AE_IFDIR:
            if mkdirat(parent, base, 0o700) != 0 {
                guard errno == EEXIST else { throw IpactrError.syscall("\(what): entry \"\(name)\": mkdir", Errno(rawValue: errno)) }
                // A directory stays (tar merges); anything else makes way.
                try clear(parent, base, keepDirectory: true, entry: name)
                if mkdirat(parent, base, 0o700) != 0 && errno != EEXIST {
                    throw IpactrError.syscall("\(what): entry \"\(name)\": mkdir", Errno(rawValue: errno))
                }
            }
            let fd = try FD(syscall("\(what): entry \"\(name)\": open") {
                ipactr_openat2(parent, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0, IPACTR_RESOLVE_BENEATH | IPACTR_RESOLVE_NO_SYMLINKS)
            })
            try applyMetadata(fd: fd.raw, e, entry: name)
            let path = comps.joined(separator: "/")
            explicitDirs.insert(path)
            dirTimes.append((path, times(e)))
            dirCache[path] = fd
        case AE_IFREG:
            let fd = try FD(create(parent, base, entry: name, "create") {
                openat(parent, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            })
            let end = try copyData(a, to: fd.raw, entry: name)
            let size = archive_entry_size(e)
            if end != size {
                // A sparse tail: the size is the entry's, not the last write's.
                try syscall("\(what): entry \"\(name)\": truncate") { ftruncate(fd.raw, off_t(size)) }
            }
            info.size += size
            try applyMetadata(fd: fd.raw, e, entry: name)
            var ts = times(e)
            try syscall("\(what): entry \"\(name)\": set times") { futimens(fd.raw, &ts) }
        case AE_IFLNK:
            guard let t = archive_entry_symlink_utf8(e) ?? archive_entry_symlink(e) else { throw refuse(name, "symlink without a target") }
            _ = try create(parent, base, entry: name, "symlink") { symlinkat(t, parent, base) }
            try syscall("\(what): entry \"\(name)\": chown") {
                fchownat(parent, base, uid_t(archive_entry_uid(e)), gid_t(archive_entry_gid(e)), AT_SYMLINK_NOFOLLOW)
            }
            // Symlinks have no fd to set xattrs through: go via the parent's /proc entry.
            try forEachXattr(e, entry: name) { (key, value) throws in
                let path = "/proc/self/fd/\(parent)/\(base)"
                try syscall("\(what): entry \"\(name)\": set xattr \(key)") { lsetxattr(path, key, value, value.count, 0) }
            }
            var ts = times(e)
            try syscall("\(what): entry \"\(name)\": set times") { utimensat(parent, base, &ts, AT_SYMLINK_NOFOLLOW) }
        case AE_IFIFO:
            _ = try create(parent, base, entry: name, "mkfifo") { mknodat(parent, base, S_IFIFO | 0o600, 0) }
            // (Opening a fifo would block: set owner and mode by name, in the parent we hold.)
            try syscall("\(what): entry \"\(name)\": chown") {
                fchownat(parent, base, uid_t(archive_entry_uid(e)), gid_t(archive_entry_gid(e)), AT_SYMLINK_NOFOLLOW)
            }
            try syscall("\(what): entry \"\(name)\": chmod") { fchmodat(parent, base, archive_entry_perm(e) & 0o7777, 0) }
            var ts = times(e)
            try syscall("\(what): entry \"\(name)\": set times") { utimensat(parent, base, &ts, AT_SYMLINK_NOFOLLOW) }
        case AE_IFCHR, AE_IFBLK:
            // Not created: see README ("Device nodes").
            info.skippedDevices.append(comps.joined(separator: "/"))
        default:
            throw refuse(name, "unsupported file type \(String(type, radix: 8))")
        }
    }

    /// Copies the entry's data; returns where the last write ended.
    private func copyData(_ a: OpaquePointer, to fd: Int32, entry: String) throws -> Int64 {
        var buf: UnsafeRawPointer?
        var size = 0
        var offset: la_int64_t = 0
        var end: Int64 = 0
        while true {
            let r = archive_read_data_block(a, &buf, &size, &offset)
            if r == ARCHIVE_EOF { return end }
            if r < ARCHIVE_WARN { throw IpactrError(.corrupt, "\(what): entry \"\(entry)\": \(archiveError(a))") }
            var done = 0
            while done < size {
                let n = pwrite(fd, buf! + done, size - done, off_t(offset) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw IpactrError.syscall("\(what): entry \"\(entry)\": write", Errno(rawValue: errno))
                }
                done += n
            }
            end = max(end, Int64(offset) + Int64(size))
        }
    }

    private func times(_ e: OpaquePointer) -> [timespec] {
        let m = timespec(tv_sec: archive_entry_mtime(e), tv_nsec: archive_entry_mtime_nsec(e))
        let at = archive_entry_atime_is_set(e) != 0
            ? timespec(tv_sec: archive_entry_atime(e), tv_nsec: archive_entry_atime_nsec(e)) : m
        return [at, m]
    }

    /// Owner, then mode (chown clears setuid bits), then xattrs (chown also
    /// clears security.capability).
    private func applyMetadata(fd: Int32, _ e: OpaquePointer, entry: String) throws {
        try syscall("\(what): entry \"\(entry)\": chown") { fchown(fd, uid_t(archive_entry_uid(e)), gid_t(archive_entry_gid(e))) }
        try syscall("\(what): entry \"\(entry)\": chmod") { fchmod(fd, archive_entry_perm(e) & 0o7777) }
        try forEachXattr(e, entry: entry) { (key, value) throws in try setXattr(fd: fd, key, value, entry: entry) }
    }

    private func setXattr(fd: Int32, _ key: String, _ value: [UInt8], entry: String) throws {
        try syscall("\(what): entry \"\(entry)\": set xattr \(key)") { fsetxattr(fd, key, value, value.count, 0) }
    }

    /// The entry's xattrs, without `trusted.overlay.*`: those would change
    /// what overlayfs shows (opaque dirs, redirects) and only the unpacker sets them.
    private func forEachXattr(_ e: OpaquePointer, entry: String, _ body: (String, [UInt8]) throws -> Void) throws {
        guard archive_entry_xattr_reset(e) > 0 else { return }
        var name: UnsafePointer<CChar>?
        var value: UnsafeRawPointer?
        var size = 0
        while archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK {
            guard let name, let key = String(validatingCString: name) else { continue }
            if key.hasPrefix("trusted.overlay.") { continue }
            let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
            try body(key, bytes)
        }
    }

    private func finishDirectoryTimes() throws {
        dirCache.removeAll()
        for (path, t) in dirTimes.reversed() {
            var ts = t
            if path.isEmpty {
                try syscall("\(what): set times of the layer root") { futimens(rootFD.raw, &ts) }
                continue
            }
            let fd = ipactr_openat2(rootFD.raw, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0,
                                    IPACTR_RESOLVE_BENEATH | IPACTR_RESOLVE_NO_SYMLINKS)
            // A later entry may have replaced the directory: nothing to date then.
            if fd < 0 { continue }
            defer { close(fd) }
            try syscall("\(what): entry \"\(path)\": set times") { futimens(fd, &ts) }
        }
    }
}

// libarchive's AE_IF* macros carry a cast Swift does not import.
let AE_IFMT: mode_t = 0o170000
let AE_IFREG: mode_t = 0o100000
let AE_IFLNK: mode_t = 0o120000
let AE_IFSOCK: mode_t = 0o140000
let AE_IFCHR: mode_t = 0o020000
let AE_IFBLK: mode_t = 0o060000
let AE_IFDIR: mode_t = 0o040000
let AE_IFIFO: mode_t = 0o010000

func archiveError(_ a: OpaquePointer) -> String {
    archive_error_string(a).map { String(cString: $0) } ?? "archive error \(archive_errno(a))"
}

/// The decompressed bytes of a blob (gzip, zstd, or none: libarchive's
/// filters with its "raw" format), hashed as they are handed on.
final class DecompressedSource {
    private let outer: OpaquePointer
    private var hasher = SHA256()
    private(set) var total: Int64 = 0
    var error: IpactrError?
    let what: String

    init(path: String, what: String) throws {
        self.what = what
        guard let a = archive_read_new() else { throw IpactrError(.internalError, "archive_read_new failed") }
        outer = a
        archive_read_support_filter_gzip(a)
        archive_read_support_filter_zstd(a)
        archive_read_support_format_raw(a)
        archive_read_support_format_empty(a)
        // (From here on a throw runs deinit, which frees `outer`.)
        guard archive_read_open_filename(a, path, 1 << 20) == ARCHIVE_OK else {
            // The blob is there (checked before); failing here means its content is bad.
            throw IpactrError(.corrupt, "\(what): \(archiveError(a))")
        }
        var entry: OpaquePointer?
        let r = archive_read_next_header(a, &entry)
        guard r == ARCHIVE_OK || r == ARCHIVE_WARN else {
            throw IpactrError(.corrupt, "\(what): \(archiveError(a))")
        }
    }

    deinit { archive_read_free(outer) }

    /// libarchive read callback body: the next decompressed block.
    func next(_ inner: OpaquePointer?, _ out: UnsafeMutablePointer<UnsafeRawPointer?>) -> Int {
        var buf: UnsafeRawPointer?
        var size = 0
        var offset: la_int64_t = 0
        let r = archive_read_data_block(outer, &buf, &size, &offset)
        if r == ARCHIVE_EOF { return 0 }
        if r < ARCHIVE_WARN {
            let msg = "\(what): \(archiveError(outer))"
            error = IpactrError(.corrupt, msg)
            if let inner { ipactr_archive_set_error(inner, EIO, msg) }
            return -1
        }
        if let buf, size > 0 { hasher.update(bufferPointer: UnsafeRawBufferPointer(start: buf, count: size)) }
        total += Int64(size)
        out.pointee = buf
        return size
    }

    /// Hashes what the tar reader left unread (the end-of-archive padding)
    /// and returns the digest of the whole uncompressed stream.
    func finish() throws -> Digest {
        var dummy: UnsafeRawPointer?
        while true {
            let n = next(nil, &dummy)
            if n < 0 { throw error! }
            if n == 0 { break }
        }
        return Digest(sha256Hex: hexString(hasher.finalize()))
    }
}

/// Lower-case hex of a hash.
func hexString<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
    return String(decoding: out, as: UTF8.self)
}
