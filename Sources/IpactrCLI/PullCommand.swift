import ArgumentParser
import Dispatch
import Foundation
import IpactrOCI
import IpactrRegistry
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// Where `ipactr pull` stores what it fetches: a `ContentSink` and the step
/// that names the image once all its blobs are in (the image store's
/// `commitImage(manifestDigest:name:)`).
public struct PullDestination {
    public var sink: ContentSink
    public var commit: (_ manifestDigest: Digest, _ name: String) throws -> Void

    public init(sink: ContentSink, commit: @escaping (_ manifestDigest: Digest, _ name: String) throws -> Void) {
        self.sink = sink
        self.commit = commit
    }
}

/// `ipactr pull [--tls-verify=BOOL] [--cert-dir DIR] [--authfile FILE] [--creds USER:PASS] [--quiet] REFERENCE`
public struct PullCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pull",
        abstract: "Pull an image from a registry (distribution v2 API) into the image store.",
        discussion: """
        REFERENCE is [HOST[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST]; the host defaults to docker.io \
        and the tag to latest. From an index or manifest list, the linux/amd64 image is pulled.
        Credentials come from --creds, else --authfile, else $REGISTRY_AUTH_FILE, \
        /run/containers/UID/auth.json, ~/.config/containers/auth.json, ~/.docker/config.json.
        Registries need https with a certificate the system trusts, unless --tls-verify=false is \
        given: then https is used without certificate or host-name checks, and plain http when the \
        registry does not speak https. Registries on loopback (localhost, 127.0.0.0/8, ::1) are \
        treated as with --tls-verify=false unless --tls-verify=true is given.
        """
    )

    /// Where pulled content goes; nil: the image store under --root (tests set another).
    nonisolated(unsafe) public static var openDestination: (() throws -> PullDestination)?

    /// Adjusts the registry client's options before the pull; nil: none (tests pin host names with `resolve`).
    nonisolated(unsafe) public static var adjustRegistryOptions: ((inout RegistryOptions) -> Void)?

    @Option(name: .customLong("tls-verify"),
            help: "true: require https with a verified certificate; false: skip certificate checks and allow plain http (default: true, except on loopback).")
    var tlsVerify: Bool?

    @Option(name: .customLong("cert-dir"), help: ArgumentHelp("Trust the CA certificates (*.crt) in DIR besides the system's (default: /etc/containers/certs.d/HOST:PORT, else /etc/docker/certs.d/HOST:PORT).", valueName: "DIR"))
    var certDir: String?

    @Option(name: .customLong("authfile"), help: "containers-auth.json file with the registry's credentials.")
    var authFile: String?

    @Option(name: .customLong("creds"), help: "USER:PASSWORD for the registry (instead of an auth file).")
    var creds: String?

    @Flag(name: [.customShort("q"), .customLong("quiet")], help: "No progress output.")
    var quiet = false

    @Argument(help: "The image to pull.")
    var reference: String

    @OptionGroup var store: StoreOptions

    public init() {}

    public func run() async throws {
        let ref: ImageReference
        do { ref = try ImageReference(parsing: reference) } catch {
            throw IpactrError(.invalidArgument, error.description)
        }
        var credentials: Credentials?
        if let creds {
            guard let colon = creds.firstIndex(of: ":"), colon != creds.startIndex else {
                throw IpactrError(.invalidArgument, "--creds must be USER:PASSWORD")
            }
            credentials = Credentials(username: String(creds[..<colon]), password: String(creds[creds.index(after: colon)...]))
        }
        // The image store under --root, unless a test put another sink in.
        let open = Self.openDestination ?? { [store] in
            let s = try store.openStore()
            return PullDestination(sink: s, commit: { _ = try s.commitImage(manifestDigest: $0, name: $1) })
        }
        let tls: TLSMode? = tlsVerify.map { $0 ? .verify : .insecure }
        var options = RegistryOptions(tls: tls, credentials: credentials, authFile: authFile)
        if let certDir { options.trustedCertificates = try RegistryOptions.certificates(inDirectory: certDir) }
        Self.adjustRegistryOptions?(&options)
        let client = RegistryClient(registry: ref.registry, options: options)
        // Reach the registry (scheme, TLS) before the store is opened, so an
        // unreachable or untrusted registry leaves no new store behind.
        try await client.ping()
        let destination = try open()
        let progress: PullProgress? = quiet ? nil : PullProgressDisplay.forStandardError()

        // SIGINT/SIGTERM cancel the pull, so its writers are aborted and the
        // store is left as it was, instead of the process dying mid-blob.
        let pull = Task { try await client.pull(ref, into: destination.sink, progress: progress) }
        let sources = [SIGINT, SIGTERM].map { sig -> DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { pull.cancel() }
            source.resume()
            return source
        }
        defer {
            for source in sources { source.cancel() }
            signal(SIGINT, SIG_DFL)
            signal(SIGTERM, SIG_DFL)
        }
        let result: PullResult
        do {
            result = try await pull.value
        } catch is CancellationError {
            throw IpactrError(.io, "pull of \(ref) interrupted; nothing was stored")
        }
        try destination.commit(result.manifestDigest, ref.description)
        print(result.manifestDigest)
    }
}
