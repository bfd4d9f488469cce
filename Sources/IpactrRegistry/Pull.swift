import Foundation
import IpactrOCI
import IpactrSystem

/// What a pull reports while it runs (to a `PullProgress`).
public enum PullEvent {
    /// The manifest to pull is known; `blobs` are its config and layers.
    case resolved(reference: ImageReference, manifest: Digest, index: Digest?, blobs: [Descriptor])
    /// The sink already has this blob: it is not fetched.
    case blobExists(Descriptor)
    case blobStarted(Descriptor)
    /// `bytes` of the blob received so far.
    case blobReceived(Descriptor, bytes: Int64)
    /// Received and verified (committed with the rest at the end).
    case blobDone(Descriptor)
    /// Every blob, the manifest and the index are in the sink.
    case committed(manifest: Digest)
}

/// Receives pull events. Called from several threads, never concurrently:
/// `pull` serialises the reports of its parallel downloads, so a reporter
/// needs no lock of its own.
public protocol PullProgress: AnyObject {
    func report(_ event: PullEvent)
}

/// One report at a time, whatever task sends it.
final class SerializedProgress: PullProgress {
    private let reporter: PullProgress
    private let lock = NSLock()
    init(_ reporter: PullProgress) { self.reporter = reporter }
    func report(_ event: PullEvent) { lock.withLock { reporter.report(event) } }
}

/// The outcome of a pull: the manifest to commit as the image, and what was fetched.
public struct PullResult: Sendable {
    public var manifestDigest: Digest
    /// The index or manifest list the manifest was picked from, when there was one.
    public var indexDigest: Digest?
    public var manifest: ImageManifest
    public var fetchedBlobs: [Digest]
    public var skippedBlobs: [Digest]
    public var fetchedBytes: Int64
}

extension RegistryClient {
    /// Pulls `reference` into `sink`: resolves the tag, picks `platform` from
    /// an index or manifest list, and writes the index (if any), the manifest,
    /// the config and the layers, skipping blobs `sink.hasBlob` already has.
    ///
    /// Every blob is checked against its descriptor's size and digest as it
    /// arrives, and nothing is committed until everything has arrived and
    /// matched: a failed or cancelled pull aborts every writer it opened and
    /// leaves the sink as it was. The sink is called from one task at a time.
    /// - Returns: the manifest digest to commit as the image.
    public func pull(_ reference: ImageReference, into sink: ContentSink, platform: Platform = .linuxAmd64,
                     progress: PullProgress? = nil) async throws -> PullResult {
        guard reference.registry == registry else {
            throw IpactrError(.invalidArgument, "\(reference) is not on registry \(registry)")
        }
        // Blobs download in parallel tasks, and each reports.
        let progress: PullProgress? = progress.map { SerializedProgress($0) }
        let repo = reference.repository
        // 1. The top-level manifest, by tag or digest.
        let (topData, topType, declared) = try await fetchManifest(repository: repo, reference: reference.manifestReference)
        let topDigest = sha256Digest(topData)
        if let wanted = reference.digest, wanted != topDigest {
            throw IpactrError(.corrupt, "\(reference): the registry sent a manifest whose digest is \(topDigest)")
        }
        // For a tag, the registry's own word is all there is to check against.
        if let declared, let claimed = try? Digest(parsing: declared), claimed != topDigest {
            throw IpactrError(.corrupt, "\(reference): the registry says the manifest is \(claimed) but it hashes to \(topDigest)")
        }
        var indexDigest: Digest?
        var indexData: Data?
        var manifestData = topData
        var manifestDigest = topDigest
        var manifest: ImageManifest
        switch try Self.parseManifest(topData, contentType: topType, source: reference.description) {
        case .manifest(let m):
            manifest = m
        case .index(let index):
            let chosen = try Self.select(platform, from: index, source: reference.description)
            indexDigest = topDigest
            indexData = topData
            let (data, type, _) = try await fetchManifest(repository: repo, reference: chosen.digest.description)
            let digest = sha256Digest(data)
            guard digest == chosen.digest, Int64(data.count) == chosen.size else {
                throw IpactrError(.corrupt, "\(reference): manifest \(chosen.digest) from the index does not match its digest or size (got \(digest), \(data.count) bytes)")
            }
            guard case .manifest(let m) = try Self.parseManifest(data, contentType: type ?? chosen.mediaType,
                                                                 source: "\(reference.registry)/\(repo)@\(chosen.digest)") else {
                throw IpactrError(.unsupported, "\(reference): an index inside an index is not supported")
            }
            manifest = m
            manifestData = data
            manifestDigest = digest
        }
        try Self.checkMediaTypes(manifest, source: "\(reference.registry)/\(repo)@\(manifestDigest)")

        // 2. Config and layers, each once.
        var seen = Set<Digest>()
        let blobs = ([manifest.config] + manifest.layers).filter { seen.insert($0.digest).inserted }
        progress?.report(.resolved(reference: reference, manifest: manifestDigest, index: indexDigest, blobs: blobs))
        var toFetch: [Descriptor] = []
        var skipped: [Digest] = []
        for blob in blobs {
            if sink.hasBlob(blob.digest) {
                skipped.append(blob.digest)
                progress?.report(.blobExists(blob))
            } else {
                toFetch.append(blob)
            }
        }

        var pending: [BlobWriter] = []
        var committedCount = 0
        do {
            pending = try await fetchAll(toFetch, repository: repo, sink: sink, progress: progress)
            // 3. The manifest and index bytes, exactly as received (their digest is their identity).
            for (digest, data) in [(manifestDigest, manifestData), (indexDigest, indexData)] {
                guard let digest, let data, !sink.hasBlob(digest) else { continue }
                let writer = try sink.beginBlob(digest, size: Int64(data.count))
                pending.append(writer)
                try data.withUnsafeBytes { try writer.write($0) }
            }
            // 4. Commit in dependency order: blobs, manifest, index.
            for writer in pending {
                try writer.commit()
                committedCount += 1
            }
        } catch {
            for writer in pending[committedCount...] { writer.abort() }
            throw error
        }
        progress?.report(.committed(manifest: manifestDigest))
        return PullResult(manifestDigest: manifestDigest, indexDigest: indexDigest, manifest: manifest,
                          fetchedBlobs: toFetch.map(\.digest), skippedBlobs: skipped,
                          fetchedBytes: toFetch.reduce(0) { $0 + $1.size })
    }

    /// Fetches `blobs`, `options.parallelDownloads` at a time, into writers
    /// that are verified but not committed. On any failure every writer is
    /// aborted and the first error is thrown.
    private func fetchAll(_ blobs: [Descriptor], repository: String, sink: ContentSink,
                          progress: PullProgress?) async throws -> [BlobWriter] {
        var writers: [Digest: BlobWriter] = [:]
        var firstError: Error?
        await withTaskGroup(of: (Descriptor, Error?).self) { group in
            var next = 0
            // Writers are opened here, in the parent task, so the sink is
            // never entered from two tasks at once.
            func start(_ blob: Descriptor, in group: inout TaskGroup<(Descriptor, Error?)>) {
                let writer: BlobWriter
                do { writer = try sink.beginBlob(blob.digest, size: blob.size) } catch {
                    if firstError == nil { firstError = error }
                    return
                }
                writers[blob.digest] = writer
                group.addTask {
                    do {
                        try await self.download(blob, repository: repository, into: writer, progress: progress)
                        return (blob, nil)
                    } catch {
                        return (blob, error)
                    }
                }
            }
            while next < blobs.count && next < options.parallelDownloads && firstError == nil {
                start(blobs[next], in: &group)
                next += 1
            }
            for await (blob, error) in group {
                if let error {
                    writers.removeValue(forKey: blob.digest)?.abort()
                    if firstError == nil || firstError is CancellationError { firstError = error }
                    group.cancelAll()
                } else if firstError == nil && next < blobs.count {
                    start(blobs[next], in: &group)
                    next += 1
                }
            }
        }
        if firstError == nil && Task.isCancelled { firstError = CancellationError() }
        if let firstError {
            for writer in writers.values { writer.abort() }
            throw firstError
        }
        return blobs.map { writers[$0.digest]! }
    }

    private final class BlobCheck {
        let hasher = SHA256Hasher()
        var received: Int64 = 0
    }

    private func download(_ blob: Descriptor, repository: String, into writer: BlobWriter, progress: PullProgress?) async throws {
        progress?.report(.blobStarted(blob))
        let check = BlobCheck()
        try await fetchBlob(repository: repository, digest: blob.digest) { data in
            check.received += Int64(data.count)
            guard check.received <= blob.size else {
                throw IpactrError(.corrupt, "blob \(blob.digest) from \(self.registry)/\(repository) is larger than the \(blob.size) bytes its descriptor gives")
            }
            check.hasher.update(data: data)
            try data.withUnsafeBytes { try writer.write($0) }
            progress?.report(.blobReceived(blob, bytes: check.received))
        }
        guard check.received == blob.size else {
            throw IpactrError(.corrupt, "blob \(blob.digest) from \(registry)/\(repository) has \(check.received) bytes, its descriptor says \(blob.size)")
        }
        let got = check.hasher.finalize()
        guard got == blob.digest else {
            throw IpactrError(.corrupt, "blob \(blob.digest) from \(registry)/\(repository) does not match its digest (content hashes to \(got))")
        }
        progress?.report(.blobDone(blob))
    }

    // MARK: Manifests

    enum ParsedManifest {
        case index(ImageIndex)
        case manifest(ImageManifest)
    }

    private struct Probe: Decodable {
        var schemaVersion: Int?
        var mediaType: String?
        var manifests: [IgnoredValue]?
        var config: IgnoredValue?
    }

    private struct IgnoredValue: Decodable {
        init(from decoder: Decoder) throws {}
    }

    /// Decides what a manifest is: its `mediaType` field when present, else
    /// the Content-Type, else its shape (OCI allows omitting both).
    static func parseManifest(_ data: Data, contentType: String?, source: String) throws -> ParsedManifest {
        let probe: Probe
        do { probe = try JSONDecoder().decode(Probe.self, from: data) } catch {
            throw IpactrError(.corrupt, "\(source): manifest is not valid JSON")
        }
        if probe.schemaVersion == 1 {
            throw IpactrError(.unsupported, "\(source): Docker schema 1 manifests are not supported")
        }
        var type = probe.mediaType
        if type == nil, let contentType, MediaType.isIndex(contentType) || MediaType.isManifest(contentType) { type = contentType }
        if type == nil { type = probe.manifests != nil ? MediaType.ociIndex : probe.config != nil ? MediaType.ociManifest : nil }
        guard let type else {
            throw IpactrError(.unsupported, "\(source): cannot tell the manifest's media type (Content-Type \(contentType ?? "none"))")
        }
        do {
            if MediaType.isIndex(type) { return .index(try JSONDecoder().decode(ImageIndex.self, from: data)) }
            if MediaType.isManifest(type) { return .manifest(try JSONDecoder().decode(ImageManifest.self, from: data)) }
        } catch {
            throw IpactrError(.corrupt, "\(source): malformed \(type): \(Self.decodingMessage(error))")
        }
        throw IpactrError(.unsupported, "\(source): unsupported manifest media type \"\(type)\"")
    }

    static func decodingMessage(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing \"\(key.stringValue)\""
        case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx), DecodingError.dataCorrupted(let ctx):
            let path = ctx.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? ctx.debugDescription : "\(path): \(ctx.debugDescription)"
        default: return "\(error)"
        }
    }

    /// The index entry for `platform`: same OS and architecture; a variant
    /// is matched when the platform names one, else an entry without one is
    /// preferred.
    static func select(_ platform: Platform, from index: ImageIndex, source: String) throws -> Descriptor {
        let candidates = index.manifests.filter { d in
            guard MediaType.isManifest(d.mediaType), let p = d.platform else { return false }
            guard p.os == platform.os, p.architecture == platform.architecture else { return false }
            return platform.variant == nil || p.variant == platform.variant
        }
        if let exact = candidates.first(where: { $0.platform?.variant == platform.variant }) { return exact }
        if let any = candidates.first { return any }
        let available = index.manifests.compactMap { d in d.platform.map { "\($0.os)/\($0.architecture)\($0.variant.map { "/\($0)" } ?? "")" } }
        let wanted = "\(platform.os)/\(platform.architecture)\(platform.variant.map { "/\($0)" } ?? "")"
        throw IpactrError(.notFound, "\(source): no \(wanted) image in the index (it has: \(available.isEmpty ? "none" : available.joined(separator: ", ")))")
    }

    /// Refuses configs and layers whose media types ipactr cannot use, before anything is fetched.
    static func checkMediaTypes(_ manifest: ImageManifest, source: String) throws {
        guard MediaType.isConfig(manifest.config.mediaType) else {
            throw IpactrError(.unsupported, "\(source): unsupported config media type \"\(manifest.config.mediaType)\" (not a container image)")
        }
        for layer in manifest.layers where MediaType.layerCompression(layer.mediaType) == nil {
            throw IpactrError(.unsupported, "\(source): layer \(layer.digest) has unsupported media type \"\(layer.mediaType)\"")
        }
        for blob in [manifest.config] + manifest.layers where blob.size < 0 {
            throw IpactrError(.corrupt, "\(source): blob \(blob.digest) has a negative size")
        }
    }
}

