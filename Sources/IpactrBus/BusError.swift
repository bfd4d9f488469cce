import CSystemd
import IpactrSystem
import SystemPackage

/// A D-Bus error with an explicit name. Handlers throw `IpactrError` for
/// ipactr's own failures (sent as `org.ipactr1.Error.<Code>`); this type is
/// for the standard `org.freedesktop.DBus.Error.*` replies.
public struct BusError: Error, Sendable, CustomStringConvertible {
    public var name: String
    public var message: String
    public init(_ name: String, _ message: String) {
        self.name = name
        self.message = message
    }
    public var description: String { "\(message) (\(name))" }

    public static let unknownObject = "org.freedesktop.DBus.Error.UnknownObject"
    public static let unknownInterface = "org.freedesktop.DBus.Error.UnknownInterface"
    public static let unknownMethod = "org.freedesktop.DBus.Error.UnknownMethod"
    public static let unknownProperty = "org.freedesktop.DBus.Error.UnknownProperty"
    public static let propertyReadOnly = "org.freedesktop.DBus.Error.PropertyReadOnly"
    public static let invalidArgs = "org.freedesktop.DBus.Error.InvalidArgs"
    public static let accessDenied = "org.freedesktop.DBus.Error.AccessDenied"
}

enum BusErrorMapping {
    static let ipactrPrefix = "org.ipactr1.Error."

    /// The (name, message) a thrown error is replied with.
    static func reply(for error: Error) -> (name: String, message: String) {
        switch error {
        case let e as IpactrError: return (e.dbusName, e.message)
        case let e as BusError: return (e.name, e.message)
        default: return (ipactrPrefix + IpactrError.Code.internalError.rawValue, String(describing: error))
        }
    }

    /// Turns a D-Bus error reply back into the `IpactrError` the server threw;
    /// errors from elsewhere (dbus-daemon, other services) get the closest code
    /// and keep their D-Bus name in the message.
    static func error(name: String, message: String) -> IpactrError {
        if name.hasPrefix(ipactrPrefix), let code = IpactrError.Code(rawValue: String(name.dropFirst(ipactrPrefix.count))) {
            return IpactrError(code, message)
        }
        let code: IpactrError.Code
        switch name.split(separator: ".").last.map(String.init) ?? "" {
        case "AccessDenied", "AuthFailed", "InteractiveAuthorizationRequired": code = .permissionDenied
        case "InvalidArgs", "InvalidSignature", "MatchRuleInvalid": code = .invalidArgument
        case "ServiceUnknown", "NameHasNoOwner", "UnknownObject", "UnknownInterface",
             "UnknownMethod", "UnknownProperty", "FileNotFound": code = .notFound
        case "NotSupported", "PropertyReadOnly": code = .unsupported
        case "LimitsExceeded", "ObjectPathInUse": code = .busy
        default: code = .io
        }
        return IpactrError(code, "\(message) (\(name))")
    }

    /// Error from a failed `sd_bus_call`: a D-Bus error reply when `e` is set,
    /// otherwise a local failure (timeout, lost connection) given as errno.
    static func error(_ e: inout sd_bus_error, _ r: Int32, _ what: String) -> IpactrError {
        if let name = e.name {
            let message = e.message.map { String(cString: $0) } ?? String(cString: name)
            return error(name: String(cString: name), message: message)
        }
        return IpactrError.syscall(what, Errno(rawValue: -r))
    }
}
