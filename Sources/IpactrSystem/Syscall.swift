#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage

/// Runs a libc call that returns -1 and sets errno on failure, retrying on
/// EINTR, and turns a failure into an `IpactrError` naming `stage`.
@discardableResult
@inline(__always)
public func syscall<T: FixedWidthInteger>(_ stage: @autoclosure () -> String, _ body: () -> T) throws(IpactrError) -> T {
    while true {
        let r = body()
        if r != -1 { return r }
        let e = Errno(rawValue: Glibc.errno)
        if e == .interrupted { continue }
        throw IpactrError.syscall(stage(), e)
    }
}

/// A waitpid(2) status as a shell reports it: the exit code, or 128+signal.
public func shellExitStatus(_ waitStatus: Int32) -> Int32 {
    (waitStatus & 0x7f) == 0 ? (waitStatus >> 8) & 0xff : 128 + (waitStatus & 0x7f)
}

/// FNV-1a, 64 bits: a stable hash of a name (Swift's Hasher is seeded per
/// process), for choices that must come out the same in every process.
public func stableHash(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
}
