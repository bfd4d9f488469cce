import ArgumentParser
import FoundationEssentials
import IpactrAPI
import IpactrClient
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// `ipactr list`: the machines, running or not.
struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List machines.")

    @Flag(name: .long, help: "Print JSON.") var json = false

    func run() throws {
        try runVerb {
            let text = try daemon().describeMachines()
            if json { say(text); return }
            let rows = try JSONDecoder().decode([MachineSummary].self, from: Data(text.utf8))
            printTable([["NAME", "IMAGE", "STATE", "LEADER", "UID RANGE", "ADDRESSES"]] + rows.map {
                [$0.name, $0.image, $0.state, $0.leader.map(String.init) ?? "-", $0.uidRange, $0.addresses.joined(separator: ", ")]
            })
        }
    }
}

/// `ipactr status NAME`: one machine in detail, with its last console lines.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show a machine's state and last console lines.")

    @Argument(help: "Machine name.") var name: String
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Option(name: [.short, .long], help: "Console lines to show.") var lines: UInt32 = 10

    func run() throws {
        try runVerb {
            let client = try daemon()
            var s = try JSONDecoder().decode(MachineSummary.self, from: Data(try client.describeMachine(name).utf8))
            // Readiness as FreeIPA's own tests judge it: running vs degraded.
            if s.state != "stopped", let system = try client.systemState(name) {
                s.systemState = system.state
                s.failedUnits = system.failedUnits
            }
            if json { try printJSON(s); return }
            say("\(s.name) (image \(s.image))")
            say("      State: \(s.state)\(s.ready ? ", ready" : "")")
            if let system = s.systemState { say("     System: \(system) (systemctl is-system-running)") }
            if let failed = s.failedUnits, !failed.isEmpty { say("     Failed: \(failed.joined(separator: " "))") }
            if let e = s.enabled { say("    Enabled: \(e ? "yes (started at boot)" : "no")") }
            if let l = s.leader { say("     Leader: \(l)") }
            if let t = s.statusText { say("     Status: \(t)") }
            say("  UID range: \(s.uidRange)")
            if let r = s.rootfs { say("     Rootfs: \(r)") }
            say("    Network: \(s.network); \(s.addresses.joined(separator: ", "))")
            if let e = s.lastExitStatus { say("  Last exit: \(e)") }
            // The console is root's to read; others see the rest.
            let tail: [String]
            do { tail = try client.consoleTail(name, lines: lines) } catch let e as IpactrError where e.code == .permissionDenied { tail = [] }
            if !tail.isEmpty {
                say("")
                for l in tail { say(l) }
            }
        }
    }
}

/// `ipactr poweroff NAME…`: a clean shutdown; prints PID 1's exit status.
struct PoweroffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "poweroff", abstract: "Shut machines down cleanly (SIGRTMIN+4).")

    @Argument(help: "Machine names.") var names: [String]
    @Option(name: .long, help: "Seconds before SIGKILL.") var timeout: UInt32 = 60

    func run() throws {
        try runVerb {
            let client = try daemon()
            for n in names {
                let status = try client.poweroff(n, timeoutSeconds: max(1, timeout))
                say("\(n) stopped (exit status \(status >= 0 ? String(status) : "unknown"))")
            }
        }
    }
}

/// `ipactr reboot NAME`: systemd reboots, the monitor starts PID 1 again.
struct RebootCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reboot", abstract: "Reboot a machine.")

    @Argument(help: "Machine name.") var name: String

    func run() throws {
        try runVerb { try daemon().reboot(name) }
    }
}

/// `ipactr terminate NAME…`: kill PID 1 at once.
struct TerminateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "terminate", abstract: "Stop machines at once (SIGKILL).")

    @Argument(help: "Machine names.") var names: [String]

    func run() throws {
        try runVerb {
            let client = try daemon()
            for n in names { try client.terminate(n) }
        }
    }
}

/// `ipactr kill NAME --signal SIG`: a signal to PID 1.
struct KillCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kill", abstract: "Send a signal to a machine's PID 1.")

    @Argument(help: "Machine name.") var name: String
    @Option(name: [.short, .long], help: "Signal name or number (SIGTERM, RTMIN+3, 9…).") var signal: String = "SIGTERM"

    func run() throws {
        try runVerb { try daemon().kill(name, signal: try parseSignal(signal)) }
    }
}

/// `ipactr logs NAME [-f]`: the console output the monitor keeps.
struct LogsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Show a machine's console output.")

    @Argument(help: "Machine name.") var name: String
    @Flag(name: [.short, .long], help: "Keep printing while the machine runs.") var follow = false

    func run() throws {
        try runVerb {
            let client = try daemon()
            if follow { _ = try followConsole(client, name) } else { _ = try copyConsole(client, name, from: 0) }
        }
    }
}

/// `ipactr rm NAME…`: remove stopped machines (their changes and record).
struct RmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove machines.")

    @Argument(help: "Machine names.") var names: [String]
    @Flag(name: [.short, .long], help: "Terminate running machines first.") var force = false

    func run() throws {
        try runVerb {
            let client = try daemon()
            for n in names {
                if force, try client.machine(n).state != "stopped" { try client.terminate(n) }
                try client.remove(n)
                say("removed \(n)")
            }
        }
    }
}

/// `ipactr enable NAME…`: start machines at host boot, as `machinectl enable`.
struct EnableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enable", abstract: "Start machines when the host boots (ipactr@NAME.service, wanted by machines.target).")

    @Argument(help: "Machine names.") var names: [String]

    func run() throws {
        try runVerb {
            let client = try daemon()
            for n in names {
                try client.setEnabled(n, true)
                say("\(n) enabled (ipactr@\(n).service, wanted by machines.target)")
            }
        }
    }
}

/// `ipactr disable NAME…`: no longer start machines at host boot.
struct DisableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "disable", abstract: "No longer start machines when the host boots.")

    @Argument(help: "Machine names.") var names: [String]

    func run() throws {
        try runVerb {
            let client = try daemon()
            for n in names {
                try client.setEnabled(n, false)
                say("\(n) disabled")
            }
        }
    }
}

/// What `ipactr exec` takes, and hands through ipactrd to its worker.
package struct ExecArguments: ParsableArguments {
    @Option(name: [.short, .long], help: ArgumentHelp("Set K=V for the command.", valueName: "K=V")) package var env: [String] = []
    @Option(name: [.short, .long], help: "Working directory inside the machine.") package var workdir: String = "/"
    @Argument(help: "Machine name.") package var name: String
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments.") package var command: [String] = []

    package init() {}

    package func validateCommand() throws {
        guard !command.isEmpty else { throw IpactrError(.invalidArgument, "exec needs a command: ipactr exec NAME CMD…") }
    }
}

/// `ipactr exec NAME CMD…`: run a command in a machine; its exit status is ours.
struct ExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "exec", abstract: "Run a command in a running machine.")

    @OptionGroup var exec: ExecArguments

    func run() throws {
        var status: Int32 = 0
        let (env, workdir, name, command) = (exec.env, exec.workdir, exec.name, exec.command)
        try runVerb {
            try exec.validateCommand()
            // Ctrl-C and SIGTERM go on to the command; our death is its SIGHUP.
            status = try withLifeline { lifeline in
                try daemon().exec(name, command: command, environment: env, directory: workdir, stdio: standardDescriptors(), lifeline: lifeline)
            }
        }
        if status != 0 { throw ExitCode(status) }
    }
}

/// `ipactr shell NAME [CMD…]`: a login shell (or CMD) on a pty inside a machine.
struct ShellCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "shell", abstract: "Open a shell (or run CMD) on a terminal inside a machine.")

    @Argument(help: "Machine name.") var name: String
    @Argument(parsing: .captureForPassthrough, help: "A command instead of the login shell.") var command: [String] = []

    func run() throws {
        var status: Int32 = 0
        try runVerb {
            let term = ProcessInfo.processInfo.environment["TERM"] ?? "xterm"
            status = try withLifeline { lifeline in
                try daemon().shell(name, command: command, term: term, stdio: standardDescriptors(), lifeline: lifeline)
            }
        }
        if status != 0 { throw ExitCode(status) }
    }
}

/// Prints the console from `offset` to its current end; returns the new offset.
func copyConsole(_ client: ManagerClient, _ name: String, from offset: UInt64) throws -> UInt64 {
    var offset = offset
    while true {
        let (data, next) = try client.readConsole(name, offset: offset)
        if data.isEmpty { return offset }
        writeAll(1, Array(data))
        offset = next
    }
}

/// `--console` / `logs -f`: follows the console until the machine stops and
/// returns PID 1's exit status (0 when unknown).
func followConsole(_ client: ManagerClient, _ name: String) throws -> Int32 {
    var offset: UInt64 = 0
    // A monitor that was just started may not be "starting" yet for a moment.
    var seenRunning = false
    for _ in 0..<100 {
        if try client.machine(name).state != "stopped" { seenRunning = true; break }
        usleep(20_000)
    }
    while true {
        offset = try copyConsole(client, name, from: offset)
        let m = try client.machine(name)
        if m.state == "stopped" || !seenRunning {
            // What was written between the last read and the stop.
            _ = try copyConsole(client, name, from: offset)
            return max(0, m.lastExitStatus)
        }
        usleep(100_000)
    }
}
