import ArgumentParser
import IpactrCLI
import IpactrWorkers
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

/// `ipactr-pull …`: the pull itself, run by ipactrd as a child with
/// the caller's stdout and stderr (its progress display goes straight to the
/// caller's terminal) and a pipe for the job's progress.
public struct PullWorker: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ipactr-pull",
        abstract: "Pull an image into the store under --root (run by ipactrd).",
        discussion: "The options are those of `ipactr pull`, which sends them through ipactrd."
    )

    /// Where pulled content goes; nil: the image store under --root (tests set another).
    nonisolated(unsafe) public static var openDestination: (() throws -> PullDestination)?

    /// Adjusts the registry client's options before the pull; nil: none (tests pin host names with `resolve`).
    nonisolated(unsafe) public static var adjustRegistryOptions: ((inout RegistryOptions) -> Void)?

    @OptionGroup var flags: PullFlags

    @Flag(name: .customLong("creds-stdin"), help: "Read USER:PASSWORD from the first line of stdin (ipactrd passes them so).")
    var credsStdin = false

    @OptionGroup var store: StoreOptions

    @Option(name: .customLong("job-fd"), help: "Descriptor to report progress on, for ipactrd's job object.")
    var jobFD: Int32 = -1

    public init() {}

    public static func main(arguments: [String]) async -> Never {
        await runCommand(Self.self, arguments: arguments)
    }

    public func run() async throws {
        // The job pipe and the caller's stdio may close under us: an error, not a signal.
        signal(SIGPIPE, SIG_IGN)
        let ref: ImageReference
        do { ref = try ImageReference(parsing: flags.reference) } catch {
            throw IpactrError(.invalidArgument, error.description)
        }
        var credentials: Credentials?
        var creds = flags.creds
        if credsStdin { creds = readLine(strippingNewline: true) }
        if let creds { credentials = try Credentials(parsing: creds) }
        // The image store under --root, unless a test put another sink in.
        let open = Self.openDestination ?? { [store] in
            let s = try store.openStore()
            return PullDestination(sink: s, commit: { _ = try s.commitImage(manifestDigest: $0, name: $1) })
        }
        let tls: TLSMode? = flags.tlsVerify.map { $0 ? .verify : .insecure }
        var options = RegistryOptions(tls: tls, credentials: credentials, authFile: flags.authFile)
        if let certDir = flags.certDir { options.trustedCertificates = try RegistryOptions.certificates(inDirectory: certDir) }
        Self.adjustRegistryOptions?(&options)
        let client = RegistryClient(registry: ref.registry, options: options)
        // Reach the registry (scheme, TLS) before the store is opened, so an
        // unreachable or untrusted registry leaves no new store behind.
        try await client.ping()
        let destination = try open()
        var reporters: [PullProgress] = flags.quiet ? [] : [PullProgressDisplay.forStandardError()]
        if jobFD >= 0 { reporters.append(JobProgressFeed(fd: jobFD)) }
        let progress: PullProgress? = reporters.isEmpty ? nil : FanOutProgress(reporters)

        // SIGINT/SIGTERM cancel the pull, so its writers are aborted and the
        // store is left as it was, instead of the process dying mid-blob.
        let pull = Task { try await client.pull(ref, into: destination.sink, progress: progress) }
        let interrupts = InterruptHandler { _ in pull.cancel() }
        defer { interrupts.cancel() }
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

/// Sends each event to several reporters.
final class FanOutProgress: PullProgress {
    let reporters: [PullProgress]
    init(_ reporters: [PullProgress]) { self.reporters = reporters }
    func report(_ event: PullEvent) { for r in reporters { r.report(event) } }
}

/// Progress for ipactrd's job object, one line per update on `fd`:
/// `total BYTES`, `done BYTES` (at most every quarter second) and
/// `status TEXT`. ipactrd's `Job.apply(workerLine:)` reads them.
final class JobProgressFeed: PullProgress {
    let fd: Int32
    private var total: Int64 = 0
    private var finished: Int64 = 0
    private var partial: [Digest: Int64] = [:]
    private var lastSent = 0.0

    init(fd: Int32) { self.fd = fd }

    func report(_ event: PullEvent) {
        switch event {
        case .resolved(let reference, _, _, let blobs):
            total = blobs.reduce(0) { $0 + $1.size }
            send("total \(total)")
            send("status pulling \(reference)")
        case .blobExists(let blob):
            finished += blob.size
            sendDone(force: true)
        case .blobStarted(let blob):
            send("status fetching \(blob.digest)")
        case .blobReceived(let blob, let bytes):
            partial[blob.digest] = bytes
            sendDone(force: false)
        case .blobDone(let blob):
            partial[blob.digest] = nil
            finished += blob.size
            sendDone(force: true)
        case .committed(let manifest):
            send("status stored \(manifest)")
        }
    }

    private func sendDone(force: Bool) {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let now = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        guard force || now - lastSent >= 0.25 else { return }
        lastSent = now
        send("done \(finished + partial.values.reduce(0, +))")
    }

    private func send(_ line: String) {
        let bytes = Array((line.replacingOccurrences(of: "\n", with: " ") + "\n").utf8)
        // A daemon that went away must not stop the pull: errors are ignored.
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }
}
