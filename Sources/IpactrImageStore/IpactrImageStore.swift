// IpactrImageStore: the content-addressed image store, its importers and the
// layer unpacker. See README.md beside this file.
import IpactrOCI

/// swift-crypto also exports a `Digest`; in this module the name is the OCI one.
public typealias Digest = IpactrOCI.Digest
