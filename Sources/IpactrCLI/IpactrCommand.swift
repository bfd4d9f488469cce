import ArgumentParser
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// The `ipactr` command tree. The executable only calls `IpactrCommand.run(arguments:)`,
/// so every verb can be driven from tests.
public struct IpactrCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ipactr",
        abstract: "Manage systemd machines in user and cgroup namespaces.",
        discussion: """
            Every verb goes through ipactrd (org.ipactr1 on the system bus; set DBUS_SYSTEM_BUS_ADDRESS for another bus), which owns the state directory (ipactrd --root, default $IPACTR_ROOT or /var/lib/ipactr).
            """,
        subcommands: [
            ImagesCommand.self, ImageCommand.self, RmiCommand.self,
            PullCommand.self, ImportCommand.self, ImportTarCommand.self, ImportFsCommand.self,
            BootCommand.self, StartCommand.self, ListCommand.self, StatusCommand.self,
            PoweroffCommand.self, RebootCommand.self, TerminateCommand.self, KillCommand.self,
            EnableCommand.self, DisableCommand.self, ExecCommand.self, ShellCommand.self, LogsCommand.self, RmCommand.self,
        ]
    )

    public init() {}

    /// `ipactr --root DIR VERB …` → `ipactr VERB --root DIR …`: every verb
    /// that touches state declares `--root`, so the global spelling is moved
    /// behind the verb (argument-parser does not pass parent options down).
    static func hoistGlobalOptions(_ args: [String]) -> [String] {
        var globals: [String] = []
        var rest = args[...]
        while let first = rest.first {
            if first == "--root", rest.count >= 2 {
                globals += rest.prefix(2)
                rest = rest.dropFirst(2)
            } else if first.hasPrefix("--root=") {
                globals.append(first)
                rest = rest.dropFirst()
            } else {
                break
            }
        }
        guard !globals.isEmpty else { return args }
        // Insert after the verb path (`image inspect`, `images`, …): before the first option or argument that is not a subcommand name.
        var verbs: [String] = []
        var node: ParsableCommand.Type = IpactrCommand.self
        while let next = rest.first, let sub = node.configuration.subcommands.first(where: { $0._commandName == next }) {
            verbs.append(next)
            rest = rest.dropFirst()
            node = sub
        }
        return verbs + globals + rest
    }

    /// Parses and runs; errors become one `ipactr: …` line and an exit status.
    public static func main(arguments: [String]) async -> Never {
        await runCommand(Self.self, arguments: hoistGlobalOptions(arguments))
    }
}

/// Parses `arguments` with `root` and runs the command; errors become one
/// `ipactr: …` line and an exit status (ipactr's verbs, and the workers,
/// which write on the stderr of the `ipactr` verb they run for).
package func runCommand(_ root: ParsableCommand.Type, arguments: [String]) async -> Never {
    do {
        var command = try root.parseAsRoot(arguments)
        if var asyncCommand = command as? AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
        Glibc.exit(0)
    } catch let error as IpactrError {
        printError(tool: "ipactr", error.message)
        Glibc.exit(error.code.exitStatus)
    } catch {
        root.exit(withError: error)
    }
}

/// Runs a verb body, turning stray errors into `IpactrError`s so the user
/// sees one `ipactr: …` line.
package func runVerb(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as IpactrError {
        throw e
    } catch let e as ValidationError {
        throw e
    } catch {
        throw IpactrError(.internalError, "\(error)")
    }
}

/// Writes a line on stdout.
package func say(_ s: String) {
    print(s)
}
