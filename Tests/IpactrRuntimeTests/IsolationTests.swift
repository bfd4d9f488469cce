import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What the payload sees: ids, mounts, hostname, env, limits, capabilities.
@Suite(.serialized) struct IsolationTests {
    static let userns: (inout RuntimeSpec) -> Void = { spec in
        spec.linux?.namespaces?.append(.init(type: "user"))
        spec.linux?.uidMappings = [.init(containerID: 0, hostID: 100000, size: 65536)]
        spec.linux?.gidMappings = [.init(containerID: 0, hostID: 100000, size: 65536)]
    }

    @Test func userNamespaceMapping() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        Self.userns(&f.spec)
        let out = try f.run(["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u"])
        #expect(out.status == 0, "\(out.stderr)")
        let lines = out.stdout.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
        #expect(lines == ["0 100000 65536", "0 100000 65536", "0"])
    }

    @Test func readOnlyRoot() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.root?.readonly = true
        let out = try f.run(["sh", "-c", "touch /x && echo wrote; touch /dev/shm/y && echo tmpfs-ok"])
        #expect(out.stdout == "tmpfs-ok\n")
        #expect(out.stderr.contains("Read-only file system"))
        #expect(!FileManager.default.fileExists(atPath: f.rootfs + "/x"))
    }

    @Test func readOnlyBindMount() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let host = f.dir + "/hostdata"
        try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
        try "from host\n".write(toFile: host + "/file", atomically: true, encoding: .utf8)
        f.spec.mounts?.append(.init(destination: "/data", type: "bind", source: host, options: ["rbind", "ro"]))
        let out = try f.run(["sh", "-c", "cat /data/file; touch /data/new && echo wrote"])
        #expect(out.stdout == "from host\n")
        #expect(out.stderr.contains("Read-only file system"))
        #expect(!FileManager.default.fileExists(atPath: host + "/new"))
    }

    @Test func hostnameEnvCwdUser() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.hostname = "box-one"
        f.spec.process?.env = ["PATH=/bin", "GREETING=hello world"]
        f.spec.process?.cwd = "/tmp"
        f.spec.process?.user = .init(uid: 1000, gid: 1001, additionalGids: [5, 7])
        let out = try f.run(["sh", "-c", "hostname; echo \"$GREETING\"; pwd; id -u; id -g; id -G"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "box-one\nhello world\n/tmp\n1000\n1001\n1001 5 7\n")
    }

    @Test func rlimitsApplied() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.process?.rlimits = [.init(type: "RLIMIT_NOFILE", soft: 123, hard: 456)]
        let out = try f.run(["sh", "-c", "ulimit -n; ulimit -Hn"])
        #expect(out.stdout == "123\n456\n")
    }

    @Test func rlimitAboveHardLimitIsAnError() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        var hard = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &hard)
        // Root lacks CAP_SYS_RESOURCE on this machine; elsewhere raising works.
        let canRaise = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &hard) == 0 && capSysResource()
        f.spec.process?.rlimits = [.init(type: "RLIMIT_NOFILE", soft: UInt64(hard.rlim_max) + 1, hard: UInt64(hard.rlim_max) + 1)]
        let out = try f.run(["true"])
        if canRaise {
            #expect(out.status == 0)
        } else {
            #expect(out.status != 0)
            #expect(out.stderr.hasPrefix("ipactr-runtime: rlimit RLIMIT_NOFILE"))
            #expect(try FileManager.default.contentsOfDirectory(atPath: f.stateRoot).isEmpty)
        }
    }

    @Test func capabilitiesAsConfigured() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let caps = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
        // Ambient needs permitted + inheritable: CAP_NET_BIND_SERVICE is not inheritable, so it is skipped.
        f.spec.process?.capabilities = .init(bounding: caps + ["CAP_CHOWN"], effective: caps, inheritable: ["CAP_KILL"], permitted: caps, ambient: caps)
        let out = try f.run(["grep", "^Cap", "/proc/self/status"])
        #expect(out.status == 0, "\(out.stderr)")
        let lines = Dictionary(uniqueKeysWithValues: out.stdout.split(separator: "\n").map {
            let p = $0.split(separator: "\t"); return (String(p[0]), String(p[1]))
        })
        // CAP_KILL = 5, CAP_NET_BIND_SERVICE = 10, CAP_CHOWN = 0.
        #expect(lines["CapEff:"] == "0000000000000420")
        #expect(lines["CapPrm:"] == "0000000000000420")
        #expect(lines["CapBnd:"] == "0000000000000421")
        #expect(lines["CapInh:"] == "0000000000000020")
        #expect(lines["CapAmb:"] == "0000000000000020")
    }

    @Test func mountThroughAbsoluteSymlinkStaysInRootfs() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        // On the host this symlink points at a real host directory; the
        // runtime must resolve it inside the rootfs.
        let hostSide = f.dir + "/hostside"
        try FileManager.default.createDirectory(atPath: hostSide, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: f.rootfs + "/link", withDestinationPath: hostSide)
        try FileManager.default.createDirectory(atPath: f.rootfs + hostSide, withIntermediateDirectories: true)
        f.spec.mounts?.append(.init(destination: "/link/m", type: "tmpfs", source: "tmpfs", options: ["size=1m"]))
        let out = try f.run(["sh", "-c", "grep -c ' /tmp/ipactr-rt-.*/hostside/m ' /proc/self/mountinfo"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "1\n")
        #expect(!FileManager.default.fileExists(atPath: hostSide + "/m"))
        #expect(FileManager.default.fileExists(atPath: f.rootfs + hostSide + "/m"))
    }
}

func capSysResource() -> Bool {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = s.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
          let v = UInt64(line.split(separator: "\t")[1], radix: 16) else { return false }
    return v & (1 << 24) != 0
}

/// linux.seccomp: compiled with libseccomp in the runtime, loaded by the init.
@Suite(.serialized) struct SeccompTests {
    @Test func errnoRuleDeniesSyscall() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let json = """
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
         "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
        """
        f.spec.linux?.seccomp = try JSONDecoder().decode(RuntimeSpec.Seccomp.self, from: Data(json.utf8))
        let out = try f.run(["sh", "-c", "grep '^Seccomp:' /proc/self/status; mkdir /tmp/d || echo denied; touch /tmp/f && echo touched"])
        #expect(out.stdout == "Seccomp:\t2\ndenied\ntouched\n", "\(out.stderr)")
        #expect(out.stderr.contains("Permission denied"))
    }

    @Test func unknownActionIsAnError() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        f.spec.linux?.seccomp = try JSONDecoder().decode(RuntimeSpec.Seccomp.self, from: Data(#"{"defaultAction": "SCMP_ACT_BOGUS"}"#.utf8))
        let out = try f.run(["true"])
        #expect(out.status != 0)
        #expect(out.stderr == "ipactr-runtime: seccomp action SCMP_ACT_BOGUS is not supported\n")
    }
}
