#if canImport(Glibc)
import Glibc
#endif
import IpactrSystem

/// The receiving end of systemd's notify protocol (sd_notify(3)): a datagram
/// socket whose path is given to the machine's PID 1 as NOTIFY_SOCKET.
/// PID 1 systemd sends READY=1 when booted, STATUS= lines, STOPPING=1, and
/// systemd-shutdown sends EXIT_STATUS= on the way down.
public final class NotifySocket {
    public let path: String
    public let fd: Int32

    /// One datagram's assignments, e.g. ["READY": "1", "STATUS": "Startup finished…"].
    public struct Message: Equatable, Sendable {
        public var fields: [String: String]
        public var ready: Bool { fields["READY"] == "1" }
        public var stopping: Bool { fields["STOPPING"] == "1" }
        public var status: String? { fields["STATUS"] }
        public var exitStatus: Int32? { fields["EXIT_STATUS"].flatMap { Int32($0) } }

        public init(parsing datagram: [UInt8]) {
            var fields: [String: String] = [:]
            for line in datagram.split(separator: 0x0a) {
                guard let eq = line.firstIndex(of: 0x3d) else { continue }
                let key = String(decoding: line[line.startIndex..<eq], as: UTF8.self)
                fields[key] = String(decoding: line[(eq + 1)...], as: UTF8.self)
            }
            self.fields = fields
        }
    }

    /// Binds a fresh socket at `path` (an old one is replaced).
    public init(path: String) throws(IpactrError) {
        guard path.utf8.count < 108 else { throw IpactrError(.invalidArgument, "notify socket path too long: \(path)") }
        let fd = try syscall("socket for \(path)") { socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        unlink(path)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if r != 0 {
            let e = errno
            close(fd)
            throw IpactrError.syscall("bind \(path)", .init(rawValue: e))
        }
        self.path = path
        self.fd = fd
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) for one datagram.
    /// Returns nil on timeout.
    public func receive(timeoutMilliseconds: Int32) throws(IpactrError) -> Message? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = try syscall("poll notify socket") { poll(&pfd, 1, timeoutMilliseconds) }
        if n == 0 { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let got = try syscall("receive on notify socket") {
            buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        }
        return Message(parsing: Array(buffer[0..<got]))
    }
}
