import ArgumentParser
import IpactrCLI
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// `ipactr-worker`: the programs ipactrd runs as its children. Each machine's
/// monitor (`ipactr-worker monitor NAME`, also ipactr@NAME.service's), and
/// the workers that run on the caller's descriptors (passed over D-Bus; the
/// pull has a binary of its own, ipactr-pull): long
/// store writes (a killed worker leaves the store as it was, and a crash in
/// one never takes the daemon down) and the processes that run in a machine
/// with the caller's stdio or terminal. Not for people: the `ipactr` verbs of
/// the same names go through ipactrd. A binary of its own so that `ipactr`,
/// which starts twice per boot cycle, links neither the runtime nor the
/// image store nor the HTTP stack.
public struct IpactrWorkerCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ipactr-worker", abstract: "Machine monitors and store workers of ipactrd (internal).",
        subcommands: [MonitorCommand.self, ImportWorker.self, ImportTarWorker.self, ImportFsWorker.self,
                      ExecWorker.self, ShellWorker.self])

    public init() {}

    public static func main(arguments: [String]) async -> Never {
        await runCommand(Self.self, arguments: arguments)
    }
}
