import IpactrSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

// Foundation's NSLock and Thread would link all of Foundation (and ICU) into
// every client of this module, the `ipactr` command line included; these two
// are all the server needs.

/// A pthread mutex.
final class PthreadLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// Runs `body` on a new detached thread.
func startThread(_ body: @escaping () -> Void) throws(IpactrError) {
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
    pthread_detach(thread)
}
