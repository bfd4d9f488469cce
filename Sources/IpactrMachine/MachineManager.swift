#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import IpactrImageStore
import IpactrOCI
import IpactrSystem

/// Where a machine's files live. Persistent state under the ipactr root
/// (ROOT/machines/NAME), run-time state under /run/ipactr (or /run/ipactr/root-HASH
/// when the root was moved, so tests stay apart), gone after a host reboot.
public struct MachinePaths: Sendable {
    public let root: String
    public let runRoot: String

    public init(root: String) {
        self.root = root
        // Not below ROOT, which is private (0700): the machine's init must
        // be able to reach its rootfs through these directories.
        runRoot = root == "/var/lib/ipactr" ? "/run/ipactr" : "/run/ipactr/root-" + MachinePaths.stableHash(root)
    }

    /// 16 hex digits: a short, stable name for a state root.
    static func stableHash(_ s: String) -> String {
        let hex = String(IpactrSystem.stableHash(s), radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    public var machinesDirectory: String { root + "/machines" }
    public var lockFile: String { machinesDirectory + "/lock" }
    public func state(_ name: String) -> String { machinesDirectory + "/" + name }
    public func record(_ name: String) -> String { state(name) + "/machine.json" }
    public func consoleLog(_ name: String) -> String { state(name) + "/console.log" }
    /// Run-time directory; 0711 along the way, because the container's init
    /// resolves its rootfs below it as the machine's (unprivileged) root.
    public func run(_ name: String) -> String { runRoot + "/machines/" + name }
    public func monitorLock(_ name: String) -> String { run(name) + "/monitor.lock" }
    public func status(_ name: String) -> String { run(name) + "/status.json" }
    public var runtimeRoot: String { runRoot + "/runtime" }
    /// The machine's cgroup (relative to the cgroup2 root) when it does not
    /// run as a unit: supervisor/ and payload/ go below it. Named after the
    /// state root too, so two roots' machines of one name never meet.
    public func cgroup(_ name: String) -> String {
        "/ipactr/" + (runRoot == "/run/ipactr" ? "" : runRoot.split(separator: "/").last! + ".") + "machine-" + name
    }
    /// Host-wide, whatever the state root: a running machine's monitor holds
    /// an flock on BASE.lock here, so no two machines (of any root) share ids.
    public static let rangeLocks = "/run/ipactr/ranges"
    public static func rangeLock(_ range: UIDRange) -> String { rangeLocks + "/\(range.base).lock" }
    public static func containerID(_ name: String) -> String { "ipactr-" + name }
}

/// What the monitor publishes about a running machine (status.json).
public struct MachineStatus: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable { case starting, running, stopping, rebooting }
    public var state: State
    public var monitorPID: Int32
    /// PID 1 of the machine, as the host sees it.
    public var leader: Int32?
    /// systemd sent READY=1.
    public var ready: Bool
    public var statusText: String?
    /// systemd (v256+) says when it accepts SIGRTMIN+N; older ones accept
    /// them once READY=1 is sent.
    public var signalsLevel: Int?
    public var rootfsMode: MachineRootfs.Mode?
    public var bootCount: Int

    public init(monitorPID: Int32) {
        state = .starting
        self.monitorPID = monitorPID
        ready = false
        bootCount = 0
    }
}

/// A machine as listed: its record, and its live status when it runs.
public struct MachineInfo: Sendable {
    public var record: MachineRecord
    public var status: MachineStatus?
    public var running: Bool { status != nil }
}

/// The machine table on disk: records, the lock that serialises changes to
/// it, uid-range allocation and liveness (a running machine's monitor holds
/// an flock on its monitor.lock, so a crashed monitor never looks alive).
public struct MachineManager {
    public let paths: MachinePaths

    public init(root: String) {
        paths = MachinePaths(root: root)
    }

    /// Runs `body` holding the machine table's lock.
    public func withLock<T>(_ body: () throws -> T) throws -> T {
        try makeDirectories(paths.machinesDirectory, mode: 0o700)
        let lock = try FileLock(path: paths.lockFile)
        defer { _ = lock }
        return try body()
    }

    public func names() -> [String] {
        ((try? listDirectory(paths.machinesDirectory)) ?? [])
            .filter { lstatOrNil(paths.record($0)) != nil }
            .sorted()
    }

    public func load(_ name: String) throws -> MachineRecord {
        try MachineRecord.validate(name: name)
        guard let st = lstatOrNil(paths.record(name)), st.st_size > 0 else {
            throw IpactrError(.notFound, "no machine named \"\(name)\"")
        }
        let bytes = try readFileString(paths.record(name))
        do { return try JSONDecoder().decode(MachineRecord.self, from: Data(bytes.utf8)) } catch {
            throw IpactrError(.corrupt, "machine \(name): unreadable record \(paths.record(name)): \(error)")
        }
    }

    public func save(_ record: MachineRecord) throws {
        try makeDirectories(paths.state(record.name), mode: 0o700)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileAtomically(paths.record(record.name), Array(try encoder.encode(record)), mode: 0o600)
    }

    /// True while the machine's monitor runs.
    public func isRunning(_ name: String) -> Bool {
        lstatOrNil(paths.monitorLock(name)) != nil && !FileLock.isUnlocked(paths.monitorLock(name))
    }

    public func status(_ name: String) -> MachineStatus? {
        guard isRunning(name), let text = try? readFileString(paths.status(name)) else { return nil }
        return try? JSONDecoder().decode(MachineStatus.self, from: Data(text.utf8))
    }

    public func info(_ name: String) throws -> MachineInfo {
        MachineInfo(record: try load(name), status: status(name))
    }

    public func list() -> [MachineInfo] {
        names().compactMap { try? info($0) }
    }

    /// A uid range for a new machine (call with the lock held).
    public func allocateRange(for name: String, base: UInt32?) throws -> UIDRange {
        var others = names().filter { $0 != name }.compactMap { try? load($0).range }
        others += MachineManager.rangesInUseOnHost()
        let allocator = UIDRangeAllocator.fromHost(machines: others)
        // Base 0 is the identity range, asked for by name: no allocation, no checks.
        if base == 0 { return .identity }
        if let base {
            let range = UIDRange(base: base)
            try allocator.check(range)
            return range
        }
        return try allocator.allocate(for: name)
    }

    /// Ranges that running machines of any state root hold (their monitors' range locks).
    static func rangesInUseOnHost() -> [UIDRange] {
        ((try? listDirectory(MachinePaths.rangeLocks)) ?? []).compactMap { entry in
            guard entry.hasSuffix(".lock"), let base = UInt32(entry.dropLast(5)),
                  !FileLock.isUnlocked(MachinePaths.rangeLocks + "/" + entry) else { return nil }
            return UIDRange(base: base)
        }
    }

    /// Machines made from image `name`: each boot builds the root from it,
    /// and a running one has its layers mounted, so it must not be removed.
    public func machines(usingImage name: String) -> [String] {
        names().filter { (try? load($0).image) == name }
    }

    /// Refuses the removal of an image a machine was made from.
    public func checkImageUnused(_ name: String) throws {
        let users = machines(usingImage: name)
        if !users.isEmpty {
            throw IpactrError(.busy, "image \(name) is used by machine\(users.count > 1 ? "s" : "") \(users.joined(separator: ", ")) (remove \(users.count > 1 ? "them" : "it") first)")
        }
    }

    /// The last `count` lines of the machine's console output.
    public func consoleTail(_ name: String, lines count: Int = 10) -> [String] {
        guard let text = try? readFileString(paths.consoleLog(name)) else { return [] }
        // A pty's output: \r\n line ends, and escape sequences for colours.
        let plain = text.replacingOccurrences(of: "\r", with: "")
            .replacingOccurrences(of: "\u{1B}\\[[0-9;]*[A-Za-z]", with: "", options: .regularExpression)
        return Array(plain.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            .filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }.suffix(count))
    }

    /// Removes a stopped machine's state (its upper directory, record and log).
    public func remove(_ name: String) throws {
        try withLock {
            _ = try load(name)
            guard !isRunning(name) else {
                throw IpactrError(.busy, "machine \(name) is running (poweroff or terminate it first, or use --force)")
            }
            try removeTree(paths.state(name))
            try? removeTree(paths.run(name))
        }
    }
}

/// A fresh random UUID (RFC 4122 v4) in the form systemd's container_uuid takes.
func randomUUID() -> String {
    var b = [UInt8](repeating: 0, count: 16)
    for i in 0..<16 { b[i] = UInt8.random(in: 0...255) }
    b[6] = (b[6] & 0x0f) | 0x40
    b[8] = (b[8] & 0x3f) | 0x80
    let hex = b.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
    return hex[0..<4].joined() + "-" + hex[4..<6].joined() + "-" + hex[6..<8].joined() + "-" + hex[8..<10].joined() + "-" + hex[10..<16].joined()
}
