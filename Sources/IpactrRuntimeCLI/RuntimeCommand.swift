import ArgumentParser
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// The runc-compatible command tree of `ipactr-runtime`.
public struct RuntimeCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ipactr-runtime",
        abstract: "An OCI runtime with runc's command line.",
        subcommands: []
    )

    public init() {}

    public static func main(arguments: [String]) -> Never {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            Glibc.exit(0)
        } catch let error as IpactrError {
            printError(tool: "ipactr-runtime", error.message)
            Glibc.exit(error.code.exitStatus)
        } catch {
            exit(withError: error)
        }
    }
}
