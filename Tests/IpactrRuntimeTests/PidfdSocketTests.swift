import Foundation
import IpactrSystem
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `create/run/exec --pidfd-socket S` (runc ≥ 1.2): a pidfd of the new
/// process arrives on S with SCM_RIGHTS.
@Suite(.serialized) struct PidfdSocketTests {
    /// The pid a pidfd refers to, from /proc/self/fdinfo.
    func pidOf(pidfd: Int32) -> Int32? {
        let info = (try? String(contentsOfFile: "/proc/self/fdinfo/\(pidfd)", encoding: .utf8)) ?? ""
        return info.split(separator: "\n").first { $0.hasPrefix("Pid:") }.flatMap { Int32($0.dropFirst(4).trimmingCharacters(in: .whitespaces)) }
    }

    /// True once the process behind `pidfd` has exited (a pidfd polls readable then).
    func exited(_ pidfd: Int32) -> Bool {
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 1
    }

    @Test func createAndExecSendPidfds() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.args = ["sleep", "1000"]
        try f.writeSpec()
        let sock = f.dir + "/pidfd.sock"
        let listener = try UnixSocket.listen(sock)
        defer { close(listener) }

        let id = f.newID()
        let created = try f.runtime(["create", "--bundle", f.bundle, "--pidfd-socket", sock, id])
        try #require(created.status == 0, "\(created.stderr)")
        let initFd = try UnixSocket.receiveDescriptor(listener, timeoutMilliseconds: 60_000)
        defer { close(initFd) }
        let pid = try #require(try f.state(id)?.pid)
        #expect(pidOf(pidfd: initFd) == pid)
        #expect(try f.runtime(["start", id]).status == 0)

        let execPid = f.dir + "/exec.pid"
        let e = try f.runtime(["exec", "--detach", "--pid-file", execPid, "--pidfd-socket", sock, id, "sleep", "1000"])
        try #require(e.status == 0, "\(e.stderr)")
        let execFd = try UnixSocket.receiveDescriptor(listener, timeoutMilliseconds: 60_000)
        defer { close(execFd) }
        #expect(pidOf(pidfd: execFd).map(String.init) == (try String(contentsOfFile: execPid, encoding: .utf8)))

        // They are pidfds of those processes: readable once they exit.
        #expect(!exited(initFd) && !exited(execFd))
        #expect(try f.runtime(["kill", "--all", id, "KILL"]).status == 0)
        #expect(f.eventually { exited(initFd) && exited(execFd) })
        #expect(try f.runtime(["delete", id]).status == 0)
    }

    @Test func unreachableSocketLeavesNothing() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.args = ["true"]
        try f.writeSpec()
        let id = f.newID()
        let out = try f.runtime(["create", "--bundle", f.bundle, "--pidfd-socket", f.dir + "/nobody.sock", id])
        #expect(out.status != 0)
        #expect(out.stderr == "ipactr-runtime: --pidfd-socket \(f.dir)/nobody.sock: connect \(f.dir)/nobody.sock: No such file or directory\n")
        #expect(try f.state(id) == nil)
        #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(id)))
    }
}
