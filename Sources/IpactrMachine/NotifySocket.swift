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
        let fd = try UnixSocket.open(path, type: SOCK_DGRAM, bind: true)
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
