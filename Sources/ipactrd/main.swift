import ArgumentParser
import IpactrSystem
import Glibc

/// The manager daemon. Not implemented yet: it refuses to start rather than
/// pretend (see the ipactrd issue).
struct Ipactrd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ipactrd",
        abstract: "The ipactr manager on the system bus (not implemented yet)."
    )

    func run() throws {
        throw IpactrError(.unsupported, "ipactrd is not implemented yet; use the ipactr command directly")
    }
}

do {
    var cmd = try Ipactrd.parseAsRoot()
    try cmd.run()
} catch let error as IpactrError {
    printError(tool: "ipactrd", error.message)
    exit(error.code.exitStatus)
} catch {
    Ipactrd.exit(withError: error)
}
