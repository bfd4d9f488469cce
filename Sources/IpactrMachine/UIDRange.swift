import IpactrSystem

/// A block of host ids a machine's user namespace maps 0…count-1 onto.
public struct UIDRange: Hashable, Codable, Sendable, CustomStringConvertible {
    public var base: UInt32
    public var count: UInt32

    public init(base: UInt32, count: UInt32 = UIDRange.machineSize) {
        self.base = base
        self.count = count
    }

    /// Every machine gets 65536 ids: enough for any distribution's users,
    /// and what systemd-nspawn's `--private-users=pick` hands out.
    public static let machineSize: UInt32 = 65536
    /// systemd's container uid range (docs/UIDS-GIDS.md): 0x00080000…0x6FFFFFFF.
    public static let containerRangeStart: UInt32 = 0x0008_0000
    public static let containerRangeEnd: UInt32 = 0x7000_0000

    /// The identity range: the machine's ids are the host's own (0 → 0).
    /// Weaker isolation (the machine's root is the host's root, confined by
    /// its other namespaces); what a nested machine needs inside a machine
    /// that owns only 65536 ids (DESIGN.md §3, "Nesting").
    public static let identity = UIDRange(base: 0)
    public var isIdentity: Bool { base == 0 }

    public var end: UInt64 { UInt64(base) + UInt64(count) }
    public func overlaps(_ other: UIDRange) -> Bool {
        UInt64(base) < other.end && UInt64(other.base) < end
    }
    public func contains(_ id: UInt32) -> Bool { id >= base && UInt64(id) < end }

    /// The text for /proc/PID/uid_map (and gid_map): container 0 → base.
    public var idMapLine: String { "0 \(base) \(count)\n" }

    public var description: String { isIdentity ? "identity" : "\(base)-\(end - 1)" }
}

/// Picks ranges for machines: inside systemd's container range, aligned to
/// 65536, clear of other machines, of every user and group the host knows by
/// number, and of every subordinate range in /etc/subuid and /etc/subgid.
public struct UIDRangeAllocator: Sendable {
    /// Ranges already in use (other machines, /etc/subuid and /etc/subgid).
    public var reserved: [UIDRange]
    /// Single ids in use on the host (users and groups).
    public var hostIDs: Set<UInt32>

    public init(reserved: [UIDRange], hostIDs: Set<UInt32>) {
        self.reserved = reserved
        self.hostIDs = hostIDs
    }

    /// Reads the host's users, groups and subordinate ranges under `etc`.
    public static func fromHost(machines: [UIDRange], etc: String = "/etc") -> UIDRangeAllocator {
        var ids = Set<UInt32>()
        for file in ["passwd", "group"] {
            for line in readLines("\(etc)/\(file)") {
                let fields = line.split(separator: ":", omittingEmptySubsequences: false)
                if fields.count > 2, let id = UInt32(fields[2]) { ids.insert(id) }
            }
        }
        var reserved = machines
        for file in ["subuid", "subgid"] {
            for line in readLines("\(etc)/\(file)") {
                let fields = line.split(separator: ":", omittingEmptySubsequences: false)
                if fields.count > 2, let start = UInt32(fields[1]), let count = UInt32(fields[2]), count > 0 {
                    reserved.append(UIDRange(base: start, count: count))
                }
            }
        }
        return UIDRangeAllocator(reserved: reserved, hostIDs: ids)
    }

    /// Whether `range` may be given to a machine (used for an explicit `--uid-range BASE`).
    public func check(_ range: UIDRange) throws(IpactrError) {
        guard range.base % UIDRange.machineSize == 0 else {
            throw IpactrError(.invalidArgument, "uid range base \(range.base) is not a multiple of 65536")
        }
        if let other = reserved.first(where: { $0.overlaps(range) }) {
            throw IpactrError(.exists, "uid range \(range) overlaps range \(other) already in use")
        }
        if let id = hostIDs.first(where: { range.contains($0) }) {
            throw IpactrError(.exists, "uid range \(range) contains host user or group id \(id)")
        }
    }

    /// Picks a free range. The first candidate is derived from `name`, so a
    /// machine tends to get the same range each time (its files keep their
    /// owners); collisions move on to the next aligned block.
    public func allocate(for name: String) throws(IpactrError) -> UIDRange {
        let first = UIDRange.containerRangeStart / UIDRange.machineSize
        let slots = (UIDRange.containerRangeEnd - UIDRange.containerRangeStart) / UIDRange.machineSize
        let start = UInt32(stableHash(name) % UInt64(slots))
        for i in 0..<slots {
            let slot = first + (start + i) % slots
            let candidate = UIDRange(base: slot * UIDRange.machineSize)
            if (try? check(candidate)) != nil { return candidate }
        }
        throw IpactrError(.busy, "no free uid range of 65536 ids left in \(UIDRange.containerRangeStart)-\(UIDRange.containerRangeEnd - 1)")
    }

    private static func readLines(_ path: String) -> [Substring] {
        guard let text = try? readFileString(path) else { return [] }
        return text.split(separator: "\n")
    }
}
