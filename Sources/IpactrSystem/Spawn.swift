#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage

/// Where a spawned child's descriptor comes from.
public enum SpawnDescriptor {
    /// A descriptor of ours, duplicated onto the child's number.
    case dup(Int32)
    /// A file opened for the child (`/dev/null`, a log).
    case open(String, flags: Int32, mode: mode_t = 0o600)
}

/// posix_spawn of `argv[0]` (a path) with `descriptors` set up at their
/// numbers (everything else close-on-exec stays closed), every signal at its
/// default disposition and none blocked (threads of ours may block some: a
/// child must not inherit that), optionally in a session of its own.
/// Returns the child's pid.
public func spawnProcess(_ argv: [String], descriptors: [Int32: SpawnDescriptor], newSession: Bool = false,
                         environment: [String]? = nil) throws(IpactrError) -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (target, source) in descriptors.sorted(by: { $0.key < $1.key }) {
        switch source {
        case .dup(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
        case .open(let path, let flags, let mode): posix_spawn_file_actions_addopen(&actions, target, path, flags, mode)
        }
    }
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attr, &none)
    var defaults = sigset_t()
    sigfillset(&defaults)
    posix_spawnattr_setsigdefault(&attr, &defaults)
    // POSIX_SPAWN_SETSID (glibc 2.26+), not exported to Swift.
    let setsid: Int16 = newSession ? 0x80 : 0
    posix_spawnattr_setflags(&attr, setsid | Int16(POSIX_SPAWN_SETSIGMASK) | Int16(POSIX_SPAWN_SETSIGDEF))
    let cArgs = argv.map { strdup($0) } + [nil]
    defer { cArgs.forEach { free($0) } }
    let cEnv = environment.map { $0.map { strdup($0) } + [nil] }
    defer { cEnv?.forEach { free($0) } }
    var pid: pid_t = 0
    let r = cEnv.map { env in posix_spawn(&pid, argv[0], &actions, &attr, cArgs, env) }
        ?? posix_spawn(&pid, argv[0], &actions, &attr, cArgs, environ)
    guard r == 0 else { throw IpactrError.syscall("start \(argv[0])", Errno(rawValue: r)) }
    return pid
}

/// Waits for `pid` (retrying on EINTR); returns its shell-style exit status.
@discardableResult
public func waitForExit(_ pid: pid_t) -> Int32 {
    var st: Int32 = 0
    while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
    return shellExitStatus(st)
}

/// Reads `fd` to its end.
public func readAll(_ fd: Int32) -> [UInt8] {
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n > 0 { bytes += buffer[0..<n] } else if n == 0 || errno != EINTR { return bytes }
    }
}
