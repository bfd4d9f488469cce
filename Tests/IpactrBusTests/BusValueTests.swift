import Testing
import IpactrSystem
@testable import IpactrBus

@Suite struct BusValueTests {
    @Test func signaturesOfNestedValues() {
        let v = BusValue.structure([
            .string("x"),
            .array(elementSignature: "(so)", []),
            .properties(["a": .uint32(1)]),
            .variant(.int64(-1)),
            .array(elementSignature: "ay", [.array(elementSignature: "y", [.byte(1)])]),
        ])
        #expect(v.signature == "(sa(so)a{sv}vaay)")
        #expect(BusValue.unixFD(3).signature == "h")
        #expect(BusValue.dict(keySignature: "t", valueSignature: "as", []).signature == "a{tas}")
    }

    @Test func signatureSplitting() throws {
        #expect(try BusSignature.split("sa{sv}i(ua(ss))v") == ["s", "a{sv}", "i", "(ua(ss))", "v"])
        #expect(try BusSignature.split("") == [])
        #expect(BusSignature.isSingleCompleteType("a{s(ai)}"))
        #expect(!BusSignature.isSingleCompleteType("ss"))
        for bad in ["a", "(", "()", "a{vs}", "a{s}", "a{sss}", "z", "(s", "{sv}", String(repeating: "a", count: 33) + "s"] {
            #expect(throws: IpactrError.self, "\(bad)") { try BusSignature.split(bad) }
        }
    }

    @Test func objectPathEscapingIsSdBus() throws {
        let path = try BusPath.encode(prefix: "/org/ipactr1/machine", name: "web-1.example")
        #expect(path == "/org/ipactr1/machine/web_2d1_2eexample")
        #expect(BusPath.decode(path, prefix: "/org/ipactr1/machine") == "web-1.example")
        #expect(try BusPath.encode(prefix: "/org/ipactr1/machine", name: "") == "/org/ipactr1/machine/_")
        #expect(BusPath.decode("/org/ipactr1/image/x", prefix: "/org/ipactr1/machine") == nil)
        #expect(BusPath.isValid(path))
        for bad in ["", "org", "/org/", "//org", "/org/ip-actr", "/a//b"] { #expect(!BusPath.isValid(bad), "\(bad)") }
    }

    @Test func errorNamesMapBothWays() {
        for code in IpactrError.Code.allCases {
            let sent = BusErrorMapping.reply(for: IpactrError(code, "m"))
            #expect(sent.name == "org.ipactr1.Error.\(code.rawValue)")
            let back = BusErrorMapping.error(name: sent.name, message: sent.message)
            #expect(back.code == code)
            #expect(back.message == "m")
        }
        #expect(BusErrorMapping.reply(for: IpactrError(.permissionDenied, "x")).name == "org.ipactr1.Error.AccessDenied")
        let foreign = BusErrorMapping.error(name: "org.freedesktop.DBus.Error.AccessDenied", message: "Rejected")
        #expect(foreign.code == .permissionDenied)
        #expect(foreign.message == "Rejected (org.freedesktop.DBus.Error.AccessDenied)")
        #expect(BusErrorMapping.error(name: "org.freedesktop.DBus.Error.ServiceUnknown", message: "").code == .notFound)
        #expect(BusErrorMapping.error(name: "com.example.Weird", message: "").code == .io)
    }

    @Test func introspectionXMLIsEscapedAndComplete() {
        let iface = BusInterface("org.ipactr1.X", methods: [
            BusMethod("Do", inputs: [BusArgument("a", "a{sv}")], outputs: [BusArgument("b", "o")], access: .root) { _ in [] },
        ], properties: [
            BusProperty("P", "s", emitsChange: .invalidates, get: { .string("") }, set: { _, _ in }),
        ], signals: [BusSignal("S", [BusArgument("n", "s")]), BusSignal("Bare")])
        let xml = BusIntrospection.xml(object: BusObject([iface]), children: ["b", "c"])
        #expect(xml.contains(#"<arg type="a{sv}" name="a" direction="in"/>"#))
        #expect(xml.contains(#"<arg type="o" name="b" direction="out"/>"#))
        #expect(xml.contains(#"<annotation name="org.ipactr1.RequiresRoot" value="true"/>"#))
        #expect(xml.contains(#"<property name="P" type="s" access="readwrite">"#))
        #expect(xml.contains(#"value="invalidates"/>"#))
        #expect(xml.contains(#"<signal name="Bare"/>"#))
        #expect(xml.contains(#"<node name="b"/>"#) && xml.contains(#"<node name="c"/>"#))
        #expect(BusIntrospection.escape(#"a<b>&"'"#) == "a&lt;b&gt;&amp;&quot;&apos;")
    }

    @Test func malformedDescriptionsAreRefused() throws {
        let ok = BusMethod("M") { _ in [] }
        let bad: [BusInterface] = [
            BusInterface("nodots", methods: [ok]),
            BusInterface("org.ipactr1.X", methods: [BusMethod("M", inputs: [BusArgument("a", "ss")]) { _ in [] }]),
            BusInterface("org.ipactr1.X", methods: [ok, ok]),
            BusInterface("org.ipactr1.X", methods: [BusMethod("9M") { _ in [] }]),
            BusInterface("org.freedesktop.DBus.Properties"),
        ]
        for iface in bad {
            #expect(throws: IpactrError.self, "\(iface.name)") { try iface.validate() }
        }
        try BusInterface("org.ipactr1.X", methods: [ok], signals: [BusSignal("M")]).validate()
    }
}
