import CCap
import CIpactrShim
import IpactrOCI
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Owns the C memory an `ipactr_plan` points into. Everything is allocated
/// before clone3, so the child only reads it.
final class CArena {
    private var blocks: [UnsafeMutableRawPointer] = []
    deinit { for b in blocks { free(b) } }

    func str(_ s: String) -> UnsafePointer<CChar> {
        let p = strdup(s)!
        blocks.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    func optStr(_ s: String?) -> UnsafePointer<CChar>? { s.map { str($0) } }

    /// A NULL-terminated array of C strings.
    func strv(_ list: [String]) -> UnsafePointer<UnsafePointer<CChar>?> {
        let p = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: list.count + 1)
        for (i, s) in list.enumerated() { p[i] = str(s) }
        p[list.count] = nil
        blocks.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    func array<T>(_ list: [T]) -> UnsafePointer<T>? {
        guard !list.isEmpty else { return nil }
        let p = UnsafeMutablePointer<T>.allocate(capacity: list.count)
        p.initialize(from: list, count: list.count)
        blocks.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }
}

/// config.json's namespace names and their clone flags.
let namespaceFlags: [String: Int32] = [
    "pid": IPACTR_CLONE_NEWPID, "network": IPACTR_CLONE_NEWNET, "mount": IPACTR_CLONE_NEWNS, "ipc": IPACTR_CLONE_NEWIPC,
    "uts": IPACTR_CLONE_NEWUTS, "user": IPACTR_CLONE_NEWUSER, "cgroup": IPACTR_CLONE_NEWCGROUP, "time": IPACTR_CLONE_NEWTIME,
]

let rlimitNames: [String: Int32] = [
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
]

/// Mount options that are flags; everything else goes to the filesystem as data.
let mountFlagOptions: [String: (set: Bool, flag: UInt)] = [
    "ro": (true, UInt(MS_RDONLY)), "rw": (false, UInt(MS_RDONLY)),
    "nosuid": (true, UInt(MS_NOSUID)), "suid": (false, UInt(MS_NOSUID)),
    "nodev": (true, UInt(MS_NODEV)), "dev": (false, UInt(MS_NODEV)),
    "noexec": (true, UInt(MS_NOEXEC)), "exec": (false, UInt(MS_NOEXEC)),
    "sync": (true, UInt(MS_SYNCHRONOUS)), "async": (false, UInt(MS_SYNCHRONOUS)),
    "dirsync": (true, UInt(MS_DIRSYNC)), "remount": (true, UInt(MS_REMOUNT)),
    "mand": (true, UInt(MS_MANDLOCK)), "nomand": (false, UInt(MS_MANDLOCK)),
    "noatime": (true, UInt(MS_NOATIME)), "atime": (false, UInt(MS_NOATIME)),
    "nodiratime": (true, UInt(MS_NODIRATIME)), "diratime": (false, UInt(MS_NODIRATIME)),
    "relatime": (true, UInt(MS_RELATIME)), "norelatime": (false, UInt(MS_RELATIME)),
    "strictatime": (true, UInt(MS_STRICTATIME)), "nostrictatime": (false, UInt(MS_STRICTATIME)),
    "bind": (true, UInt(MS_BIND)), "rbind": (true, UInt(MS_BIND | MS_REC)),
]

let propagationOptions: [String: UInt] = [
    "private": UInt(MS_PRIVATE), "rprivate": UInt(MS_PRIVATE | MS_REC),
    "shared": UInt(MS_SHARED), "rshared": UInt(MS_SHARED | MS_REC),
    "slave": UInt(MS_SLAVE), "rslave": UInt(MS_SLAVE | MS_REC),
    "unbindable": UInt(MS_UNBINDABLE), "runbindable": UInt(MS_UNBINDABLE | MS_REC),
]

/// The device nodes every container with a private /dev gets (runtime-spec config-linux.md).
let defaultDevices: [(path: String, major: UInt32, minor: UInt32)] = [
    ("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
    ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0),
]

/// What the parent does around the child: decided while building the plan.
struct ParentWork {
    var userns = false
    var uidMappings: [RuntimeSpec.IDMapping] = []
    var gidMappings: [RuntimeSpec.IDMapping] = []
    var rlimits: [(resource: Int32, soft: UInt64, hard: UInt64, name: String)] = []
    var oomScoreAdj: Int?
    /// Host uid/gid the cgroup goes to (runtime-spec cgroup ownership), or nil.
    var cgroupOwner: (uid: uid_t, gid: gid_t)?
    var joinFds: [Int32] = []
    /// linux.namespaces[] user / pid with a path: joined before the init is cloned.
    var joinUserFd: Int32 = -1
    var joinPidFd: Int32 = -1
    /// Detached idmapped trees (mounts' tree_fd): the child attaches them; closed after spawn.
    var treeFds: [Int32] = []
    /// A `cgroup` mount in runc's v1 layout: the container needs a cgroup in every v1 hierarchy.
    var v1CgroupLayout = false
}

func hostID(_ id: UInt32, in maps: [RuntimeSpec.IDMapping]) -> UInt32? {
    for m in maps where id >= m.containerID && UInt64(id) < UInt64(m.containerID) + UInt64(m.size) {
        return m.hostID + (id - m.containerID)
    }
    return nil
}

/// Lexically follows `dest` inside `rootfs` the way the kernel would from the
/// host, and rejects a destination whose symlinks climb out of the rootfs with
/// "..". Absolute symlinks are followed inside the rootfs (as chroot, runc and
/// openat2(RESOLVE_IN_ROOT) do). The child resolves with RESOLVE_IN_ROOT anyway;
/// this check turns an escaping rootfs into a clear error at create.
func checkDestination(_ dest: String, rootfs: String) throws(IpactrError) {
    var stack: [String] = []
    var pending = dest.split(separator: "/").map(String.init).reversed() as [String]
    var links = 0
    while let c = pending.popLast() {
        if c == "." || c.isEmpty { continue }
        if c == ".." {
            if stack.isEmpty {
                throw IpactrError(.invalidArgument, "mount destination \(dest): a symlink leads outside the rootfs")
            }
            stack.removeLast()
            continue
        }
        let path = rootfs + "/" + (stack + [c]).joined(separator: "/")
        var st = stat()
        if lstat(path, &st) != 0 { stack.append(c); continue }
        if (st.st_mode & S_IFMT) == S_IFLNK {
            links += 1
            if links > 40 { throw IpactrError(.invalidArgument, "mount destination \(dest): too many levels of symlinks") }
            var buf = [CChar](repeating: 0, count: 4097)
            let n = readlink(path, &buf, 4096)
            if n < 0 { throw errnoError("readlink \(path)") }
            let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if target.hasPrefix("/") { stack.removeAll() }
            pending.append(contentsOf: target.split(separator: "/").map(String.init).reversed())
        } else {
            stack.append(c)
        }
    }
}

func capabilityMask(_ names: [String]?, lastCap: Int32) throws(IpactrError) -> UInt64 {
    var mask: UInt64 = 0
    for n in names ?? [] {
        var v: cap_value_t = 0
        guard cap_from_name(n.lowercased(), &v) == 0 else {
            throw IpactrError(.invalidArgument, "unknown capability \(n)")
        }
        // Capabilities this kernel does not know are skipped, as runc does.
        if v <= lastCap, v < 64 { mask |= 1 << UInt64(v) }
    }
    return mask
}

/// Builds the child's plan from config.json.
struct PlanBuilder {
    let spec: RuntimeSpec
    let bundle: String
    let rootfs: String
    /// The container's cgroup; nil when its manager makes none (disabled:
    /// cgroup mounts then show what the container's cgroup namespace sees).
    let cgroup: Cgroup?
    let hierarchy: CgroupHierarchy
    let arena = CArena()
    var noPivot = false
    var preserveFds = 0
    /// Bind source → detached tree (open_tree) the child attaches with move_mount instead.
    var bindTrees: [String: Int32] = [:]
    /// Connected --console-socket, or -1.
    var consoleSocket: Int32 = -1
    /// Bind the pty on /dev/console (create; not exec).
    var consoleMount = true

    /// runc's v1 `cgroup` mount: a tmpfs at `dest`, the container's cgroup
    /// of each v1 hierarchy bound at `dest/<hierarchy>` (read-only when
    /// `flags` say so). As with runc 1.1 there is no cgroup2 at
    /// `dest/unified`: systemd then runs in legacy mode on name=systemd,
    /// which podman binds read-write (a read-only unified mount would make
    /// it fail to create init.scope). Co-mounted controllers get no alias
    /// symlinks (cpu → cpu,cpuacct).
    func v1CgroupMounts(at dest: String, flags: UInt) -> [ipactr_mount] {
        let base = UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC)
        func mount(_ kind: ipactr_mount_kind, _ source: String, _ destination: String, _ fstype: String,
                   _ flags: UInt, _ data: String?) -> ipactr_mount {
            var m = ipactr_mount()
            m.kind = Int32(kind.rawValue)
            m.source = arena.str(source)
            m.destination = arena.str(destination)
            m.fstype = arena.str(fstype)
            m.flags = flags
            m.data = data.map { arena.str($0) }
            m.source_is_dir = 1
            return m
        }
        var out = [mount(IPACTR_MOUNT_FS, "tmpfs", dest, "tmpfs", base, "mode=755")]
        for h in V1Hierarchy.all().sorted(by: { $0.mountPoint < $1.mountPoint }) {
            let name = h.mountPoint.split(separator: "/").last.map(String.init) ?? h.mountPoint
            // Without a cgroup of its own: the hierarchy as the caller's namespace sees it.
            let source = cgroup.map { h.directory(of: $0.path) } ?? h.mountPoint
            out.append(mount(IPACTR_MOUNT_BIND, source, dest + "/" + name, "bind",
                             flags & (UInt(MS_RDONLY) | base), nil))
        }
        return out
    }

    func build(into plan: inout ipactr_plan, parent: inout ParentWork) throws(IpactrError) {
        guard let process = spec.process else { throw IpactrError(.invalidArgument, "config.json: process is required") }
        guard let args = process.args, !args.isEmpty, !args[0].isEmpty else { throw IpactrError(.invalidArgument, "config.json: process.args must not be empty") }
        guard process.cwd.hasPrefix("/") else { throw IpactrError(.invalidArgument, "config.json: process.cwd \(process.cwd) is not absolute") }
        let linux = spec.linux ?? RuntimeSpec.Linux()

        // Namespaces.
        var flags: Int32 = 0
        var seen = Set<String>()
        var newCgroupns = false
        var joinedUserPath: String?
        for ns in linux.namespaces ?? [] {
            guard let f = namespaceFlags[ns.type] else {
                throw IpactrError(.invalidArgument, "config.json: unknown namespace type \"\(ns.type)\"")
            }
            guard seen.insert(ns.type).inserted else {
                throw IpactrError(.invalidArgument, "config.json: namespace \(ns.type) is listed twice")
            }
            if let path = ns.path, !path.isEmpty {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                if fd < 0 { throw errnoError("open \(ns.type) namespace \(path)") }
                // user and pid are joined before the init exists (ipactr_spawn_ex).
                if ns.type == "user" {
                    parent.joinUserFd = fd
                    joinedUserPath = path
                } else if ns.type == "pid" {
                    parent.joinPidFd = fd
                } else {
                    parent.joinFds.append(fd)
                }
            } else if ns.type == "cgroup" {
                newCgroupns = true
            } else {
                flags |= f
            }
        }
        parent.userns = flags & IPACTR_CLONE_NEWUSER != 0
        if parent.userns {
            guard let u = linux.uidMappings, !u.isEmpty, let g = linux.gidMappings, !g.isEmpty else {
                throw IpactrError(.invalidArgument, "config.json: a new user namespace needs linux.uidMappings and linux.gidMappings")
            }
            for m in u + g where m.size == 0 {
                throw IpactrError(.invalidArgument, "config.json: id mapping \(m.containerID)→\(m.hostID) has size 0")
            }
            parent.uidMappings = u
            parent.gidMappings = g
            guard hostID(process.user.uid, in: u) != nil else {
                throw IpactrError(.invalidArgument, "config.json: process.user.uid \(process.user.uid) is not mapped by linux.uidMappings")
            }
            guard hostID(process.user.gid, in: g) != nil else {
                throw IpactrError(.invalidArgument, "config.json: process.user.gid \(process.user.gid) is not mapped by linux.gidMappings")
            }
        } else if let path = joinedUserPath {
            // The joined namespace's own maps (uid checks, cgroup owner, idmap).
            let maps = try joinedMappings(path)
            parent.uidMappings = maps.uid
            parent.gidMappings = maps.gid
            guard hostID(process.user.uid, in: maps.uid) != nil, hostID(process.user.gid, in: maps.gid) != nil else {
                throw IpactrError(.invalidArgument, "config.json: process.user \(process.user.uid):\(process.user.gid) is not mapped in the user namespace \(path)")
            }
        } else if !(linux.uidMappings ?? []).isEmpty || !(linux.gidMappings ?? []).isEmpty {
            throw IpactrError(.invalidArgument, "config.json: uidMappings/gidMappings need a new user namespace")
        }
        if spec.hostname != nil, flags & IPACTR_CLONE_NEWUTS == 0 {
            throw IpactrError(.invalidArgument, "config.json: hostname needs a new uts namespace")
        }
        plan.clone_flags = flags
        plan.new_cgroupns = newCgroupns ? 1 : 0
        plan.join_fds = arena.array(parent.joinFds)
        plan.n_join = Int32(parent.joinFds.count)
        plan.join_userns_fd = parent.joinUserFd
        plan.join_pidns_fd = parent.joinPidFd
        plan.hostname = arena.optStr(spec.hostname)
        plan.domainname = arena.optStr(spec.domainname)

        // Filesystem.
        let newMountns = flags & IPACTR_CLONE_NEWNS != 0
        plan.new_mountns = newMountns ? 1 : 0
        plan.rootfs = arena.str(rootfs)
        plan.readonly_root = spec.root?.readonly == true ? 1 : 0
        plan.no_pivot = noPivot ? 1 : 0
        if let p = linux.rootfsPropagation, !p.isEmpty {
            guard let v = propagationOptions[p] else {
                throw IpactrError(.invalidArgument, "config.json: unknown rootfsPropagation \(p)")
            }
            plan.rootfs_propagation = v
        } else {
            plan.rootfs_propagation = UInt(MS_SLAVE | MS_REC)
        }
        var mounts: [ipactr_mount] = []
        var devIsTmpfs = false
        var cgroupMountRW = false
        for m in spec.mounts ?? [] {
            guard m.destination.hasPrefix("/") else {
                throw IpactrError(.invalidArgument, "config.json: mount destination \(m.destination) is not absolute")
            }
            try checkDestination(m.destination, rootfs: rootfs)
            var idmap = IdmapMode.none
            var cm = ipactr_mount()
            var mflags: UInt = 0
            var data: [String] = []
            for o in m.options ?? [] {
                if let f = mountFlagOptions[o] {
                    if f.set { mflags |= f.flag } else { mflags &= ~f.flag }
                } else if let p = propagationOptions[o] {
                    cm.propagation = p
                } else if o == "idmap" {
                    idmap = .top
                } else if o == "ridmap" {
                    idmap = .recursive
                } else if o == "tmpcopyup" {
                    cm.tmpcopyup = 1
                } else {
                    data.append(o)
                }
            }
            let type = m.type ?? ""
            let isBind = type == "bind" || mflags & UInt(MS_BIND) != 0
            let dest = normalize(m.destination)
            if isBind {
                guard var src = m.source, !src.isEmpty else {
                    throw IpactrError(.invalidArgument, "mount \(m.destination): a bind mount needs a source")
                }
                if !src.hasPrefix("/") { src = bundle + "/" + src }
                var st = stat()
                if stat(src, &st) != 0 { throw errnoError("bind mount source \(src)") }
                cm.kind = Int32(IPACTR_MOUNT_BIND.rawValue)
                cm.recursive = mflags & UInt(MS_REC) != 0 ? 1 : 0
                cm.source_is_dir = (st.st_mode & S_IFMT) == S_IFDIR ? 1 : 0
                cm.source = arena.str(src)
                cm.tree_fd = bindTrees[src] ?? -1
                let hasMaps = !(m.uidMappings ?? []).isEmpty || !(m.gidMappings ?? []).isEmpty
                if hasMaps, idmap == .none { idmap = .top }  // mappings imply `idmap` (as runc)
                if idmap != .none {
                    cm.tree_fd = try idmappedTree(m, source: src, mode: idmap, rbind: mflags & UInt(MS_REC) != 0,
                                                  containerMaps: (parent.userns || joinedUserPath != nil)
                                                      ? (parent.uidMappings, parent.gidMappings) : nil,
                                                  parent: &parent)
                }
                mflags &= ~UInt(MS_BIND | MS_REC)
            } else if type == "cgroup", hierarchy.hybrid, !newCgroupns {
                // Hybrid host, no cgroup namespace: runc's layout, which podman
                // expects there (it binds name=systemd on /sys/fs/cgroup/systemd
                // for --systemd=always). With a cgroup namespace the container
                // gets the v2 view below (systemd's unified mode).
                mounts += v1CgroupMounts(at: normalize(m.destination), flags: mflags)
                parent.v1CgroupLayout = true
                continue
            } else if type == "cgroup" || type == "cgroup2" {
                cm.kind = Int32(IPACTR_MOUNT_CGROUP.rawValue)
                cm.source = arena.str(cgroup?.directory ?? hierarchy.mountPoint)
                if dest == "/sys/fs/cgroup", mflags & UInt(MS_RDONLY) == 0 { cgroupMountRW = true }
            } else if type == "sysfs" {
                cm.kind = Int32(IPACTR_MOUNT_SYSFS.rawValue)
                cm.source = arena.str(m.source ?? "sysfs")
            } else {
                guard !type.isEmpty else { throw IpactrError(.invalidArgument, "mount \(m.destination): type is missing") }
                cm.kind = Int32(IPACTR_MOUNT_FS.rawValue)
                cm.source = arena.str(m.source ?? type)
                if dest == "/dev", type == "tmpfs" { devIsTmpfs = true }
            }
            if idmap != .none, !isBind {
                throw IpactrError(.invalidArgument, "mount \(m.destination): idmapped mounts (idmap, ridmap, uidMappings) need a bind mount, not \(type)")
            }
            if cm.tmpcopyup != 0, type != "tmpfs" {
                throw IpactrError(.invalidArgument, "mount \(m.destination): tmpcopyup needs a tmpfs mount, not \(type.isEmpty ? "a bind" : type)")
            }
            cm.destination = arena.str(dest)
            cm.fstype = arena.str(type)
            cm.flags = mflags
            cm.data = data.isEmpty ? nil : arena.str(data.joined(separator: ","))
            mounts.append(cm)
        }
        if !newMountns, !mounts.isEmpty {
            throw IpactrError(.invalidArgument, "config.json: mounts need a new mount namespace")
        }
        plan.mounts = arena.array(mounts)
        plan.n_mounts = Int32(mounts.count)

        var devices: [ipactr_device] = []
        if devIsTmpfs {
            var list: [(String, mode_t, UInt32, UInt32, uid_t, gid_t)] = defaultDevices.map {
                ($0.path, S_IFCHR | 0o666, $0.major, $0.minor, 0, 0)
            }
            for d in linux.devices ?? [] {
                let kind: mode_t
                switch d.type {
                case "c", "u": kind = S_IFCHR
                case "b": kind = S_IFBLK
                case "p": kind = S_IFIFO
                default: throw IpactrError(.invalidArgument, "config.json: device \(d.path) has unknown type \(d.type)")
                }
                list.removeAll { $0.0 == d.path }
                list.append((normalize(d.path), kind | ((d.fileMode ?? 0o666) & 0o7777), UInt32(d.major ?? 0), UInt32(d.minor ?? 0), d.uid ?? 0, d.gid ?? 0))
            }
            for d in list {
                var cd = ipactr_device()
                cd.path = arena.str(d.0)
                cd.mode = d.1
                cd.dev = ipactr_makedev(d.2, d.3)
                cd.uid = d.4
                cd.gid = d.5
                devices.append(cd)
            }
        }
        plan.devices = arena.array(devices)
        plan.n_devices = Int32(devices.count)
        plan.bind_devices = parent.userns || joinedUserPath != nil ? 1 : 0
        plan.dev_symlinks = devIsTmpfs ? 1 : 0
        let masked = newMountns ? (linux.maskedPaths ?? []) : []
        let ro = newMountns ? (linux.readonlyPaths ?? []) : []
        plan.masked_paths = masked.isEmpty ? nil : arena.strv(masked)
        plan.n_masked = Int32(masked.count)
        plan.readonly_paths = ro.isEmpty ? nil : arena.strv(ro)
        plan.n_readonly = Int32(ro.count)
        let sysctl = (linux.sysctl ?? [:]).sorted { $0.key < $1.key }
        for (k, _) in sysctl where k.contains("/") || k.contains("..") {
            throw IpactrError(.invalidArgument, "config.json: invalid sysctl name \(k)")
        }
        if !sysctl.isEmpty, !newMountns {
            throw IpactrError(.invalidArgument, "config.json: sysctl needs a new mount namespace")
        }
        plan.sysctl_keys = sysctl.isEmpty ? nil : arena.strv(sysctl.map { $0.key.replacingDots() })
        plan.sysctl_values = sysctl.isEmpty ? nil : arena.strv(sysctl.map { $0.value })
        plan.n_sysctl = Int32(sysctl.count)

        try fillProcess(process, seccomp: linux.seccomp, into: &plan, parent: &parent)
        plan.hook_pause = (spec.hooks?.prestart ?? []).isEmpty && (spec.hooks?.createRuntime ?? []).isEmpty ? 0 : 1
        try fillContainerHooks(into: &plan)

        // runtime-spec cgroup ownership: only v2 (always, here), only with a
        // new cgroup namespace, only with a read-write cgroup mount at /sys/fs/cgroup.
        if newCgroupns, cgroupMountRW {
            let mapped = parent.userns || joinedUserPath != nil
            let uid = mapped ? hostID(process.user.uid, in: parent.uidMappings)! : process.user.uid
            let gid = mapped ? hostID(process.user.gid, in: parent.gidMappings)! : process.user.gid
            parent.cgroupOwner = (uid, gid)
        }
    }
    /// createContainer and startContainer hooks, which the init runs itself
    /// (inside the container); their state files are the caller's to open.
    func fillContainerHooks(into plan: inout ipactr_plan) throws(IpactrError) {
        func convert(_ list: [RuntimeSpec.Hook]?, _ kind: String) throws(IpactrError) -> [ipactr_hook] {
            var out: [ipactr_hook] = []
            for h in list ?? [] {
                guard h.path.hasPrefix("/") else { throw IpactrError(.invalidArgument, "config.json: \(kind) hook path \(h.path) is not absolute") }
                if let t = h.timeout, t <= 0 {
                    throw IpactrError(.invalidArgument, "config.json: \(kind) hook \(h.path): timeout must be greater than zero")
                }
                var c = ipactr_hook()
                c.path = arena.str(h.path)
                c.argv = arena.strv(h.args ?? [h.path])
                c.envp = arena.strv(h.env ?? [])
                c.timeout = Int32(clamping: h.timeout ?? 0)
                out.append(c)
            }
            return out
        }
        let create = try convert(spec.hooks?.createContainer, "createContainer")
        let start = try convert(spec.hooks?.startContainer, "startContainer")
        plan.create_hooks = arena.array(create)
        plan.n_create_hooks = Int32(create.count)
        plan.start_hooks = arena.array(start)
        plan.n_start_hooks = Int32(start.count)
        plan.create_state_fd = -1
        plan.start_state_fd = -1
    }

    /// Most idmapped mounts one container may have (the child keeps their trees open).
    static let maxIdmappedMounts = 64

    /// A detached, idmapped copy of a bind mount's source for the child to
    /// attach (tree_fd). Mappings: the mount's own uidMappings/gidMappings,
    /// else the container's user namespace's. `idmap` maps the top mount
    /// only (its submounts come along, unmapped, with rbind); `ridmap` clones
    /// and maps recursively.
    func idmappedTree(_ m: RuntimeSpec.Mount, source: String, mode: IdmapMode, rbind: Bool,
                      containerMaps: ([RuntimeSpec.IDMapping], [RuntimeSpec.IDMapping])?,
                      parent: inout ParentWork) throws(IpactrError) -> Int32 {
        let uid: [RuntimeSpec.IDMapping], gid: [RuntimeSpec.IDMapping]
        if !(m.uidMappings ?? []).isEmpty || !(m.gidMappings ?? []).isEmpty {
            guard let u = m.uidMappings, !u.isEmpty, let g = m.gidMappings, !g.isEmpty else {
                throw IpactrError(.invalidArgument, "mount \(m.destination): an idmapped mount needs both uidMappings and gidMappings")
            }
            uid = u
            gid = g
        } else if let c = containerMaps {
            (uid, gid) = c
        } else {
            throw IpactrError(.invalidArgument, "mount \(m.destination): idmap without uidMappings/gidMappings needs a user namespace to take the mappings from")
        }
        for x in uid + gid where x.size == 0 {
            throw IpactrError(.invalidArgument, "mount \(m.destination): id mapping \(x.containerID)→\(x.hostID) has size 0")
        }
        guard parent.treeFds.count < Self.maxIdmappedMounts else {
            throw IpactrError(.invalidArgument, "mount \(m.destination): more than \(Self.maxIdmappedMounts) idmapped mounts")
        }
        func text(_ l: [RuntimeSpec.IDMapping]) -> String { l.map { "\($0.containerID) \($0.hostID) \($0.size)\n" }.joined() }
        func list(_ l: [RuntimeSpec.IDMapping]) -> String { l.map { "\($0.containerID):\($0.hostID):\($0.size)" }.joined(separator: ",") }
        let userns: Int32
        do { userns = try Mount.userNamespace(uidMap: text(uid), gidMap: text(gid)) } catch {
            throw IpactrError(.invalidArgument, "mount \(m.destination): the kernel refused the id mapping uid \(list(uid)) gid \(list(gid)) (\(error.errno?.description ?? error.message))", errno: error.errno)
        }
        defer { close(userns) }
        do {
            let fd = try Mount.idmappedTree(source: source, usernsFD: userns,
                                            recursiveClone: rbind || mode == .recursive, recursiveIdmap: mode == .recursive)
            parent.treeFds.append(fd)
            return fd
        } catch {
            var why = error.message
            if error.errno == .invalidArgument { why += " (the filesystem or mount does not support idmapped mounts)" }
            throw IpactrError(error.code, "mount \(m.destination): \(why)", errno: error.errno)
        }
    }

    /// The process half of the plan: shared by `create` and `exec`.
    func fillProcess(_ process: RuntimeSpec.Process, seccomp: RuntimeSpec.Seccomp?, into plan: inout ipactr_plan, parent: inout ParentWork) throws(IpactrError) {
        guard let args = process.args, !args.isEmpty else { throw IpactrError(.invalidArgument, "process.args must not be empty") }
        guard process.cwd.hasPrefix("/") else { throw IpactrError(.invalidArgument, "process.cwd \(process.cwd) is not absolute") }
        let env = process.env ?? []
        plan.argv = arena.strv(args)
        plan.envp = arena.strv(env)
        plan.path_env = arena.optStr(env.last { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) })
        plan.cwd = arena.str(process.cwd)
        plan.uid = process.user.uid
        plan.gid = process.user.gid
        let groups = process.user.additionalGids ?? []
        plan.groups = arena.array(groups)
        plan.n_groups = Int32(groups.count)
        plan.umask_value = Int32(process.user.umask ?? 0o022)
        plan.no_new_privs = process.noNewPrivileges == true ? 1 : 0
        let lastCap = Int32((try? FileIO.readString("/proc/sys/kernel/cap_last_cap"))?.split(separator: "\n").first.flatMap { Int32($0) } ?? 40)
        let caps = process.capabilities
        plan.set_caps = 1
        plan.cap_bounding = try capabilityMask(caps?.bounding, lastCap: lastCap)
        plan.cap_effective = try capabilityMask(caps?.effective, lastCap: lastCap)
        plan.cap_permitted = try capabilityMask(caps?.permitted, lastCap: lastCap)
        plan.cap_inheritable = try capabilityMask(caps?.inheritable, lastCap: lastCap)
        plan.cap_ambient = try capabilityMask(caps?.ambient, lastCap: lastCap)
        if let sc = seccomp {
            let bpf = try SeccompCompiler.compile(sc)
            plan.seccomp_filter = UnsafeRawPointer(arena.array(bpf))
            plan.seccomp_len = bpf.count / 8
        }
        plan.preserve_fds = Int32(preserveFds)
        plan.console_socket = -1
        if process.terminal == true {
            guard consoleSocket >= 0 else {
                throw IpactrError(.invalidArgument, "process.terminal needs --console-socket unless the runtime stays in the foreground (run, exec without --detach), which relays the terminal")
            }
            plan.console_socket = consoleSocket
            plan.console_mount = consoleMount ? 1 : 0
            plan.console_rows = UInt16(min(process.consoleSize?.height ?? 0, 65535))
            plan.console_cols = UInt16(min(process.consoleSize?.width ?? 0, 65535))
        }

        for r in process.rlimits ?? [] {
            guard let res = rlimitNames[r.type] else {
                throw IpactrError(.invalidArgument, "config.json: unknown rlimit \(r.type)")
            }
            parent.rlimits.append((res, r.soft, r.hard, r.type))
        }
        parent.oomScoreAdj = process.oomScoreAdj
    }
}

/// `idmap` (top mount only) or `ridmap` (every submount) on a bind mount.
enum IdmapMode { case none, top, recursive }

/// uid/gid maps of a joined user namespace, read from `/proc/PID/{uid,gid}_map`
/// next to a `/proc/PID/ns/user` path (a bind-mounted namespace file has no
/// maps to read: refused).
func joinedMappings(_ path: String) throws(IpactrError) -> (uid: [RuntimeSpec.IDMapping], gid: [RuntimeSpec.IDMapping]) {
    let parts = path.split(separator: "/")
    guard parts.count == 4, parts[0] == "proc", parts[2] == "ns", parts[3] == "user" else {
        throw IpactrError(.unsupported, "user namespace \(path): only /proc/PID/ns/user paths can be joined (their id maps are read from /proc/PID)")
    }
    func read(_ file: String) throws(IpactrError) -> [RuntimeSpec.IDMapping] {
        let text = try FileIO.readString("/proc/\(parts[1])/\(file)")
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ").compactMap { UInt32($0) }
            return f.count == 3 ? RuntimeSpec.IDMapping(containerID: f[0], hostID: f[1], size: f[2]) : nil
        }
    }
    return (try read("uid_map"), try read("gid_map"))
}

func normalize(_ path: String) -> String {
    "/" + path.split(separator: "/").filter { $0 != "." && !$0.isEmpty }.joined(separator: "/")
}

extension String {
    func replacingDots() -> String { String(map { $0 == "." ? "/" : $0 }) }
}

/// Connects to an AF_UNIX stream socket (--console-socket, --pidfd-socket).
func connectUnix(_ path: String, option: String = "--console-socket") throws(IpactrError) -> Int32 {
    do { return try UnixSocket.open(path, type: SOCK_STREAM, bind: false) } catch {
        throw IpactrError(error.code, "\(option) \(path): \(error.message)", errno: error.errno)
    }
}
