import Crypto
import Foundation
import IpactrOCI

// Kept apart because Crypto's `Digest` protocol and IpactrOCI's `Digest`
// type share a name.

/// An incremental sha256 producing an OCI digest.
final class SHA256Hasher {
    private var hasher = SHA256()

    func update(data: Data) { hasher.update(data: data) }

    func finalize() -> IpactrOCI.Digest {
        IpactrOCI.Digest(sha256Hex: hexString(hasher.finalize()))
    }
}

func sha256Digest(_ data: Data) -> IpactrOCI.Digest {
    IpactrOCI.Digest(sha256Hex: hexString(SHA256.hash(data: data)))
}

func hexString<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(64)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0x0f)])
    }
    return String(decoding: out, as: UTF8.self)
}
