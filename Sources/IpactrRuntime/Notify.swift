import CIpactrShim
import FoundationEssentials
import IpactrOCI
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// NOTIFY_SOCKET proxying, runc's model: when the caller of `create` (or
/// `run`) has NOTIFY_SOCKET, the container gets a datagram socket of its own
/// at /run/notify/notify.sock (the directory `<root>/<id>/notify` bound
/// read-only; a socket on a read-only mount still takes datagrams) and
/// NOTIFY_SOCKET pointing to it in process.env. The runtime reads it and
/// passes the messages on to the caller's socket:
/// - `start` (and `run --detach`) forwards every message up to and including
///   the one with READY=1, then sends MAINPID=<host pid of the init> and
///   returns: the runtime exits, so the init becomes the service's main
///   process (a unit with `ExecStart=… run -d`, as with runc and crun).
///   Later messages are refused (ECONNREFUSED), as with runc and crun: that
///   includes the barrier `systemd-notify --ready` sends unless --no-block.
/// - a foreground `run` is itself the service's main process (it waits and
///   passes PID 1's exit status on): it forwards every message for the
///   container's whole life and never sends MAINPID.
/// MAINPID= lines from the container are dropped (a pid of its namespace
/// means nothing to the host's systemd); file descriptors (FDSTORE=1) are
/// not passed on: the runtime closes them, which is what completes
/// sd_notify_barrier() (systemd-notify sends one), so BARRIER=1 is answered
/// here and dropped too.
struct NotifyProxy {
    static let containerDirectory = "/run/notify"
    static let containerSocket = containerDirectory + "/notify.sock"

    let fd: Int32

    /// Absolute (it is a bind source, and --root may be relative).
    static func directory(of dir: ContainerDir) -> String {
        let p = dir.path + "/notify"
        return p.hasPrefix("/") ? p : currentDirectory() + "/" + p
    }

    /// Makes the socket directory and adds its bind mount and NOTIFY_SOCKET
    /// to `spec` (the plan's copy; state.json keeps the caller's spec, so
    /// `exec` processes do not get it). Returns a detached copy of the
    /// directory (open_tree) for the child to attach (PlanBuilder.bindTrees):
    /// a user-namespaced root cannot search the 0700 --root by path.
    static func prepare(_ dir: ContainerDir, spec: inout RuntimeSpec) throws(IpactrError) -> Int32 {
        let path = directory(of: dir)
        try syscall("create \(path)") { mkdir(path, 0o755) }
        try syscall("chmod \(path)") { chmod(path, 0o755) }
        let fd = try syscall("open_tree \(path)") { open_tree(AT_FDCWD, path, UInt32(OPEN_TREE_CLONE) | UInt32(O_CLOEXEC)) }
        var mounts = spec.mounts ?? []
        mounts.append(RuntimeSpec.Mount(destination: containerDirectory, type: "bind", source: path,
                                        options: ["bind", "nosuid", "nodev", "noexec", "ro"]))
        spec.mounts = mounts
        var process = spec.process ?? RuntimeSpec.Process()
        process.env = (process.env ?? []).filter { !$0.hasPrefix("NOTIFY_SOCKET=") } + ["NOTIFY_SOCKET=" + containerSocket]
        spec.process = process
        return fd
    }

    /// Binds a fresh socket in the container's notify directory (replacing
    /// the one an earlier command left), writable by any uid the container maps.
    static func listen(_ dir: ContainerDir) throws(IpactrError) -> NotifyProxy {
        let path = directory(of: dir) + "/notify.sock"
        let fd = try UnixSocket.open(path, type: SOCK_DGRAM, bind: true)
        if chmod(path, 0o777) != 0 {
            let e = errnoError("chmod \(path)")
            _ = Glibc.close(fd)
            throw e
        }
        return NotifyProxy(fd: fd)
    }

    func close() { _ = Glibc.close(fd) }

    /// The caller's NOTIFY_SOCKET as state.json records it: absolute, or
    /// "@name" for an abstract socket.
    static func hostSocket(_ value: String) throws(IpactrError) -> String {
        if value.hasPrefix("/") || (value.hasPrefix("@") && value.utf8.count > 1) { return value }
        guard !value.isEmpty else { throw IpactrError(.invalidArgument, "NOTIFY_SOCKET is empty") }
        return currentDirectory() + "/" + value
    }

    /// Passes messages on to `host` until the init (pidfd) exits, or, with
    /// `mainPid`, until READY=1 has been passed on followed by MAINPID=mainPid.
    /// Returns true when READY=1 was seen.
    @discardableResult
    func forward(to host: String, pidfd: Int32, mainPid: pid_t?) -> Bool {
        let out = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { if out >= 0 { _ = Glibc.close(out) } }
        var ready = false
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)]
        while true {
            fds[0].revents = 0
            fds[1].revents = 0
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                return ready
            }
            // Messages first: the init may send READY=1 and exit at once.
            while let message = receive() {
                let lines = message.split(separator: "\n", omittingEmptySubsequences: true).filter { !$0.hasPrefix("MAINPID=") && $0 != "BARRIER=1" }
                if !lines.isEmpty { send(out, lines.joined(separator: "\n") + "\n", to: host) }
                if lines.contains("READY=1") {
                    ready = true
                    if let pid = mainPid {
                        send(out, "MAINPID=\(pid)\n", to: host)
                        return true
                    }
                }
            }
            if fds[1].revents != 0 { return ready }
        }
    }

    /// One datagram, or nil when none is queued. A plain recv: passed fds
    /// are discarded (closed) by the kernel.
    private func receive() -> String? {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            return String(decoding: buf[..<n], as: UTF8.self)
        }
    }

    /// Best effort, as sd_notify() is for its callers: a caller that stopped
    /// listening must not make the container fail.
    private func send(_ out: Int32, _ message: String, to host: String) {
        guard out >= 0 else { return }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(host.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        // Abstract names are exactly as long as given; paths end at their NUL.
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes.first == 0 ? 0 : 1))
        let payload = Array(message.utf8)
        _ = withUnsafePointer(to: &addr) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                payload.withUnsafeBytes { sendto(out, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, len) }
            }
        }
    }
}
