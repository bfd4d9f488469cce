import ArgumentParser
import IpactrCLI
import IpactrMachine
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// `ipactr-worker exec NAME CMD…` (for `ipactr exec`): a command in a machine; its exit status is ours.
struct ExecWorker: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "exec", abstract: "Run a command in a running machine.")

    @OptionGroup var store: StoreOptions
    @OptionGroup var exec: ExecArguments

    func run() throws {
        var status: Int32 = 0
        try runVerb {
            try exec.validateCommand()
            status = try store.machineControl().exec(exec.name, arguments: exec.command, environment: exec.env, workingDirectory: exec.workdir)
        }
        if status != 0 { throw ExitCode(status) }
    }
}

/// `ipactr-worker shell NAME [CMD…]` (for `ipactr shell`): a login shell (or CMD) on a pty inside a machine.
struct ShellWorker: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "shell", abstract: "Open a shell (or run CMD) on a terminal inside a machine.")

    @OptionGroup var store: StoreOptions
    @Option(name: .long, help: "The caller's TERM.") var term: String?
    @Argument(help: "Machine name.") var name: String
    @Argument(parsing: .captureForPassthrough, help: "A command instead of the login shell.") var command: [String] = []

    func run() throws {
        var status: Int32 = 0
        if let term { setenv("TERM", term, 1) }
        try runVerb { status = try store.machineControl().shell(name, command: command) }
        if status != 0 { throw ExitCode(status) }
    }
}

