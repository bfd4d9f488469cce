#if canImport(Glibc)
import Glibc
#endif
import CIpactrShim
import struct Crypto.SHA256
import Foundation
import IpactrOCI
import IpactrSystem

/// A private directory under the store's `tmp/` where blobs are written and
/// layers unpacked before `commitImage` moves them into place. It is flock'ed
/// for its life, so another process's recovery leaves it alone while this one
/// lives and removes it once this one is gone.
final class Staging {
    let path: String
    private let lock: FileLock
    /// Blobs written and verified here, with their sizes; guarded by `mutex`
    /// (a fetcher may write several blobs at once from different threads).
    private var blobSizes: [Digest: Int64] = [:]
    private let mutex = NSLock()
    /// Layers unpacked here.
    var layers: [Digest: LayerInfo] = [:]
    private var counter = 0

    init(parent: String) throws {
        let p = parent + "/stage-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try syscall("mkdir \(p)") { mkdir(p, 0o700) }
        do {
            lock = try FileLock(fd: FD.open(p, O_RDONLY | O_DIRECTORY))
            try syscall("mkdir \(p)/blobs") { mkdir(p + "/blobs", 0o700) }
            try syscall("mkdir \(p)/layers") { mkdir(p + "/layers", 0o700) }
        } catch {
            try? removeTree(p)
            throw error
        }
        path = p
    }

    deinit { try? removeTree(path) }

    func blobPath(_ d: Digest) -> String { path + "/blobs/" + d.hex }
    func layerDir(_ d: Digest) -> String { path + "/layers/" + d.hex }

    func tempName(_ kind: String) -> String {
        mutex.withLock {
            counter += 1
            return path + "/\(kind)-\(counter)"
        }
    }

    func blobSize(_ d: Digest) -> Int64? { mutex.withLock { blobSizes[d] } }

    func forgetBlob(_ d: Digest) { mutex.withLock { blobSizes[d] = nil } }

    /// Files a verified temp file as blob `d` (dropping it when already there).
    func addBlob(_ d: Digest, from tmp: String, size: Int64) throws {
        try mutex.withLock {
            if blobSizes[d] != nil {
                unlink(tmp)
            } else {
                try syscall("rename \(tmp)") { rename(tmp, blobPath(d)) }
                blobSizes[d] = size
            }
        }
    }

    func beginBlob(expected: Digest?, size: Int64?) throws -> StagedBlobWriter {
        try StagedBlobWriter(staging: self, expected: expected, size: size)
    }

    /// Unpacks a layer blob here (unless already done), checking its diff_id.
    func unpackLayer(blobPath: String, expectedDiffID: Digest?, what: String) throws -> LayerInfo {
        if let d = expectedDiffID, let info = layers[d] { return info }
        let dir = tempName("layer")
        try syscall("mkdir \(dir)") { mkdir(dir, 0o700) }
        do {
            try syscall("mkdir \(dir)/rootfs") { mkdir(dir + "/rootfs", 0o755) }
            let info = try LayerUnpacker(root: dir + "/rootfs", what: what).unpack(blobPath: blobPath, expectedDiffID: expectedDiffID)
            if let known = layers[info.diffID] {
                try removeTree(dir)
                return known
            }
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            let json: [UInt8]
            do { json = Array(try enc.encode(info)) } catch { throw IpactrError(.internalError, "encode layer record: \(error)") }
            let fd = try FD.open(dir + "/layer.json", O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            try writeAll(fd.raw, json, what: "layer.json")
            try syscall("rename \(dir)") { rename(dir, layerDir(info.diffID)) }
            layers[info.diffID] = info
            return info
        } catch {
            try? removeTree(dir)
            throw error
        }
    }

    /// Flushes everything written here to disk (one syncfs for the whole
    /// file system beats an fsync per unpacked file).
    func sync() throws {
        let fd = try FD.open(path, O_RDONLY | O_DIRECTORY)
        try syscall("syncfs \(path)") { ipactr_syncfs(fd.raw) }
    }
}

/// Writes one blob into the staging area, hashing as it goes; `commit`
/// refuses it unless size and digest match what was announced.
public final class StagedBlobWriter: BlobWriter {
    private let staging: Staging
    private let expected: Digest?
    private let expectedSize: Int64?
    private let tmp: String
    private var fd: FD?
    private var hasher = SHA256()
    private var count: Int64 = 0
    /// Set by `commit`: the digest of what was written.
    public private(set) var digest: Digest?

    init(staging: Staging, expected: Digest?, size: Int64?) throws {
        self.staging = staging
        self.expected = expected
        self.expectedSize = size
        tmp = staging.tempName("blob")
        fd = try FD.open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
    }

    deinit { if digest == nil { abort() } }

    private var what: String { expected.map { "blob \($0)" } ?? "blob" }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard let fd else { throw IpactrError(.internalError, "\(what): write after commit or abort") }
        hasher.update(bufferPointer: bytes)
        count += Int64(bytes.count)
        if let expectedSize, count > expectedSize {
            throw IpactrError(.corrupt, "\(what) is larger than the \(expectedSize) bytes announced")
        }
        try writeAll(fd.raw, bytes, what: tmp)
    }

    public func commit() throws {
        _ = try finish()
    }

    /// Like `commit`, and returns the digest (for blobs written without one).
    @discardableResult
    public func finish() throws -> Digest {
        guard fd != nil else { throw IpactrError(.internalError, "\(what): commit after abort") }
        let d = Digest(sha256Hex: hexString(hasher.finalize()))
        if let expectedSize, count != expectedSize {
            throw IpactrError(.corrupt, "\(what) has \(count) bytes, expected \(expectedSize)")
        }
        if let expected, expected != d {
            throw IpactrError(.corrupt, "\(what): content has digest \(d)")
        }
        fd = nil
        try staging.addBlob(d, from: tmp, size: count)
        digest = d
        return d
    }

    public func abort() {
        fd = nil
        unlink(tmp)
    }
}
