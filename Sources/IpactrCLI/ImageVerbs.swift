import ArgumentParser
import FoundationEssentials
import IpactrBus
import IpactrOCI
import IpactrRegistryAuth
import IpactrSystem

/// `ipactr images`: the named images in the store.
struct ImagesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "images", abstract: "List the images in the store.")

    @Flag(name: .long, help: "Print JSON (an array of objects) instead of a table.")
    var json = false

    func run() throws {
        try runVerb {
            let text = try daemon().describeImages()
            if json { say(text); return }
            // The fields of DescribeImages' objects that the table shows.
            struct Row: Decodable { var name: String?; var id: String?; var size: Int64?; var created: String? }
            let rows = try JSONDecoder().decode([Row].self, from: Data(text.utf8))
            var table = [["NAME", "ID", "SIZE", "CREATED"]]
            for r in rows {
                let id = r.id.map { String($0.split(separator: ":").last?.prefix(12) ?? "") } ?? ""
                table.append([r.name ?? "", id, formatSize(r.size ?? 0), formatCreated(r.created)])
            }
            printTable(table)
        }
    }
}

/// "12.3 MB", decimal units as docker and podman print them.
func formatSize(_ n: Int64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var v = Double(n), u = 0
    while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
    if u == 0 { return "\(n) B" }
    // Three significant digits: 1.23, 12.3, 123.
    let decimals = v < 10 ? 2 : (v < 100 ? 1 : 0)
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let rounded = Int64((v * scale).rounded())
    let whole = rounded / Int64(scale), fraction = rounded % Int64(scale)
    let digits = String(fraction)
    return decimals == 0 ? "\(whole) \(units[u])"
        : "\(whole).\(String(repeating: "0", count: decimals - digits.count))\(digits) \(units[u])"
}

/// "2026-11-27 02:51" from an RFC 3339 time; "-" when unknown.
func formatCreated(_ s: String?) -> String {
    guard let s, s.count >= 16 else { return "-" }
    return s.prefix(10) + " " + s.dropFirst(11).prefix(5)
}

/// `ipactr image inspect NAME`: an image's id, digest, layers and config as JSON.
struct ImageInspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show an image as JSON.")

    @Argument(help: "Image name, or id (prefix).") var name: String

    func run() throws {
        try runVerb { say(try daemon().inspectImage(name)) }
    }
}

/// `ipactr image prune`: removes blobs and layers no named image uses.
struct ImagePruneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "prune", abstract: "Remove blobs and layers no image uses.")

    func run() throws {
        try runVerb {
            let (blobs, layers) = try daemon().pruneImages()
            say("removed \(blobs) blob\(blobs == 1 ? "" : "s") and \(layers) layer\(layers == 1 ? "" : "s")")
        }
    }
}

/// `ipactr rmi NAME…`: removes names; layers no other image uses go with them.
struct RmiCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rmi", abstract: "Remove images.")

    @Argument(help: "Image names (or ids).") var names: [String]

    func validate() throws {
        if names.isEmpty { throw ValidationError("give at least one image NAME") }
    }

    func run() throws {
        try runVerb {
            let client = try daemon()
            for n in names {
                let (name, id) = try client.removeImage(n)
                say("removed \(name) (\(id.split(separator: ":").last?.prefix(12) ?? ""))")
            }
        }
    }
}

/// The import verbs: a worker of ipactrd does the work on our stdout and stderr.
private func runImport(format: String, path: String, name: String?) throws {
    var status: Int32 = 0
    try runVerb {
        status = try withLifeline { lifeline in
            try daemon().importImage(format: format, source: absolutePath(path), name: name ?? "",
                                     stdio: standardDescriptors(), lifeline: lifeline)
        }
    }
    // The worker printed its error line already.
    if status != 0 { throw ExitCode(status) }
}

/// `ipactr import PATH [NAME]`: an OCI layout directory, oci-archive or docker-archive.
struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Import an OCI image layout directory, an oci-archive or a docker-archive tarball.",
        discussion: "NAME defaults to the name the archive records (docker-archive RepoTags, OCI ref.name).")

    @Argument(help: "Layout directory or archive.") var path: String
    @Argument(help: "Name to give the image (NAME or NAME:TAG).") var name: String?

    func run() throws { try runImport(format: "auto", path: path, name: name) }
}

/// `ipactr import-tar ROOTFS.tar[.gz|.zst] NAME`: a root file system tarball as a one-layer image.
struct ImportTarCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-tar", abstract: "Import a root file system tarball (plain, gzip or zstd) as a one-layer image.")

    @Argument(help: "The tarball.") var path: String
    @Argument(help: "Name to give the image.") var name: String

    func run() throws { try runImport(format: "tar", path: path, name: name) }
}

/// `ipactr import-fs DIR NAME`: a directory holding a root file system as a one-layer image.
struct ImportFsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-fs", abstract: "Import a directory holding a root file system as a one-layer image.")

    @Argument(help: "The directory.") var path: String
    @Argument(help: "Name to give the image.") var name: String

    func run() throws { try runImport(format: "fs", path: path, name: name) }
}

/// `ipactr pull [--tls-verify=BOOL] [--authfile FILE] [--creds USER:PASS] [--quiet] REFERENCE`
struct PullCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull",
        abstract: "Pull an image from a registry (distribution v2 API) into the image store.",
        discussion: """
        REFERENCE is [HOST[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST]; the host defaults to docker.io \
        and the tag to latest. From an index or manifest list, the linux/amd64 image is pulled.
        Credentials come from --creds, else --authfile, else $REGISTRY_AUTH_FILE, \
        /run/containers/UID/auth.json, ~/.config/containers/auth.json, ~/.docker/config.json \
        (looked up here, with the caller's environment, and sent to ipactrd).
        Registries need https with a certificate the system trusts, unless --tls-verify=false is \
        given: then https is used without certificate or host-name checks, and plain http when the \
        registry does not speak https. Registries on loopback (localhost, 127.0.0.0/8, ::1) are \
        treated as with --tls-verify=false unless --tls-verify=true is given.
        """)

    @OptionGroup var flags: PullFlags

    func run() throws {
        var status: Int32 = 0
        try runVerb {
            let ref: ImageReference
            do { ref = try ImageReference(parsing: flags.reference) } catch { throw IpactrError(.invalidArgument, "\(error)") }
            var options: [String: BusValue] = ["Quiet": .bool(flags.quiet)]
            if let tlsVerify = flags.tlsVerify { options["TLSVerify"] = .bool(tlsVerify) }
            if let certDir = flags.certDir { options["CertDir"] = .string(absolutePath(certDir)) }
            var credentials: Credentials?
            if let creds = flags.creds {
                credentials = try Credentials(parsing: creds)
            } else {
                // Our environment decides which auth files apply, not the daemon's.
                let files = AuthFile.searchPath(explicit: flags.authFile.map(absolutePath))
                do {
                    credentials = try AuthFile.lookup(registry: ref.registry, repository: ref.repository, files: files,
                                                      explicitFile: flags.authFile != nil)
                } catch let e as IpactrError { throw e } catch { throw IpactrError(.invalidArgument, "\(error)") }
            }
            if let credentials {
                options["Username"] = .string(credentials.username)
                options["Password"] = .string(credentials.password)
            }
            status = try withLifeline { lifeline in
                try daemon().pull(flags.reference, options: options, stdio: standardDescriptors(), lifeline: lifeline)
            }
        }
        if status != 0 { throw ExitCode(status) }
    }
}

/// The options `ipactr pull` takes and hands, through ipactrd, to the worker
/// (which takes the same spelling).
public struct PullFlags: ParsableArguments {
    @Option(name: .customLong("tls-verify"),
            help: "true: require https with a verified certificate; false: skip certificate checks and allow plain http (default: true, except on loopback).")
    public var tlsVerify: Bool?
    @Option(name: .customLong("cert-dir"), help: ArgumentHelp("Trust the CA certificates (*.crt) in DIR besides the system's (default: /etc/containers/certs.d/HOST:PORT, else /etc/docker/certs.d/HOST:PORT).", valueName: "DIR"))
    public var certDir: String?
    @Option(name: .customLong("authfile"), help: "containers-auth.json file with the registry's credentials.")
    public var authFile: String?
    @Option(name: .customLong("creds"), help: "USER:PASSWORD for the registry (instead of an auth file).")
    public var creds: String?
    @Flag(name: [.customShort("q"), .customLong("quiet")], help: "No progress output.")
    public var quiet = false
    @Argument(help: "The image to pull.")
    public var reference: String

    public init() {}
}
