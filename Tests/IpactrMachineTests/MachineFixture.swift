import Foundation
import Testing
@testable import IpactrMachine
import IpactrSystem
import IpactrTestSupport

/// The `ipactr` executable built next to the test bundle.
let ipactrExecutable = builtExecutable("ipactr")
/// `ipactr-worker`: machine monitors (and ipactrd's workers).
let workerExecutable = builtExecutable("ipactr-worker")
let debianOCI = TestImages.debian
let busyboxOCI = TestImages.busybox

/// A private ipactr state root served by its own ipactrd on a private bus,
/// with the Debian systemd image imported. Everything it started is
/// terminated and removed in deinit, also when the test failed half-way.
final class MachineFixture {
    let root: String
    let daemon: IpactrDaemon
    var paths: MachinePaths { MachinePaths(root: root) }

    init(images: [(String, String)] = [("debian", debianOCI)]) throws {
        root = "/var/tmp/ipactr-mtest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        daemon = try IpactrDaemon(root: root)
        for (name, oci) in images {
            let r = try ipactr(["import", oci, name])
            guard r.status == 0 else { throw IpactrError(.io, "import \(oci): \(r.stderr) (run scripts/test.sh, which builds the test images)") }
        }
    }

    deinit {
        let manager = MachineManager(root: root)
        for name in manager.names() {
            _ = try? ipactr(["rm", "--force", name])
        }
        for point in Mount.mountPoints(under: paths.runRoot) { try? Mount.unmount(point) }
        for point in Mount.mountPoints(under: root) { try? Mount.unmount(point) }
        daemon.stop()
        try? removeTree(root)
        try? removeTree(paths.runRoot)
    }

    /// `ipactr ARGS…` through the fixture's daemon.
    @discardableResult
    func ipactr(_ args: [String]) throws -> Finished {
        try daemon.ipactr(args)
    }

    func summary(_ name: String) throws -> MachineInfo.Summary {
        let r = try ipactr(["status", "--json", name])
        guard r.status == 0 else { throw IpactrError(.io, "status \(name): \(r.stderr)") }
        return try JSONDecoder().decode(MachineInfo.Summary.self, from: Data(r.stdout.utf8))
    }

    func leader(_ name: String) throws -> Int32 {
        guard let l = try summary(name).leader else { throw IpactrError(.io, "machine \(name) has no leader") }
        return l
    }

    /// Runs a shell command in the machine with `ipactr exec`.
    func inside(_ name: String, _ command: String) throws -> Finished {
        try ipactr(["exec", name, "/bin/sh", "-c", command])
    }

    /// `systemctl is-system-running`, once systemd has left "starting".
    func systemState(_ name: String) throws -> String {
        var state = ""
        for _ in 0..<300 {
            state = try inside(name, "systemctl is-system-running").line
            if state != "starting" && state != "initializing" { break }
            usleep(100_000)
        }
        return state
    }

    /// Nothing of the machine is left on the host: processes, mounts, cgroups.
    func expectNothingLeft(_ name: String, leader: Int32?, range: UIDRange? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws {
        if let leader { #expect(kill(leader, 0) != 0, "PID 1 \(leader) still exists", sourceLocation: sourceLocation) }
        let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(!mountinfo.contains(paths.run(name)), "a mount of \(name) is left", sourceLocation: sourceLocation)
        let h = try cgroup2Mount()
        #expect(!FileManager.default.fileExists(atPath: h + paths.cgroup(name)), "cgroup of \(name) is left", sourceLocation: sourceLocation)
        if let range {
            // No process of the machine's uid range is left anywhere.
            for entry in try FileManager.default.contentsOfDirectory(atPath: "/proc") where Int32(entry) != nil {
                if let status = try? String(contentsOfFile: "/proc/\(entry)/status", encoding: .utf8),
                   let uidLine = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }),
                   let uid = uidLine.split(separator: "\t").dropFirst().first.flatMap({ UInt32($0) }) {
                    #expect(!range.contains(uid), "process \(entry) of the machine's range is left", sourceLocation: sourceLocation)
                }
            }
        }
    }
}

func cgroup2Mount() throws -> String {
    let text = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
    for line in text.split(separator: "\n") where line.contains(" - cgroup2 ") {
        return String(line.split(separator: " ")[4])
    }
    throw IpactrError(.unsupported, "no cgroup2 mount")
}

func owner(of path: String) -> (UInt32, UInt32)? {
    var st = stat()
    guard lstat(path, &st) == 0 else { return nil }
    return (st.st_uid, st.st_gid)
}

/// The target of a symbolic link, as `readlink` prints it.
func readLink(_ path: String) throws -> String {
    try FileManager.default.destinationOfSymbolicLink(atPath: path)
}
