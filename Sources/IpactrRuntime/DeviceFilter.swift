import CIpactrShim
import IpactrOCI
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// linux.resources.devices on cgroup v2: an eBPF program of type
/// BPF_PROG_TYPE_CGROUP_DEVICE attached to the container's cgroup (v2 has
/// no devices.allow/deny files).
///
/// The rules mean what they meant on v1, where they came from: a cgroup
/// starts allowing everything, and each rule in order allows or denies
/// what it matches, so the last matching rule decides; as runc, a fixed
/// list of devices every container needs (null, zero, full, random,
/// urandom, tty, console, ptmx, pts, tun; mknod of any char or block
/// device) comes after the spec's rules, and so do the spec's own device
/// nodes (linux.devices). The program checks the rules from the last to
/// the first and returns at the first match; no match: allowed.
struct DeviceFilter {
    struct Rule: Equatable {
        var allow: Bool
        /// "a" (any), "b" or "c".
        var type: String
        var major: Int64?
        var minor: Int64?
        /// Some of "rwm".
        var access: String
    }

    var rules: [Rule]

    /// runc's AllowedDevices.
    static let defaultRules: [Rule] = [
        Rule(allow: true, type: "c", major: nil, minor: nil, access: "m"),
        Rule(allow: true, type: "b", major: nil, minor: nil, access: "m"),
        Rule(allow: true, type: "c", major: 1, minor: 3, access: "rwm"),    // null
        Rule(allow: true, type: "c", major: 1, minor: 8, access: "rwm"),    // random
        Rule(allow: true, type: "c", major: 1, minor: 7, access: "rwm"),    // full
        Rule(allow: true, type: "c", major: 5, minor: 0, access: "rwm"),    // tty
        Rule(allow: true, type: "c", major: 1, minor: 5, access: "rwm"),    // zero
        Rule(allow: true, type: "c", major: 1, minor: 9, access: "rwm"),    // urandom
        Rule(allow: true, type: "c", major: 5, minor: 1, access: "rwm"),    // console
        Rule(allow: true, type: "c", major: 136, minor: nil, access: "rwm"), // pts
        Rule(allow: true, type: "c", major: 5, minor: 2, access: "rwm"),    // ptmx
        Rule(allow: true, type: "c", major: 10, minor: 200, access: "rwm"), // net/tun
    ]

    /// The filter for a spec; nil when its rules deny nothing (then no
    /// program is needed, as a v1 cgroup without rules allows everything).
    init?(spec: RuntimeSpec) throws(IpactrError) {
        var rules: [Rule] = []
        for r in spec.linux?.resources?.devices ?? [] {
            let type = r.type ?? "a"
            guard ["a", "b", "c"].contains(type) else {
                throw IpactrError(.invalidArgument, "linux.resources.devices: type \"\(type)\" is not a, b or c")
            }
            let access = r.access ?? "rwm"
            guard !access.isEmpty, access.allSatisfy({ "rwm".contains($0) }) else {
                throw IpactrError(.invalidArgument, "linux.resources.devices: access \"\(access)\" is not some of rwm")
            }
            rules.append(Rule(allow: r.allow, type: type, major: r.major, minor: r.minor, access: access))
        }
        guard rules.contains(where: { !$0.allow }) else { return nil }
        rules += Self.defaultRules
        for d in spec.linux?.devices ?? [] where d.type == "c" || d.type == "b" || d.type == "u" {
            rules.append(Rule(allow: true, type: d.type == "b" ? "b" : "c", major: d.major, minor: d.minor, access: "rwm"))
        }
        self.rules = rules
    }

    init(rules: [Rule]) { self.rules = rules }

    // eBPF opcodes (linux/bpf_common.h, linux/bpf.h).
    private static let ldxMemW: UInt8 = 0x61   // BPF_LDX | BPF_MEM | BPF_W
    private static let and32K: UInt8 = 0x54    // BPF_ALU | BPF_AND | BPF_K
    private static let rsh32K: UInt8 = 0x74    // BPF_ALU | BPF_RSH | BPF_K
    private static let mov32X: UInt8 = 0xbc    // BPF_ALU | BPF_MOV | BPF_X
    private static let mov64K: UInt8 = 0xb7    // BPF_ALU64 | BPF_MOV | BPF_K
    private static let jneK: UInt8 = 0x55      // BPF_JMP | BPF_JNE | BPF_K
    private static let exit: UInt8 = 0x95      // BPF_JMP | BPF_EXIT

    private static func insn(_ code: UInt8, dst: UInt8 = 0, src: UInt8 = 0, off: Int16 = 0, imm: Int32 = 0) -> ipactr_bpf_insn {
        ipactr_bpf_insn(code: code, regs: (src << 4) | (dst & 0x0f), off: off, imm: imm)
    }

    /// The program. Registers: r2 device type (1 block, 2 char), r3 the
    /// access asked (1 mknod, 2 read, 4 write), r4 major, r5 minor; r1
    /// (the context, no longer needed) is scratch.
    var program: [ipactr_bpf_insn] {
        var p: [ipactr_bpf_insn] = [
            // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
            Self.insn(Self.ldxMemW, dst: 2, src: 1, off: 0),
            Self.insn(Self.and32K, dst: 2, imm: 0xffff),
            Self.insn(Self.ldxMemW, dst: 3, src: 1, off: 0),
            Self.insn(Self.rsh32K, dst: 3, imm: 16),
            Self.insn(Self.ldxMemW, dst: 4, src: 1, off: 4),
            Self.insn(Self.ldxMemW, dst: 5, src: 1, off: 8),
        ]
        var reachable = true
        for rule in rules.reversed() where reachable {
            // Each test jumps past the rest of this rule's block on a mismatch.
            var tests: [(code: UInt8, dst: UInt8, imm: Int32, before: [ipactr_bpf_insn])] = []
            if rule.type != "a" { tests.append((Self.jneK, 2, rule.type == "b" ? 1 : 2, [])) }
            let asked = Int32((rule.access.contains("m") ? 1 : 0) | (rule.access.contains("r") ? 2 : 0) | (rule.access.contains("w") ? 4 : 0))
            if asked != 7 {
                // Matches when nothing outside the rule's access is asked: (r3 & ~access) == 0.
                tests.append((Self.jneK, 1, 0, [Self.insn(Self.mov32X, dst: 1, src: 3), Self.insn(Self.and32K, dst: 1, imm: ~asked & 7)]))
            }
            if let major = rule.major { tests.append((Self.jneK, 4, Int32(truncatingIfNeeded: major), [])) }
            if let minor = rule.minor { tests.append((Self.jneK, 5, Int32(truncatingIfNeeded: minor), [])) }
            let verdict = [Self.insn(Self.mov64K, dst: 0, imm: rule.allow ? 1 : 0), Self.insn(Self.exit)]
            var block: [ipactr_bpf_insn] = []
            var jumps: [Int] = []
            for t in tests {
                block += t.before
                jumps.append(block.count)
                block.append(Self.insn(t.code, dst: t.dst, imm: t.imm))
            }
            block += verdict
            for j in jumps { block[j].off = Int16(block.count - j - 1) }
            p += block
            // A rule that matches everything decides for all: what follows
            // could never run (and the verifier refuses unreachable code).
            reachable = !tests.isEmpty
        }
        // No rule matched: allowed, as in a v1 cgroup.
        if reachable { p += [Self.insn(Self.mov64K, dst: 0, imm: 1), Self.insn(Self.exit)] }
        return p
    }

    /// Whether this runtime runs in a user namespace other than the host's
    /// (a nested runtime): there the kernel refuses to load the program
    /// (it needs CAP_BPF on the host), and devices are the outer
    /// container's to guard. runc and crun skip the filter there too.
    static var inNestedUserNamespace: Bool {
        guard let text = try? FileIO.readString("/proc/self/uid_map") else { return false }
        let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        return !(f.count == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295")
    }

    /// Loads the program and attaches it to the cgroup at `cgroupFd`.
    func attach(toCgroup cgroupFd: Int32) throws(IpactrError) {
        let insns = program
        var log = [CChar](repeating: 0, count: 16384)
        let fd = insns.withUnsafeBufferPointer { ipactr_bpf_device_program($0.baseAddress, UInt32($0.count), &log, UInt32(log.count)) }
        if fd < 0 {
            let e = Errno(rawValue: errno)
            let text = String(cString: log).split(separator: "\n").suffix(2).joined(separator: "; ")
            throw IpactrError.syscall("load the device cgroup program" + (text.isEmpty ? "" : " (\(text))"), e)
        }
        defer { close(fd) }
        try syscall("attach the device cgroup program") { ipactr_bpf_attach_device(fd, cgroupFd) }
    }
}
