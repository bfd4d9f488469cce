import Foundation
import IpactrOCI
#if canImport(Glibc)
import Glibc
#endif

/// Progress for people: a live per-blob display when the descriptor is a
/// terminal, one plain line per step otherwise (logs, CI).
public enum PullProgressDisplay {
    public static func forStandardError() -> PullProgress {
        isatty(2) == 1 ? TerminalPullProgress(fd: 2) : LinePullProgress(fd: 2)
    }
}

func shortDigest(_ d: Digest) -> String { String(d.hex.prefix(12)) }

func formatBytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(n)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(n) B" : String(format: "%.1f %@", value, units[unit])
}

private func writeAll(_ fd: Int32, _ text: String) {
    var bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return }
        offset += n
    }
}

/// One line per event that matters (no per-chunk lines).
public final class LinePullProgress: PullProgress {
    let fd: Int32
    public init(fd: Int32) { self.fd = fd }

    public func report(_ event: PullEvent) {
        switch event {
        case .resolved(let reference, let manifest, let index, let blobs):
            let from = index.map { " (from index \(shortDigest($0)))" } ?? ""
            writeAll(fd, "Pulling \(reference): manifest \(manifest)\(from), \(blobs.count) blobs\n")
        case .blobExists(let blob):
            writeAll(fd, "Blob \(shortDigest(blob.digest)): already present\n")
        case .blobStarted(let blob):
            writeAll(fd, "Blob \(shortDigest(blob.digest)): fetching \(formatBytes(blob.size))\n")
        case .blobReceived:
            break
        case .blobDone(let blob):
            writeAll(fd, "Blob \(shortDigest(blob.digest)): done\n")
        case .committed(let manifest):
            writeAll(fd, "Stored manifest \(manifest)\n")
        }
    }
}

/// A table with one row per blob, redrawn in place (at most ten times a
/// second while bytes arrive).
public final class TerminalPullProgress: PullProgress {
    let fd: Int32
    private var order: [Digest] = []
    private var rows: [Digest: String] = [:]
    private var drawn = 0
    private var lastDraw = timespec()

    public init(fd: Int32) { self.fd = fd }

    public func report(_ event: PullEvent) {
        switch event {
        case .resolved(let reference, let manifest, _, let blobs):
            writeAll(fd, "Pulling \(reference) (manifest \(shortDigest(manifest)))\n")
            order = blobs.map { $0.digest }
            for blob in blobs { rows[blob.digest] = "waiting" }
            redraw(force: true)
        case .blobExists(let blob):
            rows[blob.digest] = "already present"
            redraw(force: true)
        case .blobStarted(let blob):
            rows[blob.digest] = "fetching  0 B / \(formatBytes(blob.size))"
            redraw(force: true)
        case .blobReceived(let blob, let bytes):
            let percent = blob.size > 0 ? Int(bytes * 100 / blob.size) : 100
            rows[blob.digest] = "fetching  \(formatBytes(bytes)) / \(formatBytes(blob.size))  \(percent)%"
            redraw(force: false)
        case .blobDone(let blob):
            rows[blob.digest] = "done      \(formatBytes(blob.size))"
            redraw(force: true)
        case .committed(let manifest):
            redraw(force: true)
            writeAll(fd, "Stored manifest \(manifest)\n")
        }
    }

    private func redraw(force: Bool) {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let elapsedMs = (now.tv_sec - lastDraw.tv_sec) * 1000 + (now.tv_nsec - lastDraw.tv_nsec) / 1_000_000
        if !force && elapsedMs < 100 { return }
        lastDraw = now
        // Move up over the rows drawn last time and rewrite them.
        var out = drawn > 0 ? "\u{1B}[\(drawn)A" : ""
        for digest in order {
            out += "\r\u{1B}[2K  \(shortDigest(digest))  \(rows[digest] ?? "")\n"
        }
        drawn = order.count
        writeAll(fd, out)
    }
}
