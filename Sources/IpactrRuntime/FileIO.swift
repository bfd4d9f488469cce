import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Small file helpers on raw syscalls: the runtime path avoids Foundation
/// (only FoundationEssentials) to keep `ipactr-runtime` startup short.
enum FileIO {
    static func read(_ path: String) throws(IpactrError) -> [UInt8] {
        let fd = try syscall("open \(path)") { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        return try readAll(fd, path)
    }

    static func readAll(_ fd: Int32, _ what: String) throws(IpactrError) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try syscall("read \(what)") { buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }
            if n == 0 { return out }
            out.append(contentsOf: buf[0..<n])
        }
    }

    static func readString(_ path: String) throws(IpactrError) -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    /// Writes `value` to an existing file (cgroup and /proc files).
    static func write(_ path: String, _ value: String) throws(IpactrError) {
        let fd = try syscall("open \(path)") { open(path, O_WRONLY | O_CLOEXEC) }
        defer { close(fd) }
        var bytes = Array(value.utf8)
        let n = try syscall("write \(path)") { bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress, $0.count) } }
        if n != bytes.count { throw IpactrError(.io, "write \(path): short write") }
    }

    /// Replaces `path` atomically: a reader sees the old or the new content, never half.
    static func writeAtomic(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws(IpactrError) {
        let tmp = path + ".tmp"
        let fd = try syscall("create \(tmp)") { open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        var ok = false
        defer { if !ok { unlink(tmp) } }
        var b = bytes
        let n = try syscall("write \(tmp)") { b.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress, $0.count) } }
        close(fd)
        if n != b.count { throw IpactrError(.io, "write \(tmp): short write") }
        try syscall("rename \(tmp)") { rename(tmp, path) }
        ok = true
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// mkdir -p; returns the directories it created, outermost first.
    @discardableResult
    static func mkdirAll(_ path: String, mode: mode_t = 0o755) throws(IpactrError) -> [String] {
        var created: [String] = []
        // A relative path stays relative (not rooted at /).
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, mode) == 0 {
                created.append(prefix)
            } else if Glibc.errno != EEXIST {
                throw IpactrError.syscall("mkdir \(prefix)", Errno(rawValue: Glibc.errno))
            }
        }
        return created
    }

    /// rm -rf of a directory tree we own (state directories).
    static func removeTree(_ path: String) {
        guard let dir = opendir(path) else { unlink(path); return }
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            if e.pointee.d_type == UInt8(DT_DIR) { removeTree(child) } else { unlink(child) }
        }
        closedir(dir)
        rmdir(path)
    }

    static func listDirectory(_ path: String) -> [(name: String, isDir: Bool)] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var out: [(String, Bool)] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name == "." || name == ".." { continue }
            out.append((name, e.pointee.d_type == UInt8(DT_DIR)))
        }
        return out
    }
}

func errnoError(_ stage: String) -> IpactrError {
    IpactrError.syscall(stage, Errno(rawValue: Glibc.errno))
}
