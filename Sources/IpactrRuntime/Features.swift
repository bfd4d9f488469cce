import CCap
import IpactrOCI
#if canImport(Glibc)
import Glibc
#endif

/// runtime-spec features.md. Truthful: it lists only what this build
/// implements, so callers (CRI-O, containerd) do not send what would fail.
public struct RuntimeFeatures: Codable, Sendable {
    public var ociVersionMin: String
    public var ociVersionMax: String
    public var hooks: [String]
    public var mountOptions: [String]
    public var linux: Linux
    public var annotations: [String: String]

    public struct Linux: Codable, Sendable {
        public var namespaces: [String]
        public var capabilities: [String]
        public var cgroup: Cgroup
        public var seccomp: Seccomp
        public var apparmor: Enabled
        public var selinux: Enabled
        public var intelRdt: Enabled
        public var mountExtensions: MountExtensions
    }
    public struct Cgroup: Codable, Sendable {
        public var v1: Bool
        public var v2: Bool
        public var systemd: Bool
        public var systemdUser: Bool
    }
    public struct Enabled: Codable, Sendable { public var enabled: Bool }
    public struct Seccomp: Codable, Sendable {
        public var enabled: Bool
        public var actions: [String]
        public var operators: [String]
        public var archs: [String]
        public var knownFlags: [String]
        public var supportedFlags: [String]
    }
    public struct MountExtensions: Codable, Sendable { public var idmap: Enabled }

    public static func current() -> RuntimeFeatures {
        let lastCap = Int32((try? FileIO.readString("/proc/sys/kernel/cap_last_cap"))?.split(separator: "\n").first.flatMap { Int32($0) } ?? 40)
        var caps: [String] = []
        for c in 0...lastCap {
            if let p = cap_to_name(c) { caps.append(String(cString: p).uppercased()); cap_free(p) }
        }
        return RuntimeFeatures(
            ociVersionMin: "1.0.0",
            ociVersionMax: RuntimeSpec.version,
            hooks: ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
            mountOptions: (Array(mountFlagOptions.keys) + Array(propagationOptions.keys) + ["idmap", "ridmap"]).sorted(),
            linux: Linux(
                namespaces: ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
                capabilities: caps,
                cgroup: Cgroup(v1: false, v2: true, systemd: false, systemdUser: false),
                seccomp: Seccomp(
                    enabled: true, actions: SeccompCompiler.actions,
                    operators: SeccompCompiler.operators.keys.sorted(), archs: SeccompCompiler.archs,
                    knownFlags: ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                    supportedFlags: ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]),
                apparmor: Enabled(enabled: false),
                selinux: Enabled(enabled: false),
                intelRdt: Enabled(enabled: false),
                mountExtensions: MountExtensions(idmap: Enabled(enabled: true))),
            annotations: ["org.ipactr.runtime.version": "0.1.0"])
    }
}

/// /proc/<pid>/cmdline with spaces for NULs ("" when the process is gone).
public func processCommandLine(_ pid: Int32) -> String {
    guard let b = try? FileIO.read("/proc/\(pid)/cmdline") else { return "" }
    return b.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
}
