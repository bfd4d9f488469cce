import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` on a new thread (a pthread: Foundation's Thread would link
/// all of Foundation into the small binaries). A thread that is not
/// detached must be joined (`joinThread`).
public func startThread(detached: Bool, _ body: @escaping () -> Void) throws(IpactrError) -> pthread_t {
    final class Start { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }
    let start = Unmanaged.passRetained(Start(body)).toOpaque()
    var thread = pthread_t()
    let r = pthread_create(&thread, nil, { arg in
        Unmanaged<Start>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, start)
    if r != 0 {
        Unmanaged<Start>.fromOpaque(start).release()
        throw IpactrError.syscall("pthread_create", Errno(rawValue: r))
    }
    if detached { pthread_detach(thread) }
    return thread
}

/// Waits for a thread `startThread(detached: false)` started.
public func joinThread(_ thread: pthread_t) {
    _ = pthread_join(thread, nil)
}
