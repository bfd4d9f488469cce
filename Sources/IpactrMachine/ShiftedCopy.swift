#if canImport(Glibc)
import Glibc
#endif
import CArchive
import IpactrSystem

extension MachineRootfs {
    /// The fallback where idmapped mounts are refused (older kernels, some
    /// filesystems, nested containers): the image's flattened tree is copied
    /// once into `stateDirectory/rootfs` with every owner moved into the range.
    /// libarchive does the copy, so xattrs, file capabilities, ACLs, hard
    /// links, device nodes and times come across as they are.
    public static func shiftedCopy(layers: [String], range: UIDRange, stateDirectory: String,
                                   runDirectory: String) throws(IpactrError) -> MachineRootfs {
        guard !layers.isEmpty else { throw IpactrError(.invalidArgument, "image has no layers") }
        let rootfs = "\(stateDirectory)/rootfs"
        if !exists(rootfs) {
            try makeDirectory(runDirectory, mode: 0o700)
            defer { teardown(runDirectory) }
            let partial = "\(stateDirectory)/rootfs.partial"
            try withFlattenedLayers(layers, scratch: runDirectory) { flat throws(IpactrError) in
                try? removeTree(partial)
                do throws(IpactrError) {
                    try copyShifted(from: flat, to: partial, shift: range.base)
                } catch {
                    try? removeTree(partial)
                    throw error
                }
            }
            try syscall("rename \(partial)") { rename(partial, rootfs) }
        }
        return MachineRootfs(path: rootfs, mode: .shiftedCopy, runDirectory: runDirectory)
    }
}

/// Runs `body` on the image's merged tree (whiteouts applied, owners as in
/// the layers): a read-only overlay of `layers` (bottom first) mounted under
/// `scratch`, unmounted again before returning.
func withFlattenedLayers(_ layers: [String], scratch: String,
                         _ body: (String) throws(IpactrError) -> Void) throws(IpactrError) {
    guard !layers.isEmpty else { throw IpactrError(.invalidArgument, "image has no layers") }
    let flat = "\(scratch)/flat"
    try makeDirectory(flat, mode: 0o700)
    // overlayfs wants two lower layers when it has no upper: an empty
    // one at the bottom serves a one-layer image.
    let empty = "\(scratch)/empty"
    try makeDirectory(empty, mode: 0o700)
    defer { rmdir(empty); rmdir(flat) }
    let lower = (layers.reversed() + [empty]).joined(separator: ":")
    try Mount.mount(source: "overlay", target: flat, type: "overlay", flags: UInt(MS_RDONLY), data: "lowerdir=\(lower)")
    defer { try? Mount.unmount(flat) }
    try body(flat)
}

/// Copies the tree at `source` to `destination` (which must not exist), adding
/// `shift` to every uid and gid.
func copyShifted(from source: String, to destination: String, shift: UInt32) throws(IpactrError) {
    guard let reader = archive_read_disk_new(), let writer = archive_write_disk_new(),
          let resolver = archive_entry_linkresolver_new() else {
        throw IpactrError(.internalError, "libarchive: out of memory")
    }
    defer {
        archive_read_free(reader)
        archive_write_free(writer)
        archive_entry_linkresolver_free(resolver)
    }
    // Owners come from the numbers, never from name lookups on the host.
    archive_read_disk_set_standard_lookup(reader)
    archive_read_disk_set_behavior(reader, ARCHIVE_READDISK_NO_TRAVERSE_MOUNTS)
    archive_write_disk_set_options(writer, ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME
        | ARCHIVE_EXTRACT_XATTR | ARCHIVE_EXTRACT_ACL | ARCHIVE_EXTRACT_FFLAGS | ARCHIVE_EXTRACT_SPARSE)
    // Hard links are recognised by (dev, ino) and written as links.
    archive_entry_linkresolver_set_strategy(resolver, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED)

    func fail(_ a: OpaquePointer?, _ what: String) -> IpactrError {
        let msg = archive_error_string(a).map { String(cString: $0) } ?? "unknown error"
        return IpactrError(.io, "copy \(source) to \(destination): \(what): \(msg)")
    }
    guard archive_read_disk_open(reader, source) == ARCHIVE_OK else { throw fail(reader, "open") }

    let prefix = source.hasSuffix("/") ? source : source + "/"
    func rebase(_ path: String) -> String {
        if path == source || path + "/" == prefix { return destination }
        return path.hasPrefix(prefix) ? destination + "/" + path.dropFirst(prefix.count) : path
    }

    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        var entry: OpaquePointer?
        let r = archive_read_next_header(reader, &entry)
        if r == ARCHIVE_EOF { break }
        guard r == ARCHIVE_OK || r == ARCHIVE_WARN, var current: OpaquePointer? = entry else { throw fail(reader, "read") }
        archive_read_disk_descend(reader)
        let path = String(cString: archive_entry_pathname(current))
        archive_entry_set_pathname(current, rebase(path))
        archive_entry_set_uid(current, la_int64_t(archive_entry_uid(current)) + la_int64_t(shift))
        archive_entry_set_gid(current, la_int64_t(archive_entry_gid(current)) + la_int64_t(shift))
        var spare: OpaquePointer?
        // A later name of a hard-linked file becomes a link to the first,
        // whose (already rebased) path the resolver remembered.
        archive_entry_linkify(resolver, &current, &spare)
        guard let current else { continue }
        guard archive_write_header(writer, current) == ARCHIVE_OK else { throw fail(writer, "write \(path)") }
        if archive_entry_size(current) > 0 && archive_entry_hardlink(current) == nil {
            while true {
                let n = buffer.withUnsafeMutableBytes { archive_read_data(reader, $0.baseAddress, $0.count) }
                if n == 0 { break }
                if n < 0 { throw fail(reader, "read \(path)") }
                let w = buffer.withUnsafeBytes { archive_write_data(writer, $0.baseAddress, n) }
                if w < 0 { throw fail(writer, "write \(path)") }
            }
        }
        guard archive_write_finish_entry(writer) == ARCHIVE_OK else { throw fail(writer, "finish \(path)") }
    }
    guard archive_write_close(writer) == ARCHIVE_OK else { throw fail(writer, "close") }
}
