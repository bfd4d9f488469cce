#if canImport(Glibc)
import Glibc
#endif
import IpactrOCI

/// Builds the OCI runtime config that meets systemd's Container Interface
/// (systemd docs/CONTAINER_INTERFACE.md) for one machine: PID 1 systemd in
/// user, pid, mount, uts, ipc and cgroup namespaces, with the cgroup2 tree
/// mounted read-write at /sys/fs/cgroup (so the runtime hands the machine's
/// cgroup to its root, per the OCI cgroup-ownership rule), /run/host, the
/// notify socket and the environment systemd looks for.
public struct ContainerInterface {
    public var record: MachineRecord
    public var imageConfig: ImageConfig.ExecConfig?
    /// The machine's root directory (MachineRootfs.path).
    public var rootfs: String
    /// Host directory bound read-only at /run/host (holds the notify socket).
    public var hostDirectory: String
    /// Path of the payload cgroup, relative to the cgroup2 root.
    public var cgroupsPath: String
    /// Host paths that replace a volume's own (by index): idmapped binds the
    /// monitor made of the volumes (all but `:noidmap` ones).
    public var volumeSources: [Int: String] = [:]

    /// Where PID 1 finds the notify socket, inside the machine.
    public static let notifySocketPath = "/run/host/notify"

    public init(record: MachineRecord, imageConfig: ImageConfig.ExecConfig?, rootfs: String, hostDirectory: String, cgroupsPath: String) {
        self.record = record
        self.imageConfig = imageConfig
        self.rootfs = rootfs
        self.hostDirectory = hostDirectory
        self.cgroupsPath = cgroupsPath
    }

    /// The capabilities systemd-nspawn gives a container (its default set),
    /// plus CAP_NET_ADMIN with a private network. Never CAP_AUDIT_*: the
    /// audit subsystem is not namespaced, and journald would fight over it.
    static func capabilities(privateNetwork: Bool) -> [String] {
        var caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
                    "CAP_IPC_OWNER", "CAP_KILL", "CAP_LEASE", "CAP_LINUX_IMMUTABLE", "CAP_MKNOD",
                    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID",
                    "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_CHROOT",
                    "CAP_SYS_NICE", "CAP_SYS_PTRACE", "CAP_SYS_RESOURCE", "CAP_SYS_TTY_CONFIG"]
        if privateNetwork { caps.append("CAP_NET_ADMIN") }
        return caps
    }

    /// PID 1's command: the image's Entrypoint+Cmd when it names an init,
    /// else /sbin/init (systemd's images leave Cmd as /sbin/init or /usr/sbin/init).
    var arguments: [String] {
        let cmd = (imageConfig?.Entrypoint ?? []) + (imageConfig?.Cmd ?? [])
        return cmd.isEmpty ? ["/sbin/init"] : cmd
    }

    /// KEY=VALUE list: defaults, then the image's Env, then the user's --env;
    /// later entries win, as with podman.
    var environment: [String] {
        var order: [String] = []
        var values: [String: String] = [:]
        func set(_ entry: String) {
            let key = String(entry.prefix { $0 != "=" })
            if values[key] == nil { order.append(key) }
            values[key] = entry
        }
        set("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        set("TERM=xterm")
        for e in imageConfig?.Env ?? [] { set(e) }
        for e in record.options.environment { set(e) }
        // What systemd reads to know it runs in a container: not overridable.
        set("container=ipactr")
        set("container_uuid=\(record.uuid)")
        set("NOTIFY_SOCKET=\(ContainerInterface.notifySocketPath)")
        return order.compactMap { values[$0] }
    }

    /// The hard RLIMIT_NOFILE the launcher has; systemd-nspawn raises the
    /// container's to it, since nothing inside the user namespace can.
    static func hardNoFileLimit() -> UInt64 {
        var rl = rlimit()
        getrlimit(RLIMIT_NOFILE_VALUE, &rl)
        return UInt64(rl.rlim_max)
    }

    public func spec() -> RuntimeSpec {
        typealias M = RuntimeSpec.Mount
        let opts = record.options
        let privateNetwork = opts.network == .private
        var mounts: [M] = [
            M(destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "nodev", "noexec"]),
            M(destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "nodev", "noexec", "ro"]),
            // Read-write: the machine's systemd manages its own cgroup subtree.
            M(destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["nosuid", "nodev", "noexec", "rw"]),
            M(destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"]),
            M(destination: "/dev/pts", type: "devpts", source: "devpts",
              options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
            M(destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "nodev", "mode=1777"]),
            M(destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "nodev", "noexec"]),
            M(destination: "/run", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev", "mode=755", "size=20%"]),
            M(destination: "/run/lock", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev", "noexec", "mode=1777", "size=5m"]),
            M(destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev", "mode=1777"]),
            M(destination: "/run/host", type: "bind", source: hostDirectory, options: ["rbind", "ro", "nosuid", "nodev", "noexec"]),
        ]
        if opts.nesting == true {
            // A nested machine's runtime mounts proc and sysfs in a user
            // namespace of its own, where every mount it inherits is locked;
            // the kernel then allows a new proc (sysfs) only if a *fully
            // visible* one exists, and the masks below (/proc/kcore…,
            // /sys/firmware) make /proc and /sys not so. Unmasked instances
            // out of the way let nested machines mount theirs, as LXD/Incus'
            // security.nesting does; /proc and /sys stay masked.
            mounts.append(M(destination: "/dev/.ipactr/proc", type: "proc", source: "proc", options: ["nosuid", "nodev", "noexec"]))
            mounts.append(M(destination: "/dev/.ipactr/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "nodev", "noexec", "ro"]))
        }
        for path in opts.tmpfs {
            mounts.append(M(destination: path, type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev", "mode=755"]))
        }
        for (i, v) in opts.volumes.enumerated() {
            // An idmapped volume arrives here already idmapped (volumeSources);
            // binding an idmapped mount keeps its mapping.
            let o = [v.idmap ? "bind" : "rbind", v.readOnly ? "ro" : "rw"]
            mounts.append(M(destination: v.containerPath, type: "bind", source: volumeSources[i] ?? v.hostPath, options: o))
        }

        let map = [RuntimeSpec.IDMapping(containerID: 0, hostID: record.range.base, size: record.range.count)]
        var namespaces = ["pid", "mount", "uts", "ipc", "user", "cgroup"].map { RuntimeSpec.Namespace(type: $0) }
        if privateNetwork { namespaces.append(RuntimeSpec.Namespace(type: "network")) }
        var linux = RuntimeSpec.Linux(
            namespaces: namespaces, uidMappings: map, gidMappings: map, cgroupsPath: cgroupsPath,
            maskedPaths: ["/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                          "/proc/sched_debug", "/proc/acpi", "/proc/scsi", "/sys/firmware"],
            readonlyPaths: ["/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"])
        // With its own user, net, ipc, uts and pid namespaces the machine may
        // keep /proc/sys writable (the Container Interface allows it); with the
        // host's network it must not change the host's net.* settings.
        if !privateNetwork { linux.readonlyPaths!.append("/proc/sys") }
        linux.rootfsPropagation = "slave"

        let caps = ContainerInterface.capabilities(privateNetwork: privateNetwork)
        let nofile = ContainerInterface.hardNoFileLimit()
        // A pty on /dev/console (the runtime binds the replica there), kept
        // open by the monitor for PID 1's life: systemd's console output and
        // a console getty, as the Container Interface describes.
        let process = RuntimeSpec.Process(
            terminal: true,
            user: RuntimeSpec.User(uid: 0, gid: 0),
            args: arguments,
            env: environment,
            cwd: "/",
            capabilities: RuntimeSpec.Capabilities(bounding: caps, effective: caps, inheritable: [], permitted: caps, ambient: []),
            rlimits: [RuntimeSpec.Rlimit(type: "RLIMIT_NOFILE", soft: nofile, hard: nofile)],
            noNewPrivileges: false)
        var annotations = imageConfig?.Labels ?? [:]
        annotations["org.ipactr.machine"] = record.name
        annotations["org.ipactr.image"] = record.image
        return RuntimeSpec(
            process: process,
            root: RuntimeSpec.Root(path: rootfs, readonly: opts.readOnly),
            hostname: opts.hostname ?? record.name,
            mounts: mounts,
            annotations: annotations,
            linux: linux)
    }
}

/// RLIMIT_NOFILE's type differs between glibc's C and Swift's views.
let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
