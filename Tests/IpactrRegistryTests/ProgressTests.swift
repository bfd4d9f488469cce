import Foundation
import IpactrOCI
@testable import IpactrRegistry
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The two progress displays, written to a temp file instead of stderr.
@Suite struct ProgressTests {
    let config = Descriptor(mediaType: MediaType.ociConfig, digest: Digest(sha256Hex: String(repeating: "a", count: 64)), size: 100)
    let layer = Descriptor(mediaType: MediaType.ociLayerGzip, digest: Digest(sha256Hex: String(repeating: "b", count: 64)), size: 3 << 20)
    let manifest = Digest(sha256Hex: String(repeating: "c", count: 64))

    func capture(_ make: (Int32) -> PullProgress) throws -> String {
        let work = try TempDir()
        defer { work.remove() }
        let path = work.sub("out")
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        #expect(fd >= 0)
        let p = make(fd)
        let ref = try ImageReference(parsing: "127.0.0.1:5000/test/img:1")
        p.report(.resolved(reference: ref, manifest: manifest, index: nil, blobs: [config, layer]))
        p.report(.blobExists(config))
        p.report(.blobStarted(layer))
        p.report(.blobReceived(layer, bytes: 1 << 20))
        p.report(.blobReceived(layer, bytes: 3 << 20))
        p.report(.blobDone(layer))
        p.report(.committed(manifest: manifest))
        close(fd)
        return try String(contentsOfFile: path, encoding: .utf8)
    }

    @Test func plainLinesWhenNotATerminal() throws {
        let text = try capture { LinePullProgress(fd: $0) }
        #expect(text == """
        Pulling 127.0.0.1:5000/test/img:1: manifest \(manifest), 2 blobs
        Blob aaaaaaaaaaaa: already present
        Blob bbbbbbbbbbbb: fetching 3.0 MiB
        Blob bbbbbbbbbbbb: done
        Stored manifest \(manifest)

        """)
    }

    @Test func terminalTableRedrawsRowsInPlace() throws {
        let text = try capture { TerminalPullProgress(fd: $0) }
        // Two rows, redrawn by moving the cursor up over them.
        #expect(text.hasPrefix("Pulling 127.0.0.1:5000/test/img:1 (manifest cccccccccccc)\n"))
        #expect(text.contains("\u{1B}[2A"))
        #expect(text.contains("aaaaaaaaaaaa  already present"))
        #expect(text.contains("bbbbbbbbbbbb  done      3.0 MiB"))
        #expect(text.hasSuffix("Stored manifest \(manifest)\n"))
    }
}
