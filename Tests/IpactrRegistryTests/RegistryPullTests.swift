import Foundation
import IpactrOCI
@testable import IpactrRegistry
import IpactrSystem
import Testing

/// Collects pull events for the checks.
final class RecordingProgress: PullProgress {
    private let lock = NSLock()
    private(set) var events: [PullEvent] = []
    func report(_ event: PullEvent) { lock.withLock { events.append(event) } }

    var existing: [Digest] { events.compactMap { if case .blobExists(let d) = $0 { return d.digest } else { return nil } } }
    var started: [Digest] { events.compactMap { if case .blobStarted(let d) = $0 { return d.digest } else { return nil } } }
    var done: [Digest] { events.compactMap { if case .blobDone(let d) = $0 { return d.digest } else { return nil } } }
}

/// Notes whether two `report` calls ever overlapped: each call stays
/// inside for a few milliseconds, so concurrent downloads would meet here.
/// It takes no lock of its own around the report, as a reporter that relies
/// on the protocol's promise does not.
final class OverlapDetectingProgress: PullProgress {
    private let lock = NSLock()
    private var inside = 0
    private(set) var overlapped = false
    private(set) var calls = 0
    func report(_ event: PullEvent) {
        lock.withLock {
            inside += 1
            calls += 1
            if inside > 1 { overlapped = true }
        }
        usleep(3000)
        lock.withLock { inside -= 1 }
    }
}

func pullError(_ body: () async throws -> Void) async -> IpactrError? {
    do {
        try await body()
        return nil
    } catch let e as IpactrError {
        return e
    } catch {
        Issue.record("expected an IpactrError, got \(error)")
        return nil
    }
}

/// Each test starts its own docker-registry (anonymous, htpasswd or token
/// auth) on a free loopback port, pushes a tiny image with skopeo, pulls it
/// with the client, and kills the registry in a defer.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RegistryPullTests {
    @Test func anonymousPullOfOCIImageWithAllLayerCompressions() async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"))
        try reg.uploadExactly(image)

        let sink = try TestSink(root: work.sub("sink"))
        let client = RegistryClient(registry: reg.host)
        let progress = RecordingProgress()
        let ref = try ImageReference(parsing: "\(reg.host)/test/img:1")
        let result = try await client.pull(ref, into: sink, progress: progress)

        let built = image.images[0]
        #expect(result.manifestDigest == built.manifest.digest)
        #expect(result.indexDigest == nil)
        #expect(sink.storedBlobs == image.blobDigests)
        for digest in image.blobDigests {
            let original = try Data(contentsOf: URL(fileURLWithPath: "\(image.layout)/blobs/sha256/\(digest.hex)"))
            #expect(try sink.blob(digest) == original)
        }
        #expect(Set(progress.done) == Set([built.config.digest] + built.layers.map(\.digest)))
        #expect(sink.tmpEntries.isEmpty)

        // Everything is present now: a second pull fetches nothing.
        let again = RecordingProgress()
        let second = try await client.pull(ref, into: sink, progress: again)
        #expect(second.fetchedBlobs.isEmpty)
        #expect(again.started.isEmpty)
        #expect(Set(again.existing) == Set([built.config.digest] + built.layers.map(\.digest)))
        #expect(second.manifestDigest == result.manifestDigest)

        // By digest, into a fresh sink, with a fresh client.
        let byDigest = try TestSink(root: work.sub("sink2"))
        let r3 = try await RegistryClient(registry: reg.host)
            .pull(try ImageReference(parsing: "\(reg.host)/test/img@\(built.manifest.digest)"), into: byDigest)
        #expect(r3.manifestDigest == built.manifest.digest)
        #expect(byDigest.storedBlobs == image.blobDigests)
    }

    /// Blobs download in parallel, yet a reporter is never entered twice at
    /// once (PullProgress's promise; ipactr-pull's job feed keeps unlocked
    /// state, and crashed when two downloads reported together).
    @Test func progressIsNeverReportedConcurrently() async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"))
        try reg.uploadExactly(image)
        let sink = try TestSink(root: work.sub("sink"))
        var options = RegistryOptions()
        options.parallelDownloads = 4
        let client = RegistryClient(registry: reg.host, options: options)
        let progress = OverlapDetectingProgress()
        _ = try await client.pull(try ImageReference(parsing: "\(reg.host)/test/img:1"), into: sink, progress: progress)
        #expect(image.blobDigests.count > 2, "the image has too few blobs to download in parallel")
        #expect(progress.calls >= image.blobDigests.count)
        #expect(!progress.overlapped, "two reports ran at the same time")
    }

    @Test func manifestListPicksLinuxAmd64() async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), architectures: ["arm64", "amd64"], compressions: [.gzip])
        try reg.push(layout: image.layout, all: true)

        let sink = try TestSink(root: work.sub("sink"))
        let result = try await RegistryClient(registry: reg.host)
            .pull(try ImageReference(parsing: "\(reg.host)/test/img:1"), into: sink)
        let amd64 = try #require(image.images.first { $0.architecture == "amd64" })
        let arm64 = try #require(image.images.first { $0.architecture == "arm64" })
        #expect(result.manifestDigest == amd64.manifest.digest)
        #expect(result.indexDigest == image.index?.digest)
        #expect(result.manifest.config.digest == amd64.config.digest)
        #expect(sink.storedBlobs.contains(image.index!.digest))
        #expect(!sink.storedBlobs.contains(arm64.config.digest))
        #expect(!sink.storedBlobs.contains(arm64.layers[0].digest))
        let config = try JSONDecoder().decode(ImageConfig.self, from: try sink.blob(result.manifest.config.digest))
        #expect(config.architecture == "amd64")

        // A platform the index lacks is a clear error.
        let err = await pullError {
            _ = try await RegistryClient(registry: reg.host).pull(try ImageReference(parsing: "\(reg.host)/test/img:1"),
                                                                  into: try TestSink(root: work.sub("sink3")),
                                                                  platform: Platform(architecture: "s390x", os: "linux"))
        }
        #expect(err?.code == .notFound)
        #expect(err?.message.contains("no linux/s390x image in the index") == true)
    }

    @Test func dockerSchema2ManifestListAndManifest() async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), architectures: ["amd64", "arm64"], compressions: [.gzip, .gzip])
        // skopeo rewrites OCI into Docker v2 schema 2 media types on the way.
        try reg.push(layout: image.layout, all: true, format: "v2s2")

        let sink = try TestSink(root: work.sub("sink"))
        let result = try await RegistryClient(registry: reg.host)
            .pull(try ImageReference(parsing: "\(reg.host)/test/img:1"), into: sink)
        #expect(result.manifest.mediaType == MediaType.dockerManifest)
        #expect(result.manifest.config.mediaType == MediaType.dockerConfig)
        #expect(result.manifest.layers.allSatisfy { $0.mediaType == MediaType.dockerLayerGzip })
        let index = try JSONDecoder().decode(ImageIndex.self, from: try sink.blob(try #require(result.indexDigest)))
        #expect(index.mediaType == MediaType.dockerManifestList)
        let amd64 = try #require(image.images.first { $0.architecture == "amd64" })
        // Layers and config are byte-identical; only the manifest was rewritten.
        #expect(result.manifest.layers.map(\.digest) == amd64.layers.map(\.digest))
        #expect(result.manifest.config.digest == amd64.config.digest)
        #expect(sink.storedBlobs.contains(result.manifestDigest))
    }

    @Test func basicAuthWithAuthFile() async throws {
        let reg = try RegistryFixture(.basic)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip])
        try reg.push(layout: image.layout)
        let ref = try ImageReference(parsing: "\(reg.host)/test/img:1")

        let authFile = work.sub("auth.json")
        try writeAuthFile(authFile, host: reg.host, user: RegistryFixture.user, password: RegistryFixture.password)
        let sink = try TestSink(root: work.sub("sink"))
        let result = try await RegistryClient(registry: reg.host, options: RegistryOptions(authFile: authFile)).pull(ref, into: sink)
        #expect(result.manifestDigest == image.images[0].manifest.digest)
        #expect(sink.storedBlobs == image.blobDigests)

        // Wrong password: a clear authentication error and an empty sink.
        try await expectWrongPasswordRefused(reg, ref, work, saying: "authentication failed")

        // No credentials at all.
        var noFiles = RegistryOptions()
        noFiles.authFiles = []
        let none = await pullError {
            _ = try await RegistryClient(registry: reg.host, options: noFiles)
                .pull(ref, into: try TestSink(root: work.sub("none")))
        }
        #expect(none?.code == .permissionDenied)
        #expect(none?.message.contains("no credentials") == true)
    }

    @Test func bearerTokenAuth() async throws {
        let reg = try RegistryFixture(.token)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.zstd, .gzip])
        try reg.push(layout: image.layout)
        let ref = try ImageReference(parsing: "\(reg.host)/test/img:1")

        let authFile = work.sub("auth.json")
        try writeAuthFile(authFile, host: reg.host, user: RegistryFixture.user, password: RegistryFixture.password)
        let sink = try TestSink(root: work.sub("sink"))
        let before = reg.issuerLog().split(separator: "\n").count
        let result = try await RegistryClient(registry: reg.host, options: RegistryOptions(authFile: authFile)).pull(ref, into: sink)
        #expect(result.manifestDigest == image.images[0].manifest.digest)
        #expect(sink.storedBlobs == image.blobDigests)
        // The client asked the realm for a pull token for the repository, with its basic credentials.
        let ours = reg.issuerLog().split(separator: "\n").dropFirst(before).map { $0.removingPercentEncoding ?? String($0) }
        #expect(!ours.isEmpty)
        #expect(ours.allSatisfy { $0.contains("user=\(RegistryFixture.user) ok=True") })
        #expect(ours.contains { $0.contains("scope=repository:test/img:pull") && $0.contains("service=\(RegistryFixture.service)") })

        try await expectWrongPasswordRefused(reg, ref, work, saying: "rejected the credentials")

        // No credentials: the realm is asked anonymously and refuses.
        var noFiles = RegistryOptions()
        noFiles.authFiles = []
        let none = await pullError {
            _ = try await RegistryClient(registry: reg.host, options: noFiles).pull(ref, into: try TestSink(root: work.sub("none")))
        }
        #expect(none?.code == .permissionDenied)
        #expect(none?.message.contains("requires a login and no credentials were found (no auth file to look in)") == true)
        #expect(reg.issuerLog().split(separator: "\n").last?.contains("user=- ok=False") == true)
    }

    @Test func blobRedirectsAreFollowedWithoutCredentials() async throws {
        let reg = try RegistryFixture(.basic)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip, .zstd])
        try reg.push(layout: image.layout)
        let front = try reg.startBlobRedirector()

        let sink = try TestSink(root: work.sub("sink"))
        let creds = Credentials(username: RegistryFixture.user, password: RegistryFixture.password)
        let result = try await RegistryClient(registry: front, options: RegistryOptions(credentials: creds))
            .pull(try ImageReference(parsing: "\(front)/test/img:1"), into: sink)
        #expect(result.manifestDigest == image.images[0].manifest.digest)
        #expect(sink.storedBlobs == image.blobDigests)
        // Config and both layers came from the storage host, which never saw the registry's credentials.
        let lines = reg.blobHostLog().split(separator: "\n")
        #expect(lines.count == 3)
        #expect(lines.allSatisfy { $0.hasSuffix("authorization=absent") })
    }

    @Test func tamperedBlobIsRefusedAndNothingIsLeft() async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.none, .gzip])
        try reg.push(layout: image.layout)
        let layer = image.images[0].layers[1]
        // Same size, one byte changed: only the digest can catch it.
        let path = reg.blobDataPath(layer.digest)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count / 2] ^= 0xff
        try bytes.write(to: URL(fileURLWithPath: path))

        let sink = try TestSink(root: work.sub("sink"))
        let err = await pullError {
            _ = try await RegistryClient(registry: reg.host).pull(try ImageReference(parsing: "\(reg.host)/test/img:1"), into: sink)
        }
        #expect(err?.code == .corrupt)
        #expect(err?.message.contains("\(layer.digest)") == true)
        #expect(err?.message.contains("does not match its digest") == true)
        // Nothing committed, every writer aborted, no temp files.
        #expect(sink.storedBlobs.isEmpty)
        #expect(sink.committed == 0)
        #expect(sink.aborted == sink.begun)
        #expect(sink.tmpEntries.isEmpty)
    }

    @Test func tamperedManifestIsRefusedForDigestReference() async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip])
        try reg.push(layout: image.layout)
        let manifest = image.images[0].manifest.digest
        // The registry keeps manifests as blobs too: change a byte of the JSON's whitespace-free text.
        let path = reg.blobDataPath(manifest)
        var text = try String(contentsOfFile: path, encoding: .utf8)
        text = text.replacingOccurrences(of: "\"schemaVersion\":2", with: "\"schemaVersion\" :2")
        try text.write(toFile: path, atomically: false, encoding: .utf8)

        let sink = try TestSink(root: work.sub("sink"))
        let err = await pullError {
            _ = try await RegistryClient(registry: reg.host).pull(try ImageReference(parsing: "\(reg.host)/test/img@\(manifest)"), into: sink)
        }
        #expect(err?.code == .corrupt)
        #expect(err?.message.contains("digest") == true)
        #expect(sink.begun == 0 && sink.storedBlobs.isEmpty)
    }

    enum BadContent: String, CaseIterable {
        case truncatedLayer, extendedLayer, missingLayer, tamperedManifestByTag, unknownLayerMediaType
    }

    /// Each kind of bad content a registry can serve: one clear error, and
    /// the sink exactly as it was (nothing committed, no temp files).
    @Test(arguments: BadContent.allCases)
    func badContentLeavesTheSinkEmpty(_ bad: BadContent) async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip, .none],
                                  layerMediaTypes: bad == .unknownLayerMediaType ? [1: "application/vnd.example.layer.v1+lz4"] : [:])
        try reg.uploadExactly(image)
        let built = image.images[0]
        let layer = built.layers[0]
        let layerPath = reg.blobDataPath(layer.digest)
        var original = try Data(contentsOf: URL(fileURLWithPath: layerPath))
        var expected: (IpactrError.Code, String)
        switch bad {
        case .truncatedLayer:
            try original.prefix(original.count - 10).write(to: URL(fileURLWithPath: layerPath))
            expected = (.corrupt, "has \(layer.size - 10) bytes, its descriptor says \(layer.size)")
        case .extendedLayer:
            original.append(contentsOf: [1, 2, 3])
            try original.write(to: URL(fileURLWithPath: layerPath))
            expected = (.corrupt, "is larger than the \(layer.size) bytes its descriptor gives")
        case .missingLayer:
            try FileManager.default.removeItem(atPath: layerPath)
            expected = (.notFound, "blob \(layer.digest) of \(reg.host)/test/img: not found")
        case .tamperedManifestByTag:
            let path = reg.blobDataPath(built.manifest.digest)
            var text = try String(contentsOfFile: path, encoding: .utf8)
            text = text.replacingOccurrences(of: "\"schemaVersion\":2", with: "\"schemaVersion\" :2")
            try text.write(toFile: path, atomically: false, encoding: .utf8)
            expected = (.corrupt, "the registry says the manifest is \(built.manifest.digest) but it hashes to")
        case .unknownLayerMediaType:
            expected = (.unsupported, "has unsupported media type \"application/vnd.example.layer.v1+lz4\"")
        }
        let sink = try TestSink(root: work.sub("sink"))
        let err = await pullError {
            _ = try await RegistryClient(registry: reg.host).pull(try ImageReference(parsing: "\(reg.host)/test/img:1"), into: sink)
        }
        #expect(err?.code == expected.0)
        #expect(err?.message.contains(expected.1) == true, "\(err?.message ?? "no error")")
        #expect(sink.storedBlobs.isEmpty)
        #expect(sink.committed == 0 && sink.aborted == sink.begun)
        #expect(sink.tmpEntries.isEmpty)
    }

    @Test func missingTagAndRepositoryAreNotFound() async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip])
        try reg.push(layout: image.layout)
        let sink = try TestSink(root: work.sub("sink"))
        for name in ["test/img:nope", "test/other:1"] {
            let err = await pullError {
                _ = try await RegistryClient(registry: reg.host).pull(try ImageReference(parsing: "\(reg.host)/\(name)"), into: sink)
            }
            #expect(err?.code == .notFound)
            #expect(err?.message.contains("\(reg.host)/\(name): not found") == true)
        }
        #expect(sink.begun == 0)
    }

    @Test func unreachableRegistryIsAClearError() async throws {
        let port = try freePort()
        let err = await pullError {
            let work = try TempDir()
            defer { work.remove() }
            _ = try await RegistryClient(registry: "127.0.0.1:\(port)")
                .pull(try ImageReference(parsing: "127.0.0.1:\(port)/test/img:1"), into: try TestSink(root: work.sub("sink")))
        }
        #expect(err?.code == .io)
        #expect(err?.message.contains("cannot connect") == true)
    }

    /// An https registry with a self-signed certificate, under a name that
    /// is not loopback (registry.test, pinned to 127.0.0.1 with `resolve`),
    /// so the default mode is `.verify`.
    @Test func selfSignedCertificate() async throws {
        let reg = try RegistryFixture(.selfSignedTLS)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip])
        try reg.push(layout: image.layout)
        let ref = try ImageReference(parsing: "\(reg.tlsHost)/test/img:1")
        var options = RegistryOptions()
        options.resolve = [reg.resolve()]
        #expect(TLSMode.defaultMode(for: RegistryFixture.tlsName) == .verify)

        // Default (verify): refused, naming the certificate problem, nothing written.
        let refused = try TestSink(root: work.sub("refused"))
        let err = await pullError { _ = try await RegistryClient(registry: reg.tlsHost, options: options).pull(ref, into: refused) }
        #expect(err?.code == .io)
        #expect(err?.message.contains("SSL certificate problem: self-signed certificate") == true, "\(err?.message ?? "no error")")
        #expect(err?.message.contains("--tls-verify=false") == true)
        #expect(err?.message.contains("\n") == false)
        #expect(refused.begun == 0 && refused.storedBlobs.isEmpty)

        // Insecure: https without checks (the port speaks only https, so no plain-http fallback can be what worked).
        var insecure = options
        insecure.tls = .insecure
        let sink = try TestSink(root: work.sub("insecure"))
        let result = try await RegistryClient(registry: reg.tlsHost, options: insecure).pull(ref, into: sink)
        #expect(result.manifestDigest == image.images[0].manifest.digest)
        #expect(sink.storedBlobs == image.blobDigests)

        // Its certificate trusted as a CA: a verified pull works.
        var trusted = options
        trusted.trustedCertificates = try Data(contentsOf: URL(fileURLWithPath: reg.certificate))
        let verified = try TestSink(root: work.sub("verified"))
        let r2 = try await RegistryClient(registry: reg.tlsHost, options: trusted).pull(ref, into: verified)
        #expect(r2.manifestDigest == result.manifestDigest)
        #expect(verified.storedBlobs == image.blobDigests)

        // The same from a certs.d directory named after the registry (podman's /etc/containers/certs.d/HOST:PORT).
        var fromDir = options
        fromDir.certificateDirectories = [work.sub("none"), work.sub("certs.d")]
        try FileManager.default.createDirectory(atPath: work.sub("certs.d/\(reg.tlsHost)"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: reg.certificate, toPath: work.sub("certs.d/\(reg.tlsHost)/ca.crt"))
        let r4 = try await RegistryClient(registry: reg.tlsHost, options: fromDir).pull(ref, into: try TestSink(root: work.sub("certsd")))
        #expect(r4.manifestDigest == result.manifestDigest)

        // Trusted, but under a name the certificate is not for: the host-name check refuses
        // it; insecure mode skips that check too.
        let otherHost = "other.test:\(reg.port)"
        let otherRef = try ImageReference(parsing: "\(otherHost)/test/img:1")
        var other = trusted
        other.resolve = [reg.resolve("other.test")]
        let mismatch = await pullError {
            _ = try await RegistryClient(registry: otherHost, options: other).pull(otherRef, into: try TestSink(root: work.sub("other")))
        }
        #expect(mismatch?.code == .io)
        #expect(mismatch?.message.contains("other.test") == true && mismatch?.message.contains("certificate") == true,
                "\(mismatch?.message ?? "no error")")
        other.tls = .insecure
        let r3 = try await RegistryClient(registry: otherHost, options: other).pull(otherRef, into: try TestSink(root: work.sub("other2")))
        #expect(r3.manifestDigest == result.manifestDigest)
    }

    /// Loopback's default is `.insecure`: a self-signed 127.0.0.1 registry
    /// pulls without options; `.verify` refuses it.
    @Test func loopbackDefaultSkipsCertificateChecks() async throws {
        let reg = try RegistryFixture(.selfSignedTLS)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip])
        try reg.push(layout: image.layout)
        let ref = try ImageReference(parsing: "\(reg.host)/test/img:1")
        let result = try await RegistryClient(registry: reg.host).pull(ref, into: try TestSink(root: work.sub("sink")))
        #expect(result.manifestDigest == image.images[0].manifest.digest)
        let err = await pullError {
            _ = try await RegistryClient(registry: reg.host, options: RegistryOptions(tls: .verify)).pull(ref, into: try TestSink(root: work.sub("verify")))
        }
        #expect(err?.message.contains("certificate") == true)
    }

    @Test func tlsVerifyRefusesPlainHTTP() async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let err = await pullError {
            _ = try await RegistryClient(registry: reg.host, options: RegistryOptions(tls: .verify))
                .pull(try ImageReference(parsing: "\(reg.host)/test/img:1"), into: try TestSink(root: work.sub("sink")))
        }
        #expect(err?.code == .io)
        #expect(err?.message.contains("--tls-verify=false") == true)
    }
}

func writeAuthFile(_ path: String, host: String, user: String, password: String) throws {
    let auth = Data("\(user):\(password)".utf8).base64EncodedString()
    try #"{"auths":{"\#(host)":{"auth":"\#(auth)"}}}"#.write(toFile: path, atomically: true, encoding: .utf8)
}

/// Cancels the pull's task as soon as the first blob starts.
final class CancelOnFirstBlob: PullProgress {
    private let lock = NSLock()
    private var task: Task<PullResult, Error>?
    private var triggered = false

    func attach(_ t: Task<PullResult, Error>) {
        let cancelNow: Bool = lock.withLock { task = t; return triggered }
        if cancelNow { t.cancel() }
    }

    func report(_ event: PullEvent) {
        guard case .blobStarted = event else { return }
        let t: Task<PullResult, Error>? = lock.withLock { triggered = true; return task }
        t?.cancel()
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct PullCancellationTests {
    @Test func cancelledPullLeavesNothing() async throws {
        let reg = try RegistryFixture(.anonymous)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip, .zstd, .gzip])
        try reg.push(layout: image.layout)
        let sink = try TestSink(root: work.sub("sink"))
        let canceller = CancelOnFirstBlob()
        let client = RegistryClient(registry: reg.host)
        let ref = try ImageReference(parsing: "\(reg.host)/test/img:1")
        let task = Task { try await client.pull(ref, into: sink, progress: canceller) }
        canceller.attach(task)
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(sink.storedBlobs.isEmpty)
        #expect(sink.committed == 0)
        #expect(sink.aborted == sink.begun)
        #expect(sink.tmpEntries.isEmpty)
    }
}

extension PullCancellationTests {
    /// A registry that accepts the connection and never answers: cancelling
    /// the request resumes the caller with CancellationError (curl would
    /// otherwise wait out its 30 s connect timeout and report a TLS failure).
    @Test func cancelledRequestToASilentServerReturnsAtOnce() async throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let listening = withUnsafeMutablePointer(to: &addr) { ptr in
            ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        } && listen(fd, 4) == 0
        try #require(listening)
        let host = "127.0.0.1:\(UInt16(bigEndian: addr.sin_port))"
        let client = RegistryClient(registry: host, options: RegistryOptions(tls: .verify))
        let task = Task { try await client.ping() }
        // The request is in flight once its connection is accepted (accept blocks until then).
        let conn = accept(fd, nil, nil)
        #expect(conn >= 0)
        defer { close(conn) }
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
    }
}

/// A pull with a wrong password in the auth file: refused as permission
/// denied, saying `message`, with nothing written to the sink.
func expectWrongPasswordRefused(_ reg: RegistryFixture, _ ref: ImageReference, _ work: TempDir, saying message: String,
                                sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let badFile = work.sub("bad.json")
    try writeAuthFile(badFile, host: reg.host, user: RegistryFixture.user, password: "wrong")
    let badSink = try TestSink(root: work.sub("bad"))
    let err = await pullError {
        _ = try await RegistryClient(registry: reg.host, options: RegistryOptions(authFile: badFile)).pull(ref, into: badSink)
    }
    #expect(err?.code == .permissionDenied, sourceLocation: sourceLocation)
    #expect(err?.message.contains(message) == true, "\(String(describing: err))", sourceLocation: sourceLocation)
    #expect(badSink.storedBlobs.isEmpty && badSink.begun == 0, sourceLocation: sourceLocation)
}
