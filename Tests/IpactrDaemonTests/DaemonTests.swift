import Foundation
import IpactrTestSupport
import Testing
import IpactrMachine
import IpactrSystem

/// ipactrd as a user meets it: the built binary on a system-like bus with
/// the shipped policy, driven with busctl as root and as nobody.
/// Serialized: machines are heavy on a 2-core host.
@Suite(.serialized) struct DaemonTests {
    @Test func introspectionListsTheWholeAPI() throws {
        let f = try DaemonFixture()
        let manager = try f.busctl(["introspect", "--xml-interface", DaemonFixture.name, "/org/ipactr1"])
        try #require(manager.status == 0, "\(manager.stderr)")
        for method in ["ListMachines", "GetMachine", "ListJobs", "BootMachine", "StartMachine", "PoweroffMachine", "RebootMachine",
                       "TerminateMachine", "KillMachine", "RemoveMachine", "ListImages", "GetImage", "RemoveImage",
                       "DescribeMachines", "DescribeMachine", "GetSystemState", "ConsoleTail", "ReadConsole", "ExecMachine",
                       "ShellMachine", "ImportImage", "PullImage", "PruneImages", "DescribeImages", "InspectImage"] {
            #expect(manager.stdout.contains("<method name=\"\(method)\""), "\(method) missing")
        }
        #expect(manager.stdout.contains("<signal name=\"MachineNew\">"))
        #expect(manager.stdout.contains("<signal name=\"MachineRemoved\">"))
        #expect(manager.stdout.contains("<signal name=\"JobNew\">"))
        #expect(manager.stdout.contains("<signal name=\"JobRemoved\">"))
        #expect(manager.stdout.contains("<node name=\"image\"/>"))

        // The image is an object with its properties; nobody may read them.
        let get = try f.call("GetImage", ["s", "debian"], asNobody: true)
        #expect(get.line == "o \"/org/ipactr1/image/debian\"", "\(get.stderr)")
        let image = try f.busctl(["introspect", DaemonFixture.name, "/org/ipactr1/image/debian", "org.ipactr1.Image"], asNobody: true)
        #expect(image.status == 0, "\(image.stderr)")
        for p in ["Name", "Id", "Size", "Created", "Layers"] { #expect(image.stdout.contains(".\(p) "), "\(p) missing") }
        let id = try f.busctl(["get-property", DaemonFixture.name, "/org/ipactr1/image/debian", "org.ipactr1.Image", "Id"], asNobody: true)
        let inspect = try f.ipactr(["image", "inspect", "debian"])
        #expect(id.line.hasPrefix("s \"sha256:"), "\(id.stderr)")
        #expect(inspect.stdout.contains(String(id.line.dropFirst(3).dropLast())))
        let list = try f.call("ListImages", asNobody: true)
        #expect(list.line.hasPrefix("a(ssto) 1 \"debian\" \"sha256:"), "\(list.stderr)")
    }

    @Test func badInputGetsOneClearError() throws {
        let f = try DaemonFixture()
        let noMachine = try f.call("GetMachine", ["s", "nope"])
        #expect(noMachine.status != 0)
        #expect(noMachine.stderr.contains("org.ipactr1.Error.NotFound") || noMachine.stderr.contains("no machine named \"nope\""),
                "\(noMachine.stderr)")
        let noImage = try f.call("GetImage", ["s", "nope"])
        #expect(noImage.stderr.contains("no image \"nope\""), "\(noImage.stderr)")
        // busctl prints the message; the error name is checked through the
        // CLI-independent --json output of a monitor-free call below.
        let poweroff = try f.call("PoweroffMachine", ["su", "nope", "0"])
        #expect(poweroff.status != 0 && poweroff.stderr.contains("no machine named \"nope\""), "\(poweroff.stderr)")
        let bootUnknown = try f.call("BootMachine", ["ssa{sv}", "nope", "m", "0"])
        #expect(bootUnknown.stderr.contains("no image \"nope\""), "\(bootUnknown.stderr)")
        let badOption = try f.call("BootMachine", ["ssa{sv}", "debian", "m", "1", "Colour", "s", "red"])
        #expect(badOption.stderr.contains("unknown boot option \"Colour\""), "\(badOption.stderr)")
        let badType = try f.call("BootMachine", ["ssa{sv}", "debian", "m", "1", "ReadOnly", "s", "yes"])
        #expect(badType.stderr.contains("boot option ReadOnly takes type \"b\""), "\(badType.stderr)")
        let badName = try f.call("BootMachine", ["ssa{sv}", "debian", "../x", "0"])
        #expect(badName.stderr.contains("invalid machine name"), "\(badName.stderr)")
        // Nothing was left behind by the refused boots.
        #expect(MachineManager(root: f.root).names().isEmpty)
        let list = try f.call("ListMachines")
        #expect(list.line == "a(sso) 0", "\(list.stderr)")
    }

    /// ipactrd's own bad input: one line, non-zero, and the running daemon untouched.
    @Test func daemonStartupErrors() throws {
        let f = try DaemonFixture(importDebian: false)
        let second = try capture([builtExecutable("ipactrd"), "--root", f.root, "--bus", f.bus.address,
                                  "--monitor", builtExecutable("ipactr-worker")])
        #expect(second.status != 0)
        #expect(second.stderr.hasPrefix("ipactrd: ") && second.stderr.split(separator: "\n").count == 1, "\(second.stderr)")
        #expect(second.stderr.contains("org.ipactr1"), "\(second.stderr)")
        let noMonitor = try capture([builtExecutable("ipactrd"), "--root", f.root, "--bus", f.bus.address, "--monitor", "/nonexistent/ipactr"])
        #expect(noMonitor.status != 0)
        #expect(noMonitor.stderr == "ipactrd: the monitor binary /nonexistent/ipactr is not executable (use --monitor PATH)\n")
        let noBus = try capture([builtExecutable("ipactrd"), "--root", f.root, "--bus", "unix:path=\(f.bus.directory)/none",
                                 "--monitor", builtExecutable("ipactr-worker")])
        #expect(noBus.status != 0)
        #expect(noBus.stderr.hasPrefix("ipactrd: ") && noBus.stderr.split(separator: "\n").count == 1, "\(noBus.stderr)")
        #expect(try f.call("ListMachines").line == "a(sso) 0")
    }

    /// The error names, as a client library sees them (gdbus prints the name).
    @Test func errorsAreOrgIpactr1Errors() throws {
        let f = try DaemonFixture(importDebian: false)
        let r = try capture(["/usr/bin/gdbus", "call", "--address", f.bus.address, "--dest", DaemonFixture.name,
                             "--object-path", "/org/ipactr1", "--method", "org.ipactr1.Manager.GetMachine", "nope"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("org.ipactr1.Error.NotFound"), "\(r.stderr)")
        let img = try capture(["/usr/bin/gdbus", "call", "--address", f.bus.address, "--dest", DaemonFixture.name,
                               "--object-path", "/org/ipactr1", "--method", "org.ipactr1.Manager.GetImage", "nope"])
        #expect(img.stderr.contains("org.ipactr1.Error.NotFound"), "\(img.stderr)")
    }

    @Test func nobodyMayReadButNotChange() throws {
        let f = try DaemonFixture()
        #expect(try f.call("ListMachines", asNobody: true).status == 0)
        #expect(try f.call("ListImages", asNobody: true).status == 0)
        #expect(try f.busctl(["introspect", DaemonFixture.name, "/org/ipactr1"], asNobody: true).status == 0)
        // The shipped policy refuses every change before it reaches ipactrd.
        for (method, args) in [("BootMachine", ["ssa{sv}", "debian", "x", "0"]), ("RemoveImage", ["s", "debian"]),
                               ("PoweroffMachine", ["su", "x", "0"]), ("KillMachine", ["si", "x", "9"])] {
            let r = try f.call(method, args, asNobody: true)
            #expect(r.status != 0)
            #expect(r.stderr.contains("Access denied") || r.stderr.contains("AccessDenied"), "\(method): \(r.stderr)")
        }
        #expect(try f.ipactr(["images"]).stdout.contains("debian"))
        #expect(MachineManager(root: f.root).names().isEmpty)

        // The same through the CLI: reading works for nobody, changing is refused in one line.
        let images = try capture([builtExecutable("ipactr"), "images"], environment: f.environment, asNobody: true)
        #expect(images.status == 0 && images.stdout.contains("debian"), "\(images.stderr)")
        #expect(try capture([builtExecutable("ipactr"), "list"], environment: f.environment, asNobody: true).status == 0)
        for args in [["boot", "debian"], ["rmi", "debian"], ["image", "prune"], ["import", debianOCI, "other"], ["exec", "x", "true"]] {
            let r = try capture([builtExecutable("ipactr")] + args, environment: f.environment, asNobody: true)
            #expect(r.status != 0, "\(args)")
            #expect(r.stderr.hasPrefix("ipactr: ") && r.stderr.filter { $0 == "\n" }.count == 1, "\(args): \(r.stderr)")
            #expect(r.stderr.contains("ccess denied") || r.stderr.contains("only allowed for root"), "\(args): \(r.stderr)")
        }
        #expect(try f.ipactr(["images"]).stdout.contains("debian"))
        #expect(MachineManager(root: f.root).names().isEmpty)
    }

    /// Every verb goes through ipactrd: without it (no daemon on the bus, or
    /// no bus at all) the CLI says so in one line and how to start it.
    @Test func cliSaysWhenTheDaemonIsNotRunning() throws {
        let f = try DaemonFixture(importDebian: false)
        f.crashDaemon()
        var noBus = f.environment
        noBus["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=\(f.bus.directory)/none"
        for env in [f.environment, noBus] {
            for args in [["list"], ["images"], ["boot", "debian"], ["pull", "127.0.0.1:1/x"], ["exec", "x", "true"]] {
                let r = try capture([builtExecutable("ipactr")] + args, environment: env)
                #expect(r.status != 0, "\(args)")
                #expect(r.stderr.hasPrefix("ipactr: ") && r.stderr.filter { $0 == "\n" }.count == 1, "\(args): \(r.stderr)")
                #expect(r.stderr.contains("systemctl start ipactrd"), "\(args): \(r.stderr)")
            }
        }
        #expect(!FileManager.default.fileExists(atPath: f.root + "/machines"))
    }

    /// Where a policy lets a change through, ipactrd's own uid check refuses it.
    @Test func daemonRefusesChangesFromNonRootItself() throws {
        let open = """
            <policy context="default">
              <allow send_destination="org.ipactr1" send_interface="org.ipactr1.Manager"/>
            </policy>
            """
        let f = try DaemonFixture(extraPolicy: open)
        let r = try capture(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "/usr/bin/gdbus", "call", "--address", f.bus.address, "--dest", DaemonFixture.name,
                             "--object-path", "/org/ipactr1", "--method", "org.ipactr1.Manager.RemoveImage", "debian"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("org.ipactr1.Error.AccessDenied"), "\(r.stderr)")
        #expect(r.stderr.contains("only allowed for root, not for uid 65534"), "\(r.stderr)")
        #expect(try f.ipactr(["images"]).stdout.contains("debian"))
    }

    /// Boot through the bus, signals and properties, then kill -9 of ipactrd
    /// and a restart: the running machine is still running and listed so,
    /// the stopped one is listed as stopped.
    @Test func machinesSurviveADaemonCrash() throws {
        let f = try DaemonFixture()
        // busctl monitor for the signals, killed at the end.
        let monitorOut = f.logDirectory + "/monitor.json"
        let monitor = try spawn(["/usr/bin/busctl", "--address=\(f.bus.address)", "monitor", "--json=short", DaemonFixture.name],
                                stdout: monitorOut, stderr: f.logDirectory + "/monitor.err")
        defer { killAndReap(monitor) }
        func seen() -> String { (try? String(contentsOfFile: monitorOut, encoding: .utf8)) ?? "" }
        // The monitor is listening once it has shown a call.
        try #require(eventually(30) { _ = try? f.busctl(["call", DaemonFixture.name, "/", "org.freedesktop.DBus.Peer", "Ping"]); return seen().contains("\"Ping\"") })

        let boot = try f.call("BootMachine", ["ssa{sv}", "debian", "m1", "0"])
        try #require(boot.status == 0, "\(boot.stderr)")
        #expect(boot.line == "o \"/org/ipactr1/machine/m1\"")
        #expect(try f.machineProperty("m1", "State", asNobody: true) == "s \"running\"")
        #expect(try f.machineProperty("m1", "Ready") == "b true")
        #expect(try f.machineProperty("m1", "Name") == "s \"m1\"")
        #expect(try f.machineProperty("m1", "Image") == "s \"debian\"")
        let leaderText = try f.machineProperty("m1", "Leader")
        let leader = try #require(Int32(leaderText.dropFirst(2)), "\(leaderText)")
        #expect(leader > 0 && kill(leader, 0) == 0)
        let range = try MachineManager(root: f.root).load("m1").range
        #expect(try f.machineProperty("m1", "UIDRange") == "s \"\(range.description)\"")
        #expect(eventually(30) { seen().contains("\"member\":\"MachineNew\"") && seen().contains("\"m1\",\"/org/ipactr1/machine/m1\"") })

        // A second machine, stopped through the bus.
        try #require(try f.call("BootMachine", ["ssa{sv}", "debian", "m2", "1", "Network", "s", "private"]).status == 0)
        let off = try f.call("PoweroffMachine", ["su", "m2", "0"])
        #expect(off.line == "i 0", "\(off.stderr)")
        #expect(try f.machineProperty("m2", "State") == "s \"stopped\"")
        #expect(try f.machineProperty("m2", "LastExitStatus") == "i 0")
        #expect(try f.machineProperty("m2", "Leader") == "u 0")
        // PropertiesChanged told listeners about m2's State.
        #expect(eventually(30) {
            seen().split(separator: "\n").contains { $0.contains("\"PropertiesChanged\"") && $0.contains("/org/ipactr1/machine/m2") && $0.contains("\"State\"") }
        })

        f.crashDaemon()
        // The machine does not notice: its monitor owns it.
        #expect(kill(leader, 0) == 0)
        #expect(MachineManager(root: f.root).isRunning("m1"))
        try f.startDaemon()
        #expect(try f.machineProperty("m1", "State") == "s \"running\"")
        #expect(try f.machineProperty("m1", "Leader") == "u \(leader)")
        #expect(try f.machineProperty("m2", "State") == "s \"stopped\"")
        let list = try f.call("ListMachines")
        #expect(list.line == "a(sso) 2 \"m1\" \"running\" \"/org/ipactr1/machine/m1\" \"m2\" \"stopped\" \"/org/ipactr1/machine/m2\"",
                "\(list.stderr)")
        // Still controllable after the restart.
        #expect(try f.call("PoweroffMachine", ["su", "m1", "0"]).line == "i 0")
        #expect(kill(leader, 0) != 0)
        #expect(try f.call("RemoveMachine", ["s", "m2"]).status == 0)
        #expect(eventually(30) { seen().contains("\"member\":\"MachineRemoved\"") && seen().contains("\"m2\",\"/org/ipactr1/machine/m2\"") })
        #expect(try f.call("GetMachine", ["s", "m2"]).status != 0)
        // A used image cannot go.
        let rmi = try f.call("RemoveImage", ["s", "debian"])
        #expect(rmi.stderr.contains("used by machine m1"), "\(rmi.stderr)")
    }

    /// A crash in the middle of a boot: the machine's monitor finishes it,
    /// and the restarted daemon shows the machine running.
    @Test func aBootInterruptedByACrashIsFinished() throws {
        let f = try DaemonFixture()
        let boot = try spawn(["/usr/bin/busctl", "--address=\(f.bus.address)", "call", DaemonFixture.name, "/org/ipactr1",
                              DaemonFixture.manager, "BootMachine", "ssa{sv}", "debian", "c1", "0"],
                             stdout: f.logDirectory + "/boot.out", stderr: f.logDirectory + "/boot.err")
        defer { killAndReap(boot) }
        // Crash once the monitor runs and before the machine is ready.
        let manager = MachineManager(root: f.root)
        try #require(eventually(60) { manager.isRunning("c1") })
        f.crashDaemon()
        try f.startDaemon()
        #expect(eventually(60) { (try? f.machineProperty("c1", "Ready")) == "b true" })
        #expect(try f.machineProperty("c1", "State") == "s \"running\"")
        #expect(try f.call("ListJobs").line == "a(ussso) 0")
        #expect(try f.call("PoweroffMachine", ["su", "c1", "0"]).line == "i 0")
    }

    /// A boot is a job while it runs: JobNew, an org.ipactr1.Job object with
    /// its stage, JobRemoved with the result, then the method returns.
    @Test func bootIsAJob() throws {
        let f = try DaemonFixture()
        let monitorOut = f.logDirectory + "/monitor.json"
        let monitor = try spawn(["/usr/bin/busctl", "--address=\(f.bus.address)", "monitor", "--json=short", DaemonFixture.name],
                                stdout: monitorOut, stderr: f.logDirectory + "/monitor.err")
        defer { killAndReap(monitor) }
        func seen() -> String { (try? String(contentsOfFile: monitorOut, encoding: .utf8)) ?? "" }
        try #require(eventually(30) { _ = try? f.busctl(["call", DaemonFixture.name, "/", "org.freedesktop.DBus.Peer", "Ping"]); return seen().contains("\"Ping\"") })

        // The call in the background; the job is read while it runs (a boot
        // to READY=1 takes far longer than the two calls below).
        let bootOut = f.logDirectory + "/boot.out"
        let boot = try spawn(["/usr/bin/busctl", "--address=\(f.bus.address)", "call", DaemonFixture.name, "/org/ipactr1",
                              DaemonFixture.manager, "BootMachine", "ssa{sv}", "debian", "j1", "0"],
                             stdout: bootOut, stderr: f.logDirectory + "/boot.err")
        var bootReaped = false
        defer { if !bootReaped { killAndReap(boot) } }
        try #require(eventually(60) { seen().contains("\"member\":\"JobNew\"") })
        // Job 1 was the fixture's `ipactr import`.
        let jobs = try f.call("ListJobs", asNobody: true)
        #expect(jobs.line.hasPrefix("a(ussso) 1 2 \"boot\" \"j1\" "), "\(jobs.stdout) \(jobs.stderr)")
        let machine = try f.busctl(["get-property", DaemonFixture.name, "/org/ipactr1/job/2", "org.ipactr1.Job", "Machine"], asNobody: true)
        #expect(machine.line == "s \"j1\"", "\(machine.stderr)")

        var st: Int32 = 0
        while waitpid(boot, &st, 0) < 0 && errno == EINTR {}
        bootReaped = true
        #expect(try String(contentsOfFile: bootOut, encoding: .utf8) == "o \"/org/ipactr1/machine/j1\"\n")
        // busctl monitor writes on its own time.
        #expect(eventually(30) { seen().contains("\"data\":[2,\"/org/ipactr1/job/2\",\"boot\",\"j1\"]") })
        #expect(eventually(30) { seen().contains("\"data\":[2,\"/org/ipactr1/job/2\",\"done\"]") })
        // The job has gone with the call.
        #expect(try f.call("ListJobs").line == "a(ussso) 0")
        #expect(try f.busctl(["get-property", DaemonFixture.name, "/org/ipactr1/job/2", "org.ipactr1.Job", "Machine"]).status != 0)

        // A boot that fails is a failed job, and leaves no machine.
        let again = try f.call("BootMachine", ["ssa{sv}", "debian", "j1", "0"])
        #expect(again.stderr.contains("machine j1 is already running"), "\(again.stderr)")
        #expect(eventually(30) { seen().contains("\"data\":[3,\"/org/ipactr1/job/3\",\"failed\"]") })
        #expect(try f.call("PoweroffMachine", ["su", "j1", "0"]).line == "i 0")
    }

    /// `ipactr enable/disable` as `machinectl enable/disable`: the unit link
    /// machines.target wants (made offline here: no systemd on this bus).
    @Test func enableAndDisableMachines() throws {
        let units = "/var/tmp/ipactr-units-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: units + "/etc/systemd/system", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: units) }
        try FileManager.default.copyItem(atPath: repositoryRoot + "/units/ipactr@.service", toPath: units + "/etc/systemd/system/ipactr@.service")
        let f = try DaemonFixture(unitRoot: units)
        let boot = try f.ipactr(["boot", "debian", "--name", "e1", "--no-wait"])
        try #require(boot.status == 0, "\(boot.stderr)")
        let link = units + "/etc/systemd/system/machines.target.wants/ipactr@e1.service"

        let on = try f.ipactr(["enable", "e1"])
        #expect(on.status == 0, "\(on.stderr)")
        #expect(on.line == "e1 enabled (ipactr@e1.service, wanted by machines.target)")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == "/etc/systemd/system/ipactr@.service")
        #expect(try capture(["/bin/systemctl", "--root=\(units)", "is-enabled", "ipactr@e1.service"]).line == "enabled")
        #expect(try f.machineProperty("e1", "Enabled") == "b true")
        #expect(try f.ipactr(["status", "--json", "e1"]).stdout.contains("\"enabled\" : true"))
        #expect(try f.ipactr(["status", "e1"]).stdout.contains("Enabled: yes"))

        // Changing it is root's.
        let refused = try capture([builtExecutable("ipactr"), "disable", "e1"], environment: f.environment, asNobody: true)
        #expect(refused.status != 0 && refused.stderr.contains("only allowed for root"), "\(refused.stderr)")
        #expect(lstatOrNil(link) != nil)

        let off = try f.ipactr(["disable", "e1"])
        #expect(off.status == 0 && off.line == "e1 disabled", "\(off.stderr)")
        #expect(lstatOrNil(link) == nil)
        #expect(try f.machineProperty("e1", "Enabled") == "b false")

        // Bad input: one line each, nothing made.
        let unknown = try f.ipactr(["enable", "nope"])
        #expect(unknown.status == 3 && unknown.stderr == "ipactr: no machine named \"nope\"\n", "\(unknown.stderr)")
        try FileManager.default.removeItem(atPath: units + "/etc/systemd/system/ipactr@.service")
        let noUnit = try f.ipactr(["enable", "e1"])
        #expect(noUnit.status != 0 && noUnit.stderr.hasPrefix("ipactr: systemctl ") && noUnit.stderr.contains("does not exist"),
                "\(noUnit.stderr)")
        #expect(noUnit.stderr.filter { $0 == "\n" }.count == 1)
        #expect(lstatOrNil(link) == nil)
        #expect(try f.ipactr(["terminate", "e1"]).status == 0)
    }
}
