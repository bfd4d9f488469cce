import Foundation
import IpactrOCI
import IpactrSystem
import IpactrTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// NOTIFY_SOCKET in the runtime's environment is proxied into the container
/// (a socket of its own at /run/notify/notify.sock). The payload is the host's
/// systemd-notify (busybox has no sd_notify): /usr is bound read-only into the
/// busybox rootfs.
@Suite(.serialized) struct NotifyTests {
    /// The fixture with the host's /usr (and the merged-/usr symlinks) inside.
    func fixture() throws -> RuntimeFixture {
        let f = try RuntimeFixture()
        for d in ["usr", "run"] { try FileManager.default.createDirectory(atPath: f.rootfs + "/" + d, withIntermediateDirectories: false) }
        for l in ["lib", "lib64"] {
            try FileManager.default.createSymbolicLink(atPath: f.rootfs + "/" + l, withDestinationPath: "usr/" + l)
        }
        f.spec.mounts = (f.spec.mounts ?? []) + [.init(destination: "/usr", type: "bind", source: "/usr", options: ["rbind", "ro"])]
        return f
    }

    /// A datagram socket standing in for systemd's, in the fixture's directory.
    func listen(_ f: RuntimeFixture) throws -> (fd: Int32, path: String) {
        let path = f.dir + "/host-notify.sock"
        return (try UnixSocket.open(path, type: SOCK_DGRAM, bind: true), path)
    }

    /// The datagrams queued on `fd`, each as its lines.
    func drain(_ fd: Int32) -> [[String]] {
        var out: [[String]] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n <= 0 { return out }
            out.append(String(decoding: buf[..<n], as: UTF8.self).split(separator: "\n").map(String.init))
        }
    }

    func env(_ notify: String?) -> [String: String] {
        var e = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        if let n = notify { e["NOTIFY_SOCKET"] = n }
        return e
    }

    /// A foreground `run` is the service's main process: it forwards every
    /// message (MAINPID= from the container dropped) for the container's
    /// life and passes PID 1's exit status on.
    @Test func runForwardsMessagesAndExitStatus() throws {
        let f = try fixture()
        defer { f.cleanup() }
        let host = try listen(f)
        defer { close(host.fd) }
        f.spec.process?.args = ["sh", "-c", """
            echo $NOTIFY_SOCKET; systemd-notify --status=starting && systemd-notify --ready --status=up \
            && systemd-notify MAINPID=1 STOPPING=1 && exit 3
            """]
        try f.writeSpec()
        let out = try RuntimeFixture.exec([RuntimeFixture.binary, "--root", f.stateRoot, "run", "--bundle", f.bundle, f.newID()],
                                          environment: env(host.path))
        #expect(out.status == 3, "\(out.stderr)")
        #expect(out.stdout == "/run/notify/notify.sock\n")
        let messages = drain(host.fd)
        #expect(messages.map { Set($0) } == [["STATUS=starting"], ["READY=1", "STATUS=up"], ["STOPPING=1"]], "\(messages)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.stateRoot).isEmpty)
    }

    /// create with NOTIFY_SOCKET, start without it (the socket recorded at
    /// create is used): start returns once READY=1 has been passed on,
    /// followed by MAINPID=<the init's host pid>. In a user namespace, so the
    /// socket is reachable by a mapped root.
    @Test func startWaitsForReadyAndSendsMainPid() throws {
        let f = try fixture()
        defer { f.cleanup() }
        IsolationTests.userns(&f.spec)
        // As in an image mapped to the container's range: its root makes /run/notify.
        chown(f.rootfs + "/run", 100000, 100000)
        let host = try listen(f)
        defer { close(host.fd) }
        // READY comes well after start opened the FIFO: start must wait for it.
        // --no-block: start stops listening after READY=1 (as runc's and
        // crun's do), so systemd-notify's barrier message would be refused.
        f.spec.process?.args = ["sh", "-c", "systemd-notify --status=booting && sleep 0.3 && systemd-notify --ready --no-block && exec sleep 1000"]
        try f.writeSpec()
        let id = f.newID()
        let created = try RuntimeFixture.exec([RuntimeFixture.binary, "--root", f.stateRoot, "create", "--bundle", f.bundle, id],
                                              environment: env(host.path))
        try #require(created.status == 0, "\(created.stderr)")
        let pid = try #require(try f.state(id)?.pid)
        #expect(drain(host.fd).isEmpty)
        let started = try RuntimeFixture.exec([RuntimeFixture.binary, "--root", f.stateRoot, "start", id], environment: env(nil))
        #expect(started.status == 0, "\(started.stderr)")
        let messages = drain(host.fd)
        #expect(messages == [["STATUS=booting"], ["READY=1"], ["MAINPID=\(pid)"]], "\(messages)")
        #expect(try f.state(id)?.status == "running")
        // exec'd processes do not get the container's NOTIFY_SOCKET.
        let e = try f.runtime(["exec", id, "sh", "-c", "echo ${NOTIFY_SOCKET:-unset}"])
        #expect(e.stdout == "unset\n", "\(e.stderr)")
        #expect(try f.runtime(["delete", "--force", id]).status == 0)
        #expect(processGone(pid))
        #expect(!FileManager.default.fileExists(atPath: f.stateRoot + "/" + id))
    }

    /// An init that exits without READY=1 does not hang start.
    @Test func startReturnsWhenInitExitsUnready() throws {
        let f = try fixture()
        defer { f.cleanup() }
        let host = try listen(f)
        defer { close(host.fd) }
        f.spec.process?.args = ["sh", "-c", "systemd-notify --status=giving-up; exit 1"]
        try f.writeSpec()
        let id = f.newID()
        let created = try RuntimeFixture.exec([RuntimeFixture.binary, "--root", f.stateRoot, "create", "--bundle", f.bundle, id],
                                              environment: env(host.path))
        #expect(created.status == 0, "\(created.stderr)")
        let started = try RuntimeFixture.exec([RuntimeFixture.binary, "--root", f.stateRoot, "start", id], environment: env(nil))
        #expect(started.status == 0, "\(started.stderr)")
        #expect(drain(host.fd) == [["STATUS=giving-up"]])
        #expect(f.eventually { (try? f.state(id)?.status) == "stopped" })
        #expect(try f.runtime(["delete", id]).status == 0)
    }

    /// A Type=notify unit running `ipactr-runtime run`: READY=1 reaches the
    /// unit's socket while run waits; systemd's stop (SIGTERM to the main
    /// process) reaches PID 1, whose exit status run passes on: 143 from a
    /// trap, 137 when killed.
    @Test(arguments: [("TERM", Int32(143)), ("KILL", Int32(137))])
    func foregroundRunAsAUnit(signal: String, status: Int32) throws {
        let f = try fixture()
        defer { f.cleanup() }
        let host = try listen(f)
        defer { close(host.fd) }
        f.spec.process?.args = ["sh", "-c", "trap 'exit 143' TERM; systemd-notify --ready --status=serving; while true; do sleep 0.05; done"]
        try f.writeSpec()
        let id = f.newID()
        let run = try spawn([RuntimeFixture.binary, "--root", f.stateRoot, "run", "--bundle", f.bundle, id],
                            stdout: f.dir + "/run.out", stderr: f.dir + "/run.err", environment: env(host.path))
        var reaped = false
        defer { if !reaped { killAndReap(run) } }
        var messages: [[String]] = []
        #expect(eventually(60) { messages += drain(host.fd); return !messages.isEmpty })
        #expect(messages == [["READY=1", "STATUS=serving"]])
        if signal == "TERM" {
            kill(run, SIGTERM)
        } else {
            #expect(try f.runtime(["kill", id, "KILL"]).status == 0)
        }
        reaped = true
        #expect(reap(run) == status, "\((try? String(contentsOfFile: f.dir + "/run.err", encoding: .utf8)) ?? "")")
        #expect(!FileManager.default.fileExists(atPath: f.stateRoot + "/" + id))
    }

    /// NOTIFY_SOCKET=@name: an abstract caller socket (length-exact address).
    @Test func abstractCallerSocket() throws {
        let f = try fixture()
        defer { f.cleanup() }
        let name = "ipactr-notify-test-" + UUID().uuidString.prefix(8)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = [UInt8(0)] + Array(name.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        try #require(bound == 0)
        f.spec.process?.args = ["systemd-notify", "--ready", "--status=abstract"]
        try f.writeSpec()
        let out = try RuntimeFixture.exec([RuntimeFixture.binary, "--root", f.stateRoot, "run", "--bundle", f.bundle, f.newID()],
                                          environment: env("@" + name))
        #expect(out.status == 0, "\(out.stderr)")
        #expect(drain(fd).map { Set($0) } == [["READY=1", "STATUS=abstract"]])
    }

    /// Without NOTIFY_SOCKET nothing is added to the container.
    @Test func noSocketWithoutNotifySocket() throws {
        let f = try fixture()
        defer { f.cleanup() }
        f.spec.process?.args = ["sh", "-c", "echo ${NOTIFY_SOCKET:-unset}; test -e /run/notify && echo mounted; exit 0"]
        try f.writeSpec()
        let out = try RuntimeFixture.exec([RuntimeFixture.binary, "--root", f.stateRoot, "run", "--bundle", f.bundle, f.newID()],
                                          environment: env(nil))
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "unset\n")
    }
}
