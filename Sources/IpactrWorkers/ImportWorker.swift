import ArgumentParser
import IpactrCLI
import IpactrImageStore

/// `ipactr import PATH [NAME]`: an OCI layout directory, oci-archive or docker-archive.
struct ImportWorker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Import an OCI image layout directory, an oci-archive or a docker-archive tarball.",
        discussion: "NAME defaults to the name the archive records (docker-archive RepoTags, OCI ref.name).")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Layout directory or archive.") var path: String
    @Argument(help: "Name to give the image (NAME or NAME:TAG).") var name: String?

    func run() throws {
        try runVerb {
            let (r, format) = try store.openStore().importImage(from: path, name: name)
            say("imported \(r.name) (\(r.shortID)) from \(format.rawValue) \(path)")
        }
    }
}
