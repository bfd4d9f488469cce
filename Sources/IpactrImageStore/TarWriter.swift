#if canImport(Glibc)
import Glibc
#endif
import CArchive
import CArchiveShim
import CIpactrShim
import IpactrOCI
import IpactrSystem

/// Archives a directory tree as a pax tar into a blob writer, with libarchive's
/// disk reader (owners, modes, mtimes, xattrs, hard links, sparse files).
enum TarWriter {
    /// Carries the writer and the first error through libarchive's C callback.
    final class Sink {
        let writer: BlobWriter
        var error: Error?
        init(_ w: BlobWriter) { writer = w }
    }

    static func archive(directory dir: String, into w: BlobWriter) throws {
        let root = dir.count > 1 && dir.hasSuffix("/") ? String(dir.dropLast()) : dir
        guard let disk = archive_read_disk_new(), let out = archive_write_new() else {
            throw IpactrError(.internalError, "libarchive allocation failed")
        }
        defer { archive_read_free(disk); archive_write_free(out) }
        archive_read_disk_set_symlink_physical(disk)
        // /proc or a bind mount inside the tree is not part of the root fs.
        archive_read_disk_set_behavior(disk, ARCHIVE_READDISK_NO_TRAVERSE_MOUNTS | ARCHIVE_READDISK_NO_FFLAGS)
        archive_read_disk_set_standard_lookup(disk)
        archive_write_set_format_pax_restricted(out)
        archive_write_set_bytes_in_last_block(out, 1)
        let sink = Sink(w)
        let ctx = Unmanaged.passUnretained(sink).toOpaque()
        guard archive_write_open(out, ctx, nil, { a, ctx, buf, len in
            let s = Unmanaged<Sink>.fromOpaque(ctx!).takeUnretainedValue()
            do {
                try s.writer.write(UnsafeRawBufferPointer(start: buf, count: len))
                return len
            } catch {
                s.error = error
                ipactr_archive_set_error(a, EIO, "\(error)")
                return -1
            }
        }, nil) == ARCHIVE_OK else { throw IpactrError(.io, "tar: \(archiveError(out))") }
        guard archive_read_disk_open(disk, root) == ARCHIVE_OK else {
            throw IpactrError(.io, "\(dir): \(archiveError(disk))")
        }
        guard let resolver = archive_entry_linkresolver_new() else { throw IpactrError(.internalError, "linkresolver") }
        defer { archive_entry_linkresolver_free(resolver) }
        archive_entry_linkresolver_set_strategy(resolver, archive_format(out))

        let buf = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buf.deallocate() }
        while true {
            guard let entry = archive_entry_new() else { throw IpactrError(.internalError, "archive_entry_new") }
            defer { archive_entry_free(entry) }
            let r = archive_read_next_header2(disk, entry)
            if r == ARCHIVE_EOF { break }
            if r < ARCHIVE_WARN { throw IpactrError(.io, "\(dir): \(archiveError(disk))") }
            archive_read_disk_descend(disk)
            let full = String(cString: archive_entry_pathname(entry))
            let rel = full == root ? "" : String(full.dropFirst(root == "/" ? 1 : root.count + 1))
            if archive_entry_filetype(entry) == AE_IFSOCK { continue }
            archive_entry_set_pathname(entry, rel.isEmpty ? "./" : "./" + rel)
            var e: OpaquePointer? = entry
            var sparse: OpaquePointer?
            archive_entry_linkify(resolver, &e, &sparse)
            guard let e else { continue }
            // (A hard link's target is the first path seen, already renamed above.)
            if archive_write_header(out, e) < ARCHIVE_WARN {
                throw sink.error ?? IpactrError(.io, "tar \(rel): \(archiveError(out))")
            }
            if archive_entry_filetype(e) == AE_IFREG && archive_entry_size(e) > 0 {
                while true {
                    let n = archive_read_data(disk, buf, 1 << 20)
                    if n == 0 { break }
                    if n < 0 { throw IpactrError(.io, "\(full): \(archiveError(disk))") }
                    if archive_write_data(out, buf, n) < 0 {
                        throw sink.error ?? IpactrError(.io, "tar \(rel): \(archiveError(out))")
                    }
                }
            }
        }
        if archive_write_close(out) != ARCHIVE_OK {
            throw sink.error ?? IpactrError(.io, "tar: \(archiveError(out))")
        }
    }
}
