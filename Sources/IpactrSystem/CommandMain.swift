#if canImport(Glibc)
import Glibc
#endif

/// Exit statuses shared by the command-line tools: usage errors are 64
/// (EX_USAGE, as swift-argument-parser uses), everything else non-zero by code.
public extension IpactrError.Code {
    var exitStatus: Int32 {
        switch self {
        case .invalidArgument: return 2
        case .notFound: return 3
        case .exists: return 4
        case .permissionDenied: return 5
        case .unsupported: return 6
        case .busy: return 7
        case .corrupt: return 8
        case .io, .internalError: return 1
        }
    }
}

/// Prints `tool: message` on stderr, one line, as every ipactr command does.
public func printError(tool: String, _ message: String) {
    let line = "\(tool): \(message.split(separator: "\n").joined(separator: " "))\n"
    var bytes = Array(line.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}
