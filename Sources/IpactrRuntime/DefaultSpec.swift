import IpactrOCI
#if canImport(Glibc)
import Glibc
#endif

extension RuntimeSpec {
    /// The config.json `spec` writes: runc's template (busybox `sh`, a private
    /// /dev, read-only /sys, masked /proc files). `rootless` adds a user
    /// namespace mapping the caller's ids to root and drops what an
    /// unprivileged user cannot do (network namespace, gid=5 on devpts).
    public static func template(rootless: Bool) -> RuntimeSpec {
        let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        var mounts: [Mount] = [
            Mount(destination: "/proc", type: "proc", source: "proc"),
            Mount(destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"]),
            Mount(destination: "/dev/pts", type: "devpts", source: "devpts",
                  options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] + (rootless ? [] : ["gid=5"])),
            Mount(destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            Mount(destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"]),
            Mount(destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"]),
            Mount(destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["nosuid", "noexec", "nodev", "relatime", "ro"]),
        ]
        if rootless {
            mounts[5] = Mount(destination: "/sys", type: "none", source: "/sys", options: ["rbind", "nosuid", "noexec", "nodev", "ro"])
        }
        var namespaces = ["pid", "network", "ipc", "uts", "mount", "cgroup"].map { Namespace(type: $0) }
        var linux = Linux(
            namespaces: namespaces,
            resources: rootless ? nil : Resources(),
            maskedPaths: ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                          "/proc/scsi"],
            readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"])
        if rootless {
            namespaces.removeAll { $0.type == "network" }
            namespaces.append(Namespace(type: "user"))
            linux.namespaces = namespaces
            linux.uidMappings = [IDMapping(containerID: 0, hostID: getuid(), size: 1)]
            linux.gidMappings = [IDMapping(containerID: 0, hostID: getgid(), size: 1)]
        }
        return RuntimeSpec(
            process: Process(
                terminal: true, user: User(uid: 0, gid: 0), args: ["sh"],
                env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                cwd: "/",
                capabilities: Capabilities(bounding: caps, effective: caps, permitted: caps),
                rlimits: [Rlimit(type: "RLIMIT_NOFILE", soft: 1024, hard: 1024)],
                noNewPrivileges: true),
            root: Root(path: "rootfs", readonly: true),
            hostname: "ipactr",
            mounts: mounts,
            linux: linux)
    }
}
