import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// The pty of a `run` or `exec` that stays in the foreground without
/// --console-socket (runc's behaviour): the process's pty master comes back
/// over a socket pair instead of a caller's socket, and the caller's terminal
/// is relayed to it until the pty hangs up: on a thread of ours for `run`
/// (which serves NOTIFY_SOCKET meanwhile), on the calling thread for `exec`
/// (which has joined the container's pid namespace: no thread can be made).
final class ForegroundTerminal {
    /// Our end: the master arrives here.
    private let local: Int32
    /// The child's end, in the console-socket slot of the plan.
    private(set) var remote: Int32
    private var relay: pthread_t?

    init() throws(IpactrError) {
        var pair: [Int32] = [-1, -1]
        try syscall("socketpair") { socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &pair) }
        local = pair[0]
        remote = pair[1]
    }

    deinit {
        close(local)
        if remote >= 0 { close(remote) }
    }

    /// Once the process holds its copy of the child's end.
    func closeRemote() {
        if remote >= 0 { close(remote) }
        remote = -1
    }

    /// Receives the master (the process sends it during its setup) and
    /// starts relaying the caller's stdin and stdout to it.
    func start() throws(IpactrError) {
        let master = try UnixSocket.receiveDescriptor(connected: local, timeoutMilliseconds: 10_000)
        do {
            relay = try startThread(detached: false) {
                relayTerminal(master: master)
                close(master)
            }
        } catch {
            close(master)
            throw error
        }
    }

    /// Receives the master and relays on this thread until the pty hangs up.
    func relayHere() throws(IpactrError) {
        let master = try UnixSocket.receiveDescriptor(connected: local, timeoutMilliseconds: 10_000)
        relayTerminal(master: master)
        close(master)
    }

    /// After the process has exited: the relay ends when the pty hangs up
    /// (and has restored the caller's terminal).
    func finish() {
        if let relay { joinThread(relay) }
        relay = nil
    }
}
