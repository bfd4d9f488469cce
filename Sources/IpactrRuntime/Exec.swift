import CIpactrShim
import FoundationEssentials
import IpactrOCI
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension Runtime {
    public struct ExecOptions {
        /// process.json (runtime-spec `process`), or nil to use `args`.
        public var processFile: String?
        public var args: [String] = []
        public var env: [String] = []
        public var cwd: String?
        /// "uid[:gid]".
        public var user: String?
        public var detach = false
        public var pidFile: String?
        public var preserveFds = 0
        public var tty = false
        public var consoleSocket: String?
        /// AF_UNIX stream socket that receives a pidfd of the process (SCM_RIGHTS).
        public var pidfdSocket: String?
        /// A sub-cgroup of the container's (relative, e.g. "ipactr-exec") to
        /// run the process in instead of the container's own, made if missing
        /// and owned like its parent: where the payload enabled controllers for
        /// its children, its own cgroup cannot hold processes (v2's
        /// no-internal-processes rule).
        public var cgroupSubpath: String?
        public init() {}
    }

    /// `sub` under `parent`, made if missing and then delegated to the parent's owner.
    func subCgroup(of parent: Cgroup, _ sub: String) throws(IpactrError) -> Cgroup {
        let parts = sub.split(separator: "/")
        guard !sub.hasPrefix("/"), !parts.isEmpty, !parts.contains(where: { $0 == ".." || $0 == "." }) else {
            throw IpactrError(.invalidArgument, "exec sub-cgroup \"\(sub)\": expected a relative path below the container's cgroup")
        }
        var owner = stat()
        try syscall("stat \(parent.directory)") { stat(parent.directory, &owner) }
        var cg = parent
        for part in parts {
            cg = Cgroup(hierarchy: cg.hierarchy, path: cg.path + "/" + part)
            if mkdir(cg.directory, 0o755) == 0 {
                try cg.delegate(to: owner.st_uid, gid: owner.st_gid)
            } else if Glibc.errno != EEXIST {
                throw errnoError("make cgroup \(cg.directory)")
            }
        }
        return cg
    }

    /// `exec`: a new process inside a running container: its namespaces
    /// (joined by setns in the C child; the pid namespace through the
    /// parent thread, see ipactr_setns), its cgroup (CLONE_INTO_CGROUP) and
    /// its seccomp filter. Returns the exit status unless detached.
    public func exec(id: String, _ o: ExecOptions) throws(IpactrError) -> Int32 {
        let dir = try ContainerDir(root: root, id: id)
        let rec = try dir.load()
        let spec = try dir.loadSpec()
        let st = status(rec, dir)
        guard st == "running" || st == "created" else {
            throw IpactrError(.invalidArgument, "cannot exec in container \(id): it is \(st)")
        }
        var process: RuntimeSpec.Process
        if let file = o.processFile {
            let bytes = try FileIO.read(file)
            do { process = try JSONDecoder().decode(RuntimeSpec.Process.self, from: Data(bytes)) } catch {
                throw IpactrError(.invalidArgument, "\(file): not a runtime-spec process: \(error)")
            }
        } else {
            guard !o.args.isEmpty else { throw IpactrError(.invalidArgument, "exec needs --process FILE or a command") }
            process = spec.process ?? RuntimeSpec.Process()
            process.args = o.args
            process.terminal = o.tty
        }
        if !o.env.isEmpty { process.env = (process.env ?? []) + o.env }
        if let c = o.cwd { process.cwd = c }
        if let u = o.user {
            let parts = u.split(separator: ":")
            guard let uid = UInt32(parts[0]), parts.count <= 2, let gid = parts.count == 2 ? UInt32(parts[1]) : 0 else {
                throw IpactrError(.invalidArgument, "--user \(u): expected uid[:gid]")
            }
            process.user.uid = uid
            process.user.gid = gid
        }

        // Namespaces that differ from ours, user first (it owns the others).
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        var pidns: Int32 = -1
        defer { if pidns >= 0 { close(pidns) } }
        for ns in ["user", "mnt", "uts", "ipc", "net", "cgroup", "pid"] {
            var a = stat(), b = stat()
            guard stat("/proc/\(rec.pid)/ns/\(ns)", &a) == 0 else { throw errnoError("container \(id): /proc/\(rec.pid)/ns/\(ns)") }
            if stat("/proc/self/ns/\(ns)", &b) == 0, a.st_ino == b.st_ino, a.st_dev == b.st_dev { continue }
            let fd = open("/proc/\(rec.pid)/ns/\(ns)", O_RDONLY | O_CLOEXEC)
            if fd < 0 { throw errnoError("open /proc/\(rec.pid)/ns/\(ns)") }
            if ns == "pid" { pidns = fd } else { fds.append(fd) }
        }
        // The pid is still our container's (start time unchanged) now that we hold its namespaces.
        guard alive(rec) else { throw IpactrError(.invalidArgument, "cannot exec in container \(id): it stopped") }

        var plan = ipactr_plan()
        var parent = ParentWork()
        var builder = PlanBuilder(spec: spec, bundle: rec.bundle, rootfs: rec.rootfs, cgroup: cgroup(of: rec),
                                  hierarchy: CgroupHierarchy(mountPoint: rec.cgroupMount, mountRoot: rec.cgroupMountRoot, hybrid: false))
        builder.consoleMount = false
        var consoleFd: Int32 = -1
        // In the foreground a terminal without --console-socket is relayed by us.
        let terminal = process.terminal == true && o.consoleSocket == nil && !o.detach ? try ForegroundTerminal() : nil
        if process.terminal == true {
            if let cs = o.consoleSocket {
                consoleFd = try connectUnix(cs)
            } else if let terminal {
                consoleFd = try syscall("dup") { dup(terminal.remote) }
            }
            builder.consoleSocket = consoleFd
        }
        defer { if consoleFd >= 0 { close(consoleFd) } }
        let pidfdSocketFd = try o.pidfdSocket.map { p throws(IpactrError) in try connectUnix(p, option: "--pidfd-socket") } ?? -1
        defer { if pidfdSocketFd >= 0 { close(pidfdSocketFd) } }
        try builder.fillProcess(process, seccomp: spec.linux?.seccomp, into: &plan, parent: &parent)
        plan.join_fds = builder.arena.array(fds)
        plan.n_join = Int32(fds.count)
        plan.preserve_fds = Int32(o.preserveFds)
        plan.fifo_fd = -1

        // Without a cgroup (disabled manager) the process stays in ours, as the init did.
        var cgfd: Int32 = -1
        defer { if cgfd >= 0 { close(cgfd) } }
        if var cg = cgroup(of: rec) {
            if let sub = o.cgroupSubpath { cg = try subCgroup(of: cg, sub) }
            cgfd = open(cg.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if cgfd < 0 { throw errnoError("open cgroup \(cg.directory)") }
        } else if o.cgroupSubpath != nil {
            throw noCgroup(rec, "exec in a sub-cgroup of")
        }
        plan.cgroup_fd = cgfd
        var syncPipe: [Int32] = [-1, -1], reportPipe: [Int32] = [-1, -1]
        try syscall("pipe") { ipactr_pipe_cloexec(&syncPipe) }
        defer { for fd in syncPipe where fd >= 0 { close(fd) } }
        try syscall("pipe") { ipactr_pipe_cloexec(&reportPipe) }
        defer { for fd in reportPipe where fd >= 0 { close(fd) } }
        plan.sync_fd = syncPipe[0]
        plan.report_fd = reportPipe[1]
        if pidns >= 0 { try syscall("join pid namespace of \(id)") { ipactr_setns(pidns, 0x2000_0000) } }
        var pidfd: Int32 = -1
        let pid = ipactr_spawn(&plan, &pidfd)
        if pid < 0 { throw errnoError("clone3") }
        terminal?.closeRemote()
        close(syncPipe[0]); syncPipe[0] = -1
        close(reportPipe[1]); reportPipe[1] = -1
        var ok = false
        defer {
            if !ok {
                Glibc.kill(pid, SIGKILL)
                var s: Int32 = 0
                while waitpid(pid, &s, 0) < 0 && Glibc.errno == EINTR {}
            }
            close(pidfd)
        }
        for r in parent.rlimits where ipactr_prlimit(pid, r.resource, r.soft, r.hard) != 0 {
            throw errnoError("rlimit \(r.name) (soft \(r.soft), hard \(r.hard))")
        }
        if let adj = parent.oomScoreAdj { try FileIO.write("/proc/\(pid)/oom_score_adj", String(adj)) }
        for d in rec.v1Cgroups ?? [] { try FileIO.write(d + "/cgroup.procs", String(pid)) }
        var go: UInt8 = 1
        try syscall("start exec process") { Glibc.write(syncPipe[1], &go, 1) }
        close(syncPipe[1]); syncPipe[1] = -1
        try readReport(reportPipe[0])
        // EOF: execve worked; a second report: it failed.
        do { try readReport(reportPipe[0]) } catch {
            if error.message != "container init exited during setup without a report" { throw error }
        }
        if pidfdSocketFd >= 0 { try UnixSocket.sendDescriptor(pidfdSocketFd, pidfd, name: "pidfd") }
        ok = true
        if let pf = o.pidFile {
            let path = pf.hasPrefix("/") ? pf : currentDirectory() + "/" + pf
            try FileIO.writeAtomic(path, Array("\(pid)".utf8))
        }
        if o.detach { return 0 }
        // Others may act on the container while this process runs.
        flock(dir.lockFd, LOCK_UN)
        runChild = pid
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH] {
            signal(sig) { Glibc.kill(runChild, $0) }
        }
        // Until the pty hangs up: the process and all that shared its pty are gone.
        do { try terminal?.relayHere() } catch {
            Glibc.kill(pid, SIGKILL)
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 && Glibc.errno == EINTR {}
            throw error
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && Glibc.errno == EINTR {}
        return shellExitStatus(status)
    }
}
