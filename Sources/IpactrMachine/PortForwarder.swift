#if canImport(Glibc)
import Glibc
#endif
import IpactrSystem
import CIpactrShim

/// `--publish [IP:]HOSTPORT:PORT[/udp]` for a machine with a private network:
/// a user-space proxy in the machine's monitor. It listens in the host's
/// network namespace and connects to 127.0.0.1:PORT inside the machine's.
/// Unlike DNAT rules (nspawn's --port), this also answers connections made to
/// the host's loopback, and needs no firewall.
public final class PortForwarder {
    public enum Proto: String, Codable, Sendable { case tcp, udp }

    public struct Rule: Hashable, Codable, Sendable, CustomStringConvertible {
        public var hostAddress: String
        public var hostPort: UInt16
        public var containerPort: UInt16
        public var proto: Proto

        /// Parses podman's form: `[IP:]HOSTPORT:PORT[/tcp|/udp]`.
        public init(parsing text: String) throws(IpactrError) {
            var spec = Substring(text)
            var proto = Proto.tcp
            if let slash = spec.lastIndex(of: "/") {
                guard let p = Proto(rawValue: String(spec[spec.index(after: slash)...])) else {
                    throw IpactrError(.invalidArgument, "bad --publish \"\(text)\": protocol must be tcp or udp")
                }
                proto = p
                spec = spec[..<slash]
            }
            let parts = spec.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2 || parts.count == 3,
                  let hostPort = UInt16(parts[parts.count - 2]), hostPort > 0,
                  let port = UInt16(parts[parts.count - 1]), port > 0 else {
                throw IpactrError(.invalidArgument, "bad --publish \"\(text)\": want [IP:]HOSTPORT:PORT[/udp]")
            }
            let address = parts.count == 3 ? String(parts[0]) : "0.0.0.0"
            var probe = in_addr()
            guard inet_pton(AF_INET, address, &probe) == 1 else {
                throw IpactrError(.invalidArgument, "bad --publish \"\(text)\": \(address) is not an IPv4 address")
            }
            self.init(hostAddress: address, hostPort: hostPort, containerPort: port, proto: proto)
        }

        public init(hostAddress: String = "0.0.0.0", hostPort: UInt16, containerPort: UInt16, proto: Proto = .tcp) {
            self.hostAddress = hostAddress
            self.hostPort = hostPort
            self.containerPort = containerPort
            self.proto = proto
        }

        public var description: String { "\(hostAddress):\(hostPort)->\(containerPort)/\(proto.rawValue)" }
    }

    private final class Listener {
        let rule: Rule
        let fd: Int32
        init(rule: Rule, fd: Int32) { self.rule = rule; self.fd = fd }
    }

    /// A TCP connection being relayed: host side and machine side.
    private final class Pair {
        let a: Int32, b: Int32
        var aToB: [UInt8] = [], bToA: [UInt8] = []
        var aEOF = false, bEOF = false
        init(_ a: Int32, _ b: Int32) { self.a = a; self.b = b }
    }

    /// A UDP peer on the host and the socket that speaks for it inside.
    private final class UDPFlow {
        let listener: Listener
        var peer: sockaddr_in
        let inner: Int32
        var lastUsed: timespec
        init(listener: Listener, peer: sockaddr_in, inner: Int32) {
            self.listener = listener; self.peer = peer; self.inner = inner
            lastUsed = monotonicNow()
        }
    }

    private var listeners: [Listener] = []
    private var pairs: [Pair] = []
    private var flows: [UDPFlow] = []
    private let netnsFD: Int32
    private var stopPipe: (r: Int32, w: Int32) = (-1, -1)
    private var thread: pthread_t?

    /// Binds every rule's host socket now, so "address in use" is reported
    /// before the machine is declared booted. `netnsPath` is the machine's
    /// network namespace (/proc/PID/ns/net).
    public init(rules: [Rule], netnsPath: String) throws(IpactrError) {
        netnsFD = try syscall("open \(netnsPath)") { open(netnsPath, O_RDONLY | O_CLOEXEC) }
        var ok = false
        defer { if !ok { closeAll() } }
        for rule in rules {
            listeners.append(Listener(rule: rule, fd: try PortForwarder.bindHost(rule)))
        }
        var p: [Int32] = [0, 0]
        try syscall("pipe") { ipactr_pipe2(&p, O_CLOEXEC | O_NONBLOCK) }
        stopPipe = (p[0], p[1])
        ok = true
    }

    deinit { stop() }

    /// Starts relaying on a dedicated thread, which moves itself into the
    /// machine's network namespace (a thread may; sockets it then creates live
    /// there, while the listeners made earlier stay in the host's).
    public func start() throws(IpactrError) {
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        let r = pthread_create(&t, nil, { arg in
            let me = Unmanaged<PortForwarder>.fromOpaque(arg!).takeRetainedValue()
            me.run()
            return nil
        }, box.toOpaque())
        if r != 0 {
            box.release()
            throw IpactrError.syscall("start port forwarder", .init(rawValue: r))
        }
        thread = t
    }

    /// Stops the relay thread and closes every socket.
    public func stop() {
        if let t = thread {
            var b: UInt8 = 1
            _ = write(stopPipe.w, &b, 1)
            pthread_join(t, nil)
            thread = nil
        }
        closeAll()
    }

    private func closeAll() {
        for l in listeners { close(l.fd) }
        for p in pairs { close(p.a); close(p.b) }
        for f in flows { close(f.inner) }
        listeners = []; pairs = []; flows = []
        if netnsFD >= 0 { close(netnsFD) }
        if stopPipe.r >= 0 { close(stopPipe.r); close(stopPipe.w); stopPipe = (-1, -1) }
    }

    private static func bindHost(_ rule: Rule) throws(IpactrError) -> Int32 {
        let type = (rule.proto == .tcp ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue)) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        let fd = try syscall("socket for \(rule)") { socket(AF_INET, type, 0) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in(port: rule.hostPort, address: rule.hostAddress)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r != 0 || (rule.proto == .tcp && listen(fd, 128) != 0) {
            let e = errno
            close(fd)
            throw IpactrError.syscall("publish \(rule)", .init(rawValue: e))
        }
        return fd
    }

    private func connectInside(port: UInt16, proto: Proto) -> Int32 {
        let type = (proto == .tcp ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue)) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = socket(AF_INET, type, 0)
        if fd < 0 { return -1 }
        var addr = sockaddr_in(port: port, address: "127.0.0.1")
        // A blocking connect to loopback completes or fails at once.
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r != 0 { close(fd); return -1 }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    private func run() {
        guard ipactr_setns(netnsFD, IPACTR_CLONE_NEWNET) == 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            var fds: [pollfd] = [pollfd(fd: stopPipe.r, events: Int16(POLLIN), revents: 0)]
            for l in listeners { fds.append(pollfd(fd: l.fd, events: Int16(POLLIN), revents: 0)) }
            for p in pairs {
                fds.append(pollfd(fd: p.a, events: Int16(p.aEOF || !p.aToB.isEmpty ? 0 : POLLIN) | Int16(p.bToA.isEmpty ? 0 : POLLOUT), revents: 0))
                fds.append(pollfd(fd: p.b, events: Int16(p.bEOF || !p.bToA.isEmpty ? 0 : POLLIN) | Int16(p.aToB.isEmpty ? 0 : POLLOUT), revents: 0))
            }
            for f in flows { fds.append(pollfd(fd: f.inner, events: Int16(POLLIN), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), 10_000) < 0 && errno != EINTR { return }
            if fds[0].revents != 0 { return }
            // Serve what was polled; new pairs and flows made by the
            // listeners below join the next round.
            var i = 1 + listeners.count
            var closed: [Int] = []
            for (n, p) in pairs.enumerated() {
                let ra = fds[i].revents, rb = fds[i + 1].revents
                i += 2
                if !pump(from: p.a, to: p.b, readable: ra, pending: &p.aToB, eof: &p.aEOF, &buffer)
                    || !pump(from: p.b, to: p.a, readable: rb, pending: &p.bToA, eof: &p.bEOF, &buffer)
                    || (p.aEOF && p.bEOF && p.aToB.isEmpty && p.bToA.isEmpty) {
                    closed.append(n)
                }
            }
            for n in closed.reversed() { close(pairs[n].a); close(pairs[n].b); pairs.remove(at: n) }
            for f in flows where i < fds.count {
                if fds[i].revents != 0 { replyDatagram(f, &buffer) }
                i += 1
            }
            for (n, l) in listeners.enumerated() where fds[1 + n].revents != 0 {
                l.rule.proto == .tcp ? accept(l) : receiveDatagram(l, &buffer)
            }
            expireFlows()
        }
    }

    private func accept(_ l: Listener) {
        let client = ipactr_accept4(l.fd, Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
        if client < 0 { return }
        let inner = connectInside(port: l.rule.containerPort, proto: .tcp)
        if inner < 0 { close(client); return }
        pairs.append(Pair(client, inner))
    }

    /// Moves bytes one way; returns false when the pair should be closed.
    private func pump(from src: Int32, to dst: Int32, readable: Int16,
                      pending: inout [UInt8], eof: inout Bool, _ buffer: inout [UInt8]) -> Bool {
        if readable & Int16(POLLIN | POLLHUP | POLLERR) != 0 && pending.isEmpty && !eof {
            let n = buffer.withUnsafeMutableBytes { read(src, $0.baseAddress, $0.count) }
            if n > 0 { pending.append(contentsOf: buffer[0..<n]) }
            else if n == 0 { eof = true; shutdown(dst, Int32(SHUT_WR)) }
            else if errno != EAGAIN && errno != EINTR { return false }
        }
        if !pending.isEmpty {
            let n = pending.withUnsafeBytes { write(dst, $0.baseAddress, $0.count) }
            if n > 0 { pending.removeFirst(n) }
            else if n < 0 && errno != EAGAIN && errno != EINTR { return false }
            if pending.isEmpty && eof { shutdown(dst, Int32(SHUT_WR)) }
        }
        return true
    }

    private func receiveDatagram(_ l: Listener, _ buffer: inout [UInt8]) {
        var peer = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let n = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(l.fd, raw.baseAddress, raw.count, 0, $0, &len) }
            }
        }
        if n < 0 { return }
        var flow = flows.first { $0.listener === l && $0.peer.sin_port == peer.sin_port && $0.peer.sin_addr.s_addr == peer.sin_addr.s_addr }
        if flow == nil {
            let inner = connectInside(port: l.rule.containerPort, proto: .udp)
            if inner < 0 { return }
            flow = UDPFlow(listener: l, peer: peer, inner: inner)
            flows.append(flow!)
        }
        flow!.lastUsed = monotonicNow()
        _ = buffer.withUnsafeBytes { send(flow!.inner, $0.baseAddress, n, 0) }
    }

    private func replyDatagram(_ f: UDPFlow, _ buffer: inout [UInt8]) {
        let n = buffer.withUnsafeMutableBytes { recv(f.inner, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n <= 0 { return }
        f.lastUsed = monotonicNow()
        var peer = f.peer
        _ = buffer.withUnsafeBytes { raw in
            withUnsafePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(f.listener.fd, raw.baseAddress, n, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    /// UDP has no close: a flow idle for a minute is forgotten (as conntrack does).
    private func expireFlows() {
        let now = monotonicNow()
        flows.removeAll { f in
            if now.tv_sec - f.lastUsed.tv_sec > 60 { close(f.inner); return true }
            return false
        }
    }
}

private func monotonicNow() -> timespec {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts
}

extension sockaddr_in {
    init(port: UInt16, address: String) {
        self.init()
        sin_family = sa_family_t(AF_INET)
        sin_port = port.bigEndian
        inet_pton(AF_INET, address, &sin_addr)
    }
}
