import ArgumentParser
import Foundation
import IpactrWorkers
import IpactrOCI
import IpactrRegistry
import IpactrSystem
import IpactrTestSupport
import Testing

/// `ipactr-worker pull` (what ipactrd runs for `ipactr pull`), parsed by the real command tree, with
/// the destination set to a test sink.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct PullCommandTests {
    final class Commits {
        var names: [(Digest, String)] = []
    }

    func runPull(_ args: [String], sink: TestSink, commits: Commits) async throws {
        PullWorker.openDestination = {
            PullDestination(sink: sink) { digest, name in commits.names.append((digest, name)) }
        }
        defer { PullWorker.openDestination = nil }
        var command = try IpactrWorkerCommand.parseAsRoot(["pull"] + args)
        if var asyncCommand = command as? AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    }

    @Test func pullWithCredsAndTLSVerifyFalse() async throws {
        let reg = try RegistryFixture(.basic)
        defer { reg.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip])
        try reg.push(layout: image.layout)
        let sink = try TestSink(root: work.sub("sink"))
        let commits = Commits()
        try await runPull(["--tls-verify=false", "--quiet", "--creds", reg.creds, "\(reg.host)/test/img:1"], sink: sink, commits: commits)
        #expect(commits.names.count == 1)
        #expect(commits.names.first?.0 == image.images[0].manifest.digest)
        #expect(commits.names.first?.1 == "\(reg.host)/test/img:1")
        #expect(sink.storedBlobs == image.blobDigests)

        // Wrong password: an IpactrError (one `ipactr:` line from main), nothing committed.
        let bad = try TestSink(root: work.sub("bad"))
        let badCommits = Commits()
        do {
            try await runPull(["--quiet", "--creds", "\(RegistryFixture.user):nope", "\(reg.host)/test/img:1"], sink: bad, commits: badCommits)
            Issue.record("pull with a wrong password succeeded")
        } catch let e as IpactrError {
            #expect(e.code == .permissionDenied)
        }
        #expect(badCommits.names.isEmpty && bad.storedBlobs.isEmpty)
    }

    /// `ipactr-worker pull` (what ipactrd runs for `ipactr pull`) into a real
    /// store under --root (no test sink), in this process so that the test
    /// can pin a host name to 127.0.0.1.
    func runCLI(_ args: [String]) async throws {
        var command = try IpactrWorkerCommand.parseAsRoot(args)
        if var asyncCommand = command as? AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    }

    /// Every path under `root` with its type, mode, size, link target and, for files, sha256.
    func snapshot(_ root: String) throws -> String {
        let entries = try run(["/usr/bin/find", root, "-printf", "%P %y %m %s %l\n"]).split(separator: "\n").sorted()
        let hashes = try run(["/usr/bin/find", root, "-type", "f", "-exec", "/usr/bin/sha256sum", "{}", "+"]).split(separator: "\n").sorted()
        return (entries + hashes).joined(separator: "\n")
    }

    /// An https registry with a self-signed certificate under a name that is
    /// not loopback (registry.test, pinned to 127.0.0.1 as curl's --resolve
    /// does), beside a plain-http registry with the same image.
    @Test func tlsVerifyFalseSkipsCertificateChecks() async throws {
        let plain = try RegistryFixture(.anonymous)
        defer { plain.stop() }
        let secure = try RegistryFixture(.selfSignedTLS)
        defer { secure.stop() }
        let work = try TempDir()
        defer { work.remove() }
        let image = try TestImage(at: work.sub("layout"), compressions: [.gzip, .zstd])
        try plain.push(layout: image.layout)
        try secure.push(layout: image.layout)
        PullWorker.adjustRegistryOptions = { $0.resolve = [secure.resolve()] }
        defer { PullWorker.adjustRegistryOptions = nil }
        let root = work.sub("store")
        let secureRef = "\(secure.tlsHost)/test/img:1"
        try await runCLI(["pull", "--root", root, "--quiet", "\(plain.host)/test/img:1"])
        let before = try snapshot(root)

        // Default: verification fails, one line names the problem, the store is as it was.
        do {
            try await runCLI(["pull", "--root", root, "--quiet", secureRef])
            Issue.record("pull from a self-signed registry succeeded without --tls-verify=false")
        } catch let e as IpactrError {
            #expect(e.code == .io)
            #expect(e.message.contains("\(secure.tlsHost): SSL certificate problem: self-signed certificate"), "\(e.message)")
            #expect(e.message.contains("--tls-verify=false"))
            #expect(!e.message.contains("\n"))
        }
        #expect(try snapshot(root) == before)
        // Nor is a store made under a new root.
        let fresh = work.sub("fresh")
        await #expect(throws: IpactrError.self) { try await runCLI(["pull", "--root", fresh, "--quiet", secureRef]) }
        #expect(!FileManager.default.fileExists(atPath: fresh))

        // --tls-verify=false: pulled over https without checks, the same image as over plain http.
        try await runCLI(["pull", "--root", root, "--quiet", "--tls-verify=false", secureRef])
        let rows = try storeImages(root)
        let overHTTP = try #require(rows.first { $0.name == "\(plain.host)/test/img:1" })
        let overHTTPS = try #require(rows.first { $0.name == secureRef })
        #expect(overHTTPS.id == overHTTP.id)

        // --cert-dir with the registry's certificate: a verified pull into a fresh store.
        let certs = work.sub("certs")
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: secure.certificate, toPath: "\(certs)/registry.crt")
        let root2 = work.sub("store2")
        try await runCLI(["pull", "--root", root2, "--quiet", "--tls-verify=true", "--cert-dir", certs, secureRef])
        #expect(try storeImages(root2).first { $0.name == secureRef }?.id == overHTTP.id)

        // A --cert-dir without certificates is refused before anything is touched.
        let empty = work.sub("empty")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        let root3 = work.sub("store3")
        do {
            try await runCLI(["pull", "--root", root3, "--quiet", "--cert-dir", empty, secureRef])
            Issue.record("accepted an empty --cert-dir")
        } catch let e as IpactrError {
            #expect(e.message.contains("no *.crt file"))
        }
        #expect(!FileManager.default.fileExists(atPath: root3))
    }

    @Test func badReferenceIsAnInvalidArgument() async throws {
        let work = try TempDir()
        defer { work.remove() }
        let sink = try TestSink(root: work.sub("sink"))
        do {
            try await runPull(["127.0.0.1:1/Bad_Repo:1"], sink: sink, commits: Commits())
            Issue.record("accepted a bad reference")
        } catch let e as IpactrError {
            #expect(e.code == .invalidArgument)
            #expect(e.message.contains("invalid image reference"))
        }
        #expect(sink.begun == 0)
    }
}

struct StoreImageRow: Decodable { var name: String; var id: String }

/// `ipactr images --json` of the store under `root`, from the built binary.
func storeImages(_ root: String) throws -> [StoreImageRow] {
    // `ipactr images --json` through an ipactrd serving `root`.
    let daemon = try IpactrDaemon(root: root)
    defer { daemon.stop() }
    let out = try daemon.ipactr(["images", "--json"])
    guard out.status == 0 else { throw IpactrError(.io, "ipactr images: \(out.stderr)") }
    return try JSONDecoder().decode([StoreImageRow].self, from: Data(out.stdout.utf8))
}
