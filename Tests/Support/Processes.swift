import Foundation
import IpactrSystem

/// What a finished command printed, and its exit status (128+N for a signal).
public struct Finished: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    /// stdout without surrounding white space.
    public var line: String { stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
}

/// Starts argv (a path, or a name looked up in PATH) with IpactrSystem's
/// spawnProcess: stdin /dev/null, output to files (a chatty child never
/// blocks on a pipe), no signal blocked or ignored whatever the calling
/// thread does (Swift's concurrency threads block SIGTERM).
public func spawn(_ argv: [String], stdout: String, stderr: String, asNobody: Bool = false,
                  environment: [String: String]? = nil) throws -> pid_t {
    var argv = asNobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv : argv
    if !argv[0].contains("/") {
        let dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        if let dir = dirs.first(where: { access("\($0)/\(argv[0])", X_OK) == 0 }) { argv[0] = "\(dir)/\(argv[0])" }
    }
    let out = O_WRONLY | O_CREAT | O_TRUNC
    return try spawnProcess(argv, descriptors: [0: .open("/dev/null", flags: O_RDONLY), 1: .open(stdout, flags: out),
                                                2: .open(stderr, flags: out)],
                            environment: (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" })
}

/// Runs argv to completion.
public func capture(_ argv: [String], environment: [String: String]? = nil, asNobody: Bool = false) throws -> Finished {
    let dir = "/var/tmp/ipactr-capture-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let pid = try spawn(argv, stdout: dir + "/out", stderr: dir + "/err", asNobody: asNobody, environment: environment)
    var st: Int32 = 0
    while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
    return Finished(status: (st & 0x7f) == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f),
                    stdout: (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? "",
                    stderr: (try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? "")
}

public func killAndReap(_ pid: pid_t) {
    kill(pid, SIGKILL)
    var st: Int32 = 0
    while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
}

/// Polls `condition` every 50 ms, at most `seconds` (a guard against a hung
/// test, not a timing assertion).
@discardableResult
public func eventually(_ seconds: Double = 60, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        usleep(50_000)
    }
    return try condition()
}

/// The repository root, for the shipped files under units/ and images/.
public let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A built executable of this package (`swift build` puts them beside the test bundle).
public func builtExecutable(_ name: String) -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.deletingLastPathComponent()
    while !FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent(name).path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent(name).path
}

/// The images scripts/test.sh builds (images/*/build.sh), as OCI layouts.
public enum TestImages {
    static func path(_ variable: String, _ name: String) -> String {
        ProcessInfo.processInfo.environment[variable] ?? "/var/cache/ipactr/images/\(name)/oci"
    }
    public static var debian: String { path("IPACTR_TEST_DEBIAN_OCI", "debian") }
    public static var busybox: String { path("IPACTR_TEST_BUSYBOX_OCI", "busybox") }
    public static var freeipa: String { path("IPACTR_TEST_FREEIPA_OCI", "freeipa") }
}
