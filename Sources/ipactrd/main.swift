import ArgumentParser
import Foundation
import IpactrBus
import IpactrDaemon
import IpactrImageStore
import IpactrSystem

/// The manager daemon: `ipactrd [--root DIR] [--bus ADDRESS] [--monitor PATH]`.
struct Ipactrd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ipactrd",
        abstract: "The ipactr manager: serves machines and images as org.ipactr1 on the system bus."
    )

    @Option(name: .long, help: ArgumentHelp("State directory (default: $IPACTR_ROOT or /var/lib/ipactr).", valueName: "DIR"))
    var root: String?
    @Option(name: .long, help: ArgumentHelp("D-Bus address (default: $DBUS_SYSTEM_BUS_ADDRESS or the system bus).", valueName: "ADDRESS"))
    var bus: String?
    @Option(name: .long, help: ArgumentHelp("The ipactr-worker binary: machine monitors and workers (default: ipactr-worker beside ipactrd).", valueName: "PATH"))
    var monitor: String?
    @Option(name: .long, help: ArgumentHelp("Where `enable` installs ipactr@NAME.service without a running systemd (systemctl --root; default /).", valueName: "DIR"))
    var unitRoot: String = "/"

    func run() throws {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let monitorPath = monitor ?? URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("ipactr-worker").path
        var config = ManagerDaemon.Configuration(root: root ?? ImageStore.defaultRoot,
                                                 busAddress: bus ?? BusConnection.systemBusAddress,
                                                 monitorExecutable: monitorPath)
        config.unitRoot = unitRoot
        let daemon = try ManagerDaemon(config)
        let started = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var failure: Error?
        Task {
            do { try await daemon.start() } catch { failure = error }
            started.signal()
        }
        started.wait()
        if let failure { throw failure }
        // Serves until the bus connection ends (SIGTERM's default action ends
        // the process: there is nothing to flush, the state is on disk).
        daemon.wait()
        throw IpactrError(.io, "the D-Bus connection was lost")
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
