/// Where fetched content goes: the image store implements it, the registry
/// client and the importers write through it. Keeping it here lets the
/// registry client and the store stay independent of each other.
public protocol ContentSink: AnyObject {
    /// True when the blob is already stored (and verified): it is not fetched again.
    func hasBlob(_ digest: Digest) -> Bool

    /// Starts writing one blob. The writer hashes what it is given; `commit`
    /// refuses content whose size or digest does not match `digest`/`size`.
    func beginBlob(_ digest: Digest, size: Int64?) throws -> any BlobWriter
}

public protocol BlobWriter: AnyObject {
    /// Appends bytes (they are hashed as they are written).
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// Checks size and digest, makes the blob durable and visible atomically.
    func commit() throws
    /// Throws the partial content away; safe to call after a failed commit.
    func abort()
}
