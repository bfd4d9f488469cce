import Foundation
import Testing
@testable import IpactrMachine
import IpactrSystem

/// `ipactr monitor NAME` as ipactr@NAME.service runs it (Type=notify): with
/// $NOTIFY_SOCKET set it tells the service manager READY=1 once the
/// machine's systemd has, and STOPPING=1 on the way down. A NotifySocket
/// plays systemd.
@Suite(.serialized) struct MonitorNotifyTests {
    @Test func monitorNotifiesItsServiceManager() throws {
        let f = try MachineFixture()
        // A stopped machine, as `ipactr boot` + `poweroff` leave one for its unit.
        try #require(try f.ipactr(["boot", "debian", "--name", "unit1"]).status == 0)
        try #require(try f.ipactr(["poweroff", "unit1"]).status == 0)

        let dir = "/tmp/ipactr-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { try? removeTree(dir) }
        let systemd = try NotifySocket(path: dir + "/notify")

        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = systemd.path
        let argv = [ipactrExecutable, "monitor", "unit1", "--root", f.root]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, dir + "/out", O_WRONLY | O_CREAT, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, dir + "/out", O_WRONLY | O_CREAT | O_APPEND, 0o600)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { cEnv.forEach { free($0) } }
        var pid: pid_t = 0
        try #require(posix_spawn(&pid, argv[0], &actions, &attr, cArgs, cEnv) == 0)
        var reaped = false
        defer {
            if !reaped {
                kill(pid, SIGKILL)
                var st: Int32 = 0
                waitpid(pid, &st, 0)
            }
        }

        /// Messages until one satisfies `done` (bounded so a broken monitor cannot hang the test).
        func receive(until done: (NotifySocket.Message) -> Bool) throws -> [NotifySocket.Message] {
            var got: [NotifySocket.Message] = []
            for _ in 0..<240 {
                if let m = try systemd.receive(timeoutMilliseconds: 500) {
                    got.append(m)
                    if done(m) { break }
                }
            }
            return got
        }
        let boot = try receive { $0.ready }
        let ready = try #require(boot.last, "no message from the monitor: \((try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? "")")
        #expect(ready.ready)
        #expect(ready.status == "machine unit1 is running")
        // READY=1 means the machine is up, not merely started.
        let s = try f.summary("unit1")
        #expect(s.state == "running" && s.ready)

        // SIGTERM is what systemd sends the unit's main process (KillMode=mixed).
        kill(pid, SIGTERM)
        let down = try receive { $0.stopping }
        #expect(down.last?.stopping == true)
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        reaped = true
        #expect((st & 0x7f) == 0 && (st >> 8) & 0xff == 0, "monitor status \(st)")
        #expect(try f.summary("unit1").state == "stopped")
    }
}
