import ArgumentParser
import IpactrCLI
import IpactrImageStore

/// `import-tar` and `import-fs`: a root file system as a one-layer image;
/// they differ only in what they read.
protocol RootfsImportWorker: ParsableCommand {
    var store: StoreOptions { get }
    var path: String { get }
    var name: String { get }
    static func importing(_ path: String, as name: String, into store: ImageStore) throws -> ImageRecord
}

extension RootfsImportWorker {
    func run() throws {
        try runVerb {
            let r = try Self.importing(path, as: name, into: try store.openStore())
            say("imported \(r.name) (\(r.shortID)) from \(path)")
        }
    }
}

/// `ipactr import-tar ROOTFS.tar[.gz|.zst] NAME`: a root file system tarball as a one-layer image.
struct ImportTarWorker: RootfsImportWorker {
    static let configuration = CommandConfiguration(
        commandName: "import-tar", abstract: "Import a root file system tarball (plain, gzip or zstd) as a one-layer image.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The tarball.") var path: String
    @Argument(help: "Name to give the image.") var name: String

    static func importing(_ path: String, as name: String, into store: ImageStore) throws -> ImageRecord {
        try store.importRootfsTar(path, name: name)
    }
}

/// `ipactr import-fs DIR NAME`: a directory holding a root file system as a one-layer image.
struct ImportFsWorker: RootfsImportWorker {
    static let configuration = CommandConfiguration(
        commandName: "import-fs", abstract: "Import a directory holding a root file system as a one-layer image.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The directory.") var path: String
    @Argument(help: "Name to give the image.") var name: String

    static func importing(_ path: String, as name: String, into store: ImageStore) throws -> ImageRecord {
        try store.importDirectory(path, name: name)
    }
}
