import SystemPackage

/// The one error type at API boundaries. `code` maps one-to-one to a D-Bus
/// error name and to the CLI's exit status; `message` is for a person.
public struct IpactrError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable, CaseIterable {
        case notFound = "NotFound"
        case exists = "Exists"
        case invalidArgument = "InvalidArgument"
        case permissionDenied = "AccessDenied"
        case unsupported = "Unsupported"
        case busy = "Busy"
        case corrupt = "Corrupt"
        case io = "IO"
        case internalError = "Internal"
    }

    public var code: Code
    public var message: String
    /// The errno of the failing system call, when there is one.
    public var errno: Errno?

    public init(_ code: Code, _ message: String, errno: Errno? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    /// Builds an error from a failed system call: "stage: strerror".
    public static func syscall(_ stage: String, _ errno: Errno) -> IpactrError {
        let code: Code
        switch errno {
        case .noSuchFileOrDirectory: code = .notFound
        case .fileExists: code = .exists
        case .permissionDenied, .notPermitted: code = .permissionDenied
        case .invalidArgument: code = .invalidArgument
        case .resourceBusy: code = .busy
        case .notSupported, .noFunction: code = .unsupported
        default: code = .io
        }
        return IpactrError(code, "\(stage): \(errno.description)", errno: errno)
    }

    public var description: String { message }

    /// D-Bus error name for this code.
    public var dbusName: String { "org.ipactr1.Error.\(code.rawValue)" }
}
