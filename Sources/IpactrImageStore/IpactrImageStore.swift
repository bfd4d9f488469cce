// IpactrImageStore: the content-addressed image store, its importers and the
// layer unpacker. See README.md beside this file.
//
// swift-crypto is imported as `import struct Crypto.SHA256` only: its
// `Digest` protocol would otherwise clash with IpactrOCI.Digest.
