import CIpactrShim
import CSeccomp
import IpactrOCI
import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Compiles config.json's `linux.seccomp` with libseccomp in the parent and
/// exports the BPF program: the child only hands it to the kernel, so no
/// library code runs between clone and exec.
enum SeccompCompiler {
    /// libseccomp's SCMP_ACT_* values (function-like macros Swift cannot import).
    static func action(_ name: String, errnoRet: UInt32?) throws(IpactrError) -> UInt32 {
        switch name {
        case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD": return 0x0000_0000
        case "SCMP_ACT_KILL_PROCESS": return 0x8000_0000
        case "SCMP_ACT_TRAP": return 0x0003_0000
        case "SCMP_ACT_ERRNO": return 0x0005_0000 | ((errnoRet ?? UInt32(EPERM)) & 0xffff)
        case "SCMP_ACT_TRACE": return 0x7ff0_0000 | ((errnoRet ?? UInt32(EPERM)) & 0xffff)
        case "SCMP_ACT_LOG": return 0x7ffc_0000
        case "SCMP_ACT_ALLOW": return 0x7fff_0000
        default: throw IpactrError(.unsupported, "seccomp action \(name) is not supported")
        }
    }

    static let operators: [String: scmp_compare] = [
        "SCMP_CMP_NE": SCMP_CMP_NE, "SCMP_CMP_LT": SCMP_CMP_LT, "SCMP_CMP_LE": SCMP_CMP_LE,
        "SCMP_CMP_EQ": SCMP_CMP_EQ, "SCMP_CMP_GE": SCMP_CMP_GE, "SCMP_CMP_GT": SCMP_CMP_GT,
        "SCMP_CMP_MASKED_EQ": SCMP_CMP_MASKED_EQ,
    ]

    static let actions = ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                          "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"]
    static let archs = ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]

    /// Returns the BPF program (struct sock_filter[]) as bytes.
    static func compile(_ s: RuntimeSpec.Seccomp) throws(IpactrError) -> [UInt8] {
        let defaultAction = try action(s.defaultAction, errnoRet: s.defaultErrnoRet)
        guard let ctx = seccomp_init(defaultAction) else {
            throw IpactrError(.internalError, "seccomp_init failed")
        }
        defer { seccomp_release(ctx) }
        for a in s.architectures ?? [] {
            let name = a.hasPrefix("SCMP_ARCH_") ? String(a.dropFirst(10)).lowercased() : a.lowercased()
            let arch = seccomp_arch_resolve_name(name)
            guard arch != 0 else { throw IpactrError(.invalidArgument, "seccomp: unknown architecture \(a)") }
            let rc = seccomp_arch_add(ctx, arch)
            if rc != 0 && rc != -EEXIST { throw IpactrError.syscall("seccomp: add architecture \(a)", Errno(rawValue: -rc)) }
        }
        for f in s.flags ?? [] {
            switch f {
            case "SECCOMP_FILTER_FLAG_LOG": seccomp_attr_set(ctx, SCMP_FLTATR_CTL_LOG, 1)
            case "SECCOMP_FILTER_FLAG_SPEC_ALLOW": seccomp_attr_set(ctx, SCMP_FLTATR_CTL_SSB, 1)
            default: throw IpactrError(.unsupported, "seccomp flag \(f) is not supported")
            }
        }
        for rule in s.syscalls ?? [] {
            let act = try action(rule.action, errnoRet: rule.errnoRet)
            // libseccomp refuses rules whose action is the default one.
            if act == defaultAction { continue }
            var cmps: [scmp_arg_cmp] = []
            for a in rule.args ?? [] {
                guard let op = operators[a.op] else { throw IpactrError(.invalidArgument, "seccomp: unknown operator \(a.op)") }
                cmps.append(scmp_arg_cmp(arg: a.index, op: op, datum_a: a.value, datum_b: a.valueTwo ?? 0))
            }
            // Several conditions on one argument cannot share a rule (libseccomp):
            // then each condition becomes a rule of its own, as runc does.
            let indices = cmps.map(\.arg)
            let groups: [[scmp_arg_cmp]] = Set(indices).count == indices.count ? [cmps] : cmps.map { [$0] }
            for name in rule.names {
                let nr = seccomp_syscall_resolve_name(name)
                // A syscall this architecture does not have: skipped, as runc does.
                if nr == __NR_SCMP_ERROR { continue }
                for g in groups {
                    let rc = g.withUnsafeBufferPointer { seccomp_rule_add_array(ctx, act, nr, UInt32(g.count), $0.baseAddress) }
                    if rc != 0 { throw IpactrError.syscall("seccomp: rule for \(name)", Errno(rawValue: -rc)) }
                }
            }
        }
        let fd = ipactr_memfd()
        if fd < 0 { throw errnoError("memfd_create") }
        defer { close(fd) }
        let rc = seccomp_export_bpf(ctx, fd)
        if rc != 0 { throw IpactrError.syscall("seccomp: export BPF", Errno(rawValue: -rc)) }
        lseek(fd, 0, SEEK_SET)
        let bytes = try FileIO.readAll(fd, "seccomp BPF")
        guard bytes.count % 8 == 0, bytes.count / 8 <= 4096 else {
            throw IpactrError(.invalidArgument, "seccomp: the filter has \(bytes.count / 8) instructions (the kernel takes 4096)")
        }
        return bytes
    }
}
