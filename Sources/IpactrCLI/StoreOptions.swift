import ArgumentParser
import IpactrImageStore
import IpactrSystem

/// `--root`: where ipactr keeps its state (default `IPACTR_ROOT`, else /var/lib/ipactr).
struct StoreOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("State directory (default: $IPACTR_ROOT or /var/lib/ipactr).", valueName: "DIR"))
    var root: String?

    func openStore() throws -> ImageStore {
        try ImageStore(root: root ?? ImageStore.defaultRoot)
    }
}

/// Runs a verb body, turning stray errors into `IpactrError`s so the user
/// sees one `ipactr: …` line.
func runVerb(_ body: () throws -> Void) throws {
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
func say(_ s: String) {
    print(s)
}
