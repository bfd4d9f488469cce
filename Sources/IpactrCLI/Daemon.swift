import Dispatch
import FoundationEssentials
import IpactrClient
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// Every verb talks to ipactrd on the system bus ($DBUS_SYSTEM_BUS_ADDRESS
/// to use another); when it is not there, the error says how to start it.
func daemon() throws -> ManagerClient {
    try ManagerClient()
}

/// stdin, stdout and stderr as descriptors to send to the daemon; a closed
/// one is replaced by /dev/null (D-Bus cannot pass a descriptor that is not open).
func standardDescriptors() -> [Int32] {
    (0..<3).map { fd in
        fcntl(fd, F_GETFD) >= 0 ? fd : open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY)
    }
}

/// Runs `body` with the read end of a "lifeline" pipe for a daemon job:
/// SIGINT or SIGTERM writes its number on it (a pull or import stops and
/// rolls back, saying so on our stderr; exec and shell pass the signal to
/// their command), and our exit closes it (the daemon stops the worker too).
func withLifeline<T>(_ body: (Int32) throws -> T) throws -> T {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw IpactrError.syscall("pipe", .init(rawValue: errno)) }
    defer { close(fds[0]); close(fds[1]) }
    let writeEnd = fds[1]
    let interrupts = InterruptHandler { sig in
        var b = UInt8(sig)
        _ = write(writeEnd, &b, 1)
    }
    defer { interrupts.cancel() }
    return try body(fds[0])
}

/// Runs `handler` on SIGINT or SIGTERM (instead of dying) until `cancel()`,
/// which restores the default actions.
package final class InterruptHandler {
    private let sources: [DispatchSourceSignal]

    package init(_ handler: @escaping @Sendable (Int32) -> Void) {
        sources = [SIGINT, SIGTERM].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { handler(sig) }
            source.resume()
            return source
        }
    }

    package func cancel() {
        for source in sources { source.cancel() }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
    }
}

/// A path as the daemon must get it: absolute (it does not share our working directory).
func absolutePath(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    return FileManager.default.currentDirectoryPath + "/" + path
}
