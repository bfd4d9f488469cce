import Foundation

/// Runs a program to completion with posix_spawn and returns its exit status.
/// (Foundation's Process.waitUntilExit can sit in its run loop for seconds.)
@discardableResult
func spawnAndWait(_ argv: [String], environment: [String: String]? = nil) throws -> Int32 {
    var pid: pid_t = 0
    let cArgs = argv.map { strdup($0) } + [nil]
    defer { cArgs.forEach { free($0) } }
    let env = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { env.forEach { free($0) } }
    let r = posix_spawn(&pid, argv[0], nil, nil, cArgs, env)
    guard r == 0 else { throw POSIXError(POSIXErrorCode(rawValue: r) ?? .EIO) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}
