import IpactrOCI
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// How a container's cgroup is made, joined by its init, found again and
/// removed: a table of strategies, as crun's cgroup back ends. The core has
/// `cgroupfs` (the default) and `disabled`; the systemd one lives outside the
/// core (IpactrSystemdCgroup), which stays free of systemd knowledge.
///
/// Order in `create`: `resolve` (no side effects) → `create` (before the
/// clone) → clone → `join` (before the init goes on) → … → `remove` at delete.
public protocol CgroupManager {
    /// Recorded in state.json, so every later verb uses the same manager.
    var name: String { get }
    /// The container's cgroup for `spec` (linux.cgroupsPath, resources),
    /// without side effects; nil when the manager makes none (the container
    /// stays in the caller's cgroup). Refuses what the manager cannot do.
    func resolve(id: String, spec: RuntimeSpec, hierarchy: CgroupHierarchy) throws(IpactrError) -> Cgroup?
    /// Before the clone: makes what must exist before the init. Leaves
    /// nothing behind when it throws.
    func create(_ cgroup: Cgroup, resources: RuntimeSpec.Resources?, v1Layout: Bool) throws(IpactrError) -> CgroupSetup
    /// After the clone, while the init waits: puts `pid` where `create`
    /// could not clone it, and sets what needed a process in the cgroup.
    func join(_ cgroup: Cgroup, pid: pid_t, resources: RuntimeSpec.Resources?, v1Layout: Bool, setup: inout CgroupSetup) throws(IpactrError)
    /// Removes all that `create` and `join` made; the container's processes
    /// are dead (or being killed) already.
    func remove(_ cgroup: Cgroup, v1Dirs: [String]) throws(IpactrError)
}

/// What `create` and `join` made, for the spawn and the state.
public struct CgroupSetup {
    /// cgroup2 directory for CLONE_INTO_CGROUP, or -1 (the init is born in
    /// the runtime's own cgroup, and `join` moves it). Owned by the spawn.
    public var cloneIntoFd: Int32 = -1
    /// v1 directories (hybrid hosts) holding the container; recorded.
    public var v1Dirs: [String] = []
    public init(cloneIntoFd: Int32 = -1, v1Dirs: [String] = []) {
        self.cloneIntoFd = cloneIntoFd
        self.v1Dirs = v1Dirs
    }
}

/// The default: the runtime writes the cgroup filesystem itself. The cgroup
/// is made before the clone, the init is born in it (CLONE_INTO_CGROUP), v1
/// directories hold the limits on hybrid hosts.
public struct CgroupfsManager: CgroupManager {
    public init() {}
    public var name: String { "cgroupfs" }

    public func resolve(id: String, spec: RuntimeSpec, hierarchy: CgroupHierarchy) throws(IpactrError) -> Cgroup? {
        try Cgroup.resolve(cgroupsPath: spec.linux?.cgroupsPath, id: id, hierarchy: hierarchy)
    }

    public func create(_ cgroup: Cgroup, resources: RuntimeSpec.Resources?, v1Layout: Bool) throws(IpactrError) -> CgroupSetup {
        try cgroup.create()
        var setup = CgroupSetup()
        do {
            if let r = resources { setup.v1Dirs = try cgroup.apply(r) }
            if v1Layout { setup.v1Dirs += try cgroup.createV1Everywhere(except: setup.v1Dirs) }
            setup.cloneIntoFd = try syscall("open cgroup \(cgroup.directory)") { open(cgroup.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        } catch {
            try? remove(cgroup, v1Dirs: setup.v1Dirs)
            throw error
        }
        return setup
    }

    public func join(_ cgroup: Cgroup, pid: pid_t, resources: RuntimeSpec.Resources?, v1Layout: Bool, setup: inout CgroupSetup) throws(IpactrError) {
        try Cgroup.joinV1(pid, setup.v1Dirs)
    }

    public func remove(_ cgroup: Cgroup, v1Dirs: [String]) throws(IpactrError) {
        cgroup.killAll()
        defer {
            Cgroup.removeV1(v1Dirs)
            Cgroup.removeDefaultV1Parents(v1Dirs)
        }
        try cgroup.remove()
    }
}

/// crun's `--cgroup-manager=disabled`: no cgroup is made or joined (v2 or
/// v1); the container stays in the caller's cgroup. Limits that would need a
/// cgroup are refused; device rules (not enforced on v2 anyway) pass.
public struct DisabledCgroupManager: CgroupManager {
    public init() {}
    public var name: String { "disabled" }

    public func resolve(id: String, spec: RuntimeSpec, hierarchy: CgroupHierarchy) throws(IpactrError) -> Cgroup? {
        if let r = spec.linux?.resources, let what = Self.limitNeedingCgroup(r) {
            throw IpactrError(.unsupported, "linux.resources.\(what): a limit needs a cgroup, and --cgroup-manager=disabled makes none")
        }
        return nil
    }

    /// The first limit in `r` that only a cgroup could enforce, or nil.
    static func limitNeedingCgroup(_ r: RuntimeSpec.Resources) -> String? {
        if let m = r.memory {
            if m.limit != nil { return "memory.limit" }
            if m.reservation != nil { return "memory.reservation" }
            if m.swap != nil { return "memory.swap" }
        }
        if let c = r.cpu {
            if c.shares != nil { return "cpu.shares" }
            if c.quota != nil { return "cpu.quota" }
            if c.period != nil { return "cpu.period" }
            if let s = c.cpus, !s.isEmpty { return "cpu.cpus" }
            if let s = c.mems, !s.isEmpty { return "cpu.mems" }
        }
        if r.pids != nil { return "pids.limit" }
        if r.blockIO?.weight != nil { return "blockIO.weight" }
        if let h = r.hugepageLimits, !h.isEmpty { return "hugepageLimits" }
        if let u = r.unified, let k = u.keys.sorted().first { return "unified[\(k)]" }
        return nil
    }

    public func create(_ cgroup: Cgroup, resources: RuntimeSpec.Resources?, v1Layout: Bool) throws(IpactrError) -> CgroupSetup { CgroupSetup() }
    public func join(_ cgroup: Cgroup, pid: pid_t, resources: RuntimeSpec.Resources?, v1Layout: Bool, setup: inout CgroupSetup) throws(IpactrError) {}
    public func remove(_ cgroup: Cgroup, v1Dirs: [String]) throws(IpactrError) {}
}
