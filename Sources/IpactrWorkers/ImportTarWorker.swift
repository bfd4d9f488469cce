import ArgumentParser
import IpactrCLI
import IpactrImageStore

/// `ipactr import-tar ROOTFS.tar[.gz|.zst] NAME`: a root file system tarball as a one-layer image.
struct ImportTarWorker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-tar", abstract: "Import a root file system tarball (plain, gzip or zstd) as a one-layer image.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The tarball.") var path: String
    @Argument(help: "Name to give the image.") var name: String

    func run() throws {
        try runVerb {
            let r = try store.openStore().importRootfsTar(path, name: name)
            say("imported \(r.name) (\(r.shortID)) from \(path)")
        }
    }
}
