import Testing
import IpactrTestSupport
import Foundation
@testable import IpactrMachine

@Suite struct NotifySocketTests {
    @Test func parsesAssignments() {
        let m = NotifySocket.Message(parsing: Array("READY=1\nSTATUS=Startup finished in 120ms.\nX_SYSTEMD_SIGNALS_LEVEL=2\n".utf8))
        #expect(m.ready)
        #expect(!m.stopping)
        #expect(m.status == "Startup finished in 120ms.")
        #expect(m.fields["X_SYSTEMD_SIGNALS_LEVEL"] == "2")
        #expect(NotifySocket.Message(parsing: Array("EXIT_STATUS=3".utf8)).exitStatus == 3)
        #expect(NotifySocket.Message(parsing: Array("garbage".utf8)).fields.isEmpty)
    }

    /// systemd-notify(1) speaks the protocol as PID 1 would (--no-block: no
    /// BARRIER=1 handshake, which PID 1 does not use either).
    @Test func receivesFromSystemdNotify() throws {
        let path = "/tmp/ipactr-notify-test-\(getpid())"
        let socket = try NotifySocket(path: path)
        #expect(try socket.receive(timeoutMilliseconds: 0) == nil)
        #expect(try capture(["/bin/systemd-notify", "--no-block", "--ready", "--status=booted"], environment: ["NOTIFY_SOCKET": path]).status == 0)
        let m = try #require(try socket.receive(timeoutMilliseconds: 5000))
        #expect(m.ready)
        #expect(m.status == "booted")
    }
}
