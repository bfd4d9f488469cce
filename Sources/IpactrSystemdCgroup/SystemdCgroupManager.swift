import IpactrOCI
import IpactrRuntime
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// runc's systemd cgroup driver (`--systemd-cgroup`, `--cgroup-manager=systemd`):
/// the container's cgroup is a transient scope that systemd makes and owns.
/// The init is cloned into the runtime's own cgroup and waits on the sync
/// pipe while `StartTransientUnit` moves it into the scope (PIDs=[init]); the
/// limits systemd knows (and the host's v2 controllers offer) are unit
/// properties, the rest go through the cgroup filesystem as with cgroupfs.
/// `delete` stops the scope. Uses one sd-bus connection on the calling thread.
public final class SystemdCgroupManager: CgroupManager {
    /// The one line when systemd is not on the system bus.
    public static let refusal = "--systemd-cgroup needs systemd (org.freedesktop.systemd1 on the system bus)"
    static let systemd = "org.freedesktop.systemd1"
    static let managerPath = "/org/freedesktop/systemd1"
    static let managerInterface = "org.freedesktop.systemd1.Manager"

    public var name: String { "systemd" }
    /// Scope prefix when config.json has no cgroupsPath (runc's is "runc").
    public let defaultPrefix = "ipactr-runtime"
    private var bus: SdBus?
    /// A unit whose StartTransientUnit failed: not ours, never stopped by `remove`.
    private var notStarted: String?

    public init() {}

    // MARK: names

    /// The (slice, unit) for a cgroupsPath: runc's "slice:prefix:name" (empty
    /// slice: system.slice); no path: system.slice and "<defaultPrefix>-<id>.scope".
    public func unit(cgroupsPath: String?, id: String) throws(IpactrError) -> (slice: String, unit: String) {
        guard let p = cgroupsPath, !p.isEmpty else { return ("system.slice", "\(defaultPrefix)-\(id).scope") }
        let parts = p.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, !parts[2].isEmpty else {
            throw IpactrError(.invalidArgument, "cgroupsPath \(p): --systemd-cgroup expects \"slice:prefix:name\" (e.g. system.slice:ipactr:ID)")
        }
        let slice = parts[0].isEmpty ? "system.slice" : parts[0]
        do { _ = try Self.expand(slice: slice) } catch { throw IpactrError(error.code, "cgroupsPath \(p): \(error.message)") }
        if parts[2].hasSuffix(".slice") {
            throw IpactrError(.unsupported, "cgroupsPath \(p): a name ending in .slice (a slice unit of its own) is not supported; give a scope name")
        }
        var unit = parts[1].isEmpty ? parts[2] : parts[1] + "-" + parts[2]
        if !unit.hasSuffix(".scope") { unit += ".scope" }
        if unit.contains("/") || unit.utf8.count > 255 {
            throw IpactrError(.invalidArgument, "cgroupsPath \(p): \(unit) is not a valid unit name")
        }
        return (slice, unit)
    }

    /// systemd's slice → cgroup path: "a-b.slice" → "/a.slice/a-b.slice", "-.slice" → "".
    public static func expand(slice: String) throws(IpactrError) -> String {
        guard slice.hasSuffix(".slice"), !slice.contains("/") else {
            throw IpactrError(.invalidArgument, "slice \(slice): not a slice unit name (NAME.slice)")
        }
        if slice == "-.slice" { return "" }
        let base = slice.dropLast(".slice".count)
        guard !base.isEmpty, !base.hasPrefix("-"), !base.hasSuffix("-"), !base.contains("--") else {
            throw IpactrError(.invalidArgument, "slice \(slice): not a valid slice name")
        }
        var path = "", prefix = ""
        for part in base.split(separator: "-") {
            prefix += (prefix.isEmpty ? "" : "-") + part
            path += "/" + prefix + ".slice"
        }
        return path
    }

    /// (slice, unit) back from a cgroup path this manager resolved.
    static func names(of cgroup: Cgroup) -> (slice: String, unit: String) {
        let parts = cgroup.path.split(separator: "/").map(String.init)
        return (parts.count >= 2 ? parts[parts.count - 2] : "-.slice", parts.last ?? "")
    }

    // MARK: bus

    func connect() throws(IpactrError) -> SdBus {
        if let bus { return bus }
        guard let b = try? SdBus() else { throw IpactrError(.unsupported, Self.refusal) }
        let owned = try? b.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner",
                                [.string(Self.systemd)]) { b.readBool($0) }
        guard owned == true else { throw IpactrError(.unsupported, Self.refusal) }
        // systemd sends JobRemoved only once a client subscribed; the bus
        // routes it to us only with a match.
        try b.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch",
                   [.string("type='signal',sender='\(Self.systemd)',path='\(Self.managerPath)',interface='\(Self.managerInterface)',member='JobRemoved'")]) { _ in }
        try managerCall(b, "Subscribe", []) { _ in }
        bus = b
        return b
    }

    func managerCall<T>(_ b: SdBus, _ member: String, _ args: [SdBus.Value], read: (OpaquePointer) -> T) throws(IpactrError) -> T {
        try b.call(Self.systemd, Self.managerPath, Self.managerInterface, member, args, read: read)
    }

    /// Runs a Manager method that returns a job and waits for the job's
    /// JobRemoved; returns its result ("done", "failed", "canceled", …).
    func runJob(_ b: SdBus, _ member: String, _ args: [SdBus.Value]) throws(IpactrError) -> String {
        guard let job = try managerCall(b, member, args, read: { b.readString($0, "o") }) else {
            throw IpactrError(.corrupt, "systemd's \(member) returned no job")
        }
        // Signals that came while the call waited are queued (kept by waitFor).
        func result() -> String? { b.signals.first { $0.body[0] == job }?.body[2] }
        try b.waitFor(timeout: 60) { result() != nil }
        let r = result() ?? ""
        b.signals.removeAll { $0.body[0] == job }
        return r
    }

    /// The unit's object path, or nil when systemd has no such unit loaded.
    func unitPath(_ b: SdBus, _ unit: String) throws(IpactrError) -> String? {
        do { return try managerCall(b, "GetUnit", [.string(unit)], read: { b.readString($0, "o") }) } catch {
            if error.message.contains("NoSuchUnit") { return nil }
            throw error
        }
    }

    func resetFailed(_ b: SdBus, _ unit: String) {
        _ = try? managerCall(b, "ResetFailedUnit", [.string(unit)]) { _ in }
    }

    // MARK: CgroupManager

    public func resolve(id: String, spec: RuntimeSpec, hierarchy: CgroupHierarchy) throws(IpactrError) -> Cgroup? {
        let (slice, unit) = try unit(cgroupsPath: spec.linux?.cgroupsPath, id: id)
        _ = try connect()
        return Cgroup(hierarchy: hierarchy, path: try Self.expand(slice: slice) + "/" + unit)
    }

    public func create(_ cgroup: Cgroup, resources: RuntimeSpec.Resources?, v1Layout: Bool) throws(IpactrError) -> CgroupSetup {
        let b = try connect()
        let unit = Self.names(of: cgroup).unit
        // Checked here so a taken name fails before the clone, and `remove`
        // never stops a unit that is not this container's.
        if try unitPath(b, unit) != nil {
            notStarted = unit
            throw IpactrError(.exists, "systemd unit \(unit) already exists")
        }
        // No CLONE_INTO_CGROUP: the scope does not exist until `join`.
        return CgroupSetup()
    }

    public func join(_ cgroup: Cgroup, pid: pid_t, resources: RuntimeSpec.Resources?, v1Layout: Bool, setup: inout CgroupSetup) throws(IpactrError) {
        let b = try connect()
        let (slice, unit) = Self.names(of: cgroup)
        let sliceDir = cgroup.hierarchy.directory(of: (try? Self.expand(slice: slice)) ?? "")
        let offered: String = (try? readFileString(sliceDir + "/cgroup.controllers"))
            ?? (try? readFileString(cgroup.hierarchy.mountPoint + "/cgroup.controllers")) ?? ""
        let controllers = Set(offered.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        let (limits, rest) = Self.split(resources, controllers: controllers)
        var props: [SdBus.Value] = [
            .structure([.string("Description"), .variant(.string("ipactr-runtime container \(unit)"))]),
            .structure([.string("Slice"), .variant(.string(slice))]),
            .structure([.string("Delegate"), .variant(.bool(true))]),
            // As runc: the scope goes with the container, not with shutdown ordering.
            .structure([.string("DefaultDependencies"), .variant(.bool(false))]),
            .structure([.string("PIDs"), .variant(.array("u", [.uint32(UInt32(pid))]))]),
        ]
        for (key, value) in limits { props.append(.structure([.string(key), .variant(value)])) }
        let result: String
        do {
            result = try runJob(b, "StartTransientUnit", [.string(unit), .string("replace"),
                                                          .array("(sv)", props),
                                                          .array("(sa(sv))", [])])
        } catch {
            notStarted = unit
            throw IpactrError(error.code, "systemd could not start \(unit): \(error.message)")
        }
        guard result == "done" else {
            // A failed start leaves a failed unit: reset it, nothing is left.
            resetFailed(b, unit)
            notStarted = unit
            throw IpactrError(.io, "systemd could not start \(unit): job \(result)")
        }
        // Where systemd put it must be where the plan's mounts point.
        guard let path = try unitPath(b, unit) else { throw IpactrError(.io, "systemd unit \(unit) vanished after its start") }
        let cg = try b.stringProperty(Self.systemd, path, "org.freedesktop.systemd1.Scope", "ControlGroup") ?? ""
        guard cg == cgroup.path else {
            throw IpactrError(.io, "systemd put \(unit) in cgroup \(cg), not \(cgroup.path) (is the runtime in systemd's cgroup namespace?)")
        }
        // The rest as cgroupfs does (v1 files on hybrid hosts; the init joins them).
        if let r = rest { setup.v1Dirs = try cgroup.apply(r) }
        if v1Layout { setup.v1Dirs += try cgroup.createV1Everywhere(except: setup.v1Dirs) }
        try Cgroup.joinV1(pid, setup.v1Dirs)
    }

    public func remove(_ cgroup: Cgroup, v1Dirs: [String]) throws(IpactrError) {
        let unit = Self.names(of: cgroup).unit
        defer {
            Cgroup.removeV1(v1Dirs)
            Cgroup.removeDefaultV1Parents(v1Dirs)
        }
        if unit == notStarted { return }
        cgroup.killAll()
        let b = try connect()
        if try unitPath(b, unit) != nil {
            var result = "done"
            do { result = try runJob(b, "StopUnit", [.string(unit), .string("replace")]) } catch {
                // Gone meanwhile: a scope ends by itself when its last process exits.
                if !error.message.contains("NoSuchUnit") { throw error }
            }
            resetFailed(b, unit)
            if result != "done" { throw IpactrError(.io, "systemd could not stop \(unit): job \(result)") }
        }
        // systemd removes the scope's cgroup; anything the payload left below it too.
        try cgroup.remove()
    }

    // MARK: limits

    /// Splits `r` into the unit properties systemd sets (only where the v2
    /// `controllers` offer the controller) and the rest, for cgroupfs.
    static func split(_ r: RuntimeSpec.Resources?, controllers: Set<String>) -> ([(String, SdBus.Value)], RuntimeSpec.Resources?) {
        guard var rest = r else { return ([], nil) }
        var props: [(String, SdBus.Value)] = []
        func bytes(_ v: Int64) -> SdBus.Value { .uint64(v < 0 ? UInt64.max : UInt64(v)) }
        if controllers.contains("memory"), let m = rest.memory {
            if let l = m.limit { props.append(("MemoryMax", bytes(l))) }
            if let l = m.reservation { props.append(("MemoryLow", bytes(l))) }
            if let s = m.swap {
                // OCI's swap is memory+swap; MemorySwapMax is swap alone.
                if s < 0 { props.append(("MemorySwapMax", .uint64(.max))) } else {
                    props.append(("MemorySwapMax", .uint64(UInt64(max(0, s - max(0, m.limit ?? 0))))))
                }
            }
            rest.memory = nil
        }
        if controllers.contains("pids"), let p = rest.pids {
            props.append(("TasksMax", .uint64(p.limit <= 0 ? .max : UInt64(p.limit))))
            rest.pids = nil
        }
        if controllers.contains("cpu"), var c = rest.cpu {
            if let s = c.shares, s > 0 {
                // runc's conversion of v1 shares [2, 262144] to v2 weight [1, 10000].
                props.append(("CPUWeight", .uint64(1 + ((max(2, min(s, 262144)) - 2) * 9999) / 262142)))
                c.shares = nil
            }
            if c.quota != nil || c.period != nil {
                let period = c.period.flatMap { $0 > 0 ? $0 : nil } ?? 100000
                if let q = c.quota, q > 0 {
                    // systemd keeps whole percents: round up to 10 ms per second, as runc does.
                    var perSec = UInt64(q) * 1_000_000 / period
                    if perSec % 10000 != 0 { perSec = (perSec / 10000 + 1) * 10000 }
                    props.append(("CPUQuotaPerSecUSec", .uint64(perSec)))
                } else {
                    props.append(("CPUQuotaPerSecUSec", .uint64(.max)))
                }
                if c.period != nil { props.append(("CPUQuotaPeriodUSec", .uint64(period))) }
                c.quota = nil
                c.period = nil
            }
            rest.cpu = (c.cpus ?? "").isEmpty && (c.mems ?? "").isEmpty ? nil : c
        }
        if controllers.contains("io"), let w = rest.blockIO?.weight {
            props.append(("IOWeight", .uint64(UInt64(w))))
            rest.blockIO = nil
        }
        return (props, rest)
    }
}
