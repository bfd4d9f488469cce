import ArgumentParser
import IpactrCLI
import IpactrImageStore

/// `ipactr import-fs DIR NAME`: a directory holding a root file system as a one-layer image.
struct ImportFsWorker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-fs", abstract: "Import a directory holding a root file system as a one-layer image.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The directory.") var path: String
    @Argument(help: "Name to give the image.") var name: String

    func run() throws {
        try runVerb {
            let r = try store.openStore().importDirectory(path, name: name)
            say("imported \(r.name) (\(r.shortID)) from \(path)")
        }
    }
}
