import IpactrOCI
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The cgroup v2 hierarchy as this process sees it. Found in
/// /proc/self/mountinfo, never assumed: /sys/fs/cgroup on pure-v2 hosts,
/// /sys/fs/cgroup/unified on hybrid ones, elsewhere in odd setups.
public struct CgroupHierarchy: Sendable {
    /// Where the cgroup2 filesystem is mounted.
    public var mountPoint: String
    /// The cgroup (relative to our cgroup namespace) shown at `mountPoint`.
    public var mountRoot: String
    /// True when v1 hierarchies are mounted too (hybrid layout).
    public var hybrid: Bool
    /// v1 controller → (mount point, mount root), on hybrid hosts.
    public var v1: [String: (mountPoint: String, mountRoot: String)] = [:]

    public static func find() throws(IpactrError) -> CgroupHierarchy {
        let text = try FileIO.readString("/proc/self/mountinfo")
        var found: CgroupHierarchy?
        var v1 = false
        var v1Mounts: [String: (mountPoint: String, mountRoot: String)] = [:]
        for line in text.split(separator: "\n") {
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let left = halves[0].split(separator: " ")
            let fstype = halves[1].split(separator: " ").first.map(String.init) ?? ""
            guard left.count >= 5 else { continue }
            if fstype == "cgroup" {
                v1 = true
                let superOpts = halves[1].split(separator: " ").dropFirst(2).first ?? ""
                for o in superOpts.split(separator: ",") where v1Controllers.contains(String(o)) {
                    v1Mounts[String(o)] = (unescape(String(left[4])), unescape(String(left[3])))
                }
            }
            if fstype == "cgroup2", found == nil {
                found = CgroupHierarchy(mountPoint: unescape(String(left[4])), mountRoot: unescape(String(left[3])), hybrid: false)
            }
        }
        guard var h = found else {
            throw IpactrError(.unsupported, "no cgroup2 filesystem is mounted (see /proc/self/mountinfo)")
        }
        h.hybrid = v1
        h.v1 = v1Mounts
        return h
    }

    static func unescape(_ s: String) -> String { Mount.unescapeMountinfo(s) }

    /// This process's own v2 cgroup ("0::/path" in /proc/self/cgroup).
    public static func ownCgroup() throws(IpactrError) -> String {
        for line in try FileIO.readString("/proc/self/cgroup").split(separator: "\n") where line.hasPrefix("0::") {
            return String(line.dropFirst(3))
        }
        throw IpactrError(.unsupported, "/proc/self/cgroup has no cgroup v2 entry")
    }

    /// The directory of cgroup `path` (relative to our cgroup namespace).
    public func directory(of path: String) -> String {
        var rel = path
        if mountRoot != "/", rel.hasPrefix(mountRoot) { rel = String(rel.dropFirst(mountRoot.count)) }
        if rel.isEmpty || rel == "/" { return mountPoint }
        return mountPoint + (rel.hasPrefix("/") ? rel : "/" + rel)
    }
}

/// One v1 hierarchy mounted on the host (hybrid layout).
public struct V1Hierarchy: Sendable {
    public var mountPoint: String
    public var mountRoot: String
    /// Controllers (and `name=…`) of the hierarchy, from the super options.
    public var controllers: [String]

    /// Every v1 hierarchy in /proc/self/mountinfo, named ones (name=systemd) included.
    public static func all() -> [V1Hierarchy] {
        guard let text = try? FileIO.readString("/proc/self/mountinfo") else { return [] }
        var out: [V1Hierarchy] = []
        for line in text.split(separator: "\n") {
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let right = halves[1].split(separator: " ")
            guard right.first == "cgroup", right.count >= 3 else { continue }
            let left = halves[0].split(separator: " ")
            guard left.count >= 5 else { continue }
            let opts = right[2].split(separator: ",").map(String.init)
                .filter { !["rw", "ro", "nosuid", "nodev", "noexec", "relatime", "clone_children", "xattr"].contains($0) && !$0.hasPrefix("release_agent=") }
            out.append(V1Hierarchy(mountPoint: Mount.unescapeMountinfo(String(left[4])),
                                   mountRoot: Mount.unescapeMountinfo(String(left[3])), controllers: opts))
        }
        return out
    }

    /// The directory of cgroup `path` in this hierarchy.
    public func directory(of path: String) -> String {
        var rel = path
        if mountRoot != "/", rel.hasPrefix(mountRoot) { rel = String(rel.dropFirst(mountRoot.count)) }
        return mountPoint + (rel.hasPrefix("/") ? rel : "/" + rel)
    }
}

extension Cgroup {
    /// runc's layout for a `cgroup` mount on a hybrid host without a cgroup
    /// namespace (what podman sends there): the container has a cgroup in
    /// every v1 hierarchy. Makes them where missing (a new cpuset level gets
    /// its parent's cpus and mems, or no task could join) and returns the
    /// container's directories not in `existing`. Parents stay, as with runc.
    public func createV1Everywhere(except existing: [String]) throws(IpactrError) -> [String] {
        var dirs: [String] = []
        var made: [String] = []
        for h in V1Hierarchy.all() {
            let dir = h.directory(of: path)
            if existing.contains(dir) { continue }
            var cur = h.mountPoint
            for part in dir.dropFirst(h.mountPoint.count).split(separator: "/") {
                let parent = cur
                cur += "/" + part
                if FileIO.isDirectory(cur) { continue }
                if mkdir(cur, 0o755) != 0 && Glibc.errno != EEXIST {
                    let e = errnoError("create cgroup \(cur)")
                    for d in made.reversed() { rmdir(d) }
                    throw e
                }
                made.append(cur)
                if h.controllers.contains("cpuset") {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        if let v = try? FileIO.readString(parent + "/" + f) { try? FileIO.write(cur + "/" + f, v) }
                    }
                }
            }
            dirs.append(dir)
        }
        return dirs
    }
}

/// The v1 controllers whose limits the runtime can set on a hybrid host.
let v1Controllers: Set<String> = ["memory", "pids", "cpu", "blkio"]

/// One container's cgroup on the v2 hierarchy.
public struct Cgroup: Sendable {
    public var hierarchy: CgroupHierarchy
    /// The cgroup path, absolute in our cgroup namespace.
    public var path: String
    public var directory: String { hierarchy.directory(of: path) }

    public init(hierarchy: CgroupHierarchy, path: String) {
        self.hierarchy = hierarchy
        self.path = path
    }

    /// Resolves config.json's `linux.cgroupsPath`: absolute paths are taken from
    /// the hierarchy's root, relative ones from the caller's own cgroup (as
    /// crun does), and no path means `/ipactr-runtime/<id>`.
    public static func resolve(cgroupsPath: String?, id: String, hierarchy: CgroupHierarchy) throws(IpactrError) -> Cgroup {
        guard let p = cgroupsPath, !p.isEmpty else {
            return Cgroup(hierarchy: hierarchy, path: "/ipactr-runtime/\(id)")
        }
        if p.contains(":") {
            throw IpactrError(.unsupported, "cgroupsPath \(p): systemd-style slice:prefix:name paths (--systemd-cgroup) are not supported yet")
        }
        let parts = p.split(separator: "/")
        if parts.contains(where: { $0 == ".." || $0 == "." }) {
            throw IpactrError(.invalidArgument, "cgroupsPath \(p): must not contain . or .. components")
        }
        if p.hasPrefix("/") { return Cgroup(hierarchy: hierarchy, path: "/" + parts.joined(separator: "/")) }
        let own = try CgroupHierarchy.ownCgroup()
        return Cgroup(hierarchy: hierarchy, path: (own == "/" ? "" : own) + "/" + parts.joined(separator: "/"))
    }

    /// Creates the cgroup. It must not exist yet: two containers sharing one
    /// cgroup break each other's delete (and systemd's delegation).
    public func create() throws(IpactrError) {
        let dir = directory
        let parent = String(dir[..<(dir.lastIndex(of: "/") ?? dir.endIndex)])
        try FileIO.mkdirAll(parent)
        if mkdir(dir, 0o755) != 0 {
            if Glibc.errno == EEXIST { throw IpactrError(.exists, "cgroup \(path) already exists") }
            throw errnoError("create cgroup \(dir)")
        }
    }

    // MARK: resources

    /// Writes the v2 files for `resources`. A limit whose controller is not
    /// available on the v2 hierarchy is an error, never silently dropped (on a
    /// hybrid host v1 owns memory, pids, cpu and io; v1 limits are not
    /// implemented yet).
    /// Returns the v1 directories it made (hybrid hosts); the init's pid goes
    /// into their cgroup.procs before it runs, and `delete` removes them.
    @discardableResult
    public func apply(_ r: RuntimeSpec.Resources) throws(IpactrError) -> [String] {
        var writes: [(controller: String, file: String, value: String, what: String)] = []
        // v1 values that are not a plain translation of the v2 one.
        var v1Values: [String: String] = [:]
        if let m = r.memory {
            if let l = m.limit { writes.append(("memory", "memory.max", l < 0 ? "max" : String(l), "memory limit")) }
            if let l = m.reservation { writes.append(("memory", "memory.low", l < 0 ? "max" : String(l), "memory reservation")) }
            if let s = m.swap {
                // OCI's swap is memory+swap; v2's memory.swap.max is swap alone.
                let v: String
                if s < 0 { v = "max" } else if let l = m.limit, l >= 0 { v = String(max(0, s - l)) } else { v = String(s) }
                writes.append(("memory", "memory.swap.max", v, "memory swap limit"))
                // v1's memory.memsw.limit_in_bytes is memory+swap, like OCI's.
                v1Values["memory.swap.max"] = s < 0 ? "-1" : String(s)
            }
        }
        if let p = r.pids { writes.append(("pids", "pids.max", p.limit <= 0 ? "max" : String(p.limit), "pids limit")) }
        if let c = r.cpu {
            if let s = c.shares, s > 0 {
                // runc's conversion of v1 shares [2, 262144] to v2 weight [1, 10000].
                let w = 1 + ((max(2, min(s, 262144)) - 2) * 9999) / 262142
                writes.append(("cpu", "cpu.weight", String(w), "cpu shares"))
                v1Values["cpu.weight"] = String(s)
            }
            if c.quota != nil || c.period != nil {
                let period = c.period ?? 100000
                let quota = c.quota.map { $0 <= 0 ? "max" : String($0) } ?? "max"
                writes.append(("cpu", "cpu.max", "\(quota) \(period)", "cpu quota"))
            }
            if let s = c.cpus, !s.isEmpty { writes.append(("cpuset", "cpuset.cpus", s, "cpuset cpus")) }
            if let s = c.mems, !s.isEmpty { writes.append(("cpuset", "cpuset.mems", s, "cpuset mems")) }
        }
        if let w = r.blockIO?.weight { writes.append(("io", "io.weight", "default \(w)", "blkio weight")) }
        for h in r.hugepageLimits ?? [] {
            writes.append(("hugetlb", "hugetlb.\(h.pageSize).max", String(h.limit), "hugepage limit \(h.pageSize)"))
        }
        for (k, v) in (r.unified ?? [:]).sorted(by: { $0.key < $1.key }) {
            guard !k.contains("/"), let dot = k.firstIndex(of: ".") else {
                throw IpactrError(.invalidArgument, "unified resource \(k): not a cgroup v2 file name")
            }
            writes.append((String(k[..<dot]), k, v, "unified \(k)"))
        }
        guard !writes.isEmpty else { return [] }
        let available = Set((try? FileIO.readString(hierarchy.mountPoint + "/cgroup.controllers"))?.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init) ?? [])
        // On a hybrid host v1 owns memory, pids, cpu and io: their limits go
        // there (as runc does); the container's cgroup, namespace and
        // delegation stay on v2.
        var v1Writes: [(controller: String, file: String, value: String, what: String)] = []
        if hierarchy.hybrid {
            var keep: [(controller: String, file: String, value: String, what: String)] = []
            for w in writes {
                if !available.contains(w.controller), let v1 = v1File(w, v1Value: v1Values[w.file]) { v1Writes.append(v1) } else { keep.append(w) }
            }
            writes = keep
        }
        let needed = Array(Set(writes.map(\.controller)).filter { $0 != "cgroup" }).sorted()
        try enableControllers(needed, for: writes)
        var v1Dirs: [String] = []
        do {
            for w in v1Writes {
                guard let m = hierarchy.v1[w.controller] else {
                    throw IpactrError(.unsupported, "\(w.what): no cgroup v1 \(w.controller) hierarchy is mounted")
                }
                var rel = path
                if m.mountRoot != "/", rel.hasPrefix(m.mountRoot) { rel = String(rel.dropFirst(m.mountRoot.count)) }
                let dir = m.mountPoint + rel
                if !v1Dirs.contains(dir) {
                    try FileIO.mkdirAll(dir)
                    v1Dirs.append(dir)
                }
                let file = dir + "/" + w.file
                guard FileIO.exists(file) else {
                    throw IpactrError(.unsupported, "\(w.what): this kernel has no \(file)")
                }
                do { try FileIO.write(file, w.value) } catch {
                    throw IpactrError(error.code, "\(w.what): \(error.message)", errno: error.errno)
                }
            }
            for w in writes {
                let file = directory + "/" + w.file
                do { try FileIO.write(file, w.value) } catch {
                    throw IpactrError(error.code, "\(w.what): \(error.message)", errno: error.errno)
                }
            }
        } catch let error as IpactrError {
            for d in v1Dirs.reversed() { rmdir(d) }
            throw error
        } catch {
            for d in v1Dirs.reversed() { rmdir(d) }
            throw IpactrError(.internalError, "\(error)")
        }
        return v1Dirs
    }

    /// The v1 file for a v2 write, or nil when v1 has no equivalent here.
    func v1File(_ w: (controller: String, file: String, value: String, what: String), v1Value: String? = nil) -> (controller: String, file: String, value: String, what: String)? {
        let v = w.value == "max" ? "-1" : w.value
        switch w.file {
        // containerd's default spec carries cpu shares 1024 (runc writes them to v1 as they are).
        case "cpu.weight": return v1Value.map { ("cpu", "cpu.shares", $0, w.what) }
        case "memory.max": return ("memory", "memory.limit_in_bytes", v, w.what)
        case "memory.low": return ("memory", "memory.soft_limit_in_bytes", v, w.what)
        // After memory.max (v1 refuses memory+swap below the memory limit);
        // podman's --memory M sets swap 2M.
        case "memory.swap.max": return v1Value.map { ("memory", "memory.memsw.limit_in_bytes", $0, w.what) }
        case "pids.max": return ("pids", "pids.max", w.value, w.what)
        case "cpu.max":
            let parts = w.value.split(separator: " ")
            return ("cpu", "cpu.cfs_quota_us", parts[0] == "max" ? "-1" : String(parts[0]), w.what)
        default: return nil
        }
    }

    /// Turns controllers on in every ancestor's cgroup.subtree_control, from the
    /// hierarchy root down to our parent.
    func enableControllers(_ controllers: [String], for writes: [(controller: String, file: String, value: String, what: String)]) throws(IpactrError) {
        let available = Set((try? FileIO.readString(hierarchy.mountPoint + "/cgroup.controllers"))?.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init) ?? [])
        for c in controllers where !available.contains(c) {
            let what = writes.first { $0.controller == c }?.what ?? c
            let why = hierarchy.hybrid ? " (this host has the hybrid cgroup layout: cgroup v1 owns it, and v1 limits are not implemented)" : ""
            throw IpactrError(.unsupported, "\(what): the \(c) controller is not available on the cgroup v2 hierarchy at \(hierarchy.mountPoint)\(why)")
        }
        let rel = directory.dropFirst(hierarchy.mountPoint.count).split(separator: "/")
        var dir = hierarchy.mountPoint
        let line = controllers.map { "+" + $0 }.joined(separator: " ")
        for part in rel.dropLast() {
            try FileIO.write(dir + "/cgroup.subtree_control", line)
            dir += "/" + part
        }
        try FileIO.write(dir + "/cgroup.subtree_control", line)
    }

    /// After `removeV1`: the default /ipactr-runtime parent of each v1
    /// directory goes with its last container, as on v2 (rmdir fails while
    /// others are in it). Only a parent right under a hierarchy's root (where
    /// v1 keeps release_agent) is the default one.
    public static func removeDefaultV1Parents(_ dirs: [String]) {
        for d in dirs {
            guard let slash = d.lastIndex(of: "/") else { continue }
            let parent = String(d[..<slash])
            guard parent.hasSuffix("/ipactr-runtime"), let up = parent.lastIndex(of: "/"),
                  FileIO.exists(String(parent[..<up]) + "/release_agent") else { continue }
            rmdir(parent)
        }
    }

    // MARK: ownership

    /// The files runtime-spec's cgroup-ownership rule lets a container own:
    /// those the kernel lists in /sys/kernel/cgroup/delegate, else the spec's
    /// fallback list.
    public static func delegateFiles() -> [String] {
        if let t = try? FileIO.readString("/sys/kernel/cgroup/delegate") {
            let names = t.split(whereSeparator: { $0 == "\n" || $0 == " " }).map(String.init)
            if !names.isEmpty { return names }
        }
        return ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"]
    }

    /// chowns the cgroup directory and the delegate files that exist; nothing else.
    public func delegate(to uid: uid_t, gid: gid_t) throws(IpactrError) {
        let dir = directory
        try syscall("chown \(dir)") { chown(dir, uid, gid) }
        for f in Cgroup.delegateFiles() {
            let p = dir + "/" + f
            if chown(p, uid, gid) != 0 && Glibc.errno != ENOENT { throw errnoError("chown \(p)") }
        }
    }

    // MARK: state

    public var isFrozen: Bool {
        guard let t = try? FileIO.readString(directory + "/cgroup.freeze") else { return false }
        return t.hasPrefix("1")
    }

    /// Writes cgroup.freeze and waits until cgroup.events confirms it.
    public func freeze(_ on: Bool) throws(IpactrError) {
        try FileIO.write(directory + "/cgroup.freeze", on ? "1" : "0")
        let want = on ? "frozen 1" : "frozen 0"
        for _ in 0..<10000 {
            let ev = (try? FileIO.readString(directory + "/cgroup.events")) ?? ""
            if ev.split(separator: "\n").contains(where: { $0 == want }) { return }
            usleep(1000)
        }
        throw IpactrError(.busy, "cgroup \(path) did not reach \"\(want)\" within 10 s")
    }

    /// Pids in the cgroup and its descendants.
    public func pids() -> [pid_t] {
        var out: [pid_t] = []
        func walk(_ dir: String) {
            if let t = try? FileIO.readString(dir + "/cgroup.procs") {
                out += t.split(separator: "\n").compactMap { pid_t($0) }
            }
            for e in FileIO.listDirectory(dir) where e.isDir { walk(dir + "/" + e.name) }
        }
        walk(directory)
        return out
    }

    /// SIGKILLs everything in the cgroup (cgroup.kill where the kernel has it).
    public func killAll() {
        if (try? FileIO.write(directory + "/cgroup.kill", "1")) != nil { return }
        for p in pids() { kill(p, SIGKILL) }
    }

    /// Puts `pid` into each v1 directory (hybrid hosts) before it runs.
    public static func joinV1(_ pid: pid_t, _ dirs: [String]) throws(IpactrError) {
        for d in dirs { try FileIO.write(d + "/cgroup.procs", String(pid)) }
    }

    /// Removes v1 directories made by `apply` (hybrid hosts), once empty,
    /// with the sub-cgroups a payload made there (systemd's init.scope in
    /// name=systemd), deepest first.
    public static func removeV1(_ dirs: [String]) {
        func rm(_ d: String) {
            for e in FileIO.listDirectory(d) where e.isDir { rm(d + "/" + e.name) }
            var tries = 0
            while rmdir(d) != 0 && Glibc.errno == EBUSY && tries < 2000 { tries += 1; usleep(1000) }
        }
        for d in dirs.reversed() { rm(d) }
    }

    /// Removes the cgroup and any sub-cgroups the container made (systemd's
    /// init.scope…), deepest first. Waits briefly for exiting processes.
    public func remove() throws(IpactrError) {
        func rm(_ dir: String) throws(IpactrError) {
            for e in FileIO.listDirectory(dir) where e.isDir { try rm(dir + "/" + e.name) }
            var tries = 0
            while rmdir(dir) != 0 {
                let e = Glibc.errno
                if e == ENOENT { return }
                tries += 1
                if e != EBUSY || tries > 2000 { throw errnoError("remove cgroup \(dir)") }
                usleep(1000)
            }
        }
        try rm(directory)
        // The default parent made for containers without a cgroupsPath goes
        // with its last container (rmdir fails while others are in it).
        if path.hasPrefix("/ipactr-runtime/") { rmdir(hierarchy.directory(of: "/ipactr-runtime")) }
    }
}
