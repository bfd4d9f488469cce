#if canImport(Glibc)
import Glibc
#endif
@_exported import IpactrAPI
import CIpactrShim
import FoundationEssentials
import IpactrImageStore
import IpactrOCI
import IpactrRuntime
import IpactrSystem

/// The operations behind `ipactr boot`, `poweroff`, `terminate`…: the CLI
/// calls them today, the manager daemon will tomorrow.
public struct MachineControl {
    public let root: String
    public let manager: MachineManager
    /// The binary that runs `monitor NAME` (the ipactr executable).
    public let monitorExecutable: String
    /// When set, machines start as ipactr@NAME.service (`SystemdUnits`)
    /// instead of under a detached monitor.
    public var units: SystemdUnits?

    public init(root: String, monitorExecutable: String) {
        self.root = root
        manager = MachineManager(root: root)
        self.monitorExecutable = monitorExecutable
    }

    public enum BootResult: Sendable, Equatable {
        /// systemd said READY=1.
        case ready(MachineInfo.Summary)
        /// Started without waiting (`--no-wait`).
        case started
    }

    /// A failed boot: the error and the last console lines (already cleaned up).
    public struct BootFailure: Error, CustomStringConvertible {
        public var error: IpactrError
        public var console: [String]
        public var description: String { error.message }
    }

    /// Creates the machine record (new name) and boots it.
    public func boot(image imageName: String, name: String?, options: MachineOptions,
                     wait: Bool, timeoutSeconds: Double) throws -> BootResult {
        let store = try ImageStore(root: root)
        let image = try store.image(imageName)
        let machineName = name ?? defaultName(for: imageName)
        try MachineRecord.validate(name: machineName)
        try validate(options)
        try manager.withLock {
            if lstatOrNil(manager.paths.record(machineName)) != nil {
                throw IpactrError(.exists, manager.isRunning(machineName)
                    ? "machine \(machineName) is already running"
                    : "machine \(machineName) exists (start it with `ipactr start \(machineName)`, or remove it with `ipactr rm \(machineName)`)")
            }
            let range = try manager.allocateRange(for: machineName, base: options.uidRangeBase)
            let record = MachineRecord(name: machineName, uuid: randomUUID(), image: image.name, imageID: image.id,
                                       options: options, range: range, created: Int64(time(nil)))
            try manager.save(record)
        }
        do {
            return try start(machineName, wait: wait, timeoutSeconds: timeoutSeconds)
        } catch {
            // A machine that never booted leaves nothing behind.
            try? manager.remove(machineName)
            throw error
        }
    }

    /// Boots an existing, stopped machine.
    public func start(_ name: String, wait: Bool, timeoutSeconds: Double) throws -> BootResult {
        _ = try manager.load(name)
        guard !manager.isRunning(name) else { throw IpactrError(.busy, "machine \(name) is already running") }
        if let units { return try start(name, units: units, wait: wait, timeoutSeconds: timeoutSeconds) }
        let log = manager.paths.consoleLog(name)
        let logFD = try syscall("open \(log)") { open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) }
        defer { close(logFD) }
        var ready: [Int32] = [-1, -1]
        try syscall("pipe") { ipactr_pipe2(&ready, O_CLOEXEC) }
        defer { if ready[0] >= 0 { close(ready[0]) } }
        let pid: pid_t
        do {
            defer { close(ready[1]) }
            pid = try spawnMonitor(name, stdout: logFD, readyFD: ready[1])
        }
        guard wait else { return .started }

        let answer = readLine(ready[0], timeoutSeconds: timeoutSeconds)
        func fail(_ error: IpactrError) -> BootFailure {
            // Stop what is left, wait for the monitor to clean up, keep the log for the message.
            if manager.isRunning(name) { _ = try? terminate(name, timeoutSeconds: 10) }
            // The monitor reports before it has cleaned up: wait for it to finish.
            let deadline = now() + 30
            var st: Int32 = 0
            while waitpid(pid, &st, WNOHANG) == 0 && now() < deadline { usleep(10_000) }
            return BootFailure(error: error, console: manager.consoleTail(name))
        }
        switch answer {
        case .some(let line) where line == "READY":
            return .ready(try manager.info(name).summary)
        case .some(let line) where line.hasPrefix("EXIT "):
            throw fail(IpactrError(.io, "machine \(name) stopped during boot (PID 1 exit status \(line.dropFirst(5)))"))
        case .some(let line) where line.hasPrefix("ERROR "):
            throw fail(IpactrError(.io, "cannot boot machine \(name): \(line.dropFirst(6))"))
        case .some(let line) where line == "TIMEOUT":
            throw fail(IpactrError(.io, "machine \(name) did not report ready within \(Int(timeoutSeconds)) s"))
        default:
            throw fail(IpactrError(.io, "the monitor of machine \(name) exited during boot"))
        }
    }

    /// `start` through systemd: the unit's monitor (Type=notify) makes the
    /// unit active at the machine's READY=1; a unit that fails or stops
    /// before is a failed boot, reported like a detached monitor's.
    func start(_ name: String, units: SystemdUnits, wait: Bool, timeoutSeconds: Double) throws -> BootResult {
        let before = try manager.load(name).lastExitStatus
        // A "failed" left from an earlier start must not read as this one's.
        units.resetFailed(name)
        try units.start(name)
        guard wait else { return .started }
        func fail(_ error: IpactrError) -> BootFailure {
            if manager.isRunning(name) { _ = try? terminate(name, timeoutSeconds: 10) }
            _ = waitStopped(name, timeoutSeconds: 30)
            units.resetFailed(name)
            return BootFailure(error: error, console: manager.consoleTail(name))
        }
        let deadline = now() + timeoutSeconds
        // Until the job runs, the unit may still read "inactive".
        var started = false
        while now() < deadline {
            if manager.status(name)?.ready == true { return .ready(try manager.info(name).summary) }
            let running = manager.isRunning(name)
            let state = units.activeState(name)
            if running || state == "activating" || state == "active" { started = true }
            if !running && (state == "failed" || (started && state == "inactive")) {
                if let status = (try? manager.load(name))?.lastExitStatus, status != before || started {
                    throw fail(IpactrError(.io, "machine \(name) stopped during boot (PID 1 exit status \(status))"))
                }
                throw fail(IpactrError(.io, "cannot boot machine \(name): \(SystemdUnits.unitName(name)) is \(state ?? "gone") "
                    + "(journalctl -u \(SystemdUnits.unitName(name)))"))
            }
            usleep(50_000)
        }
        throw fail(IpactrError(.io, "machine \(name) did not report ready within \(Int(timeoutSeconds)) s"))
    }

    /// `poweroff`: SIGRTMIN+4 to PID 1 once systemd accepts signals, then
    /// SIGKILL if it is not gone within the timeout.
    public func poweroff(_ name: String, timeoutSeconds: Double) throws -> Int32? {
        try signalSystemd(name, signal: SIGRTMIN_VALUE + 4, timeoutSeconds: timeoutSeconds)
        if waitStopped(name, timeoutSeconds: timeoutSeconds) { return try manager.load(name).lastExitStatus }
        return try terminate(name, timeoutSeconds: 10)
    }

    /// `reboot`: SIGINT is systemd's "reboot" request; the monitor starts PID 1 again.
    public func reboot(_ name: String, timeoutSeconds: Double) throws {
        try signalSystemd(name, signal: SIGINT, timeoutSeconds: timeoutSeconds)
    }

    /// `terminate`: SIGKILL to PID 1 (the pid namespace takes everything with it).
    public func terminate(_ name: String, timeoutSeconds: Double) throws -> Int32? {
        guard let leader = manager.status(name)?.leader else {
            _ = try manager.load(name)
            throw IpactrError(.invalidArgument, "machine \(name) is not running")
        }
        Glibc.kill(leader, SIGKILL)
        guard waitStopped(name, timeoutSeconds: timeoutSeconds) else {
            throw IpactrError(.busy, "machine \(name) did not stop within \(Int(timeoutSeconds)) s of SIGKILL")
        }
        return try manager.load(name).lastExitStatus
    }

    /// `kill --signal SIG`: any signal to PID 1.
    public func kill(_ name: String, signal: Int32) throws {
        guard let leader = manager.status(name)?.leader else {
            _ = try manager.load(name)
            throw IpactrError(.invalidArgument, "machine \(name) is not running")
        }
        try syscall("kill \(leader)") { Glibc.kill(leader, signal) }
    }

    func signalSystemd(_ name: String, signal: Int32, timeoutSeconds: Double) throws {
        _ = try manager.load(name)
        let deadline = now() + timeoutSeconds
        while true {
            guard let st = manager.status(name), let leader = st.leader else {
                throw IpactrError(.invalidArgument, "machine \(name) is not running")
            }
            // systemd installs its handlers early but only promises to act on
            // them once it is up (READY=1, or X_SYSTEMD_SIGNALS_LEVEL=2).
            if st.ready || (st.signalsLevel ?? 0) >= 2 {
                try syscall("kill \(leader)") { Glibc.kill(leader, signal) }
                return
            }
            if now() > deadline { throw IpactrError(.busy, "machine \(name) is still booting; its systemd does not accept signals yet") }
            usleep(50_000)
        }
    }

    public func waitStopped(_ name: String, timeoutSeconds: Double) -> Bool {
        let deadline = now() + timeoutSeconds
        // The monitor holds its lock until it has cleaned up; a short poll
        // (a flock attempt costs microseconds) keeps a stop's answer prompt.
        while manager.isRunning(name) {
            if now() > deadline { return false }
            usleep(2_000)
        }
        return true
    }

    func validate(_ o: MachineOptions) throws {
        for v in o.volumes {
            guard let st = lstatOrNil(v.hostPath) else { throw IpactrError(.notFound, "volume \(v.hostPath) does not exist") }
            _ = st
        }
        if o.network == .host && !o.publish.isEmpty {
            throw IpactrError(.invalidArgument, "--publish needs --network private (with the host's network the ports are already the host's)")
        }
        if let h = o.hostname, h.isEmpty || h.count > 64 || h.contains("/") || h.contains(" ") {
            throw IpactrError(.invalidArgument, "invalid --hostname \"\(h)\"")
        }
    }

    /// The machine name `boot` picks when none is given: the image's last path component without its tag.
    public func defaultName(for image: String) -> String {
        var base = image.split(separator: "/").last.map(String.init) ?? image
        if let colon = base.firstIndex(of: ":") { base = String(base[..<colon]) }
        return base
    }

    func spawnMonitor(_ name: String, stdout: Int32, readyFD: Int32) throws -> pid_t {
        // A session of its own: the CLI's terminal and process group can go.
        try spawnProcess([monitorExecutable, "monitor", name, "--root", root, "--ready-fd", "3"],
                         descriptors: [0: .open("/dev/null", flags: O_RDONLY), 1: .dup(stdout), 2: .dup(stdout), 3: .dup(readyFD)],
                         newSession: true)
    }
}

extension MachineInfo {
    /// What `list` and `status` show (the API's JSON).
    public typealias Summary = MachineSummary

    public var summary: Summary {
        Summary(name: record.name, image: record.image,
                state: status.map { $0.state.rawValue } ?? "stopped",
                leader: status?.leader, uidRange: record.range.description,
                ready: status?.ready ?? false, statusText: status?.statusText,
                lastExitStatus: record.lastExitStatus,
                rootfs: (status?.rootfsMode ?? record.rootfsMode)?.rawValue,
                network: record.options.network.rawValue,
                addresses: record.options.network == .private
                    ? ["127.0.0.1 (machine loopback)"] + record.options.publish.map { "\($0)" } : ["host"])
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// One line from `fd`, waiting at most `timeoutSeconds`: nil on EOF,
/// "TIMEOUT" when the time ran out.
func readLine(_ fd: Int32, timeoutSeconds: Double) -> String? {
    var bytes: [UInt8] = []
    let deadline = now() + timeoutSeconds
    while true {
        let left = deadline - now()
        if left <= 0 { return "TIMEOUT" }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = poll(&p, 1, Int32(min(left * 1000, 1000)))
        if n <= 0 { continue }
        var b: UInt8 = 0
        let got = read(fd, &b, 1)
        if got == 0 { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
        if got < 0 { if errno == EINTR || errno == EAGAIN { continue }; return nil }
        if b == 0x0a { return String(decoding: bytes, as: UTF8.self) }
        bytes.append(b)
    }
}

extension MachineControl {
    /// `exec NAME CMD…`: a command in all of the machine's namespaces and in
    /// its cgroup, with the caller's stdio; returns its exit status. It gets a
    /// login-like environment of its own, not PID 1's (no NOTIFY_SOCKET).
    public func exec(_ name: String, arguments: [String], environment: [String] = [], workingDirectory: String = "/") throws -> Int32 {
        let record = try manager.load(name)
        guard manager.status(name)?.leader != nil else {
            throw IpactrError(.invalidArgument, "machine \(name) is not running")
        }
        let process = execProcess(record, arguments: arguments, environment: environment, workingDirectory: workingDirectory, terminal: false)
        let file = manager.paths.run(name) + "/exec-\(getpid()).json"
        try writeFileAtomically(file, Array(try JSONEncoder().encode(process)), mode: 0o600)
        defer { unlink(file) }
        var options = Runtime.ExecOptions()
        options.processFile = file
        options.cgroupSubpath = MachineControl.execCgroup
        return try Runtime(root: manager.paths.runtimeRoot).exec(id: MachinePaths.containerID(name), options)
    }

    /// The payload's sub-cgroup `exec` and `shell` put their processes in, as
    /// nspawn/machinectl use a scope: systemd inside enables controllers for
    /// the payload's children where the host has them, and then the payload
    /// itself may hold no process (v2's no-internal-processes rule). Used on
    /// every host, so the path is the same everywhere.
    public static let execCgroup = "ipactr-exec"

    /// The process `exec` and `shell` run: a root login-like environment of
    /// its own, not PID 1's (no NOTIFY_SOCKET).
    func execProcess(_ record: MachineRecord, arguments: [String], environment: [String], workingDirectory: String,
                     terminal: Bool) -> RuntimeSpec.Process {
        let caps = ContainerInterface.capabilities(privateNetwork: record.options.network == .private)
        // On a pty the caller's terminal type is what the shell talks to.
        let term = terminal ? (getenv("TERM").map { String(cString: $0) } ?? "xterm") : "xterm"
        let env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=" + term,
                   "HOME=/root", "USER=root", "LOGNAME=root", "container=ipactr"] + environment
        return RuntimeSpec.Process(
            terminal: terminal, user: RuntimeSpec.User(uid: 0, gid: 0), args: arguments, env: env, cwd: workingDirectory,
            capabilities: RuntimeSpec.Capabilities(bounding: caps, effective: caps, inheritable: [], permitted: caps, ambient: []),
            noNewPrivileges: false)
    }

    /// `shell NAME [CMD…]`: a login shell (or CMD) on a pty in all of the
    /// machine's namespaces and its cgroup; the caller's terminal is relayed
    /// in raw mode. Returns the shell's exit status.
    public func shell(_ name: String, command: [String]) throws -> Int32 {
        let record = try manager.load(name)
        guard manager.status(name)?.leader != nil else {
            throw IpactrError(.invalidArgument, "machine \(name) is not running")
        }
        let args = command.isEmpty
            ? ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi"] : command
        var process = execProcess(record, arguments: args, environment: [], workingDirectory: command.isEmpty ? "/root" : "/", terminal: true)
        var size = winsize()
        if isatty(0) == 1 && ioctl(0, UInt(TIOCGWINSZ), &size) == 0 && size.ws_row > 0 {
            process.consoleSize = RuntimeSpec.ConsoleSize(height: UInt(size.ws_row), width: UInt(size.ws_col))
        }
        let run = manager.paths.run(name)
        let file = run + "/shell-\(getpid()).json", socket = run + "/shell-\(getpid()).sock", pidFile = run + "/shell-\(getpid()).pid"
        defer { unlink(file); unlink(socket); unlink(pidFile) }
        try writeFileAtomically(file, Array(try JSONEncoder().encode(process)), mode: 0o600)
        let listener = try UnixSocket.listen(socket)
        defer { close(listener) }
        var options = Runtime.ExecOptions()
        options.processFile = file
        options.detach = true
        options.pidFile = pidFile
        options.consoleSocket = socket
        options.cgroupSubpath = MachineControl.execCgroup
        _ = try Runtime(root: manager.paths.runtimeRoot).exec(id: MachinePaths.containerID(name), options)
        let master = try UnixSocket.receiveDescriptor(listener, timeoutMilliseconds: 10_000)
        defer { close(master) }
        guard let pid = Int32((try readFileString(pidFile)).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw IpactrError(.internalError, "shell: no pid in \(pidFile)")
        }
        relayTerminal(master: master)
        // The shell was cloned from this process: it is our child.
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        return shellExitStatus(st)
    }
}

extension MachineControl {
    /// What the machine's systemd says of itself, as FreeIPA's tests judge a
    /// container: `systemctl is-system-running` (running, degraded,
    /// starting…) and the units that failed. nil when it cannot be asked.
    public func systemState(_ name: String) -> (state: String, failedUnits: [String])? {
        guard manager.status(name)?.leader != nil,
              let state = captureExec(name, ["systemctl", "is-system-running"]) else { return nil }
        let failed = captureExec(name, ["systemctl", "list-units", "--failed", "--plain", "--no-legend", "--no-pager"]) ?? ""
        return (state.trimmingCharacters(in: .whitespacesAndNewlines),
                failed.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) })
    }

    /// stdout of `ipactr-worker exec NAME ARGS…`, run as a child so its output can be read.
    func captureExec(_ name: String, _ arguments: [String]) -> String? {
        var out: [Int32] = [-1, -1]
        guard ipactr_pipe2(&out, O_CLOEXEC) == 0 else { return nil }
        let pid = try? spawnProcess([monitorExecutable, "exec", "--root", root, name] + arguments,
                                    descriptors: [0: .open("/dev/null", flags: O_RDONLY), 1: .dup(out[1]),
                                                  2: .open("/dev/null", flags: O_WRONLY)])
        close(out[1])
        defer { close(out[0]) }
        guard let pid else { return nil }
        let bytes = readAll(out[0])
        waitForExit(pid)
        return String(decoding: bytes, as: UTF8.self)
    }
}
