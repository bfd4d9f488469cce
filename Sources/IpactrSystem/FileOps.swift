#if canImport(Glibc)
import Glibc
#endif
import CIpactrShim
import SystemPackage

/// An open file descriptor closed when the value is released.
public final class FD {
    public let raw: Int32
    public init(_ raw: Int32) { self.raw = raw }
    deinit { close(raw) }

    /// `openat2(2)`; `resolve` takes the `IPACTR_RESOLVE_*` flags.
    public static func openat2(_ dir: Int32, _ path: String, _ flags: Int32, mode: mode_t = 0,
                               resolve: UInt64 = 0) throws -> FD {
        FD(try syscall("open \(path)") { ipactr_openat2(dir, path, flags | O_CLOEXEC, UInt32(mode), resolve) })
    }

    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws -> FD {
        try openat2(AT_FDCWD, path, flags, mode: mode)
    }
}

/// An exclusive `flock(2)` held until the value is released. Used for the
/// store's writer lock and to mark temp entries as in use.
public final class FileLock {
    public let fd: FD

    /// Opens (creating) `path` and waits for an exclusive lock.
    public init(path: String) throws {
        fd = try FD.open(path, O_RDWR | O_CREAT, mode: 0o600)
        try syscall("lock \(path)") { flock(fd.raw, LOCK_EX) }
    }

    /// Locks an already open descriptor (a file or a directory).
    public init(fd: FD) throws {
        self.fd = fd
        try syscall("lock") { flock(fd.raw, LOCK_EX) }
    }

    /// True when nobody holds a lock on `path` (it is stale), checked with a
    /// non-blocking lock attempt.
    public static func isUnlocked(_ path: String) -> Bool {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 { return true }
        defer { close(fd) }
        return flock(fd, LOCK_EX | LOCK_NB) == 0
    }
}

public func fsyncPath(_ path: String) throws {
    let fd = try FD.open(path, O_RDONLY)
    try syscall("fsync \(path)") { fsync(fd.raw) }
}

/// Writes `bytes` to `path` all or nothing: a temp file beside it, fsync,
/// rename over, fsync of the directory. A crash leaves the old file or the new one.
public func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws {
    let dir = parentDirectory(path)
    let tmp = "\(path).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    do {
        let fd = try FD.open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: mode)
        try writeAll(fd.raw, bytes, what: tmp)
        try syscall("fsync \(tmp)") { fsync(fd.raw) }
        try syscall("rename \(tmp)") { rename(tmp, path) }
    } catch {
        unlink(tmp)
        throw error
    }
    try fsyncPath(dir)
}

public func writeAll(_ fd: Int32, _ bytes: [UInt8], what: String) throws {
    try bytes.withUnsafeBytes { (b) throws in try writeAll(fd, b, what: what) }
}

public func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, what: String) throws {
    var done = 0
    while done < buffer.count {
        let n = try syscall("write \(what)") { Glibc.write(fd, buffer.baseAddress! + done, buffer.count - done) }
        done += n
    }
}

/// Reads a whole file, refusing files larger than `limit` (JSON documents
/// are read this way; a huge one is an error, not a memory exhaustion).
public func readFile(_ path: String, limit: Int = 16 << 20) throws -> [UInt8] {
    let fd = try FD.open(path, O_RDONLY)
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = try buf.withUnsafeMutableBytes { (b) throws in
            try syscall("read \(path)") { read(fd.raw, b.baseAddress, b.count) }
        }
        if n == 0 { break }
        out += buf[0..<n]
        if out.count > limit { throw IpactrError(.invalidArgument, "\(path) is larger than \(limit) bytes") }
    }
    return out
}

public func parentDirectory(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

/// `lstat`, or nil when the path does not exist.
public func lstatOrNil(_ path: String) -> stat? {
    var st = stat()
    return lstat(path, &st) == 0 ? st : nil
}

/// Creates a directory (and its parents) with `mode`, keeping existing ones.
public func makeDirectories(_ path: String, mode: mode_t) throws {
    if lstatOrNil(path) != nil { return }
    let parent = parentDirectory(path)
    if parent != path && parent != "." && parent != "/" { try makeDirectories(parent, mode: mode) }
    if mkdir(path, mode) != 0 && Glibc.errno != EEXIST {
        throw IpactrError.syscall("mkdir \(path)", Errno(rawValue: Glibc.errno))
    }
}

/// Lists a directory's names (without `.` and `..`).
public func listDirectory(_ path: String) throws -> [String] {
    guard let d = opendir(path) else { throw IpactrError.syscall("open \(path)", Errno(rawValue: Glibc.errno)) }
    defer { closedir(d) }
    var names: [String] = []
    while let e = readdir(d) {
        let name = withUnsafePointer(to: e.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// Removes a file or a whole tree without following symlinks. Directories
/// are opened relative to their parent with O_NOFOLLOW, so a tree that changes
/// under us cannot redirect the removal elsewhere, and with RESOLVE_NO_XDEV,
/// so a mount point left inside (a machine's rootfs whose unmount failed)
/// stops the removal with EXDEV instead of emptying what is mounted there.
public func removeTree(_ path: String) throws {
    guard let st = lstatOrNil(path) else { return }
    if (st.st_mode & S_IFMT) != S_IFDIR {
        try syscall("unlink \(path)") { unlink(path) }
        return
    }
    let dfd = try FD.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
    try removeContents(dfd.raw, what: path)
    try syscall("rmdir \(path)") { rmdir(path) }
}

private func removeContents(_ dfd: Int32, what: String) throws {
    let dupfd = try syscall("dup") { dup(dfd) }
    guard let d = fdopendir(dupfd) else { close(dupfd); throw IpactrError.syscall("open \(what)", Errno(rawValue: Glibc.errno)) }
    defer { closedir(d) }
    while let e = readdir(d) {
        let name = withUnsafePointer(to: e.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name == "." || name == ".." { continue }
        if e.pointee.d_type == UInt8(DT_DIR) {
            let child = try FD.openat2(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, resolve: IPACTR_RESOLVE_NO_XDEV)
            try removeContents(child.raw, what: "\(what)/\(name)")
            try syscall("rmdir \(what)/\(name)") { unlinkat(dfd, name, AT_REMOVEDIR) }
        } else {
            try syscall("unlink \(what)/\(name)") { unlinkat(dfd, name, 0) }
        }
    }
}
