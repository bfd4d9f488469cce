import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// process.terminal with --console-socket: the caller receives the pty
/// master over SCM_RIGHTS, the payload runs on the replica (runc's protocol).
@Suite(.serialized) struct ConsoleTests {
    /// A listening AF_UNIX socket at `path`.
    func listenUnix(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, listen(fd, 1) == 0 else { close(fd); throw POSIXError(.EIO) }
        return fd
    }

    /// Accepts one connection and returns the fd passed with SCM_RIGHTS.
    func receiveFd(_ listener: Int32) -> Int32 {
        let conn = accept(listener, nil, nil)
        guard conn >= 0 else { return -1 }
        defer { close(conn) }
        var name = [UInt8](repeating: 0, count: 4096)
        var control = [UInt8](repeating: 0, count: 64)
        return name.withUnsafeMutableBytes { nb in
            control.withUnsafeMutableBytes { cb in
                var iov = iovec(iov_base: nb.baseAddress, iov_len: nb.count)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: iovp, msg_iovlen: 1,
                                     msg_control: cb.baseAddress, msg_controllen: cb.count, msg_flags: 0)
                    guard recvmsg(conn, &msg, 0) > 0, msg.msg_controllen >= 20 else { return -1 }
                    // struct cmsghdr { size_t len; int level; int type; } then the fd.
                    guard cb.load(fromByteOffset: 8, as: Int32.self) == SOL_SOCKET,
                          cb.load(fromByteOffset: 12, as: Int32.self) == 1 /* SCM_RIGHTS */ else { return -1 }
                    return cb.load(fromByteOffset: 16, as: Int32.self)
                }
            }
        }
    }

    /// Everything the payload writes to the pty, until it hangs up.
    func readAll(_ fd: Int32) -> String {
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }  // EIO once the last replica fd is closed
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test func terminalOverConsoleSocket() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let sock = f.dir + "/console.sock"
        let listener = try listenUnix(sock)
        defer { close(listener) }
        f.spec.process?.terminal = true
        f.spec.process?.consoleSize = try JSONDecoder().decode(RuntimeSpec.ConsoleSize.self, from: Data(#"{"height": 30, "width": 100}"#.utf8))
        f.spec.process?.args = ["sh", "-c", "tty; stty size; test -c /dev/console && echo console; echo done"]
        try f.writeSpec()
        let id = f.newID()
        let created = try f.runtime(["create", "--bundle", f.bundle, "--console-socket", sock, id])
        #expect(created.status == 0, "\(created.stderr)")
        let master = receiveFd(listener)
        #expect(master >= 0)
        guard master >= 0 else { return }
        defer { close(master) }
        #expect(try f.runtime(["start", id]).status == 0)
        let text = readAll(master).replacingOccurrences(of: "\r", with: "")
        #expect(text == "/dev/pts/0\n30 100\nconsole\ndone\n")
    }

    /// `create` and `run --detach` leave the runtime: nobody would hold the pty.
    @Test func detachedTerminalWithoutConsoleSocketIsAnError() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.terminal = true
        try f.writeSpec()
        for verb in [["create"], ["run", "--detach"]] {
            let out = try f.runtime(verb + ["--bundle", f.bundle, f.newID()])
            #expect(out.status != 0)
            #expect(out.stderr == "ipactr-runtime: process.terminal needs --console-socket unless the runtime stays in the foreground (run, exec without --detach), which relays the terminal\n")
            // Refused before anything was made: not even the state root.
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: f.stateRoot)) ?? []).isEmpty)
        }
    }

    /// Runs `command` (a shell command line) on a terminal of its own, as a
    /// user at a terminal would (util-linux `script`), with `input` typed.
    func onTerminal(_ f: RuntimeFixture, _ command: String, input: String) throws -> Output {
        let inputFile = f.dir + "/typed"
        try input.write(toFile: inputFile, atomically: true, encoding: .utf8)
        return try RuntimeFixture.exec(["/bin/sh", "-c", "exec /usr/bin/script -qec \"$0\" /dev/null < \"$1\"", command, inputFile])
    }

    /// `run` in the foreground without --console-socket relays the caller's
    /// terminal (runc's behaviour): the payload is on a pty, gets what is
    /// typed, and its exit status comes through; nothing is left.
    @Test func foregroundRunRelaysTheTerminal() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.terminal = true
        f.spec.process?.args = ["/bin/sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty; read line; echo got:$line; exit 3"]
        try f.writeSpec()
        let id = f.newID()
        let out = try onTerminal(f, "\(RuntimeFixture.binary) --root \(f.stateRoot) run --bundle \(f.bundle) \(id)", input: "hello\n")
        let text = out.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(text.contains("on-a-tty\n"), "\(text)")
        #expect(text.contains("got:hello\n"), "\(text)")
        #expect(out.status == 3, "\(out.stderr)")
        #expect(try f.runtime(["list", "--quiet"]).stdout.isEmpty)
    }

    /// `exec --tty` in the foreground without --console-socket: the same relay.
    @Test func foregroundExecRelaysTheTerminal() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let (id, started) = try f.runDetached(["/bin/sleep", "100"])
        #expect(started.status == 0, "\(started.stderr)")
        let out = try onTerminal(f, "\(RuntimeFixture.binary) --root \(f.stateRoot) exec --tty \(id) /bin/sh -c 'test -t 0 && echo exec-on-a-tty; read line; echo got:$line; exit 4'",
                                 input: "typed\n")
        let text = out.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(text.contains("exec-on-a-tty\n"), "\(text)")
        #expect(text.contains("got:typed\n"), "\(text)")
        #expect(out.status == 4, "\(out.stderr)")
        // The container runs on, untouched.
        #expect(try f.state(id)?.status == "running")
    }
}
