import ArgumentParser
import Foundation
import IpactrMachine
import IpactrRuntime
import IpactrSystem

/// `ipactr list`: the machines, running or not.
struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List machines.")

    @OptionGroup var store: StoreOptions
    @Flag(name: .long, help: "Print JSON.") var json = false

    func run() throws {
        try runVerb {
            let rows = store.machineControl().manager.list().map(\.summary)
            if json { try printJSON(rows); return }
            printTable([["NAME", "IMAGE", "STATE", "LEADER", "UID RANGE", "ADDRESSES"]] + rows.map {
                [$0.name, $0.image, $0.state, $0.leader.map(String.init) ?? "-", $0.uidRange, $0.addresses.joined(separator: ", ")]
            })
        }
    }
}

/// `ipactr status NAME`: one machine in detail, with its last console lines.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show a machine's state and last console lines.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Machine name.") var name: String
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Option(name: [.short, .long], help: "Console lines to show.") var lines: Int = 10

    func run() throws {
        try runVerb {
            let control = store.machineControl()
            let manager = control.manager
            var s = try manager.info(name).summary
            // Readiness as FreeIPA's own tests judge it: running vs degraded.
            if let system = control.systemState(name) {
                s.systemState = system.state
                s.failedUnits = system.failedUnits
            }
            if json { try printJSON(s); return }
            say("\(s.name) (image \(s.image))")
            say("      State: \(s.state)\(s.ready ? ", ready" : "")")
            if let system = s.systemState { say("     System: \(system) (systemctl is-system-running)") }
            if let failed = s.failedUnits, !failed.isEmpty { say("     Failed: \(failed.joined(separator: " "))") }
            if let l = s.leader { say("     Leader: \(l)") }
            if let t = s.statusText { say("     Status: \(t)") }
            say("  UID range: \(s.uidRange)")
            if let r = s.rootfs { say("     Rootfs: \(r)") }
            say("    Network: \(s.network); \(s.addresses.joined(separator: ", "))")
            if let e = s.lastExitStatus { say("  Last exit: \(e)") }
            let tail = manager.consoleTail(name, lines: lines)
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

    @OptionGroup var store: StoreOptions
    @Argument(help: "Machine names.") var names: [String]
    @Option(name: .long, help: "Seconds before SIGKILL.") var timeout: Double = 60

    func run() throws {
        try runVerb {
            for n in names {
                let status = try store.machineControl().poweroff(n, timeoutSeconds: timeout)
                say("\(n) stopped (exit status \(status.map(String.init) ?? "unknown"))")
            }
        }
    }
}

/// `ipactr reboot NAME`: systemd reboots, the monitor starts PID 1 again.
struct RebootCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reboot", abstract: "Reboot a machine.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Machine name.") var name: String

    func run() throws {
        try runVerb { try store.machineControl().reboot(name, timeoutSeconds: 30) }
    }
}

/// `ipactr terminate NAME…`: kill PID 1 at once.
struct TerminateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "terminate", abstract: "Stop machines at once (SIGKILL).")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Machine names.") var names: [String]

    func run() throws {
        try runVerb {
            for n in names { _ = try store.machineControl().terminate(n, timeoutSeconds: 30) }
        }
    }
}

/// `ipactr kill NAME --signal SIG`: a signal to PID 1.
struct KillCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kill", abstract: "Send a signal to a machine's PID 1.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Machine name.") var name: String
    @Option(name: [.short, .long], help: "Signal name or number (SIGTERM, RTMIN+3, 9…).") var signal: String = "SIGTERM"

    func run() throws {
        try runVerb { try store.machineControl().kill(name, signal: try parseSignal(signal)) }
    }
}

/// `ipactr logs NAME [-f]`: the console output the monitor keeps.
struct LogsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Show a machine's console output.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Machine name.") var name: String
    @Flag(name: [.short, .long], help: "Keep printing while the machine runs.") var follow = false

    func run() throws {
        try runVerb {
            let manager = store.machineControl().manager
            _ = try manager.load(name)
            if follow { _ = try followConsole(manager, name) } else { copyConsole(manager, name, follow: false) }
        }
    }
}

/// `ipactr rm NAME…`: remove stopped machines (their changes and record).
struct RmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove machines.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Machine names.") var names: [String]
    @Flag(name: [.short, .long], help: "Terminate running machines first.") var force = false

    func run() throws {
        try runVerb {
            let control = store.machineControl()
            for n in names {
                if force && control.manager.isRunning(n) { _ = try control.terminate(n, timeoutSeconds: 30) }
                try control.manager.remove(n)
                say("removed \(n)")
            }
        }
    }
}

/// `ipactr exec NAME CMD…`: run a command in a machine; its exit status is ours.
struct ExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "exec", abstract: "Run a command in a running machine.")

    @OptionGroup var store: StoreOptions
    @Option(name: [.short, .long], help: ArgumentHelp("Set K=V for the command.", valueName: "K=V")) var env: [String] = []
    @Option(name: [.short, .long], help: "Working directory inside the machine.") var workdir: String = "/"
    @Argument(help: "Machine name.") var name: String
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments.") var command: [String] = []

    func run() throws {
        var status: Int32 = 0
        try runVerb {
            guard !command.isEmpty else { throw IpactrError(.invalidArgument, "exec needs a command: ipactr exec NAME CMD…") }
            status = try store.machineControl().exec(name, arguments: command, environment: env, workingDirectory: workdir)
        }
        if status != 0 { throw ExitCode(status) }
    }
}

/// `ipactr shell NAME [CMD…]`: a login shell (or CMD) on a pty inside a machine.
struct ShellCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "shell", abstract: "Open a shell (or run CMD) on a terminal inside a machine.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Machine name.") var name: String
    @Argument(parsing: .captureForPassthrough, help: "A command instead of the login shell.") var command: [String] = []

    func run() throws {
        var status: Int32 = 0
        try runVerb { status = try store.machineControl().shell(name, command: command) }
        if status != 0 { throw ExitCode(status) }
    }
}

/// Prints the machine's console log; with `follow`, keeps printing until the
/// machine's monitor exits.
func copyConsole(_ manager: MachineManager, _ name: String, follow: Bool) {
    // A monitor just started may not have opened the log yet.
    var handle = FileHandle(forReadingAtPath: manager.paths.consoleLog(name))
    while true {
        if handle == nil { handle = FileHandle(forReadingAtPath: manager.paths.consoleLog(name)) }
        let data = handle?.availableData ?? Data()
        if !data.isEmpty { FileHandle.standardOutput.write(data); continue }
        if !follow { return }
        if !manager.isRunning(name) {
            // What was written between the last read and the exit.
            if let rest = handle?.availableData, !rest.isEmpty { FileHandle.standardOutput.write(rest) }
            return
        }
        usleep(50_000)
    }
}

/// `--console` / `logs -f`: follows the console until the machine stops and
/// returns PID 1's exit status (0 when unknown).
func followConsole(_ manager: MachineManager, _ name: String) throws -> Int32 {
    // Give a monitor that was just spawned a moment to take its lock.
    for _ in 0..<100 where !manager.isRunning(name) { usleep(20_000) }
    copyConsole(manager, name, follow: true)
    return try manager.load(name).lastExitStatus ?? 0
}
