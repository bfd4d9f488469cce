import ArgumentParser
import IpactrImageStore

/// `ipactr image prune`: removes blobs and layers no named image uses.
struct ImagePruneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "prune", abstract: "Remove blobs and layers no image uses.")

    @OptionGroup var store: StoreOptions

    func run() throws {
        try runVerb {
            let (blobs, layers) = try store.openStore().prune()
            say("removed \(blobs) blob\(blobs == 1 ? "" : "s") and \(layers) layer\(layers == 1 ? "" : "s")")
        }
    }
}
