import CCap
import CIpactrShim
import FoundationEssentials
import IpactrOCI
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The runtime core: OCI bundle in, container out. `ipactr-runtime` and the
/// machine layer both drive it; nothing systemd-specific lives here.
public struct Runtime {
    /// State directory (`--root`).
    public var root: String
    /// The cgroup manager `create` and `run` use.
    public var cgroupManager: any CgroupManager
    /// Further managers later verbs may find named in a container's state
    /// (cgroupfs and disabled are always known).
    public var otherCgroupManagers: [any CgroupManager]

    public init(root: String = "/run/ipactr-runtime", cgroupManager: any CgroupManager = CgroupfsManager(),
                otherCgroupManagers: [any CgroupManager] = []) {
        self.root = root
        self.cgroupManager = cgroupManager
        self.otherCgroupManagers = otherCgroupManagers
    }

    /// The manager that made `rec`'s cgroup (state files without one: cgroupfs).
    func manager(of rec: ContainerRecord) throws(IpactrError) -> any CgroupManager {
        let name = rec.cgroupManager ?? "cgroupfs"
        let known: [any CgroupManager] = [cgroupManager] + otherCgroupManagers + [CgroupfsManager(), DisabledCgroupManager()]
        guard let m = known.first(where: { $0.name == name }) else {
            throw IpactrError(.unsupported, "container \(rec.id) was made by the \(name) cgroup manager, which this runtime does not have")
        }
        return m
    }

    public struct CreateOptions {
        public var bundle: String
        public var pidFile: String?
        public var noPivot = false
        public var preserveFds = 0
        /// AF_UNIX socket that receives the pty master when process.terminal is set.
        public var consoleSocket: String?
        /// The caller's NOTIFY_SOCKET: proxied into the container (see NotifyProxy).
        public var notifySocket: String?
        /// AF_UNIX stream socket that receives a pidfd of the init (SCM_RIGHTS, runc ≥ 1.2).
        public var pidfdSocket: String?
        public init(bundle: String, pidFile: String? = nil, noPivot: Bool = false, preserveFds: Int = 0, consoleSocket: String? = nil,
                    notifySocket: String? = nil, pidfdSocket: String? = nil) {
            self.pidfdSocket = pidfdSocket
            self.consoleSocket = consoleSocket
            self.notifySocket = notifySocket
            self.bundle = bundle
            self.pidFile = pidFile
            self.noPivot = noPivot
            self.preserveFds = preserveFds
        }
    }

    // MARK: create / start / run

    /// `create`: everything but process.args, which waits for `start`.
    public func create(id: String, _ options: CreateOptions) throws(IpactrError) {
        let c = try spawn(id: id, options, execNow: false)
        close(c.pidfd)
    }

    struct Spawned {
        var dir: ContainerDir
        var record: ContainerRecord
        var pidfd: Int32
        /// `run` only: EOF here means execve succeeded.
        var reportFd: Int32
        /// `run` only: the container's notify socket, bound before the init runs.
        var notify: NotifyProxy?
        /// process.terminal: the init has a pty.
        var terminal = false
    }

    func spawn(id: String, _ options: CreateOptions, execNow: Bool,
               foregroundTerminal: ForegroundTerminal? = nil) throws(IpactrError) -> Spawned {
        // Everything that can be checked without side effects comes first.
        try validateID(id)
        let bundle = try realPath(options.bundle, what: "bundle")
        let (spec, specBytes) = try loadSpec(bundle + "/config.json")
        guard let rootPath = spec.root?.path, !rootPath.isEmpty else {
            throw IpactrError(.invalidArgument, "config.json: root.path is required")
        }
        let rootfs = try realPath(rootPath.hasPrefix("/") ? rootPath : bundle + "/" + rootPath, what: "root.path")
        guard FileIO.isDirectory(rootfs) else { throw IpactrError(.invalidArgument, "root.path \(rootfs) is not a directory") }
        let hierarchy = try CgroupHierarchy.find()
        let manager = cgroupManager
        let cgroup = try manager.resolve(id: id, spec: spec, hierarchy: hierarchy)

        var cleanups: [() -> Void] = []
        var ok = false
        defer { if !ok { for c in cleanups.reversed() { c() } } }

        // NOTIFY_SOCKET: the container's socket directory lives in its state
        // directory, so that exists before the plan (which mounts it).
        var planSpec = spec
        var earlyDir: ContainerDir?
        var notifyDirFd: Int32 = -1
        defer { if notifyDirFd >= 0 { close(notifyDirFd) } }
        var notifyHost: String?
        if let ns = options.notifySocket {
            notifyHost = try NotifyProxy.hostSocket(ns)
            let d = try ContainerDir(creating: id, root: root)
            cleanups.append { d.remove() }
            earlyDir = d
            notifyDirFd = try NotifyProxy.prepare(d, spec: &planSpec)
        }

        var plan = ipactr_plan()
        var parent = ParentWork()
        var builder = PlanBuilder(spec: planSpec, bundle: bundle, rootfs: rootfs, cgroup: cgroup, hierarchy: hierarchy)
        builder.noPivot = options.noPivot
        if let d = earlyDir, notifyDirFd >= 0 { builder.bindTrees[NotifyProxy.directory(of: d)] = notifyDirFd }
        builder.preserveFds = options.preserveFds
        cleanups.append { for fd in parent.joinFds { close(fd) } }
        // The child holds its own copies once cloned: ours go in every case.
        defer {
            for fd in parent.treeFds { close(fd) }
            for fd in [parent.joinUserFd, parent.joinPidFd] where fd >= 0 { close(fd) }
        }
        var consoleFd: Int32 = -1
        if spec.process?.terminal == true {
            if let cs = options.consoleSocket {
                consoleFd = try connectUnix(cs)
            } else if let relay = foregroundTerminal {
                consoleFd = try syscall("dup") { dup(relay.remote) }
            }
            builder.consoleSocket = consoleFd
        }
        defer { if consoleFd >= 0 { close(consoleFd) } }
        // Connected up front: a bad socket fails before anything is made.
        let pidfdSocketFd = try options.pidfdSocket.map { p throws(IpactrError) in try connectUnix(p, option: "--pidfd-socket") } ?? -1
        defer { if pidfdSocketFd >= 0 { close(pidfdSocketFd) } }
        try builder.build(into: &plan, parent: &parent)

        plan.source_fd = notifyDirFd
        let dir: ContainerDir
        if let d = earlyDir { dir = d } else {
            dir = try ContainerDir(creating: id, root: root)
            cleanups.append { dir.remove() }
        }
        // `run` listens before the init can send; `start` binds its own.
        var notify: NotifyProxy?
        if execNow, notifyHost != nil {
            notify = try NotifyProxy.listen(dir)
        }
        cleanups.append { notify?.close() }
        // Checked before anything is made; enforced once the cgroup is final.
        let deviceFilter = try DeviceFilter(spec: spec)
        var setup = CgroupSetup()
        if let cg = cgroup {
            setup = try manager.create(cg, resources: spec.linux?.resources, v1Layout: parent.v1CgroupLayout)
            cleanups.append { try? manager.remove(cg, v1Dirs: setup.v1Dirs) }
        }
        defer { if setup.cloneIntoFd >= 0 { close(setup.cloneIntoFd) } }

        var fifoFd: Int32 = -1
        if !execNow {
            try syscall("mkfifo \(dir.fifo)") { mkfifo(dir.fifo, 0o622) }
            // Past the umask: an init running as a mapped or non-root uid must
            // be able to open it for writing.
            try syscall("chmod \(dir.fifo)") { chmod(dir.fifo, 0o622) }
            fifoFd = try syscall("open \(dir.fifo)") { open(dir.fifo, IPACTR_O_PATH | O_CLOEXEC) }
        }
        defer { if fifoFd >= 0 { close(fifoFd) } }
        var syncPipe: [Int32] = [-1, -1], reportPipe: [Int32] = [-1, -1]
        try syscall("pipe") { ipactr_pipe_cloexec(&syncPipe) }
        defer { for fd in syncPipe where fd >= 0 { close(fd) } }
        try syscall("pipe") { ipactr_pipe_cloexec(&reportPipe) }
        cleanups.append { if reportPipe[0] >= 0 { close(reportPipe[0]) } }
        defer { if reportPipe[1] >= 0 { close(reportPipe[1]) } }

        // createContainer/startContainer hooks read their state from files the init holds.
        var stateFds: [Int32] = []
        defer { for fd in stateFds { close(fd) } }
        if plan.n_create_hooks > 0 { plan.create_state_fd = try openHookStateFile(); stateFds.append(plan.create_state_fd) }
        if plan.n_start_hooks > 0 { plan.start_state_fd = try openHookStateFile(); stateFds.append(plan.start_state_fd) }
        plan.cgroup_fd = setup.cloneIntoFd
        plan.fifo_fd = fifoFd
        plan.sync_fd = syncPipe[0]
        plan.report_fd = reportPipe[1]
        var pidfd: Int32 = -1
        var step: Int32 = 0
        let pid = ipactr_spawn_ex(&plan, &pidfd, &step)
        if pid < 0 { throw errnoError(String(cString: ipactr_spawn_join_step(step))) }
        cleanups.append {
            Glibc.kill(pid, SIGKILL)
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 && Glibc.errno == EINTR {}
            close(pidfd)
        }
        close(syncPipe[0]); syncPipe[0] = -1
        close(reportPipe[1]); reportPipe[1] = -1

        // The parent's share of the setup, while the child waits for "go".
        if parent.userns {
            try writeMap("/proc/\(pid)/uid_map", parent.uidMappings, what: "linux.uidMappings")
            try writeMap("/proc/\(pid)/gid_map", parent.gidMappings, what: "linux.gidMappings")
        }
        for r in parent.rlimits {
            if ipactr_prlimit(pid, r.resource, r.soft, r.hard) != 0 {
                throw errnoError("rlimit \(r.name) (soft \(r.soft), hard \(r.hard))")
            }
        }
        if let adj = parent.oomScoreAdj { try FileIO.write("/proc/\(pid)/oom_score_adj", String(adj)) }
        if let cg = cgroup {
            try manager.join(cg, pid: pid, resources: spec.linux?.resources, v1Layout: parent.v1CgroupLayout, setup: &setup)
            if let owner = parent.cgroupOwner { try cg.delegate(to: owner.uid, gid: owner.gid) }
            if let deviceFilter, !DeviceFilter.inNestedUserNamespace {
                let fd = try syscall("open cgroup \(cg.directory)") { open(cg.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
                defer { close(fd) }
                try deviceFilter.attach(toCgroup: fd)
            }
        }

        if plan.create_state_fd >= 0 {
            try writeHookState(plan.create_state_fd, RuntimeState(id: id, status: "creating", pid: pid, bundle: bundle, annotations: spec.annotations))
        }
        if plan.start_state_fd >= 0 {
            try writeHookState(plan.start_state_fd, RuntimeState(id: id, status: "created", pid: pid, bundle: bundle, annotations: spec.annotations))
        }
        var go: UInt8 = 1
        try syscall("start container init") { Glibc.write(syncPipe[1], &go, 1) }
        if plan.hook_pause != 0 {
            try readReport(reportPipe[0], want: 2)
            let st = RuntimeState(id: id, status: "creating", pid: pid, bundle: bundle, annotations: spec.annotations)
            try runHooks(spec.hooks?.prestart, kind: "prestart", state: st)
            try runHooks(spec.hooks?.createRuntime, kind: "createRuntime", state: st)
            try syscall("resume container init") { Glibc.write(syncPipe[1], &go, 1) }
        }
        close(syncPipe[1]); syncPipe[1] = -1
        try readReport(reportPipe[0])
        if !execNow { close(reportPipe[0]); reportPipe[0] = -1 }

        guard let ps = ProcStat.read(pid) else { throw IpactrError(.io, "container init \(pid) vanished during create") }
        let record = ContainerRecord(
            id: id, bundle: bundle, rootfs: rootfs, pid: pid, startTime: ps.startTime,
            created: Int64(time(nil)), cgroupPath: cgroup?.path ?? "", cgroupMount: hierarchy.mountPoint,
            cgroupMountRoot: hierarchy.mountRoot, v1Cgroups: setup.v1Dirs.isEmpty ? nil : setup.v1Dirs,
            hooks: spec.hooks, annotations: spec.annotations, notifySocket: notifyHost, cgroupManager: manager.name)
        try dir.saveSpec(bytes: specBytes)
        try dir.save(record)
        if let pf = options.pidFile {
            let path = pf.hasPrefix("/") ? pf : currentDirectory() + "/" + pf
            try FileIO.writeAtomic(path, Array("\(pid)".utf8))
        }
        if pidfdSocketFd >= 0 { try UnixSocket.sendDescriptor(pidfdSocketFd, pidfd, name: "pidfd") }
        ok = true
        return Spawned(dir: dir, record: record, pidfd: pidfd, reportFd: reportPipe[0], notify: notify,
                       terminal: spec.process?.terminal == true)
    }

    /// Reads one report from the child: ready, or (stage, errno).
    func readReport(_ fd: Int32, want: Int32 = 1) throws(IpactrError) {
        var r = ipactr_report()
        let size = MemoryLayout<ipactr_report>.size
        var n = 0
        repeat { n = withUnsafeMutableBytes(of: &r) { Glibc.read(fd, $0.baseAddress, size) } } while n < 0 && Glibc.errno == EINTR
        if n == 0 { throw IpactrError(.io, "container init exited during setup without a report") }
        if n != size { throw IpactrError(.io, "container init: short report (\(n) bytes)") }
        try check(r, want: want)
    }

    /// A report's verdict: fine when it says `want`, else the child's error
    /// (stage and errno, or with err 0 a whole message such as a hook's exit status).
    func check(_ r: ipactr_report, want: Int32) throws(IpactrError) {
        if r.ready == want { return }
        if r.ready != 0 { throw IpactrError(.internalError, "container init: unexpected report \(r.ready)") }
        let stage = withUnsafeBytes(of: r.stage) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if r.err == 0 { throw IpactrError(.io, stage) }
        throw IpactrError.syscall(stage, Errno(rawValue: r.err))
    }

    func writeMap(_ path: String, _ maps: [RuntimeSpec.IDMapping], what: String) throws(IpactrError) {
        let text = maps.map { "\($0.containerID) \($0.hostID) \($0.size)\n" }.joined()
        do { try FileIO.write(path, text) } catch {
            throw IpactrError(.invalidArgument, "\(what) \(maps.map { "\($0.containerID):\($0.hostID):\($0.size)" }.joined(separator: ",")): the kernel refused the mapping (\(error.errno?.description ?? error.message))", errno: error.errno)
        }
    }

    /// `start`: lets process.args run by opening the exec FIFO.
    public func start(id: String) throws(IpactrError) {
        let dir = try ContainerDir(root: root, id: id)
        let rec = try dir.load()
        // NOTIFY_SOCKET: bound before the payload can run (opening the FIFO below lets it).
        let notify = rec.notifySocket != nil ? try NotifyProxy.listen(dir) : nil
        defer { notify?.close() }
        let st = status(rec, dir)
        guard st == "created" else { throw IpactrError(.invalidArgument, "cannot start container \(id): it is \(st), not created") }
        // The pidfd first: once the FIFO is open the payload may run, exit and
        // be reaped by its parent (conmon) before we look at it.
        let pidfd = try syscall("pidfd_open \(rec.pid)") { ipactr_pidfd_open(rec.pid) }
        defer { close(pidfd) }
        let fifo = try syscall("open \(dir.fifo)") { open(dir.fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC) }
        defer { close(fifo) }
        while true {
            var fds = [pollfd(fd: fifo, events: Int16(POLLIN), revents: 0), pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, -1)
            if n < 0 { if Glibc.errno == EINTR { continue }; throw errnoError("poll") }
            // The init writes one report once the startContainer hooks ran
            // (one write under PIPE_BUF: it arrives whole).
            if fds[0].revents & Int16(POLLIN) != 0 {
                var r = ipactr_report()
                let size = MemoryLayout<ipactr_report>.size
                if withUnsafeMutableBytes(of: &r, { Glibc.read(fifo, $0.baseAddress, size) }) == size {
                    do { try check(r, want: 1) } catch {
                        // runtime-spec: a failed startContainer hook stops the container;
                        // `delete` then removes it (and runs poststop).
                        unlink(dir.fifo)
                        killAll(rec)
                        _ = ipactr_pidfd_send_signal(pidfd, SIGKILL)
                        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                        while poll(&p, 1, 10000) < 0 && Glibc.errno == EINTR {}
                        throw error
                    }
                    break
                }
            }
            if fds[1].revents != 0 { throw IpactrError(.io, "cannot start container \(id): its init exited before start") }
        }
        unlink(dir.fifo)
        runHooksWarning(rec.hooks?.poststart, kind: "poststart",
                        state: RuntimeState(id: id, status: "running", pid: rec.pid, bundle: rec.bundle, annotations: rec.annotations))
        if let n = notify, let host = rec.notifySocket {
            // As runc: start returns once the payload is ready (or gone). Others
            // may act on the container meanwhile (kill, delete --force).
            flock(dir.lockFd, LOCK_UN)
            n.forward(to: host, pidfd: pidfd, mainPid: rec.pid)
        }
    }

    /// `run`: create, start and wait; returns the exit status to pass on
    /// (128+signal when killed, as a shell reports it).
    public func run(id: String, _ options: CreateOptions, detach: Bool) throws(IpactrError) -> Int32 {
        if detach {
            try create(id: id, options)
            do { try start(id: id) } catch {
                try? delete(id: id, force: true)
                throw error
            }
            return 0
        }
        // In the foreground a terminal without --console-socket is relayed by us.
        let terminal = options.consoleSocket == nil ? try ForegroundTerminal() : nil
        let s = try spawn(id: id, options, execNow: true, foregroundTerminal: terminal)
        terminal?.closeRemote()
        let pid = s.record.pid
        // No pty for the caller: the container goes, torn down as at its exit below.
        var relayError: IpactrError?
        if s.terminal, let terminal {
            do { try terminal.start() } catch {
                relayError = error
                Glibc.kill(pid, SIGKILL)
            }
        }
        // Other commands (state, kill) may act on it while it runs.
        flock(s.dir.lockFd, LOCK_UN)
        runChild = pid
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH] {
            signal(sig) { Glibc.kill(runChild, $0) }
        }
        // EOF: execve succeeded; a report: it failed.
        var execError: IpactrError?
        do { try readReport(s.reportFd) } catch {
            if error.message != "container init exited during setup without a report" { execError = error }
        }
        close(s.reportFd)
        if execError == nil, relayError == nil {
            runHooksWarning(s.record.hooks?.poststart, kind: "poststart",
                            state: RuntimeState(id: id, status: "running", pid: pid, bundle: s.record.bundle, annotations: s.record.annotations))
            if let n = s.notify, let host = s.record.notifySocket {
                n.forward(to: host, pidfd: s.pidfd, mainPid: nil)
            }
        }
        s.notify?.close()
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && Glibc.errno == EINTR {}
        close(s.pidfd)
        terminal?.finish()
        flock(s.dir.lockFd, LOCK_EX)
        killAll(s.record)
        if let cg = cgroup(of: s.record) { try? manager(of: s.record).remove(cg, v1Dirs: s.record.v1Cgroups ?? []) }
        runHooksWarning(s.record.hooks?.poststop, kind: "poststop",
                        state: RuntimeState(id: id, status: "stopped", pid: 0, bundle: s.record.bundle, annotations: s.record.annotations))
        s.dir.remove()
        if let e = relayError ?? execError { throw e }
        return shellExitStatus(status)
    }

    // MARK: inspect

    /// The container's cgroup, or nil when its manager made none (disabled).
    func cgroup(of rec: ContainerRecord) -> Cgroup? {
        if rec.cgroupPath.isEmpty { return nil }
        return Cgroup(hierarchy: CgroupHierarchy(mountPoint: rec.cgroupMount, mountRoot: rec.cgroupMountRoot, hybrid: false), path: rec.cgroupPath)
    }

    /// The container's host pids: its cgroup's, or without one the processes
    /// in the init's pid namespace (the init alone when it has none of its own).
    func pids(_ rec: ContainerRecord) -> [pid_t] {
        if let cg = cgroup(of: rec) { return cg.pids() }
        guard alive(rec) else { return [] }
        var mine = stat(), its = stat()
        guard stat("/proc/\(rec.pid)/ns/pid", &its) == 0 else { return [] }
        if stat("/proc/self/ns/pid", &mine) == 0, mine.st_ino == its.st_ino, mine.st_dev == its.st_dev { return [rec.pid] }
        var out: [pid_t] = []
        for e in FileIO.listDirectory("/proc") {
            guard let p = pid_t(e.name) else { continue }
            var st = stat()
            if stat("/proc/\(p)/ns/pid", &st) == 0, st.st_ino == its.st_ino, st.st_dev == its.st_dev { out.append(p) }
        }
        return out
    }

    /// SIGKILLs every process of the container (the whole cgroup where it has one).
    func killAll(_ rec: ContainerRecord) {
        if let cg = cgroup(of: rec) { cg.killAll(); return }
        for p in pids(rec) { Glibc.kill(p, SIGKILL) }
    }

    func alive(_ rec: ContainerRecord) -> Bool {
        guard rec.pid > 0, let ps = ProcStat.read(rec.pid), ps.startTime == rec.startTime else { return false }
        return ps.state != "Z" && ps.state != "X"
    }

    func status(_ rec: ContainerRecord, _ dir: ContainerDir) -> String {
        guard alive(rec) else { return "stopped" }
        if FileIO.exists(dir.fifo) { return "created" }
        if cgroup(of: rec)?.isFrozen == true { return "paused" }
        return "running"
    }

    /// `state`: runtime-spec's state object.
    public func state(id: String) throws(IpactrError) -> RuntimeState {
        let dir = try ContainerDir(root: root, id: id)
        let rec = try dir.load()
        let st = status(rec, dir)
        return RuntimeState(id: id, status: st, pid: st == "stopped" ? 0 : rec.pid, bundle: rec.bundle, annotations: rec.annotations)
    }

    /// `list`: every container under --root.
    public func list() -> [RuntimeState] {
        FileIO.listDirectory(root).filter(\.isDir).map(\.name).sorted().compactMap { try? state(id: $0) }
    }

    /// `ps`: host pids in the container's cgroup.
    public func processes(id: String) throws(IpactrError) -> [Int32] {
        let dir = try ContainerDir(root: root, id: id)
        return pids(try dir.load()).sorted()
    }

    // MARK: signals, pause, delete

    public func kill(id: String, signal: Int32, all: Bool) throws(IpactrError) {
        let dir = try ContainerDir(root: root, id: id)
        let rec = try dir.load()
        guard alive(rec) else { throw IpactrError(.invalidArgument, "container \(id) is not running") }
        if all {
            for p in pids(rec) { Glibc.kill(p, signal) }
            return
        }
        // pidfd: the signal reaches our init even if its pid is reused meanwhile.
        let pidfd = try syscall("pidfd_open \(rec.pid)") { ipactr_pidfd_open(rec.pid) }
        defer { close(pidfd) }
        guard alive(rec) else { throw IpactrError(.invalidArgument, "container \(id) is not running") }
        try syscall("kill \(id)") { ipactr_pidfd_send_signal(pidfd, signal) }
    }

    /// The cgroup `verb` freezes or thaws; refused without one.
    func frozenCgroup(_ rec: ContainerRecord, _ verb: String) throws(IpactrError) -> Cgroup {
        guard let cg = cgroup(of: rec) else { throw noCgroup(rec, verb) }
        return cg
    }

    func noCgroup(_ rec: ContainerRecord, _ verb: String) -> IpactrError {
        IpactrError(.unsupported, "cannot \(verb) container \(rec.id): it has no cgroup (cgroup manager \(rec.cgroupManager ?? "cgroupfs"))")
    }

    public func pause(id: String) throws(IpactrError) {
        let dir = try ContainerDir(root: root, id: id)
        let rec = try dir.load()
        let cg = try frozenCgroup(rec, "pause")
        let st = status(rec, dir)
        guard st == "running" else { throw IpactrError(.invalidArgument, "cannot pause container \(id): it is \(st)") }
        try cg.freeze(true)
    }

    public func resume(id: String) throws(IpactrError) {
        let dir = try ContainerDir(root: root, id: id)
        let rec = try dir.load()
        let cg = try frozenCgroup(rec, "resume")
        let st = status(rec, dir)
        guard st == "paused" else { throw IpactrError(.invalidArgument, "cannot resume container \(id): it is \(st)") }
        try cg.freeze(false)
    }

    /// `delete`: removes all that `create` made. A running (or paused)
    /// container needs `force`; a created one is killed, as runc does.
    public func delete(id: String, force: Bool) throws(IpactrError) {
        let dir: ContainerDir
        do { dir = try ContainerDir(root: root, id: id) } catch {
            // As runc: --force on a container that does not exist succeeds
            // (conmon and containerd's shim call it after a failed create,
            // and podman printed its error before the create's own).
            guard force, error.code == .notFound else { throw error }
            removeStale(id: id)
            return
        }
        let rec = try dir.load()
        let st = status(rec, dir)
        let cg = cgroup(of: rec)
        let mgr = try manager(of: rec)
        if st == "running" || st == "paused" {
            guard force else { throw IpactrError(.invalidArgument, "cannot delete container \(id): it is \(st) (use --force)") }
        }
        if st != "stopped" {
            let pidfd = ipactr_pidfd_open(rec.pid)
            killAll(rec)
            if st == "paused" { try? cg?.freeze(false) }
            if pidfd >= 0 {
                _ = ipactr_pidfd_send_signal(pidfd, SIGKILL)
                var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                while poll(&p, 1, 10000) < 0 && Glibc.errno == EINTR {}
                close(pidfd)
            }
        }
        if let cg { try mgr.remove(cg, v1Dirs: rec.v1Cgroups ?? []) }
        runHooksWarning(rec.hooks?.poststop, kind: "poststop",
                        state: RuntimeState(id: id, status: "stopped", pid: 0, bundle: rec.bundle, annotations: rec.annotations))
        dir.remove()
    }
}

extension Runtime {
    /// Removes `root/id` left without a state.json by a create that was
    /// killed half-way, unless a command holds its lock (a create running now).
    func removeStale(id: String) {
        let path = root + "/" + id
        guard (try? validateID(id)) != nil, FileIO.isDirectory(path), !FileIO.exists(path + "/state.json") else { return }
        // No lock file yet: a create may be between its mkdir and its lock.
        let fd = open(path + "/lock", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0, !FileIO.exists(path + "/state.json") else { return }
        FileIO.removeTree(path)
    }
}

/// The container init of a foreground `run`, for the signal forwarder.
nonisolated(unsafe) var runChild: pid_t = 0

func realPath(_ path: String, what: String) throws(IpactrError) -> String {
    guard let p = realpath(path, nil) else { throw errnoError("\(what) \(path)") }
    defer { free(p) }
    return String(cString: p)
}

func currentDirectory() -> String {
    var buf = [CChar](repeating: 0, count: 4097)
    guard getcwd(&buf, 4096) != nil else { return "/" }
    return String(cString: buf)
}

/// The spec, and the bytes it came from (kept as the container's copy).
func loadSpec(_ path: String) throws(IpactrError) -> (RuntimeSpec, [UInt8]) {
    let bytes = try FileIO.read(path)
    do { return (try JSONDecoder().decode(RuntimeSpec.self, from: Data(bytes)), bytes) } catch let DecodingError.dataCorrupted(ctx) {
        throw IpactrError(.invalidArgument, "\(path): not valid JSON (\(ctx.debugDescription))")
    } catch let DecodingError.keyNotFound(key, ctx) {
        throw IpactrError(.invalidArgument, "\(path): missing \(pathString(ctx.codingPath + [key]))")
    } catch let DecodingError.typeMismatch(_, ctx) {
        throw IpactrError(.invalidArgument, "\(path): wrong type at \(pathString(ctx.codingPath)): \(ctx.debugDescription)")
    } catch let DecodingError.valueNotFound(_, ctx) {
        throw IpactrError(.invalidArgument, "\(path): null at \(pathString(ctx.codingPath))")
    } catch {
        throw IpactrError(.invalidArgument, "\(path): \(error)")
    }
}

func pathString(_ keys: [any CodingKey]) -> String {
    keys.map { $0.intValue.map { "[\($0)]" } ?? "." + $0.stringValue }.joined().trimmingPrefix(".").description
}

extension Runtime {
    /// `update --resources`: applies new limits to a live container (v2
    /// files, and v1 ones on a hybrid host; a v1 hierarchy it joins only now
    /// gets all of the container's processes).
    public func update(id: String, resources: RuntimeSpec.Resources) throws(IpactrError) {
        let dir = try ContainerDir(root: root, id: id)
        var rec = try dir.load()
        guard alive(rec) else { throw IpactrError(.invalidArgument, "cannot update container \(id): it is stopped") }
        guard cgroup(of: rec) != nil else { throw noCgroup(rec, "update") }
        var hierarchy = try CgroupHierarchy.find()
        hierarchy.mountPoint = rec.cgroupMount
        hierarchy.mountRoot = rec.cgroupMountRoot
        let cg = Cgroup(hierarchy: hierarchy, path: rec.cgroupPath)
        let dirs = try cg.apply(resources)
        let known = Set(rec.v1Cgroups ?? [])
        let fresh = dirs.filter { !known.contains($0) }
        for d in fresh { for p in cg.pids() { try FileIO.write(d + "/cgroup.procs", String(p)) } }
        if !fresh.isEmpty { rec.v1Cgroups = (rec.v1Cgroups ?? []) + fresh }
        var spec = try dir.loadSpec()
        if spec.linux == nil { spec.linux = RuntimeSpec.Linux() }
        spec.linux?.resources = resources
        try dir.saveSpec(spec)
        try dir.save(rec)
    }
}
