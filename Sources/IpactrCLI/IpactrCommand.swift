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
        subcommands: [PullCommand.self]
    )

    public init() {}

    /// Parses and runs; errors become one `ipactr: …` line and an exit status.
    public static func main(arguments: [String]) async -> Never {
        do {
            var command = try parseAsRoot(arguments)
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
            exit(withError: error)
        }
    }
}
