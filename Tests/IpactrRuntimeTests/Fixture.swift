import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The result of running a command.
struct Output {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// One test's world: a busybox rootfs, a bundle, a private --root, and the
/// ids it created. `cleanup()` (called from `defer`) deletes every container
/// with --force and removes the directory, even when the test failed.
final class RuntimeFixture {
    let dir: String
    var bundle: String { dir + "/bundle" }
    var rootfs: String { bundle + "/rootfs" }
    var stateRoot: String { dir + "/state" }
    var ids: [String] = []
    var spec: RuntimeSpec

    static let binary: String = {
        // The test bundle sits next to the built executables.
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var d = URL(fileURLWithPath: exe).deletingLastPathComponent()
        while d.path != "/" {
            let candidate = d.appendingPathComponent("ipactr-runtime").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            d = d.deletingLastPathComponent()
        }
        return "ipactr-runtime"
    }()

    init() throws {
        var template = Array("/tmp/ipactr-rt-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw POSIXError(.EIO) }
        dir = String(cString: template)
        // The container's root may be a mapped uid: it must reach the rootfs.
        chmod(dir, 0o755)
        let rootfs = dir + "/bundle/rootfs", bundle = dir + "/bundle"
        let fm = FileManager.default
        try fm.createDirectory(atPath: rootfs + "/bin", withIntermediateDirectories: true)
        for d in ["tmp", "etc", "proc", "sys", "dev", "data"] {
            try fm.createDirectory(atPath: rootfs + "/" + d, withIntermediateDirectories: true)
        }
        // Writable for a user-namespaced root (a mapped, unprivileged host uid).
        chmod(rootfs + "/tmp", 0o1777)
        try fm.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
        for applet in ["sh", "echo", "cat", "ls", "id", "hostname", "sleep", "true", "touch", "pwd", "grep", "stat", "test", "mount", "kill", "ps", "tty", "stty"] {
            try fm.createSymbolicLink(atPath: rootfs + "/bin/" + applet, withDestinationPath: "busybox")
        }
        let out = try Self.exec([Self.binary, "spec", "--bundle", bundle])
        guard out.status == 0 else { throw FixtureError("spec failed: \(out.stderr)") }
        spec = try JSONDecoder().decode(RuntimeSpec.self, from: Data(contentsOf: URL(fileURLWithPath: bundle + "/config.json")))
        spec.process?.terminal = false
        spec.root?.readonly = false
    }

    func cleanup() {
        for id in ids { _ = try? runtime(["delete", "--force", id]) }
        _ = try? FileManager.default.removeItem(atPath: dir)
    }

    func newID() -> String {
        let id = "t-" + UUID().uuidString.prefix(8).lowercased()
        ids.append(id)
        return id
    }

    func writeSpec() throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted]
        try enc.encode(spec).write(to: URL(fileURLWithPath: bundle + "/config.json"))
    }

    /// Runs `ipactr-runtime --root <private> args…`.
    @discardableResult
    func runtime(_ args: [String]) throws -> Output {
        try Self.exec([Self.binary, "--root", stateRoot] + args)
    }

    /// `run` of `args` with the current spec; returns the output.
    func run(_ args: [String]) throws -> Output {
        spec.process?.args = args
        try writeSpec()
        return try runtime(["run", "--bundle", bundle, newID()])
    }

    /// `run --detach` of `args` with the current spec, under a new id; returns
    /// the id and what the runtime printed.
    func runDetached(_ args: [String]) throws -> (id: String, output: Output) {
        spec.process?.args = args
        try writeSpec()
        let id = newID()
        return (id, try runtime(["run", "--detach", "--bundle", bundle, id]))
    }

    func state(_ id: String) throws -> RuntimeState? {
        let out = try runtime(["state", id])
        guard out.status == 0 else { return nil }
        return try JSONDecoder().decode(RuntimeState.self, from: Data(out.stdout.utf8))
    }

    /// The container's cgroup directory on the host (default cgroupsPath).
    func cgroupDir(_ id: String) throws -> String {
        try Self.cgroup2Mount() + "/ipactr-runtime/" + id
    }

    static func cgroup2Mount() throws -> String {
        let text = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        for line in text.split(separator: "\n") where line.contains(" - cgroup2 ") {
            return String(line.split(separator: " ")[4])
        }
        throw FixtureError("no cgroup2 mount")
    }

    /// Waits (bounded, not timed) for `cond`; a correctness wait, not a speed check.
    func eventually(_ cond: () throws -> Bool) rethrows -> Bool {
        for _ in 0..<500 {
            if try cond() { return true }
            usleep(10000)
        }
        return false
    }

    static func exec(_ argv: [String], environment: [String: String]? = nil) throws -> Output {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        if let e = environment { p.environment = e }
        // Files, not pipes: a created container's init inherits stdout and
        // stderr and keeps them open long after `create` exits (as with runc).
        let outPath = NSTemporaryDirectory() + "ipactr-out-" + UUID().uuidString
        let errPath = outPath + ".err"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        FileManager.default.createFile(atPath: errPath, contents: nil)
        defer { unlink(outPath); unlink(errPath) }
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        p.standardInput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        let o = (try? Data(contentsOf: URL(fileURLWithPath: outPath))) ?? Data()
        let e = (try? Data(contentsOf: URL(fileURLWithPath: errPath))) ?? Data()
        return Output(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// True when /proc/<pid> is gone or a zombie.
func processGone(_ pid: Int32) -> Bool {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = s.lastIndex(of: ")") else { return true }
    let state = s[s.index(close, offsetBy: 2)]
    return state == "Z" || state == "X"
}

func owner(_ path: String) -> (uid: UInt32, gid: UInt32)? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return (st.st_uid, st.st_gid)
}
