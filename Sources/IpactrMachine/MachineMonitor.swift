#if canImport(Glibc)
import Glibc
#endif
import CIpactrShim
import CSystemd
import FoundationEssentials
import IpactrImageStore
import IpactrOCI
import IpactrRuntime
import IpactrSystem

/// The per-machine supervisor (`ipactr-worker monitor NAME`), the model of
/// containerd's shim and conmon: it owns PID 1 (its child), the notify
/// socket, the console log, published ports and the exit status, so the
/// machine lives on when the CLI (or later the manager) goes away. It sits in
/// the machine's `supervisor` cgroup, beside the `payload` cgroup that is
/// delegated to the machine, as systemd's delegation rules ask.
public final class MachineMonitor {
    let manager: MachineManager
    let store: ImageStore
    let name: String
    var record: MachineRecord
    var status: MachineStatus
    /// Where "READY", "EXIT n" or "ERROR message" goes once (the booting CLI).
    var readyFD: Int32
    var paths: MachinePaths { manager.paths }
    let runtime: Runtime
    /// The machine's cgroup: supervisor/ (this monitor) and payload/ (the
    /// container) below it.
    let cgroupBase: String
    /// The base is the cgroup a service manager delegated to us (our own):
    /// we must stay inside it and leave it in place.
    let delegated: Bool
    var hierarchy: CgroupHierarchy?

    /// `delegatedCgroup`: run in the cgroup we were started in, as
    /// ipactr@NAME.service (Delegate=yes) starts us, instead of
    /// /ipactr/[ROOT.]machine-NAME (MachinePaths.cgroup); systemd must keep seeing the unit's processes
    /// in the unit's cgroup, and we may only touch what it delegated.
    public init(root: String, name: String, readyFD: Int32, delegatedCgroup: Bool = false) throws {
        manager = MachineManager(root: root)
        store = try ImageStore(root: root)
        self.name = name
        record = try manager.load(name)
        status = MachineStatus(monitorPID: getpid())
        self.readyFD = readyFD
        runtime = Runtime(root: manager.paths.runtimeRoot)
        delegated = delegatedCgroup
        if delegatedCgroup {
            let own = try CgroupHierarchy.ownCgroup()
            guard own != "/" else {
                throw IpactrError(.invalidArgument, "--delegated: the monitor runs in the root cgroup, not in a cgroup delegated to it")
            }
            cgroupBase = own
        } else {
            cgroupBase = manager.paths.cgroup(name)
        }
    }

    /// Runs the machine until PID 1 exits for good; returns its exit status.
    public func run() throws -> Int32 {
        let runDir = paths.run(name)
        try makeRunDirectories(runDir)
        let lockFD = try syscall("open \(paths.monitorLock(name))") {
            open(paths.monitorLock(name), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        }
        defer { close(lockFD) }
        guard flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            throw IpactrError(.busy, "machine \(name) is already running")
        }
        // The uid range is this machine's for as long as it runs, host-wide
        // (the identity range is shared: it is nobody's).
        try makeDirectories(MachinePaths.rangeLocks, mode: 0o700)
        let shared = record.range.isIdentity
        let rangeFD = shared ? -1 : try syscall("open \(MachinePaths.rangeLock(record.range))") {
            open(MachinePaths.rangeLock(record.range), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        }
        var ownsRange = false
        defer {
            // PID 1 is gone by now: the range is free again (unlinked while still locked).
            if ownsRange { unlink(MachinePaths.rangeLock(record.range)) }
            if rangeFD >= 0 { close(rangeFD) }
        }
        guard shared || flock(rangeFD, LOCK_EX | LOCK_NB) == 0 else {
            let error = IpactrError(.busy, "uid range \(record.range) of machine \(name) is in use by another running machine")
            report("ERROR \(error)")
            throw error
        }
        ownsRange = !shared
        installSignalForwarding()
        var exitStatus: Int32 = 0
        do {
            try enterSupervisorCgroup()
            while true {
                status.bootCount += 1
                let outcome = try bootOnce()
                switch outcome {
                case .reboot:
                    status.state = .rebooting
                    status.ready = false
                    try publishStatus()
                    continue
                case .exited(let code):
                    exitStatus = code
                }
                break
            }
        } catch {
            report("ERROR \(error)")
            leaveSupervisorCgroup()
            cleanupRunFiles()
            throw error
        }
        try? manager.withLock {
            var r = try manager.load(name)
            r.lastExitStatus = exitStatus
            try manager.save(r)
        }
        leaveSupervisorCgroup()
        cleanupRunFiles()
        return exitStatus
    }

    enum Outcome { case reboot, exited(Int32) }

    /// One life of PID 1: rootfs, config, create, start, supervise, tear down.
    func bootOnce() throws -> Outcome {
        let runDir = paths.run(name)
        let image = try store.image(record.image)
        guard image.id == record.imageID else {
            throw IpactrError(.notFound, "machine \(name) was made from image \(record.image) \(record.imageID.hex.prefix(12)), which is no longer in the store")
        }
        let config = try store.config(of: image)

        // Everything made here is undone in reverse order, also on failure.
        var undo: [() -> Void] = []
        defer { for u in undo.reversed() { u() } }

        let layers = image.diffIDs.map(store.layerPath)
        let rootfs = try prepareRootfs(layers: layers, runDir: runDir)
        undo.append { rootfs.remove() }
        status.rootfsMode = rootfs.mode

        let hostDir = runDir + "/host"
        try? removeTree(hostDir)
        try makeDirectories(hostDir, mode: 0o755)
        try writeHostFiles(hostDir)
        let notify = try NotifySocket(path: hostDir + "/notify")
        // PID 1 sends as the machine's root, an unprivileged uid on the host.
        try syscall("chmod notify socket") { chmod(notify.path, 0o666) }

        // The image's Volumes that the user did not cover get anonymous
        // volumes of the machine's own (kept under its state, gone with `rm`).
        var machine = record
        machine.options.volumes += try anonymousVolumes(image: config.config, layers: layers, runDir: runDir)
        let volumes = try mountIdmappedVolumes(machine.options.volumes, runDir: runDir)
        undo.append { MachineMonitor.unmountVolumes(runDir: runDir) }

        let bundle = runDir + "/bundle"
        try makeDirectories(bundle, mode: 0o700)
        var interface = ContainerInterface(record: machine, imageConfig: config.config, rootfs: rootfs.path,
                                           hostDirectory: hostDir, cgroupsPath: cgroupBase + "/payload")
        interface.volumeSources = volumes
        let spec = interface.spec()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileAtomically(bundle + "/config.json", Array(try encoder.encode(spec)), mode: 0o600)

        let id = MachinePaths.containerID(name)
        try? runtime.delete(id: id, force: true)  // what a crashed monitor left
        let consoleSocket = runDir + "/console.sock"
        let listener = try UnixSocket.listen(consoleSocket)
        defer { close(listener); unlink(consoleSocket) }
        try supervisorCgroupEntered()
        try runtime.create(id: id, Runtime.CreateOptions(bundle: bundle, consoleSocket: consoleSocket))
        undo.append { [runtime] in try? runtime.delete(id: id, force: true) }
        // The pty master: its output goes to the console log until PID 1
        // and everything else holding the replica are gone.
        let master = try UnixSocket.receiveDescriptor(listener, timeoutMilliseconds: 10_000)
        // Our stdout is the console log when ipactr started us; under a unit
        // it is the journal, so the log that `ipactr logs` reads is opened here.
        var logFD: Int32 = 1
        if delegated {
            logFD = try syscall("open \(paths.consoleLog(name))") {
                // A fresh log per start of the unit; a reboot adds to it.
                open(paths.consoleLog(name), O_WRONLY | O_CREAT | O_CLOEXEC | (status.bootCount <= 1 ? O_TRUNC : O_APPEND), 0o600)
            }
        }
        defer { if logFD != 1 { close(logFD) } }
        let relay = ConsoleRelay(master: master, log: logFD)
        relay.start()
        defer { relay.finish() }
        let leader = try runtime.state(id: id).pid ?? 0
        let pidfd = try syscall("pidfd_open \(leader)") { ipactr_pidfd_open(leader) }
        defer { close(pidfd) }
        try runtime.start(id: id)
        status.leader = leader
        status.state = .starting
        try publishStatus()
        if delegated {
            // On a thread: at host boot machined may be started on demand by
            // this very call, and the call must not hold back PID 1's READY=1
            // (the unit's start) meanwhile.
            let registration = try Machined.Registration(name: name, uuid: record.uuid, leader: leader, rootDirectory: rootfs.path)
            undo.append { [name] in if registration.finish() { Machined.unregister(name: name) } }
        }

        var forwarder: PortForwarder?
        if !record.options.publish.isEmpty {
            let f = try PortForwarder(rules: record.options.publish, netnsPath: "/proc/\(leader)/ns/net")
            try f.start()
            forwarder = f
        }
        defer { forwarder?.stop() }

        let wait = supervise(leader: leader, pidfd: pidfd, notify: notify, stopSignal: MachineMonitor.stopSignal(config.config))
        status.leader = nil
        if case .signaled(SIGHUP) = wait {} else { beginLeavingSupervisorCgroup() }
        switch wait {
        case .signaled(SIGHUP):
            return .reboot
        case .signaled(SIGINT):
            // halt/poweroff through reboot(2) in a pid namespace; systemd-shutdown
            // said the status in EXIT_STATUS= if it had one.
            let code = exitStatusFromNotify ?? 0
            report("EXIT \(code)")
            return .exited(code)
        case .signaled(let sig):
            report("EXIT \(128 + sig)")
            return .exited(128 + sig)
        case .exited(let code):
            report("EXIT \(code)")
            return .exited(code)
        }
    }

    enum Wait { case exited(Int32), signaled(Int32) }
    var exitStatusFromNotify: Int32?

    /// Serves the notify socket and a stop request until PID 1 exits, then reaps it.
    /// What a stop request sends PID 1: the image's StopSignal, except
    /// SIGTERM (systemd re-executes itself on it); else SIGRTMIN+4, poweroff.
    static func stopSignal(_ image: ImageConfig.ExecConfig?) -> Int32 {
        if let text = image?.StopSignal, let sig = try? parseSignal(text), sig != SIGTERM { return sig }
        return SIGRTMIN_VALUE + 4
    }

    func supervise(leader: pid_t, pidfd: Int32, notify: NotifySocket, stopSignal: Int32) -> Wait {
        exitStatusFromNotify = nil
        var stopSent = false
        while true {
            var fds = [pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: notify.fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: monitorSignalPipe.r, events: Int16(POLLIN), revents: 0)]
            if poll(&fds, 3, -1) < 0 { continue }
            if fds[1].revents != 0, let m = try? notify.receive(timeoutMilliseconds: 0) {
                let becameReady = m.ready && !status.ready
                if becameReady {
                    status.ready = true
                    status.state = .running
                }
                if let s = m.status { status.statusText = s }
                if m.stopping {
                    status.state = .stopping
                    notifyServiceManager("STOPPING=1")
                }
                if let level = m.fields["X_SYSTEMD_SIGNALS_LEVEL"].flatMap(Int.init) { status.signalsLevel = level }
                if let code = m.exitStatus { exitStatusFromNotify = code }
                try? publishStatus()
                // After publishing, so whoever hears "ready" reads a running machine.
                if becameReady {
                    report("READY")
                    notifyServiceManager("READY=1\nSTATUS=machine \(name) is running")
                }
            }
            if fds[2].revents != 0 {
                var sig: Int32 = 0
                while read(monitorSignalPipe.r, &sig, 4) == 4 {
                    // The monitor is asked to stop (SIGTERM from systemd or a
                    // user): the image's stop signal (halt/poweroff), never
                    // SIGTERM itself (PID 1 systemd would re-execute itself).
                    if !stopSent {
                        _ = ipactr_pidfd_send_signal(pidfd, stopSignal)
                        notifyServiceManager("STOPPING=1")
                        stopSent = true
                        status.state = .stopping
                        try? publishStatus()
                    }
                }
            }
            if fds[0].revents != 0 {
                var st: Int32 = 0
                while waitpid(leader, &st, 0) < 0 && errno == EINTR {}
                if (st & 0x7f) == 0 { return .exited((st >> 8) & 0xff) }
                return .signaled(st & 0x7f)
            }
        }
    }

    /// `--volume HOST:PATH` (idmap is the default): the host directory bound with its owners
    /// shifted into the machine's range (host 0 → machine root), so the
    /// files keep their own owners on the host and survive a range change.
    /// Made here, where we are root in the initial user namespace.
    func mountIdmappedVolumes(_ all: [MachineOptions.Volume], runDir: String) throws -> [Int: String] {
        // The identity range shifts nothing: its volumes are plain binds.
        let idmapped = record.range.isIdentity ? [] : all.enumerated().filter { $0.element.idmap }
        guard !idmapped.isEmpty else { return [:] }
        MachineMonitor.unmountVolumes(runDir: runDir)
        let userns = try Mount.userNamespace(uidMap: record.range.idMapLine, gidMap: record.range.idMapLine)
        defer { close(userns) }
        var sources: [Int: String] = [:]
        for (i, v) in idmapped {
            let target = "\(runDir)/volumes/\(i)"
            try makeDirectories(target, mode: 0o711)
            try syscall("chmod \(runDir)/volumes") { chmod(runDir + "/volumes", 0o711) }
            let refused: IpactrError?
            do {
                try Mount.idmappedBind(source: v.hostPath, target: target, usernsFD: userns, readOnly: v.readOnly)
                refused = nil
            } catch {
                guard [EINVAL, EPERM, EOPNOTSUPP].contains(error.errno?.rawValue ?? 0) else { throw error }
                refused = error
            }
            if let refused {
                throw IpactrError(.unsupported, "volume \(v.hostPath): the kernel or its file system refuses an idmapped bind (\(refused.message)); use \(v.hostPath):\(v.containerPath):noidmap")
            }
            sources[i] = target
        }
        return sources
    }

    /// Directories for the image's declared volumes (config Volumes) that no
    /// --volume or --tmpfs covers, as podman makes anonymous volumes. A new
    /// one starts with the image's content at that path (copy-up, as podman
    /// and docker do), once: a volume that exists is never filled again, so
    /// what the machine deleted there stays deleted.
    func anonymousVolumes(image: ImageConfig.ExecConfig?, layers: [String], runDir: String) throws -> [MachineOptions.Volume] {
        let covered = Set(record.options.volumes.map(\.containerPath) + record.options.tmpfs)
        var result: [MachineOptions.Volume] = []
        for path in (image?.Volumes ?? [:]).keys.sorted() where path.hasPrefix("/") && !covered.contains(path) {
            let volumeName = path.split(separator: "/").joined(separator: "-")
            let dir = paths.state(name) + "/volumes/" + (volumeName.isEmpty ? "root" : volumeName)
            if lstatOrNil(dir) == nil { try copyUp(path, into: dir, layers: layers, scratch: runDir + "/copyup") }
            result.append(MachineOptions.Volume(hostPath: dir, containerPath: path))
        }
        return result
    }

    /// Makes `dir` (which does not exist) as a copy of the image's `path`
    /// (the merged layers: owners, modes, xattrs, symlinks), or empty when the
    /// image has no directory there. Owners stay the image's own: anonymous
    /// volumes are idmapped into the range like `--volume` (or plain binds
    /// with the identity range, where the image's ids are the machine's).
    /// Written beside and renamed, so a failed copy is redone at the next boot.
    func copyUp(_ path: String, into dir: String, layers: [String], scratch: String) throws {
        try makeDirectories(parentDirectory(dir), mode: 0o755)
        let partial = dir + ".partial"
        try? removeTree(partial)
        try makeDirectories(scratch, mode: 0o700)
        defer { try? removeTree(scratch) }
        try withFlattenedLayers(layers, scratch: scratch) { flat throws(IpactrError) in
            // Only real directories all the way down: a symbolic link in the
            // image (absolute, say) must not lead the copy out onto the host.
            var source = flat, isDirectory = true
            for part in path.split(separator: "/") where isDirectory {
                source += "/" + part
                isDirectory = part != ".." && lstatOrNil(source).map { ($0.st_mode & S_IFMT) == S_IFDIR } ?? false
            }
            if isDirectory {
                do throws(IpactrError) { try copyShifted(from: source, to: partial, shift: 0) } catch {
                    try? removeTree(partial)
                    throw error
                }
            } else {
                try makeDirectory(partial, mode: 0o755)
            }
        }
        try syscall("rename \(partial)") { rename(partial, dir) }
    }

    static func unmountVolumes(runDir: String) {
        for point in Mount.mountPoints(under: runDir + "/volumes") { try? Mount.unmount(point) }
        try? removeTree(runDir + "/volumes")
    }

    /// Idmapped overlay where it works; the shifted copy where the kernel or
    /// filesystem refuses idmapping (or when the machine asks for it).
    func prepareRootfs(layers: [String], runDir: String) throws -> MachineRootfs {
        let state = paths.state(name)
        let rootfsRun = runDir + "/rootfs"
        try? MachineRootfs(path: rootfsRun + "/root", mode: .idmappedOverlay, runDirectory: rootfsRun).remove()
        let wanted = record.options.rootfsMode ?? record.rootfsMode
        if record.range.isIdentity {
            let r = try MachineRootfs.mountIdmappedOverlay(layers: layers, range: record.range,
                stateDirectory: record.options.ephemeral ? nil : state, runDirectory: rootfsRun)
            try rememberRootfsMode(.overlay)
            return r
        }
        if wanted != .shiftedCopy {
            do {
                let r = try MachineRootfs.mountIdmappedOverlay(layers: layers, range: record.range,
                    stateDirectory: record.options.ephemeral ? nil : state, runDirectory: rootfsRun)
                try rememberRootfsMode(.idmappedOverlay)
                return r
            } catch let e as IpactrError where wanted == nil && e.message.hasPrefix("idmap ")
                && [EINVAL, EPERM, EOPNOTSUPP, ENOSYS].contains(e.errno?.rawValue ?? 0) {
                // Fall through to the copy.
            }
        }
        if record.options.ephemeral {
            throw IpactrError(.unsupported, "--ephemeral needs idmapped mounts, which this kernel or filesystem refuses")
        }
        let copy = try MachineRootfs.shiftedCopy(layers: layers, range: record.range, stateDirectory: state, runDirectory: rootfsRun)
        // The state directory is private (0700): bind the copy where the
        // machine's init can reach it.
        let root = rootfsRun + "/root"
        try makeDirectories(root, mode: 0o755)
        try syscall("chmod \(rootfsRun)") { chmod(rootfsRun, 0o711) }
        try Mount.mount(source: copy.path, target: root, type: nil, flags: UInt(MS_BIND))
        try rememberRootfsMode(.shiftedCopy)
        return MachineRootfs(path: root, mode: .shiftedCopy, runDirectory: rootfsRun)
    }

    func rememberRootfsMode(_ mode: MachineRootfs.Mode) throws {
        guard record.rootfsMode != mode else { return }
        record.rootfsMode = mode
        try manager.withLock {
            var r = try manager.load(name)
            r.rootfsMode = mode
            try manager.save(r)
        }
    }

    /// /run/host as the Container Interface describes it.
    func writeHostFiles(_ dir: String) throws {
        try writeFileAtomically(dir + "/container-manager", Array("ipactr\n".utf8), mode: 0o644)
        try writeFileAtomically(dir + "/container-uuid", Array((record.uuid + "\n").utf8), mode: 0o644)
        for candidate in ["/etc/os-release", "/usr/lib/os-release"] {
            if let text = try? readFileString(candidate) {
                try writeFileAtomically(dir + "/os-release", Array(text.utf8), mode: 0o644)
                break
            }
        }
    }

    func makeRunDirectories(_ runDir: String) throws {
        var path = ""
        for part in runDir.split(separator: "/") {
            path += "/" + part
            if lstatOrNil(path) == nil {
                try syscall("mkdir \(path)") { mkdir(path, 0o711) }
            }
        }
        try syscall("chmod \(runDir)") { chmod(runDir, 0o711) }
    }

    func publishStatus() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try writeFileAtomically(paths.status(name), Array(try encoder.encode(status)), mode: 0o644)
    }

    /// Tells the service manager that started the monitor (ipactr@NAME.service,
    /// Type=notify) how the machine is doing: READY=1 once the machine's own
    /// systemd said READY=1, so the unit is "active" exactly when the machine
    /// is up. A no-op without $NOTIFY_SOCKET (started by ipactr or ipactrd).
    func notifyServiceManager(_ state: String) {
        guard getenv("NOTIFY_SOCKET") != nil else { return }
        let r = sd_notify(0, state)
        if r < 0 { print("ipactr-worker monitor: cannot notify the service manager: \(String(cString: strerror(-r)))") }
    }

    func report(_ line: String) {
        guard readyFD >= 0 else { return }
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(readyFD, $0.baseAddress, $0.count) }
        close(readyFD)
        readyFD = -1
    }

    func cleanupRunFiles() {
        let runDir = paths.run(name)
        for f in ["status.json", "host", "bundle", "rootfs"] { try? removeTree(runDir + "/" + f) }
    }

    // MARK: cgroups

    /// Moves this process into supervisor/, on a thread: a migration waits
    /// for an RCU grace period (the kernel's cgroup_threadgroup_rwsem,
    /// ~12 ms here), time the boot spends preparing the root meanwhile.
    /// `supervisorCgroupEntered()` waits for it, before PID 1 is made.
    func enterSupervisorCgroup() throws {
        let h = try CgroupHierarchy.find()
        hierarchy = h
        let supervisor = h.directory(of: cgroupBase + "/supervisor")
        try makeDirectories(supervisor, mode: 0o755)
        supervisorMove = try CgroupMove(into: supervisor)
    }

    /// This process's move into another cgroup, done on a thread of its own.
    final class CgroupMove: @unchecked Sendable {
        private var thread: pthread_t?
        private var error: Error?

        init(into directory: String) throws {
            let pid = getpid()
            thread = try startThread(detached: false) { [self] in
                do { try writeFile(directory + "/cgroup.procs", "\(pid)") } catch { self.error = error }
            }
        }

        /// Waits for the move; its error, if any.
        func finish() throws {
            if let t = thread { joinThread(t) }
            thread = nil
            if let e = error { throw e }
        }
    }
    var supervisorMove: CgroupMove?
    /// Leaving supervisor/ at the end, started while the teardown runs.
    var leavingMove: CgroupMove?

    /// PID 1 is gone for good: the move out of supervisor/ (so it can be
    /// removed) overlaps with the unmounts and the runtime's cleanup.
    func beginLeavingSupervisorCgroup() {
        guard let h = hierarchy, leavingMove == nil else { return }
        try? supervisorCgroupEntered()
        leavingMove = try? CgroupMove(into: delegated ? h.directory(of: cgroupBase) : h.mountPoint)
    }

    /// Waits until `enterSupervisorCgroup`'s move is done; its error, if any.
    /// (A monitor left in a delegated unit's own cgroup would make the
    /// payload cgroup an internal one, which cgroup v2 refuses.)
    func supervisorCgroupEntered() throws {
        guard let move = supervisorMove else { return }
        supervisorMove = nil
        try move.finish()
    }

    /// Moves the monitor back to the top and removes the machine's cgroups
    /// (the runtime has removed `payload` by now).
    func leaveSupervisorCgroup() {
        try? supervisorCgroupEntered()
        guard let h = hierarchy else { return }
        beginLeavingSupervisorCgroup()
        try? leavingMove?.finish()
        rmdir(h.directory(of: cgroupBase + "/supervisor"))
        rmdir(h.directory(of: cgroupBase + "/payload"))
        // A delegated cgroup belongs to the service manager.
        if delegated { return }
        rmdir(h.directory(of: cgroupBase))
        // The shared parent goes with the last machine (rmdir fails while others use it).
        rmdir(h.directory(of: "/ipactr"))
    }
}

func writeFile(_ path: String, _ text: String) throws {
    let fd = try syscall("open \(path)") { open(path, O_WRONLY | O_CLOEXEC) }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    try syscall("write \(path)") { bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
}

/// SIGRTMIN is a function in glibc; systemd's SIGRTMIN+3/+4 are relative to it.
let SIGRTMIN_VALUE: Int32 = __libc_current_sigrtmin()

/// The monitor's stop requests arrive as signals; the handler only writes
/// the signal number to a pipe the supervise loop polls.
nonisolated(unsafe) var monitorSignalPipe: (r: Int32, w: Int32) = (-1, -1)

func installSignalForwarding() {
    var p: [Int32] = [-1, -1]
    guard ipactr_pipe2(&p, O_CLOEXEC | O_NONBLOCK) == 0 else { return }
    monitorSignalPipe = (p[0], p[1])
    for sig in [SIGTERM, SIGINT] {
        signal(sig) { s in
            var v = s
            _ = write(monitorSignalPipe.w, &v, 4)
        }
    }
    // The CLI that started us may go away: its terminal and pipes must not kill us.
    signal(SIGHUP, SIG_IGN)
    signal(SIGPIPE, SIG_IGN)
}

/// Copies the machine's console (the pty master) into the console log on a
/// thread of its own, so PID 1 never blocks on a full pty.
final class ConsoleRelay {
    let master: Int32
    let log: Int32
    private var thread: pthread_t?

    /// Our own descriptor of the replica: systemd opens and closes
    /// /dev/console as it writes, and without a replica open the master
    /// would read EIO (hang-up) between two of its messages.
    private let replica: Int32

    init(master: Int32, log: Int32) {
        self.master = master
        self.log = log
        // TIOCGPTPEER: the replica of this very master, without a path lookup.
        replica = ioctl(master, UInt(0x5441), O_RDWR | O_NOCTTY | O_CLOEXEC)
    }

    func start() {
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        if pthread_create(&t, nil, { arg in
            let me = Unmanaged<ConsoleRelay>.fromOpaque(arg!).takeRetainedValue()
            me.run()
            return nil
        }, box.toOpaque()) == 0 {
            thread = t
        } else {
            box.release()
        }
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 16384)
        func copy(_ n: Int) {
            var off = 0
            while off < n {
                let w = buffer[off..<n].withUnsafeBytes { write(log, $0.baseAddress, $0.count) }
                if w <= 0 { return }
                off += w
            }
        }
        while true {
            var fds = [pollfd(fd: master, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake.r, events: Int16(POLLIN), revents: 0)]
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue }; return }
            if fds[0].revents != 0 {
                let n = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                copy(n)
            }
            if fds[1].revents != 0 {
                // PID 1 is gone: take what is still buffered, then stop.
                _ = fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK)
                while true {
                    let n = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
                    if n <= 0 { return }
                    copy(n)
                }
            }
        }
    }

    /// Written once by `finish` to wake the relay.
    private let wake: (r: Int32, w: Int32) = {
        var p: [Int32] = [-1, -1]
        _ = ipactr_pipe2(&p, O_CLOEXEC)
        return (p[0], p[1])
    }()

    /// After PID 1 has exited: lets the relay drain what is left, then closes the master.
    func finish() {
        var b: UInt8 = 1
        _ = write(wake.w, &b, 1)
        if let t = thread {
            pthread_join(t, nil)
            thread = nil
        }
        close(wake.r)
        close(wake.w)
        if replica >= 0 { close(replica) }
        close(master)
    }
}
