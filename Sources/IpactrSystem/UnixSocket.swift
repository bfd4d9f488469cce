#if canImport(Glibc)
import Glibc
#endif

/// AF_UNIX stream sockets for handing file descriptors around (runc's
/// --console-socket protocol: the pty master arrives with SCM_RIGHTS).
public enum UnixSocket {
    /// A listening socket bound at `path` (an old one is replaced), mode 0600.
    public static func listen(_ path: String) throws(IpactrError) -> Int32 {
        guard path.utf8.count < 108 else { throw IpactrError(.invalidArgument, "socket path too long: \(path)") }
        let fd = try syscall("socket for \(path)") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        unlink(path)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if bound != 0 || chmod(path, 0o600) != 0 || Glibc.listen(fd, 1) != 0 {
            let e = errno
            close(fd)
            throw IpactrError.syscall("listen on \(path)", .init(rawValue: e))
        }
        return fd
    }

    /// Accepts one connection on `listener` (waiting at most `timeoutMilliseconds`)
    /// and returns the descriptor it passes with SCM_RIGHTS.
    public static func receiveDescriptor(_ listener: Int32, timeoutMilliseconds: Int32) throws(IpactrError) -> Int32 {
        var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeoutMilliseconds) == 1 else { throw IpactrError(.io, "no connection on the console socket") }
        let conn = try syscall("accept") { accept(listener, nil, nil) }
        defer { close(conn) }
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
