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
