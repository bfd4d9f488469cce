import ArgumentParser
import IpactrCLI
import IpactrMachine
import IpactrSystem

/// `ipactr-worker monitor NAME`: the per-machine supervisor; ipactrd starts it
/// (or ipactr@NAME.service, with --delegated), people do not.
struct MonitorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "monitor", abstract: "Supervise one machine (internal).",
                                                    shouldDisplay: false)

    @OptionGroup var store: StoreOptions
    @Argument var name: String
    @Option(name: .long, help: "Descriptor to report READY / EXIT n / ERROR on.") var readyFd: Int32 = -1
    @Flag(name: .long, help: "Keep the machine in the cgroup we run in (a unit with Delegate=yes).") var delegated = false

    func run() throws {
        var status: Int32 = 0
        try runVerb {
            let monitor = try MachineMonitor(root: store.stateRoot, name: name, readyFD: readyFd, delegatedCgroup: delegated)
            status = try monitor.run()
        }
        // The monitor exits with PID 1's status, as `boot --console` will.
        if status != 0 { throw ExitCode(status) }
    }
}
