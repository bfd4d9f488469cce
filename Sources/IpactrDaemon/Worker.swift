#if canImport(Glibc)
import Glibc
#endif
import CIpactrShim
import Foundation
import IpactrSystem

/// An `ipactr-worker VERB --root ROOT …` (or `ipactr-pull --root ROOT …`) child of the daemon, on the
/// caller's file descriptors (received over D-Bus). Used for what must run
/// with the caller's stdio or terminal (exec, shell) and for long store
/// writes (pull, import): a worker killed half-way leaves the store as it
/// was (every store change is a temp + rename), and a worker's crash never
/// takes the daemon down.
struct WorkerRun {
    /// After `worker`: the verb and its arguments (`--root` is added).
    var arguments: [String]
    /// The caller's stdin, stdout and stderr; the run closes them.
    var stdio: [Int32]
    /// The caller's end of a pipe: when it hangs up (the caller exited) or
    /// gets a byte (the caller was interrupted), the worker gets SIGTERM.
    var lifeline: Int32 = -1
    /// exec and shell: a byte on the lifeline is a signal for the worker,
    /// which passes it to its command; a hang-up is SIGHUP. Else any of
    /// the two stops the worker with SIGTERM.
    var forwardsSignals = false
    /// Lines the worker writes on its fd 3 (`--job-fd 3`), when set.
    var onLine: (@Sendable (String) -> Void)?
}

extension ManagerDaemon {
    /// Runs the worker to its end on a thread of its own; returns its exit
    /// status (128+N when killed by signal N).
    func run(_ worker: WorkerRun) async throws -> Int32 {
        let exe = configuration.monitorExecutable, root = configuration.root
        return try await withCheckedThrowingContinuation { continuation in
            let thread = Thread { [self] in
                continuation.resume(with: Result { try runBlocking(worker, executable: exe, root: root) })
            }
            thread.name = "ipactrd-worker"
            thread.start()
        }
    }

    private func runBlocking(_ worker: WorkerRun, executable: String, root: String) throws -> Int32 {
        defer {
            for fd in worker.stdio { close(fd) }
            if worker.lifeline >= 0 { close(worker.lifeline) }
        }
        guard worker.stdio.count == 3, let verb = worker.arguments.first else {
            throw IpactrError(.invalidArgument, "a worker needs a verb and three descriptors")
        }
        var feed: [Int32] = [-1, -1]
        if worker.onLine != nil {
            guard ipactr_pipe2(&feed, O_CLOEXEC) == 0 else { throw IpactrError.syscall("pipe2", .init(rawValue: errno)) }
        }
        defer { if feed[0] >= 0 { close(feed[0]) } }
        // The pull is a binary of its own beside ipactr-worker (only it links libcurl).
        var argv = verb == "pull"
            ? [URL(fileURLWithPath: executable).deletingLastPathComponent().appendingPathComponent("ipactr-pull").path, "--root", root]
            : [executable, verb, "--root", root]
        if worker.onLine != nil { argv += ["--job-fd", "3"] }
        argv += worker.arguments.dropFirst()

        var descriptors: [Int32: SpawnDescriptor] = [0: .dup(worker.stdio[0]), 1: .dup(worker.stdio[1]), 2: .dup(worker.stdio[2])]
        if feed[1] >= 0 { descriptors[3] = .dup(feed[1]) }
        // Registered before it can exit, so the daemon's reaper leaves it to us.
        let pid: pid_t = try workers.withLock { set in
            let pid = try spawnProcess(argv, descriptors: descriptors)
            set.insert(pid)
            return pid
        }
        if feed[1] >= 0 { close(feed[1]); feed[1] = -1 }
        defer { workers.withLock { set in _ = set.remove(pid) } }

        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var lifelineOpen = worker.lifeline >= 0
        var feedOpen = feed[0] >= 0
        var signalled = false
        while true {
            var st: Int32 = 0
            let w = waitpid(pid, &st, WNOHANG)
            if w == pid {
                // What the worker wrote last.
                while feedOpen, case let n = read(feed[0], &buffer, buffer.count), n > 0 { pending += buffer[0..<n] }
                deliver(&pending, worker.onLine, flushAll: true)
                return shellExitStatus(st)
            }
            var fds = [pollfd(fd: feedOpen ? feed[0] : -1, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: lifelineOpen ? worker.lifeline : -1, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 2, 100)
            if fds[0].revents != 0 {
                let n = read(feed[0], &buffer, buffer.count)
                if n > 0 { pending += buffer[0..<n]; deliver(&pending, worker.onLine, flushAll: false) } else if n == 0 { feedOpen = false }
            }
            if fds[1].revents != 0 {
                var byte: UInt8 = 0
                let n = read(worker.lifeline, &byte, 1)
                if worker.forwardsSignals {
                    // The caller was interrupted (the signal, for its command) or is gone (a hang-up).
                    if n == 1, byte > 0, Int32(byte) <= __libc_current_sigrtmax() { kill(pid, Int32(byte)) } else if n <= 0 {
                        lifelineOpen = false
                        kill(pid, SIGHUP)
                    }
                } else {
                    // The caller is gone or interrupted: the worker stops and rolls back.
                    lifelineOpen = false
                    if !signalled { kill(pid, SIGTERM); signalled = true }
                }
            }
        }
    }

    private func deliver(_ pending: inout [UInt8], _ onLine: (@Sendable (String) -> Void)?, flushAll: Bool) {
        while let nl = pending.firstIndex(of: 0x0a) {
            onLine?(String(decoding: pending[..<nl], as: UTF8.self))
            pending.removeSubrange(...nl)
        }
        if flushAll && !pending.isEmpty {
            onLine?(String(decoding: pending, as: UTF8.self))
            pending.removeAll()
        }
    }
}

/// Pids of running workers, which their runs reap themselves.
final class WorkerSet: @unchecked Sendable {
    private let lock = NSLock()
    private var pids: Set<pid_t> = []
    func withLock<T>(_ body: (inout Set<pid_t>) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&pids)
    }
}
