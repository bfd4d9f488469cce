import ArgumentParser
import IpactrCLI
import FoundationEssentials
import IpactrImageStore
import IpactrMachine
import IpactrSystem

/// `--root`: where ipactr keeps its state (default `IPACTR_ROOT`, else /var/lib/ipactr).
struct StoreOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("State directory (default: $IPACTR_ROOT or /var/lib/ipactr).", valueName: "DIR"))
    var root: String?

    func openStore() throws -> ImageStore {
        try ImageStore(root: root ?? ImageStore.defaultRoot)
    }
}

extension StoreOptions {
    var stateRoot: String { root ?? ImageStore.defaultRoot }

    /// Machine operations; the monitor is this same binary (`ipactr-worker monitor`).
    func machineControl() -> MachineControl {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return MachineControl(root: stateRoot, monitorExecutable: exe)
    }
}

