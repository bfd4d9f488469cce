#if canImport(Glibc)
import Glibc
#endif

/// Parses a signal as `kill` takes it: a number, or a name with or without
/// "SIG", including RTMIN+n and RTMAX-n (SIGRTMIN+3 halts systemd).
public func parseSignal(_ s: String) throws(IpactrError) -> Int32 {
    if let n = Int32(s) {
        guard n > 0, n <= __libc_current_sigrtmax() else { throw IpactrError(.invalidArgument, "invalid signal \(s)") }
        return n
    }
    var name = s.uppercased()
    if name.hasPrefix("SIG") { name = String(name.dropFirst(3)) }
    let table: [String: Int32] = [
        "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "ILL": SIGILL, "TRAP": SIGTRAP, "ABRT": SIGABRT,
        "IOT": SIGABRT, "BUS": SIGBUS, "FPE": SIGFPE, "KILL": SIGKILL, "USR1": SIGUSR1, "SEGV": SIGSEGV,
        "USR2": SIGUSR2, "PIPE": SIGPIPE, "ALRM": SIGALRM, "TERM": SIGTERM, "STKFLT": SIGSTKFLT,
        "CHLD": SIGCHLD, "CONT": SIGCONT, "STOP": SIGSTOP, "TSTP": SIGTSTP, "TTIN": SIGTTIN,
        "TTOU": SIGTTOU, "URG": SIGURG, "XCPU": SIGXCPU, "XFSZ": SIGXFSZ, "VTALRM": SIGVTALRM,
        "PROF": SIGPROF, "WINCH": SIGWINCH, "IO": SIGIO, "POLL": SIGIO, "PWR": SIGPWR, "SYS": SIGSYS,
        "RTMIN": __libc_current_sigrtmin(), "RTMAX": __libc_current_sigrtmax(),
    ]
    if let v = table[name] { return v }
    for (base, sign) in [("RTMIN+", Int32(1)), ("RTMAX-", Int32(-1))] where name.hasPrefix(base) {
        if let off = Int32(name.dropFirst(base.count)) {
            let v = (base == "RTMIN+" ? __libc_current_sigrtmin() : __libc_current_sigrtmax()) + sign * off
            if v >= __libc_current_sigrtmin(), v <= __libc_current_sigrtmax() { return v }
        }
    }
    throw IpactrError(.invalidArgument, "unknown signal \(s)")
}
