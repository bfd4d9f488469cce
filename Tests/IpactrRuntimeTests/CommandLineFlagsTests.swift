import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The flags of runc's command line that callers send and the other suites
/// do not exercise: each one does what it says, or is accepted where runc
/// accepts it as a no-op.
@Suite(.serialized) struct CommandLineFlagsTests {
    /// `--no-pivot`: the root is entered with MS_MOVE + chroot; the payload
    /// still sees the bundle's rootfs as its /.
    @Test func noPivotRunsInTheRootfs() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        FileManager.default.createFile(atPath: f.rootfs + "/no-pivot-marker", contents: Data())
        f.spec.process?.args = ["sh", "-c", "test -e /no-pivot-marker && echo in-rootfs"]
        try f.writeSpec()
        let out = try f.runtime(["run", "--no-pivot", "--no-new-keyring", "--bundle", f.bundle, f.newID()])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "in-rootfs\n")
    }

    /// `--preserve-fds N`: the caller's fds 3 … 3+N-1 reach the process.
    @Test func preserveFdsPassesTheCallersDescriptors() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let file = f.dir + "/passed"
        try "through fd 3\n".write(toFile: file, atomically: true, encoding: .utf8)
        f.spec.process?.args = ["sh", "-c", "cat <&3"]
        try f.writeSpec()
        let out = try RuntimeFixture.exec(["/bin/sh", "-c", "exec 3<\"$0\"; exec \"$1\" --root \"$2\" run --preserve-fds 1 --bundle \"$3\" \"$4\"",
                                           file, RuntimeFixture.binary, f.stateRoot, f.bundle, f.newID()])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "through fd 3\n")
        // Without the flag fd 3 is not there.
        let closed = try RuntimeFixture.exec(["/bin/sh", "-c", "exec 3<\"$0\"; exec \"$1\" --root \"$2\" run --bundle \"$3\" \"$4\"",
                                              file, RuntimeFixture.binary, f.stateRoot, f.bundle, f.newID()])
        #expect(closed.status != 0 && closed.stdout.isEmpty)
    }

    /// `exec --user UID:GID` runs the process as that user and group.
    @Test func execUserSetsTheIds() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let (id, started) = try f.runDetached(["sleep", "1000"])
        #expect(started.status == 0, "\(started.stderr)")
        let out = try f.runtime(["exec", "--user", "1000:1001", id, "sh", "-c", "id -u; id -g"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "1000\n1001\n")
    }

    /// `spec --rootless`: a template for an unprivileged caller, with a user
    /// namespace mapping root to the caller and no network namespace of its own.
    @Test func specRootlessWritesAUserNamespaceTemplate() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let dir = f.dir + "/rootless"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(try f.runtime(["spec", "--rootless", "--bundle", dir]).status == 0)
        let spec = try JSONDecoder().decode(RuntimeSpec.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json")))
        let types = spec.linux?.namespaces?.map(\.type) ?? []
        #expect(types.contains("user") && !types.contains("network"), "\(types)")
        #expect(spec.linux?.uidMappings?.first?.containerID == 0)
        #expect(spec.linux?.uidMappings?.first?.hostID == getuid())
    }

    /// Globals runc accepts and the shims send: `--debug` and `--rootless`.
    @Test func debugAndRootlessGlobalsAreAccepted() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let out = try RuntimeFixture.exec([RuntimeFixture.binary, "--debug", "--rootless", "false", "--root", f.stateRoot, "list", "--quiet"])
        #expect(out.status == 0, "\(out.stderr)")
        let unknown = try RuntimeFixture.exec([RuntimeFixture.binary, "--root", f.stateRoot, "--frobnicate", "list"])
        #expect(unknown.status == 64 && unknown.stderr.hasPrefix("ipactr-runtime: unknown global option --frobnicate"))
    }
}
