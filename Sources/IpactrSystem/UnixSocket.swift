#if canImport(Glibc)
import Glibc
#endif

/// AF_UNIX sockets: the notify socket (datagram), the console socket
/// (runc's --console-socket protocol: the pty master arrives with SCM_RIGHTS).
public enum UnixSocket {
    /// A socket of `type` (SOCK_STREAM, SOCK_DGRAM) bound at `path` (an old
    /// one is replaced), or connected to it; close-on-exec.
    public static func open(_ path: String, type: __socket_type, bind: Bool) throws(IpactrError) -> Int32 {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw IpactrError(.invalidArgument, "socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let fd = try syscall("socket for \(path)") { socket(AF_UNIX, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        if bind { unlink(path) }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind ? Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                     : Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if r != 0 {
            let e = errno
            close(fd)
            throw IpactrError.syscall("\(bind ? "bind" : "connect") \(path)", .init(rawValue: e))
        }
        return fd
    }

    /// A listening stream socket bound at `path`, mode 0600.
    public static func listen(_ path: String) throws(IpactrError) -> Int32 {
        let fd = try open(path, type: SOCK_STREAM, bind: true)
        if chmod(path, 0o600) != 0 || Glibc.listen(fd, 1) != 0 {
            let e = errno
            close(fd)
            throw IpactrError.syscall("listen on \(path)", .init(rawValue: e))
        }
        return fd
    }

    /// Sends `descriptor` over the connected socket `fd` with SCM_RIGHTS, with
    /// `name` as the payload (runc's utils.SendFile: the receiver names the file by it).
    public static func sendDescriptor(_ fd: Int32, _ descriptor: Int32, name: String) throws(IpactrError) {
        var data = Array(name.utf8)
        if data.isEmpty { data = [0] }
        // cmsghdr (len: size_t, level: int, type: int) followed by one int: CMSG_SPACE(4) = 24.
        var control = [UInt8](repeating: 0, count: 24)
        control.withUnsafeMutableBytes { cb in
            cb.storeBytes(of: 20, toByteOffset: 0, as: Int.self) // CMSG_LEN(sizeof(int))
            cb.storeBytes(of: SOL_SOCKET, toByteOffset: 8, as: Int32.self)
            cb.storeBytes(of: 1 /* SCM_RIGHTS */, toByteOffset: 12, as: Int32.self)
            cb.storeBytes(of: descriptor, toByteOffset: 16, as: Int32.self)
        }
        let sent: Int = data.withUnsafeMutableBytes { db in
            control.withUnsafeMutableBytes { cb in
                var iov = iovec(iov_base: db.baseAddress, iov_len: db.count)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: iovp, msg_iovlen: 1,
                                     msg_control: cb.baseAddress, msg_controllen: cb.count, msg_flags: 0)
                    return sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
                }
            }
        }
        if sent < 0 { throw IpactrError.syscall("send \(name) descriptor", .init(rawValue: errno)) }
    }

    /// Accepts one connection on `listener` (waiting at most `timeoutMilliseconds`)
    /// and returns the descriptor it passes with SCM_RIGHTS.
    public static func receiveDescriptor(_ listener: Int32, timeoutMilliseconds: Int32) throws(IpactrError) -> Int32 {
        var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeoutMilliseconds) == 1 else { throw IpactrError(.io, "no connection on the console socket") }
        let conn = try syscall("accept") { accept(listener, nil, nil) }
        defer { close(conn) }
        return try receiveDescriptor(connected: conn, timeoutMilliseconds: timeoutMilliseconds)
    }

    /// The descriptor that arrives with SCM_RIGHTS on a connected socket
    /// (waiting at most `timeoutMilliseconds`).
    public static func receiveDescriptor(connected conn: Int32, timeoutMilliseconds: Int32) throws(IpactrError) -> Int32 {
        var c = pollfd(fd: conn, events: Int16(POLLIN), revents: 0)
        guard poll(&c, 1, timeoutMilliseconds) == 1 else { throw IpactrError(.io, "no descriptor arrived on the console socket") }
        var data = [UInt8](repeating: 0, count: 4096)
        // cmsghdr (len: size_t, level: int, type: int) followed by one int.
        var control = [UInt8](repeating: 0, count: 64)
        let fd: Int32 = data.withUnsafeMutableBytes { db in
            control.withUnsafeMutableBytes { cb in
                var iov = iovec(iov_base: db.baseAddress, iov_len: db.count)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: iovp, msg_iovlen: 1,
                                     msg_control: cb.baseAddress, msg_controllen: cb.count, msg_flags: 0)
                    guard recvmsg(conn, &msg, Int32(MSG_CMSG_CLOEXEC)) > 0, msg.msg_controllen >= 20,
                          cb.load(fromByteOffset: 8, as: Int32.self) == SOL_SOCKET,
                          cb.load(fromByteOffset: 12, as: Int32.self) == 1 /* SCM_RIGHTS */ else { return -1 }
                    return cb.load(fromByteOffset: 16, as: Int32.self)
                }
            }
        }
        guard fd >= 0 else { throw IpactrError(.io, "the console socket carried no descriptor") }
        return fd
    }
}
