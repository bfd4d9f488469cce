import Foundation
import Testing
import IpactrTestSupport
@testable import IpactrMachine
import IpactrSystem

/// `ipactr boot` of the Debian 12 systemd test image, checked from the host
/// the way a user would. Serialized: machines are heavy on a 2-core host.
@Suite(.serialized) struct BootTests {
    @Test func bootsSystemdInUserAndCgroupNamespacesAndPowersOff() throws {
        let f = try MachineFixture()
        let boot = try f.ipactr(["boot", "debian", "--name", "m1"])
        try #require(boot.status == 0, "boot failed: \(boot.stderr)")
        let s = try f.summary("m1")
        #expect(s.state == "running" && s.ready)
        let leader = try #require(s.leader)
        let range = try MachineManager(root: f.root).load("m1").range

        // PID 1 is systemd, root inside is an unprivileged range outside.
        #expect(try String(contentsOfFile: "/proc/\(leader)/comm", encoding: .utf8) == "systemd\n")
        let uidMap = try String(contentsOfFile: "/proc/\(leader)/uid_map", encoding: .utf8)
            .split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        #expect(uidMap == ["0", String(range.base), "65536"])
        #expect(range.base != 0)
        #expect(try f.systemState("m1") == "running")

        // The payload cgroup belongs to the machine's root, its parent does not;
        // inside, PID 1 sits at the root of its own cgroup namespace.
        let cg = try cgroup2Mount() + f.paths.cgroup("m1")
        #expect(owner(of: cg + "/payload")! == (range.base, range.base))
        #expect(owner(of: cg + "/payload/cgroup.procs")! == (range.base, range.base))
        #expect(owner(of: cg + "/payload/cgroup.max.depth")! == (0, 0))
        #expect(owner(of: cg)! == (0, 0))
        #expect(try f.inside("m1", "grep ^0:: /proc/1/cgroup").line == "0::/init.scope")
        // Its own subtree is writable; /sys and the rest are not.
        #expect(try f.inside("m1", "mkdir /sys/fs/cgroup/probe && rmdir /sys/fs/cgroup/probe").status == 0)
        #expect(try f.inside("m1", "echo 1 > /sys/fs/cgroup/../cgroup/cgroup.procs.nope").status != 0)
        #expect(try f.inside("m1", "touch /sys/kernel/probe").status != 0)
        #expect(try f.inside("m1", "grep -E ' /sys (ro|rw),' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1").line == "ro")
        // The Container Interface: container=, the uuid, /run/host.
        #expect(try f.inside("m1", "tr '\\0' '\\n' < /proc/1/environ | grep ^container=").line == "container=ipactr")
        #expect(try f.inside("m1", "cat /run/host/container-manager").line == "ipactr")
        #expect(try f.inside("m1", "systemd-detect-virt -c").line == "container-other")

        // /dev/console is a pty the monitor keeps; what reaches it is in `logs`.
        #expect(try f.inside("m1", "test -c /dev/console && echo via-console > /dev/console").status == 0)
        #expect(eventually(10) { ((try? f.ipactr(["logs", "m1"]).stdout) ?? "").contains("via-console") })
        #expect(try f.ipactr(["logs", "m1"]).stdout.contains("Welcome to"))
        // `logs -f` prints what comes after it started, while the machine runs.
        let followed = f.root + "-logs-follow"
        let follower = try spawn([ipactrExecutable, "logs", "-f", "m1"], stdout: followed, stderr: "/dev/null",
                                 environment: f.daemon.environment)
        defer { killAndReap(follower); unlink(followed) }
        #expect(eventually(10) { ((try? String(contentsOfFile: followed, encoding: .utf8)) ?? "").contains("via-console") })
        #expect(try f.inside("m1", "echo after-follow > /dev/console").status == 0)
        #expect(eventually(10) { ((try? String(contentsOfFile: followed, encoding: .utf8)) ?? "").contains("after-follow") },
                "logs -f did not print what came later")

        // `status` judges readiness as FreeIPA's tests do, failed units listed.
        var status = try f.summary("m1")
        #expect(status.systemState == "running")
        #expect(status.failedUnits == [])
        _ = try f.inside("m1", "systemd-run --unit=ipactr-probe-fails -p Type=oneshot /bin/false")
        status = try f.summary("m1")
        #expect(status.systemState == "degraded")
        #expect(status.failedUnits == ["ipactr-probe-fails.service"])
        let text = try f.ipactr(["status", "m1"]).stdout
        #expect(text.contains("System: degraded (systemctl is-system-running)"))
        #expect(text.contains("Failed: ipactr-probe-fails.service"))

        let off = try f.ipactr(["poweroff", "m1"])
        #expect(off.status == 0, "poweroff: \(off.stderr)")
        #expect(off.line == "m1 stopped (exit status 0)")
        try f.expectNothingLeft("m1", leader: leader, range: range)
    }

    /// Ctrl-C (SIGINT) of `ipactr exec` reaches the command, whose status
    /// comes back (130); a CLI killed outright hangs the command up (SIGHUP):
    /// nothing keeps running in the machine for a caller that is gone.
    @Test func execPassesTheCallersSignalsOn() throws {
        let f = try MachineFixture()
        try #require(try f.ipactr(["boot", "debian", "--name", "sig"]).status == 0)
        let payload = try cgroup2Mount() + f.paths.cgroup("sig") + "/payload"
        /// The exec'd `sleep SECONDS` as the host sees it, once it runs.
        func sleeper(_ seconds: String) -> Int32? {
            var found: Int32?
            _ = eventually(30) {
                let procs = (try? String(contentsOfFile: payload + "/ipactr-exec/cgroup.procs", encoding: .utf8)) ?? ""
                found = procs.split(separator: "\n").compactMap { Int32($0) }.first {
                    (try? String(contentsOfFile: "/proc/\($0)/cmdline", encoding: .utf8)) == "sleep\0\(seconds)\0"
                }
                return found != nil
            }
            return found
        }
        let interrupted = try spawn([ipactrExecutable, "exec", "sig", "sleep", "301"], stdout: "/dev/null", stderr: "/dev/null",
                                    environment: f.daemon.environment)
        defer { killAndReap(interrupted) }
        let first = try #require(sleeper("301"), "the exec'd command never ran")
        kill(interrupted, SIGINT)
        var st: Int32 = 0
        #expect(eventually(30) { waitpid(interrupted, &st, WNOHANG) == interrupted }, "ipactr exec did not return after SIGINT")
        #expect((st & 0x7f) == 0 && (st >> 8) & 0xff == 130, "status \(st)")
        #expect(eventually(30) { kill(first, 0) != 0 }, "the command outlived the interrupted exec")

        let killed = try spawn([ipactrExecutable, "exec", "sig", "sleep", "302"], stdout: "/dev/null", stderr: "/dev/null",
                               environment: f.daemon.environment)
        let second = try #require(sleeper("302"), "the exec'd command never ran")
        killAndReap(killed)
        #expect(eventually(30) { kill(second, 0) != 0 }, "the command outlived a killed ipactr exec")
        #expect(try f.ipactr(["poweroff", "sig"]).status == 0)
    }

    @Test func execAndShellRunInTheMachinesNamespacesAndCgroup() throws {
        let f = try MachineFixture()
        try #require(try f.ipactr(["boot", "debian", "--name", "x"]).status == 0)
        let leader = try f.leader("x")
        // Exit status passes through; stdout comes back.
        #expect(try f.ipactr(["exec", "x", "/bin/sh", "-c", "exit 7"]).status == 7)
        let r = try f.ipactr(["exec", "x", "hostname"])
        #expect(r.status == 0 && r.line == "x")
        // Same namespaces as PID 1, and inside the machine's cgroup namespace.
        for ns in ["mnt", "pid", "user", "uts", "ipc", "net", "cgroup"] {
            let mine = try f.ipactr(["exec", "x", "readlink", "/proc/self/ns/\(ns)"]).line
            let pid1 = try readLink("/proc/\(leader)/ns/\(ns)")
            #expect(mine == pid1, "\(ns): \(mine) != \(pid1)")
        }
        // exec's processes sit in a sub-cgroup of the payload, never in the payload itself
        // (where v2 controllers forbid processes), owned like the payload.
        #expect(try f.ipactr(["exec", "x", "grep", "^0::", "/proc/self/cgroup"]).line == "0::/ipactr-exec")
        let range = try MachineManager(root: f.root).load("x").range
        let payload = try cgroup2Mount() + f.paths.cgroup("x") + "/payload"
        #expect(owner(of: payload + "/ipactr-exec")! == (range.base, range.base))
        #expect(owner(of: payload + "/ipactr-exec/cgroup.procs")! == (range.base, range.base))
        // Seen from the host: a long-running exec'd process.
        let client = try spawn([ipactrExecutable, "exec", "x", "sleep", "300"], stdout: "/dev/null", stderr: "/dev/null",
                               environment: f.daemon.environment)
        defer { killAndReap(client) }
        var sleeper: Int32?
        #expect(eventually(30) {
            let procs = (try? String(contentsOfFile: payload + "/ipactr-exec/cgroup.procs", encoding: .utf8)) ?? ""
            sleeper = procs.split(separator: "\n").compactMap { Int32($0) }.first {
                (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8)) == "sleep\n"
            }
            return sleeper != nil
        })
        if let sleeper {
            let line = try String(contentsOfFile: "/proc/\(sleeper)/cgroup", encoding: .utf8)
                .split(separator: "\n").first { $0.hasPrefix("0::") }
            #expect(line.map(String.init) == "0::" + f.paths.cgroup("x") + "/payload/ipactr-exec")
            #expect(try String(contentsOfFile: payload + "/cgroup.procs", encoding: .utf8).isEmpty)
            #expect(try f.systemState("x") == "running")
            kill(sleeper, SIGKILL)
        }
        // PID 1's notify socket is not handed on.
        #expect(try f.inside("x", "echo \"[$NOTIFY_SOCKET]\"").line == "[]")
        let missing = try f.ipactr(["exec", "x", "/nonexistent"])
        #expect(missing.status != 0 && missing.stderr.hasPrefix("ipactr: "))
        // `shell`: a login shell on a pty, driven through script(1) as a user's terminal.
        let input = f.root + "-shell-input"
        try "echo hi-from-$(hostname); tty; exit 5\n".write(toFile: input, atomically: false, encoding: .utf8)
        defer { unlink(input) }
        let shell = try capture(["/bin/sh", "-c", "script -qec 'env DBUS_SYSTEM_BUS_ADDRESS=\(f.daemon.bus.address) \(ipactrExecutable) shell x' /dev/null < \(input)"])
        #expect(shell.status == 5)
        #expect(shell.stdout.contains("hi-from-x"))
        #expect(shell.stdout.contains("/dev/pts/"))
        let oneCommand = try capture(["/bin/sh", "-c", "script -qec 'env DBUS_SYSTEM_BUS_ADDRESS=\(f.daemon.bus.address) \(ipactrExecutable) shell x /bin/sh -c \"test -t 0 && echo on-a-tty\"' /dev/null < /dev/null"])
        #expect(oneCommand.status == 0 && oneCommand.stdout.contains("on-a-tty"))
        // The caller's window size, and its changes while the shell runs, reach the
        // machine's pty: the terminal is resized once the shell inside has said its size.
        let marker = f.root + "/machines/x/upper/root/resize-me", outer = f.root + "-resize.sh"
        try """
            stty rows 40 cols 100
            ( i=0; while [ ! -e \(marker) ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; stty rows 50 cols 120 < /dev/tty ) &
            env DBUS_SYSTEM_BUS_ADDRESS=\(f.daemon.bus.address) \(ipactrExecutable) shell x /bin/sh -c 'stty size; touch /root/resize-me; i=0; while [ "$(stty size)" = "40 100" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; stty size'
            wait

            """.write(toFile: outer, atomically: false, encoding: .utf8)
        defer { unlink(outer) }
        let resized = try capture(["/bin/sh", "-c", "script -qec '/bin/sh \(outer)' /dev/null < /dev/null"])
        // script(1) may put control characters (^D echoed as ^@…) before a line.
        let sizes = resized.stdout.split(whereSeparator: { $0.isNewline })
            .map { String($0.drop(while: { !$0.isNumber })) }
            .filter { !$0.isEmpty && $0.allSatisfy { $0.isNumber || $0 == " " } }
        #expect(resized.status == 0 && sizes == ["40 100", "50 120"], "\(resized.stdout) \(resized.stderr)")

        #expect(try f.ipactr(["poweroff", "x"]).status == 0)
        let stopped = try f.ipactr(["exec", "x", "true"])
        #expect(stopped.status != 0 && stopped.stderr == "ipactr: machine x is not running\n")
    }

    @Test func optionsAndLifecycleVerbs() throws {
        let f = try MachineFixture()
        let control = MachineControl(root: f.root, monitorExecutable: workerExecutable)
        let boot = try f.ipactr(["boot", "debian", "--name", "o", "--tmpfs", "/srv/scratch", "--ephemeral", "--network", "host",
                                 "--env", "FOO=bar", "--hostname", "box.example.test"])
        try #require(boot.status == 0, "boot: \(boot.stderr)")
        #expect(try f.inside("o", "stat -f -c %T /srv/scratch").line == "tmpfs")
        #expect(try f.inside("o", "readlink /proc/self/ns/net").line == (try readLink("/proc/self/ns/net")))
        #expect(try f.inside("o", "tr '\\0' '\\n' < /proc/1/environ | grep ^FOO=").line == "FOO=bar")
        #expect(try f.inside("o", "hostname").line == "box.example.test")
        // --ephemeral: changes live on a tmpfs and are gone at poweroff.
        #expect(try f.inside("o", "echo x > /root/ephemeral").status == 0)
        #expect(!FileManager.default.fileExists(atPath: f.root + "/machines/o/upper"))

        // reboot: systemd goes down and the monitor starts PID 1 again.
        let first = try f.leader("o")
        #expect(try f.ipactr(["reboot", "o"]).status == 0)
        #expect(eventually(60) { (try? f.summary("o")).map { $0.ready && $0.leader != nil && $0.leader != first } ?? false })
        #expect(try f.systemState("o") == "running")

        // kill: SIGRTMIN+4 is systemd's poweroff.
        #expect(try f.ipactr(["kill", "o", "--signal", "RTMIN+4"]).status == 0)
        #expect(control.waitStopped("o", timeoutSeconds: 60))
        #expect(try f.summary("o").lastExitStatus == 0)
        #expect(try f.ipactr(["start", "o"]).status == 0)
        #expect(try f.inside("o", "test -e /root/ephemeral").status != 0)

        // terminate: SIGKILL, reported as 128+9.
        let leader = try f.leader("o")
        #expect(try f.ipactr(["terminate", "o"]).status == 0)
        #expect(try f.summary("o").lastExitStatus == 137)
        try f.expectNothingLeft("o", leader: leader)
        // rm refuses a running machine without --force.
        #expect(try f.ipactr(["start", "o"]).status == 0)
        let refused = try f.ipactr(["rm", "o"])
        #expect(refused.status != 0 && refused.stderr.hasPrefix("ipactr: machine o is running"))
        #expect(try f.ipactr(["rm", "--force", "o"]).status == 0)
    }

    @Test func bootConsoleFollowsAndExitsWithPID1sStatus() throws {
        let f = try MachineFixture()
        let out = f.root + "-console.out", err = f.root + "-console.err"
        defer { unlink(out); unlink(err) }
        let pid = try spawn([ipactrExecutable, "boot", "debian", "--name", "c", "--console"], stdout: out, stderr: err,
                            environment: f.daemon.environment)
        let manager = MachineManager(root: f.root)
        #expect(eventually(60) { manager.status("c")?.ready == true })
        _ = try f.inside("c", "systemctl exit 4")
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        #expect((st >> 8) & 0xff == 4)
        #expect(try String(contentsOfFile: out, encoding: .utf8).contains("Welcome to"))
    }

    /// Two state roots on one host never hand out the same ids.
    @Test func uidRangesAreHostWide() throws {
        let a = try MachineFixture(), b = try MachineFixture()
        try #require(try a.ipactr(["boot", "debian", "--name", "same"]).status == 0)
        let range = try MachineManager(root: a.root).load("same").range
        // The same name in another root would hash to the same range: it gets another.
        try #require(try b.ipactr(["boot", "debian", "--name", "same"]).status == 0)
        #expect(!(try MachineManager(root: b.root).load("same").range).overlaps(range))
        #expect(try b.ipactr(["poweroff", "same"]).status == 0)
        // Asked for explicitly, a range in use is refused.
        let clash = try b.ipactr(["boot", "debian", "--name", "clash", "--uid-range", String(range.base)])
        #expect(clash.status != 0)
        #expect(clash.stderr.contains("in use"), "\(clash.stderr)")
        #expect(FileManager.default.fileExists(atPath: MachinePaths.rangeLock(range)))
        #expect(try a.ipactr(["poweroff", "same"]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: MachinePaths.rangeLock(range)))
    }

    @Test func exitStatusOfPID1IsTheMachines() throws {
        let f = try MachineFixture()
        try #require(try f.ipactr(["boot", "debian", "--name", "ex"]).status == 0)
        let leader = try f.leader("ex")
        _ = try f.inside("ex", "systemctl exit 3")
        #expect(MachineControl(root: f.root, monitorExecutable: workerExecutable).waitStopped("ex", timeoutSeconds: 60))
        #expect(try f.summary("ex").lastExitStatus == 3)
        #expect(try f.summary("ex").state == "stopped")
        try f.expectNothingLeft("ex", leader: leader)
    }

    @Test func twoMachinesFromOneImageKeepTheirChangesApart() throws {
        let f = try MachineFixture()
        try #require(try f.ipactr(["boot", "debian", "--name", "a"]).status == 0)
        try #require(try f.ipactr(["boot", "debian", "--name", "b"]).status == 0)
        let ra = try MachineManager(root: f.root).load("a").range, rb = try MachineManager(root: f.root).load("b").range
        #expect(!ra.overlaps(rb))
        #expect(try f.inside("a", "echo from-a > /root/marker").status == 0)
        #expect(try f.inside("a", "cat /root/marker").line == "from-a")
        #expect(try f.inside("b", "test -e /root/marker").status != 0)
        // The shared layers are untouched: the write went to a's upper dir.
        let layers = try capture(["/usr/bin/find", f.root + "/images/layers", "-name", "marker"])
        #expect(layers.line.isEmpty)
        #expect(FileManager.default.fileExists(atPath: f.root + "/machines/a/upper/root/marker"))
        #expect(try f.ipactr(["poweroff", "a", "b"]).status == 0)
        // The image the machines are made from cannot go while they exist.
        let rmi = try f.ipactr(["rmi", "debian"])
        #expect(rmi.status != 0 && rmi.stderr == "ipactr: image debian is used by machines a, b (remove them first)\n", "\(rmi.stderr)")
        #expect(try f.ipactr(["rm", "a", "b"]).status == 0)
        #expect(try f.ipactr(["rmi", "debian"]).status == 0)
    }

    @Test func readOnlyRootWithAVolumeThatOutlivesTheMachine() throws {
        let f = try MachineFixture()
        let volume = f.root + "-volume"
        try FileManager.default.createDirectory(atPath: volume, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: volume) }
        // Without idmapping (:noidmap), the volume must belong to the machine's root.
        let base: UInt32 = 1_048_576 * 64
        #expect(chown(volume, base, base) == 0)
        let args = ["boot", "debian", "--name", "ro", "--read-only", "--uid-range", String(base), "--volume", "\(volume):/var/lib/data:noidmap"]
        let boot = try f.ipactr(args)
        try #require(boot.status == 0, "boot: \(boot.stderr)")
        #expect(try f.inside("ro", "touch /etc/probe").status != 0)
        #expect(try f.inside("ro", "echo kept > /var/lib/data/file").status == 0)
        #expect(try f.ipactr(["poweroff", "ro"]).status == 0)
        #expect(try f.ipactr(["rm", "ro"]).status == 0)
        #expect(try String(contentsOfFile: volume + "/file", encoding: .utf8) == "kept\n")
        try #require(try f.ipactr(args).status == 0)
        #expect(try f.inside("ro", "cat /var/lib/data/file").line == "kept")
        #expect(try f.ipactr(["poweroff", "ro"]).status == 0)
    }

    /// Volumes are idmapped by default.
    @Test func idmappedVolumeKeepsHostOwners() throws {
        let f = try MachineFixture()
        let volume = f.root + "-idmap-volume"
        try FileManager.default.createDirectory(atPath: volume, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: volume) }
        try "x".write(toFile: volume + "/dirsrv-file", atomically: false, encoding: .utf8)
        #expect(chown(volume + "/dirsrv-file", 389, 389) == 0)
        let boot = try f.ipactr(["boot", "debian", "--name", "iv", "--volume", "\(volume):/data"])
        try #require(boot.status == 0, "boot: \(boot.stderr)")
        // Inside, the host's owners are the machine's own ids…
        #expect(try f.inside("iv", "stat -c %u:%g /data /data/dirsrv-file").line == "0:0\n389:389")
        #expect(try f.inside("iv", "echo new > /data/made-inside && chown 123:456 /data/made-inside").status == 0)
        #expect(try f.ipactr(["poweroff", "iv"]).status == 0)
        // …and what the machine writes lands unshifted on the host.
        #expect(owner(of: volume + "/made-inside")! == (123, 456))
        #expect(Mount.mountPoints(under: f.paths.run("iv")).isEmpty)
    }

    @Test func machineOutlivesTheCLIThatBootedIt() throws {
        let f = try MachineFixture()
        var pid: pid_t = 0
        let argv = [ipactrExecutable, "boot", "debian", "--name", "orphan"]
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = f.daemon.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }
        try #require(posix_spawn(&pid, argv[0], nil, nil, cArgs, cEnv) == 0)
        // Kill the CLI while it waits for READY=1.
        let manager = MachineManager(root: f.root)
        for _ in 0..<200 where !manager.isRunning("orphan") { usleep(10_000) }
        kill(pid, SIGKILL)
        waitpid(pid, nil, 0)
        var ready = false
        for _ in 0..<300 {
            if manager.status("orphan")?.ready == true { ready = true; break }
            usleep(100_000)
        }
        #expect(ready)
        #expect(try f.systemState("orphan") == "running")
        #expect(try f.ipactr(["poweroff", "orphan"]).status == 0)
    }

    @Test func shiftedCopyWhereIdmappingIsNotUsed() throws {
        let f = try MachineFixture()
        let boot = try f.ipactr(["boot", "debian", "--name", "copy", "--rootfs", "shifted-copy"])
        try #require(boot.status == 0, "boot: \(boot.stderr)")
        let s = try f.summary("copy")
        #expect(s.rootfs == "shifted-copy")
        let range = try MachineManager(root: f.root).load("copy").range
        #expect(owner(of: f.root + "/machines/copy/rootfs/etc/passwd")! == (range.base, range.base))
        #expect(try f.systemState("copy") == "running")
        let leader = try f.leader("copy")
        #expect(try f.ipactr(["poweroff", "copy"]).status == 0)
        try f.expectNothingLeft("copy", leader: leader, range: range)
    }

    @Test func aBootThatFailsSaysWhyAndLeavesNothing() throws {
        let f = try MachineFixture(images: [])
        // An init that says something on the console and exits 3.
        let rootfs = f.root + "-failing-rootfs"
        defer { try? removeTree(rootfs) }
        for d in ["bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", "root"] {
            try FileManager.default.createDirectory(atPath: "\(rootfs)/\(d)", withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
        try "#!/bin/busybox sh\necho init is failing on purpose\nexit 3\n".write(toFile: rootfs + "/sbin/init", atomically: false, encoding: .utf8)
        #expect(chmod(rootfs + "/sbin/init", 0o755) == 0)
        try #require(try f.ipactr(["import-fs", rootfs, "failing"]).status == 0)

        let boot = try f.ipactr(["boot", "failing", "--name", "dies", "--timeout", "30"])
        #expect(boot.status != 0)
        #expect(boot.stderr.hasSuffix("ipactr: machine dies stopped during boot (PID 1 exit status 3)\n"), "\(boot.stderr)")
        #expect(boot.stderr.contains("last console lines:\n  init is failing on purpose\n"), "\(boot.stderr)")
        #expect(try f.ipactr(["list"]).stdout.contains("dies") == false)
        try f.expectNothingLeft("dies", leader: nil)
    }

    @Test func badInputGetsOneLineAndNoMachine() throws {
        let f = try MachineFixture()
        let cases: [([String], String)] = [
            (["boot", "nosuchimage"], "ipactr: "),
            (["boot", "debian", "--name", "bad/name"], "ipactr: invalid machine name"),
            (["boot", "debian", "--volume", "relative:/x"], "ipactr: bad --volume"),
            (["boot", "debian", "--volume", "/nonexistent-\(getpid()):/x"], "ipactr: volume /nonexistent"),
            (["boot", "debian", "--uid-range", "12345"], "ipactr: uid range base 12345 is not a multiple of 65536"),
            (["boot", "debian", "--network", "host", "--publish", "8080:80"], "ipactr: --publish needs --network private"),
            (["poweroff", "ghost"], "ipactr: no machine named \"ghost\""),
        ]
        for (args, prefix) in cases {
            let r = try f.ipactr(args)
            #expect(r.status != 0, "\(args)")
            #expect(r.stderr.hasPrefix(prefix), "\(args): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
        }
        #expect(MachineManager(root: f.root).names().isEmpty)
    }
}
