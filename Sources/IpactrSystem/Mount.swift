#if canImport(Glibc)
import Glibc
#endif
import CIpactrShim

/// Thin wrappers over the mount API. Each throws an `IpactrError` naming the
/// step and path, so a failure reads "idmap /var/lib/…: Invalid argument".
public enum Mount {
    /// AT_EMPTY_PATH is hidden behind _GNU_SOURCE in the headers Swift sees.
    static let atEmptyPath: Int32 = 0x1000
    static let atRecursive: UInt32 = 0x8000

    public static func mount(source: String, target: String, type: String?, flags: UInt = 0, data: String? = nil) throws(IpactrError) {
        try syscall("mount \(type ?? "bind") on \(target)") {
            Glibc.mount(source, target, type, flags, data)
        }
    }

    /// Detaches `target` (MNT_DETACH), ignoring "not mounted".
    public static func unmount(_ target: String, lazy: Bool = true) throws(IpactrError) {
        if umount2(target, lazy ? Int32(MNT_DETACH) : 0) != 0 && errno != EINVAL && errno != ENOENT {
            throw IpactrError.syscall("unmount \(target)", .init(rawValue: errno))
        }
    }

    /// A user-namespace fd carrying `uidMap`/`gidMap` (text as for /proc/PID/uid_map).
    public static func userNamespace(uidMap: String, gidMap: String) throws(IpactrError) -> Int32 {
        let fd = ipactr_userns_open(uidMap, gidMap)
        if fd < 0 { throw IpactrError.syscall("create user namespace for id mapping", .init(rawValue: -fd)) }
        return fd
    }

    /// Binds `source` at `target` with its owners shifted through `usernsFD`:
    /// open_tree(CLONE) + mount_setattr(MOUNT_ATTR_IDMAP) + move_mount.
    public static func idmappedBind(source: String, target: String, usernsFD: Int32, readOnly: Bool = false, recursive: Bool = false) throws(IpactrError) {
        let tree = try idmappedTree(source: source, usernsFD: usernsFD, readOnly: readOnly, recursiveClone: recursive, recursiveIdmap: recursive)
        defer { close(tree) }
        try syscall("move_mount \(source) to \(target)") {
            move_mount(tree, "", AT_FDCWD, target, UInt32(MOVE_MOUNT_F_EMPTY_PATH))
        }
    }

    /// A detached, idmapped copy of `source` (open_tree(OPEN_TREE_CLONE) +
    /// mount_setattr(MOUNT_ATTR_IDMAP)), for a caller that attaches it
    /// elsewhere with move_mount (e.g. in another mount namespace).
    /// `recursiveClone` copies the submounts too; `recursiveIdmap` idmaps
    /// them as well (otherwise only the top mount is). Returns an O_CLOEXEC fd.
    public static func idmappedTree(source: String, usernsFD: Int32, readOnly: Bool = false,
                                    recursiveClone: Bool, recursiveIdmap: Bool) throws(IpactrError) -> Int32 {
        let treeFlags = UInt32(OPEN_TREE_CLONE) | UInt32(O_CLOEXEC) | (recursiveClone ? atRecursive : 0)
        let tree = try syscall("open_tree \(source)") { open_tree(AT_FDCWD, source, treeFlags) }
        var attr = mount_attr()
        attr.attr_set = UInt64(MOUNT_ATTR_IDMAP) | (readOnly ? UInt64(MOUNT_ATTR_RDONLY) : 0)
        attr.userns_fd = UInt64(usernsFD)
        do {
            try syscall("idmap \(source)") {
                mount_setattr(tree, "", UInt32(atEmptyPath) | (recursiveIdmap ? atRecursive : 0), &attr, MemoryLayout<mount_attr>.size)
            }
        } catch {
            close(tree)
            throw error
        }
        return tree
    }

    /// Mount points at or below `prefix`, deepest first (for teardown).
    public static func mountPoints(under prefix: String) -> [String] {
        guard let text = try? readFileString("/proc/self/mountinfo") else { return [] }
        var points: [String] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { continue }
            let point = unescapeMountinfo(String(fields[4]))
            if point == prefix || point.hasPrefix(prefix.hasSuffix("/") ? prefix : prefix + "/") {
                points.append(point)
            }
        }
        return points.reversed()
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    public static func unescapeMountinfo(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5c, i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
