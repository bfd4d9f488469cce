import Testing
import IpactrTestSupport
import Foundation
@testable import IpactrMachine
import IpactrSystem

/// A network namespace with only loopback up, and an echo server in it
/// (TCP and UDP on the same port), removed in deinit.
final class EchoNamespace {
    let name: String
    let port: UInt16 = 7007
    var server: pid_t = 0

    init() throws {
        name = "ipactr-test-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        #expect(try capture(["/sbin/ip", "netns", "add", name]).status == 0)
        #expect(try capture(["/sbin/ip", "-n", name, "link", "set", "lo", "up"]).status == 0)
        let script = """
        import socket, threading
        def tcp():
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", \(port))); s.listen()
            while True:
                c, _ = s.accept()
                data = b""
                while True:
                    d = c.recv(65536)
                    if not d: break
                    data += d
                c.sendall(b"tcp:" + data); c.close()
        threading.Thread(target=tcp, daemon=True).start()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", \(port)))
        open("/tmp/\(name).ready", "w").close()
        while True:
            d, a = u.recvfrom(65536); u.sendto(b"udp:" + d, a)
        """
        // setpriv --pdeathsig: the server dies with the test process, even if it crashes.
        let argv = ["/sbin/ip", "netns", "exec", name, "/usr/bin/setpriv", "--pdeathsig", "SIGKILL", "/usr/bin/python3", "-c", script]
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        #expect(posix_spawn(&server, argv[0], nil, nil, cArgs, environ) == 0)
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: "/tmp/\(name).ready") { usleep(20_000) }
    }

    var path: String { "/run/netns/\(name)" }

    deinit {
        if server > 0 { kill(server, SIGKILL); waitpid(server, nil, 0) }
        unlink("/tmp/\(name).ready")
        _ = try? capture(["/sbin/ip", "netns", "del", name])
    }
}


@Suite(.serialized) struct PortForwarderTests {
    @Test func parsesPublishSpecs() throws {
        let r = try PortForwarder.Rule(parsing: "127.0.0.1:8053:53/udp")
        #expect(r == PortForwarder.Rule(hostAddress: "127.0.0.1", hostPort: 8053, containerPort: 53, proto: .udp))
        #expect(try PortForwarder.Rule(parsing: "8080:80") == PortForwarder.Rule(hostPort: 8080, containerPort: 80))
        for bad in ["80", "x:80", "8080:80/sctp", "1.2.3:80:80", "0:80", "8080:99999"] {
            #expect(throws: IpactrError.self) { try PortForwarder.Rule(parsing: bad) }
        }
    }

    @Test func relaysTCPAndUDPIntoTheNamespace() throws {
        let ns = try EchoNamespace()
        let tcpPort = freeTCPAndUDPPort(), udpPort = freeTCPAndUDPPort()
        let fwd = try PortForwarder(rules: [
            PortForwarder.Rule(hostAddress: "127.0.0.1", hostPort: tcpPort, containerPort: ns.port, proto: .tcp),
            PortForwarder.Rule(hostAddress: "127.0.0.1", hostPort: udpPort, containerPort: ns.port, proto: .udp),
        ], netnsPath: ns.path)
        try fwd.start()
        defer { fwd.stop() }

        // TCP: a large payload both ways, with a half-close in between.
        let payload = [UInt8](repeating: 0x61, count: 300_000)
        let c = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(c) }
        var addr = sockaddr_in(port: tcpPort, address: "127.0.0.1")
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(c, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(r == 0)
        var sent = 0
        while sent < payload.count {
            let n = payload[sent...].withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
            #expect(n > 0)
            if n <= 0 { break }
            sent += n
        }
        shutdown(c, Int32(SHUT_WR))
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(c, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            got += buf[0..<n]
        }
        #expect(got == Array("tcp:".utf8) + payload)

        // UDP: a datagram and its answer.
        let u = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(u) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var uaddr = sockaddr_in(port: udpPort, address: "127.0.0.1")
        let msg = Array("ping".utf8)
        _ = withUnsafePointer(to: &uaddr) { p in
            msg.withUnsafeBytes { sendto(u, $0.baseAddress, $0.count, 0, UnsafeRawPointer(p).assumingMemoryBound(to: sockaddr.self), socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        let n = buf.withUnsafeMutableBytes { recv(u, $0.baseAddress, $0.count, 0) }
        #expect(n == 8 && Array(buf[0..<max(n, 0)]) == Array("udp:ping".utf8))
    }

    @Test func portInUseIsReportedAtOnce() throws {
        let ns = try EchoNamespace()
        let port = freeTCPAndUDPPort()
        let first = try PortForwarder(rules: [PortForwarder.Rule(hostAddress: "127.0.0.1", hostPort: port, containerPort: 1)], netnsPath: ns.path)
        defer { first.stop() }
        #expect(throws: IpactrError.self) {
            _ = try PortForwarder(rules: [PortForwarder.Rule(hostAddress: "127.0.0.1", hostPort: port, containerPort: 1)], netnsPath: ns.path)
        }
    }
}
