import FoundationEssentials
import IpactrOCI
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What `create` records under `--root/<id>/state.json`.
public struct ContainerRecord: Codable, Sendable {
    public var id: String
    public var bundle: String
    public var rootfs: String
    public var pid: Int32
    /// Field 22 of /proc/<pid>/stat: tells our init from a recycled pid.
    public var startTime: UInt64
    public var created: Int64
    public var cgroupPath: String
    public var cgroupMount: String
    public var cgroupMountRoot: String
    /// cgroup v1 directories holding the limits on a hybrid host.
    public var v1Cgroups: [String]?
    /// What start, state and delete need of the spec; the whole spec is in
    /// config.json next to this record (ContainerDir.loadSpec), read only by
    /// exec and update: decoding it is most of a small verb's work.
    public var hooks: RuntimeSpec.Hooks?
    public var annotations: [String: String]?
    /// The caller's NOTIFY_SOCKET at create (proxied by `start`), if any.
    public var notifySocket: String? = nil
    /// The CgroupManager that made the cgroup (nil in older state: cgroupfs).
    /// `cgroupPath` is empty when it made none.
    public var cgroupManager: String? = nil
}

/// A container's state directory, held under an exclusive flock for the
/// whole command, so two commands on one container run one after the other.
public final class ContainerDir {
    public let path: String
    let lockFd: Int32

    /// Opens (and locks) an existing container; notFound when there is none.
    init(root: String, id: String) throws(IpactrError) {
        try validateID(id)
        path = root + "/" + id
        let fd = open(path + "/lock", O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if Glibc.errno == ENOENT { throw IpactrError(.notFound, "container \(id) does not exist") }
            throw errnoError("open \(path)/lock")
        }
        lockFd = fd
        try syscall("lock \(path)") { flock(fd, LOCK_EX) }
        // A concurrent delete may have removed it while we waited.
        if !FileIO.exists(path + "/state.json") {
            close(fd)
            throw IpactrError(.notFound, "container \(id) does not exist")
        }
    }

    /// Creates and locks a new container directory; `exists` if the id is taken.
    init(creating id: String, root: String) throws(IpactrError) {
        try validateID(id)
        try FileIO.mkdirAll(root, mode: 0o700)
        path = root + "/" + id
        if mkdir(path, 0o700) != 0 {
            if Glibc.errno == EEXIST { throw IpactrError(.exists, "container \(id) already exists") }
            throw errnoError("create \(path)")
        }
        let fd = open(path + "/lock", O_RDONLY | O_CREAT | O_CLOEXEC, 0o600)
        if fd < 0 { let e = errnoError("create \(path)/lock"); rmdir(path); throw e }
        lockFd = fd
        flock(fd, LOCK_EX)
    }

    deinit { close(lockFd) }

    var fifo: String { path + "/exec.fifo" }

    func load() throws(IpactrError) -> ContainerRecord {
        let bytes = try FileIO.read(path + "/state.json")
        do { return try JSONDecoder().decode(ContainerRecord.self, from: Data(bytes)) } catch {
            throw IpactrError(.corrupt, "\(path)/state.json: \(error)")
        }
    }

    /// The container's spec as create read it (config.json in this directory).
    func loadSpec() throws(IpactrError) -> RuntimeSpec {
        let bytes = try FileIO.read(path + "/config.json")
        do { return try JSONDecoder().decode(RuntimeSpec.self, from: Data(bytes)) } catch {
            throw IpactrError(.corrupt, "\(path)/config.json: \(error)")
        }
    }

    func saveSpec(_ spec: RuntimeSpec) throws(IpactrError) {
        let data: Data
        do { data = try JSONEncoder().encode(spec) } catch { throw IpactrError(.internalError, "encode spec: \(error)") }
        try saveSpec(bytes: Array(data))
    }

    func saveSpec(bytes: [UInt8]) throws(IpactrError) {
        try FileIO.writeAtomic(path + "/config.json", bytes, mode: 0o600)
    }

    func save(_ r: ContainerRecord) throws(IpactrError) {
        let data: Data
        do { data = try JSONEncoder().encode(r) } catch { throw IpactrError(.internalError, "encode state: \(error)") }
        try FileIO.writeAtomic(path + "/state.json", Array(data), mode: 0o600)
    }

    /// Removes the directory; the lock goes with the last fd.
    func remove() { FileIO.removeTree(path) }
}

func validateID(_ id: String) throws(IpactrError) {
    if id.isEmpty || id == "." || id == ".." || id.contains("/") || id.utf8.count > 1024 {
        throw IpactrError(.invalidArgument, "invalid container id \"\(id)\"")
    }
}

/// Process facts from /proc/<pid>/stat.
struct ProcStat {
    var state: Character
    var startTime: UInt64

    static func read(_ pid: Int32) -> ProcStat? {
        guard let s = try? FileIO.readString("/proc/\(pid)/stat"), let close = s.lastIndex(of: ")") else { return nil }
        // Fields after "(comm)": state is field 3, starttime field 22.
        let rest = s[s.index(after: close)...].split(separator: " ")
        guard rest.count > 19, let st = rest[0].first, let start = UInt64(rest[19]) else { return nil }
        return ProcStat(state: st, startTime: start)
    }
}
