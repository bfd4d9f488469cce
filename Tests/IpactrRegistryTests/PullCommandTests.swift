import ArgumentParser
import Foundation
import IpactrCLI
import IpactrOCI
import IpactrRegistry
import IpactrSystem
import Testing

/// `ipactr worker pull` (what ipactrd runs for `ipactr pull`), parsed by the real command tree, with
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
        var command = try IpactrCommand.parseAsRoot(["worker", "pull"] + args)
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
