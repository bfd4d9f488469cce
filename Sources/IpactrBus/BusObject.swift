import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// Who may call a method or set a property. Reading is open; changing is for
/// root. The bus policy (units/org.ipactr1.conf) refuses most unprivileged
/// calls already; this check is the second line, on the caller's uid.
public enum BusAccess: Sendable {
    case everyone
    case root
}

/// A named argument of a method or signal.
public struct BusArgument: Sendable {
    public var name: String
    public var signature: String
    public init(_ name: String, _ signature: String) {
        self.name = name
        self.signature = signature
    }
}

/// The sender of a call, from the bus's credentials for its connection.
public struct BusCaller: Sendable {
    /// The caller's unique name (":1.42").
    public var uniqueName: String?
    /// Effective uid of the caller's process when it connected; nil when the
    /// bus could not tell.
    public var uid: uid_t?
    public var isRoot: Bool { uid == 0 }
}

/// A method call as a handler sees it.
public struct BusCall: Sendable {
    public var path: String
    public var interface: String
    public var member: String
    /// Arguments, already checked against the method's input signature.
    public var arguments: [BusValue]
    public var caller: BusCaller
}

/// A method: its arguments (for introspection and signature checks), who may
/// call it, and the handler. The handler returns values matching `outputs`.
public struct BusMethod: Sendable {
    public typealias Handler = @Sendable (BusCall) async throws -> [BusValue]
    public var name: String
    public var inputs: [BusArgument]
    public var outputs: [BusArgument]
    public var access: BusAccess
    public var handler: Handler

    public init(_ name: String, inputs: [BusArgument] = [], outputs: [BusArgument] = [],
                access: BusAccess = .everyone, handler: @escaping Handler) {
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.access = access
        self.handler = handler
    }

    var inputSignature: String { inputs.map(\.signature).joined() }
    var outputSignature: String { outputs.map(\.signature).joined() }
}

/// A property. Writable when it has a setter; setting is root-only unless
/// `setAccess` says otherwise.
public struct BusProperty: Sendable {
    /// org.freedesktop.DBus.Property.EmitsChangedSignal, as introspected.
    public enum EmitsChange: String, Sendable {
        /// PropertiesChanged carries the new value.
        case `true`
        /// PropertiesChanged names the property; readers fetch it again.
        case invalidates
        /// Never changes for the object's lifetime.
        case const
        /// Changes without a signal.
        case `false`
    }
    public typealias Getter = @Sendable () async throws -> BusValue
    public typealias Setter = @Sendable (BusValue, BusCaller) async throws -> Void

    public var name: String
    public var signature: String
    public var emitsChange: EmitsChange
    public var get: Getter
    public var set: Setter?
    public var setAccess: BusAccess

    public init(_ name: String, _ signature: String, emitsChange: EmitsChange = .true,
                setAccess: BusAccess = .root, get: @escaping Getter, set: Setter? = nil) {
        self.name = name
        self.signature = signature
        self.emitsChange = emitsChange
        self.get = get
        self.set = set
        self.setAccess = setAccess
    }
}

/// A signal an interface may emit.
public struct BusSignal: Sendable {
    public var name: String
    public var arguments: [BusArgument]
    public init(_ name: String, _ arguments: [BusArgument] = []) {
        self.name = name
        self.arguments = arguments
    }
    var signature: String { arguments.map(\.signature).joined() }
}

/// One D-Bus interface of an object, declared in full: the same description
/// drives dispatch, argument checks and the introspection XML, so the XML
/// cannot drift from what is served.
public struct BusInterface: Sendable {
    public var name: String
    public var methods: [BusMethod]
    public var properties: [BusProperty]
    public var signals: [BusSignal]

    public init(_ name: String, methods: [BusMethod] = [], properties: [BusProperty] = [], signals: [BusSignal] = []) {
        self.name = name
        self.methods = methods
        self.properties = properties
        self.signals = signals
    }

    func method(_ name: String) -> BusMethod? { methods.first { $0.name == name } }
    func property(_ name: String) -> BusProperty? { properties.first { $0.name == name } }
    func signal(_ name: String) -> BusSignal? { signals.first { $0.name == name } }

    /// Checks names and signatures so mistakes fail at registration.
    func validate() throws(IpactrError) {
        func bad(_ what: String) -> IpactrError { IpactrError(.invalidArgument, "D-Bus interface \(name): \(what)") }
        guard BusNames.isValidInterface(name) else { throw bad("not a valid interface name") }
        guard !BusServer.standardInterfaces.contains(name) else { throw bad("served by the bus layer itself") }
        var seen = Set<String>()
        func member(_ kind: String, _ n: String, _ args: [BusArgument]) throws(IpactrError) {
            guard BusNames.isValidMember(n) else { throw bad("\(kind) name \"\(n)\" is not valid") }
            guard seen.insert(kind + n).inserted else { throw bad("\(kind) \(n) declared twice") }
            for a in args where !BusSignature.isSingleCompleteType(a.signature) {
                throw bad("\(kind) \(n): argument \(a.name) has signature \"\(a.signature)\", not one complete type")
            }
        }
        for m in methods { try member("method", m.name, m.inputs + m.outputs) }
        for s in signals { try member("signal", s.name, s.arguments) }
        for p in properties { try member("property", p.name, [BusArgument(p.name, p.signature)]) }
    }
}

/// An object: the interfaces it implements at one path.
public struct BusObject: Sendable {
    public var interfaces: [BusInterface]
    public init(_ interfaces: [BusInterface]) { self.interfaces = interfaces }
    func interface(_ name: String) -> BusInterface? { interfaces.first { $0.name == name } }
}

/// org.freedesktop.DBus.Introspectable data, generated from the descriptions.
enum BusIntrospection {
    static let header = """
        <!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
         "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">

        """

    // The interfaces every node has, served by the bus layer (Peer by sd-bus itself).
    static let standard = """
         <interface name="org.freedesktop.DBus.Peer">
          <method name="Ping"/>
          <method name="GetMachineId">
           <arg type="s" name="machine_uuid" direction="out"/>
          </method>
         </interface>
         <interface name="org.freedesktop.DBus.Introspectable">
          <method name="Introspect">
           <arg name="xml_data" type="s" direction="out"/>
          </method>
         </interface>
         <interface name="org.freedesktop.DBus.Properties">
          <method name="Get">
           <arg name="interface_name" direction="in" type="s"/>
           <arg name="property_name" direction="in" type="s"/>
           <arg name="value" direction="out" type="v"/>
          </method>
          <method name="GetAll">
           <arg name="interface_name" direction="in" type="s"/>
           <arg name="props" direction="out" type="a{sv}"/>
          </method>
          <method name="Set">
           <arg name="interface_name" direction="in" type="s"/>
           <arg name="property_name" direction="in" type="s"/>
           <arg name="value" direction="in" type="v"/>
          </method>
          <signal name="PropertiesChanged">
           <arg type="s" name="interface_name"/>
           <arg type="a{sv}" name="changed_properties"/>
           <arg type="as" name="invalidated_properties"/>
          </signal>
         </interface>

        """

    static func xml(object: BusObject?, children: [String]) -> String {
        var out = header + "<node>\n" + standard
        for iface in object?.interfaces ?? [] {
            out += " <interface name=\"\(escape(iface.name))\">\n"
            for m in iface.methods {
                let args = m.inputs.map { ($0, "in") } + m.outputs.map { ($0, "out") }
                if args.isEmpty && m.access == .everyone {
                    out += "  <method name=\"\(escape(m.name))\"/>\n"
                    continue
                }
                out += "  <method name=\"\(escape(m.name))\">\n"
                for (a, dir) in args {
                    out += "   <arg type=\"\(escape(a.signature))\" name=\"\(escape(a.name))\" direction=\"\(dir)\"/>\n"
                }
                if m.access == .root {
                    // Not a standard annotation: tells a reader of the XML (and
                    // busctl's users) that the daemon checks for uid 0.
                    out += "   <annotation name=\"org.ipactr1.RequiresRoot\" value=\"true\"/>\n"
                }
                out += "  </method>\n"
            }
            for p in iface.properties {
                let access = p.set == nil ? "read" : "readwrite"
                out += "  <property name=\"\(escape(p.name))\" type=\"\(escape(p.signature))\" access=\"\(access)\">\n"
                out += "   <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" value=\"\(p.emitsChange.rawValue)\"/>\n"
                out += "  </property>\n"
            }
            for s in iface.signals {
                if s.arguments.isEmpty {
                    out += "  <signal name=\"\(escape(s.name))\"/>\n"
                    continue
                }
                out += "  <signal name=\"\(escape(s.name))\">\n"
                for a in s.arguments {
                    out += "   <arg type=\"\(escape(a.signature))\" name=\"\(escape(a.name))\"/>\n"
                }
                out += "  </signal>\n"
            }
            out += " </interface>\n"
        }
        for child in children {
            out += " <node name=\"\(escape(child))\"/>\n"
        }
        return out + "</node>\n"
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(c)
            }
        }
        return out
    }
}
