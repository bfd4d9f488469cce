import CIpactrShim
import FoundationEssentials
import IpactrOCI
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Runs one runtime-spec hook in the runtime's namespace: `path` with `args`
/// and `env`, the container's state JSON on stdin, killed after `timeout` s.
func runHook(_ hook: RuntimeSpec.Hook, kind: String, state: RuntimeState) throws(IpactrError) {
    let json: Data
    do { json = try JSONEncoder().encode(state) } catch { throw IpactrError(.internalError, "encode state: \(error)") }
    var stdinPipe: [Int32] = [-1, -1]
    guard pipe(&stdinPipe) == 0 else { throw errnoError("\(kind) hook \(hook.path): pipe") }
    defer { if stdinPipe[1] >= 0 { close(stdinPipe[1]) } }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, stdinPipe[0], 0)
    posix_spawn_file_actions_addclose(&actions, stdinPipe[1])
    let argv = (hook.args ?? [hook.path]).map { strdup($0) } + [nil]
    let envp = (hook.env ?? []).map { strdup($0) } + [nil]
    defer { for p in argv + envp { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, hook.path, &actions, nil, argv, envp)
    close(stdinPipe[0])
    if rc != 0 { throw IpactrError.syscall("\(kind) hook \(hook.path)", Errno(rawValue: rc)) }
    // A hook that does not read its stdin must not block us: SIGPIPE is
    // ignored and the write's error dropped.
    signal(SIGPIPE, SIG_IGN)
    var bytes = Array(json)
    _ = bytes.withUnsafeMutableBytes { Glibc.write(stdinPipe[1], $0.baseAddress, $0.count) }
    close(stdinPipe[1]); stdinPipe[1] = -1

    let deadline = hook.timeout.map { Double($0) }
    let pidfd = ipactr_pidfd_open(pid)
    defer { if pidfd >= 0 { close(pidfd) } }
    if let d = deadline, pidfd >= 0 {
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        var n: Int32
        repeat { n = poll(&p, 1, Int32(d * 1000)) } while n < 0 && Glibc.errno == EINTR
        if n == 0 {
            kill(pid, SIGKILL)
            var st: Int32 = 0
            waitpid(pid, &st, 0)
            throw IpactrError(.io, "\(kind) hook \(hook.path): timed out after \(hook.timeout!) s")
        }
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && Glibc.errno == EINTR {}
    if status & 0x7f != 0 { throw IpactrError(.io, "\(kind) hook \(hook.path): killed by signal \(status & 0x7f)") }
    let code = (status >> 8) & 0xff
    if code != 0 { throw IpactrError(.io, "\(kind) hook \(hook.path): exit status \(code)") }
}

/// Runs a list of hooks in order; the first failure stops it.
func runHooks(_ hooks: [RuntimeSpec.Hook]?, kind: String, state: RuntimeState) throws(IpactrError) {
    for h in hooks ?? [] { try runHook(h, kind: kind, state: state) }
}

/// poststart/poststop: failures are warnings (runtime-spec), reported on stderr.
func runHooksWarning(_ hooks: [RuntimeSpec.Hook]?, kind: String, state: RuntimeState) {
    for h in hooks ?? [] {
        do { try runHook(h, kind: kind, state: state) } catch {
            printError(tool: "ipactr-runtime", "warning: \(error.message)")
        }
    }
}

/// The stdin of the hooks the container's init runs itself (createContainer,
/// startContainer): an anonymous file the init inherits, filled by
/// `writeHookState` once the init's pid is known (after clone3, before "go").
func openHookStateFile() throws(IpactrError) -> Int32 {
    try syscall("memfd_create for hook state") { ipactr_memfd_create("ipactr-hook-state") }
}

func writeHookState(_ fd: Int32, _ state: RuntimeState) throws(IpactrError) {
    let json: Data
    do { json = try JSONEncoder().encode(state) } catch { throw IpactrError(.internalError, "encode state: \(error)") }
    do { try writeAll(fd, Array(json), what: "hook state") } catch let e as IpactrError { throw e } catch {
        throw IpactrError(.io, "write hook state: \(error)")
    }
}
