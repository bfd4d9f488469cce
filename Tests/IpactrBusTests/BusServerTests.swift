import Foundation
import IpactrTestSupport
import Testing
import IpactrSystem
@testable import IpactrBus
#if canImport(Glibc)
import Glibc
#endif

/// The bus layer against a real dbus-daemon: a Swift client and busctl call
/// a service served with `BusServer`.
@Suite struct BusServerTests {
    typealias S = TestService

    @Test func valuesOfEveryTypeSurviveARoundTrip() async throws {
        try await withTestService { daemon, _ in
            let values: [BusValue] = [
                .byte(255), .bool(true), .bool(false), .int16(-2), .uint16(65535), .int32(Int32.min),
                .uint32(UInt32.max), .int64(Int64.min), .uint64(UInt64.max), .double(-0.25),
                .string(""), .string("grüße \u{1F600}"), .objectPath("/org/ipactr1/machine/a"), .signature("a{sv}"),
                .array(elementSignature: "s", []),
                .array(elementSignature: "ai", [.array(elementSignature: "i", [.int32(1), .int32(2)]),
                                                .array(elementSignature: "i", [])]),
                .dict(keySignature: "s", valueSignature: "v", []),
                .properties(["name": .string("web"), "ids": .array(elementSignature: "u", [.uint32(1)]),
                             "nested": .properties(["x": .variant(.bool(true))])]),
                .dict(keySignature: "t", valueSignature: "(sb)", [BusDictEntry(.uint64(7), .structure([.string("s"), .bool(true)]))]),
                .structure([.string("a"), .structure([.int32(1), .array(elementSignature: "o", [.objectPath("/")])])]),
                .variant(.variant(.string("deep"))),
            ]
            try await withClient(daemon) { bus in
                for value in values {
                    let reply = try bus.test(S.test, "Echo", [.variant(value)])
                    #expect(reply == [.variant(value)], "\(value.signature)")
                }
                let concat = try bus.test(S.test, "Concat", [.strings(["a", "b", "c"]), .string("-")])
                #expect(concat == [.string("a-b-c"), .uint32(3)])
            }
        }
    }

    @Test func fileDescriptorsArePassed() async throws {
        try await withTestService { daemon, _ in
            var fds: [Int32] = [-1, -1]
            #expect(pipe(&fds) == 0)
            defer { close(fds[0]); close(fds[1]) }
            var st = stat()
            #expect(fstat(fds[0], &st) == 0)
            let reply = try await withClient(daemon) { try $0.test(S.test, "InodeOf", [.unixFD(fds[0])]) }
            #expect(reply == [.uint64(UInt64(st.st_ino))])
        }
    }

    @Test func methodsAndPropertiesFromSwift() async throws {
        try await withTestService { daemon, service in
            try await withClient(daemon) { bus in
                #expect(try bus.test(S.manager, "ListMachines") == [.array(elementSignature: "(so)", [])])
                let path = try S.machinePath("web-1")
                #expect(try bus.test(S.manager, "Boot", [.string("web-1")]) == [.objectPath(path)])
                #expect(try bus.test(S.manager, "ListMachines")
                    == [.array(elementSignature: "(so)", [.structure([.string("web-1"), .objectPath(path)])])])
                #expect(try bus.test(S.manager, "GetMachine", [.string("web-1")]) == [.objectPath(path)])

                let get = { (p: String, i: String, n: String) throws -> BusValue in
                    try bus.getProperty(destination: S.name, path: p, interface: i, n)
                }
                #expect(try get(S.managerPath, S.manager, "MachineCount") == .uint32(1))
                #expect(try get(S.managerPath, S.manager, "Version") == .string("test-1"))
                #expect(try get(path, S.machine, "Name") == .string("web-1"))
                #expect(try get(path, S.machine, "State") == .string("running"))

                try bus.setProperty(destination: S.name, path: S.managerPath, interface: S.manager,
                                    "DefaultImage", .string("fedora"))
                #expect(try get(S.managerPath, S.manager, "DefaultImage") == .string("fedora"))

                let all = try bus.call(destination: S.name, path: S.managerPath, interface: BusServer.propertiesInterface,
                                       member: "GetAll", [.string(S.manager)])
                #expect(all.count == 1)
                #expect(all[0].stringDictValue == ["Version": .string("test-1"), "MachineCount": .uint32(1),
                                                   "DefaultImage": .string("fedora"), "Tags": .strings(["a"])])
                // An empty interface name reads the properties of every interface.
                let any = try bus.call(destination: S.name, path: path, interface: BusServer.propertiesInterface,
                                       member: "GetAll", [.string("")])
                #expect(any[0].stringDictValue?.keys.sorted() == ["Name", "State"])

                let machine = BusProxy(bus, S.name, path, S.machine)
                try machine.call("Poweroff")
                #expect(try machine.property("State") == .string("stopped"))
                #expect(try machine.properties() == ["Name": .string("web-1"), "State": .string("stopped")])
                // Interface omitted from the call: found by member name.
                #expect(try bus.call(destination: S.name, path: S.managerPath, interface: "", member: "GetMachine",
                                     [.string("web-1")]) == [.objectPath(path)])
            }
            _ = service
        }
    }

    @Test func errorsReachTheClientAsIpactrErrors() async throws {
        try await withTestService { daemon, _ in
            try await withClient(daemon) { bus in
                func failure(_ body: () throws -> Void) -> IpactrError? {
                    do { try body() } catch let e as IpactrError { return e } catch { return nil }
                    return nil
                }
                let notFound = failure { try bus.test(S.manager, "GetMachine", [.string("nope")]) }
                #expect(notFound?.code == .notFound)
                #expect(notFound?.message == "no machine named nope")

                try bus.test(S.manager, "Boot", [.string("a")])
                let exists = failure { try bus.test(S.manager, "Boot", [.string("a")]) }
                #expect(exists?.code == .exists)

                let wrongArgs = failure { try bus.test(S.manager, "GetMachine", [.uint32(1)]) }
                #expect(wrongArgs?.code == .invalidArgument)
                #expect(wrongArgs?.message.contains("org.freedesktop.DBus.Error.InvalidArgs") == true)

                let unknownMethod = failure { try bus.test(S.manager, "Explode") }
                #expect(unknownMethod?.message.contains("org.freedesktop.DBus.Error.UnknownMethod") == true)
                let unknownInterface = failure { try bus.test("org.ipactr1.Nothing", "X") }
                #expect(unknownInterface?.message.contains("org.freedesktop.DBus.Error.UnknownInterface") == true)
                let unknownObject = failure { try bus.test(S.manager, "ListMachines", path: "/org/ipactr1/nothing") }
                #expect(unknownObject?.message.contains("org.freedesktop.DBus.Error.UnknownObject") == true)
                #expect(unknownObject?.code == .notFound)

                let readOnly = failure {
                    try bus.setProperty(destination: S.name, path: S.managerPath, interface: S.manager, "Version", .string("x"))
                }
                #expect(readOnly?.message.contains("org.freedesktop.DBus.Error.PropertyReadOnly") == true)
                let wrongType = failure {
                    try bus.setProperty(destination: S.name, path: S.managerPath, interface: S.manager, "DefaultImage", .uint32(1))
                }
                #expect(wrongType?.code == .invalidArgument)
                let setterRefused = failure {
                    try bus.setProperty(destination: S.name, path: S.managerPath, interface: S.manager, "DefaultImage", .string(""))
                }
                #expect(setterRefused?.code == .invalidArgument)
                #expect(setterRefused?.message == "DefaultImage must not be empty")
                let unknownProperty = failure {
                    _ = try bus.getProperty(destination: S.name, path: S.managerPath, interface: S.manager, "Nope")
                }
                #expect(unknownProperty?.message.contains("org.freedesktop.DBus.Error.UnknownProperty") == true)

                // A handler whose values do not match its declared outputs is caught.
                let malformed = failure { try bus.test(S.test, "Malformed") }
                #expect(malformed?.code == .internalError)
            }
        }
    }

    @Test func introspectionListsEveryMemberAndChildNode() async throws {
        try await withTestService { daemon, _ in
            try await withClient(daemon) { bus in
                try bus.test(S.manager, "Boot", [.string("web-1")])
                try bus.test(S.manager, "Boot", [.string("db")])
                func xml(_ path: String) throws -> String {
                    try bus.call(destination: S.name, path: path, interface: BusServer.introspectableInterface,
                                 member: "Introspect")[0].stringValue!
                }
                #expect(try xml("/").contains(#"<node name="org"/>"#))
                #expect(try xml("/org").contains(#"<node name="ipactr1"/>"#))
                let manager = try xml(S.managerPath)
                #expect(manager.contains(#"<node name="machine"/>"#))
                for iface in [S.manager, S.test, "org.freedesktop.DBus.Properties", "org.freedesktop.DBus.Introspectable",
                              "org.freedesktop.DBus.Peer"] {
                    #expect(manager.contains("<interface name=\"\(iface)\">"), "\(iface)")
                }
                #expect(manager.contains(#"<method name="Boot">"#))
                #expect(manager.contains(#"<arg type="a(so)" name="machines" direction="out"/>"#))
                #expect(manager.contains(#"<signal name="MachineNew">"#))
                #expect(manager.contains(#"<property name="DefaultImage" type="s" access="readwrite">"#))
                let machines = try xml(S.machinePrefix)
                #expect(machines.contains(#"<node name="web_2d1"/>"#) && machines.contains(#"<node name="db"/>"#))
                #expect(!machines.contains("org.ipactr1.Machine"))
                #expect(try xml(try S.machinePath("db")).contains(#"<interface name="org.ipactr1.Machine">"#))
            }

            // busctl reads the same XML: every member of each interface is listed.
            let introspect = try await run(["busctl", "--address=\(daemon.address)", "introspect", S.name, S.managerPath])
            #expect(introspect.status == 0, "\(introspect.stderr)")
            let rows: [(String, String)] = [
                (S.manager, "interface"), (".ListMachines", "method"), (".GetMachine", "method"), (".Boot", "method"),
                (".Version", "property"), (".MachineCount", "property"), (".DefaultImage", "property"), (".Tags", "property"),
                (".MachineNew", "signal"), (".MachineRemoved", "signal"), (S.test, "interface"), (".Echo", "method"),
                (".Concat", "method"), (".CallerUID", "method"), (".InodeOf", "method"), (".Reset", "method"),
                (".Malformed", "method"), ("org.freedesktop.DBus.Properties", "interface"), (".PropertiesChanged", "signal"),
                ("org.freedesktop.DBus.Peer", "interface"), (".Ping", "method"),
            ]
            let lines = introspect.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
            for (name, kind) in rows {
                #expect(lines.contains { $0.count >= 2 && $0[0] == name && $0[1] == kind }, "\(name) \(kind)")
            }
            // busctl's property column shows the live value and flags.
            #expect(introspect.stdout.contains(#""test-1""#))
            #expect(lines.contains { $0.first == ".DefaultImage" && $0.contains("writable") })

            let tree = try await run(["busctl", "--address=\(daemon.address)", "--list", "tree", S.name])
            #expect(tree.status == 0, "\(tree.stderr)")
            for path in ["/", "/org", "/org/ipactr1", "/org/ipactr1/machine", "/org/ipactr1/machine/db",
                         "/org/ipactr1/machine/web_2d1"] {
                #expect(tree.stdout.split(separator: "\n").contains(Substring(path)), "\(path)")
            }

            // gdbus parses the XML with GLib's parser: a well-formedness check from outside.
            let gdbus = try await run(["gdbus", "introspect", "--address", daemon.address, "--dest", S.name,
                                       "--object-path", S.managerPath])
            #expect(gdbus.status == 0, "\(gdbus.stderr)")
            #expect(gdbus.stdout.contains("Boot(in  s name,"))
            #expect(gdbus.stdout.contains("readwrite s DefaultImage"))
        }
    }

    @Test func busctlCallsMethodsAndProperties() async throws {
        try await withTestService { daemon, _ in
            let busctl = ["busctl", "--address=\(daemon.address)"]
            let boot = try await run(busctl + ["call", S.name, S.managerPath, S.manager, "Boot", "s", "web-1"])
            #expect(boot.status == 0, "\(boot.stderr)")
            #expect(boot.stdout == "o \"/org/ipactr1/machine/web_2d1\"\n")
            let list = try await run(busctl + ["call", S.name, S.managerPath, S.manager, "ListMachines"])
            #expect(list.stdout == "a(so) 1 \"web-1\" \"/org/ipactr1/machine/web_2d1\"\n")
            let concat = try await run(busctl + ["call", S.name, S.managerPath, S.test, "Concat", "ass", "2", "x", "y", "+"])
            #expect(concat.stdout == "su \"x+y\" 2\n")
            let count = try await run(busctl + ["get-property", S.name, S.managerPath, S.manager, "MachineCount"])
            #expect(count.stdout == "u 1\n")
            let set = try await run(busctl + ["set-property", S.name, S.managerPath, S.manager, "DefaultImage", "s", "alpine"])
            #expect(set.status == 0, "\(set.stderr)")
            let image = try await run(busctl + ["get-property", S.name, S.managerPath, S.manager, "DefaultImage"])
            #expect(image.stdout == "s \"alpine\"\n")
            let uid = try await run(busctl + ["call", S.name, S.managerPath, S.test, "CallerUID"])
            #expect(uid.stdout == "u 0\n")
            let ping = try await run(busctl + ["call", S.name, "/org/ipactr1", "org.freedesktop.DBus.Peer", "Ping"])
            #expect(ping.status == 0, "\(ping.stderr)")

            let missing = try await run(busctl + ["call", S.name, S.managerPath, S.manager, "GetMachine", "s", "nope"])
            #expect(missing.status != 0)
            #expect(missing.stderr.contains("no machine named nope"))
            // dbus-send prints the error's name: the IpactrError code on the wire.
            let named = try await run(["dbus-send", "--bus=\(daemon.address)", "--print-reply", "--dest=\(S.name)",
                                       S.managerPath, "\(S.manager).GetMachine", "string:nope"])
            #expect(named.stderr.contains("Error org.ipactr1.Error.NotFound: no machine named nope"), "\(named.stderr)")
        }
    }

    @Test func signalsReachASwiftMatchRule() async throws {
        try await withTestService { daemon, service in
            let path = try S.machinePath("web-1")
            try await withClient(daemon) { bus in
                var received: [BusMessage] = []
                let match = try bus.addMatch("type='signal',sender='\(S.name)'") { received.append($0) }
                try bus.test(S.manager, "Boot", [.string("web-1")])
                try bus.setProperty(destination: S.name, path: S.managerPath, interface: S.manager, "DefaultImage", .string("arch"))
                try bus.process(until: { received.count >= 3 }, timeout: 30)
                _ = match

                let new = received.first { $0.member == "MachineNew" }
                #expect(new?.interface == S.manager)
                #expect(new?.path == S.managerPath)
                #expect(new?.body == [.string("web-1"), .objectPath(path)])
                let changes = received.filter { $0.member == "PropertiesChanged" }
                #expect(changes.count == 2)
                #expect(changes.allSatisfy { $0.interface == BusServer.propertiesInterface && $0.signature == "sa{sv}as" })
                #expect(changes.first?.body == [.string(S.manager), .properties(["MachineCount": .uint32(1)]), .strings([])])
                #expect(changes.last?.body == [.string(S.manager), .properties(["DefaultImage": .string("arch")]), .strings([])])
            }

            // Properties declared "invalidates" are named, not sent; a signal
            // that is not declared cannot be emitted.
            try await withClient(daemon) { bus in
                var received: [BusMessage] = []
                let match = try bus.addMatch("type='signal',interface='org.freedesktop.DBus.Properties'") { received.append($0) }
                let done = DispatchSemaphore(value: 0)
                var failure: Error?
                Task {
                    defer { done.signal() }
                    do { try await service.setTags(["x", "y"]) } catch { failure = error }
                }
                done.wait()
                if let failure { throw failure }
                try bus.process(until: { !received.isEmpty }, timeout: 30)
                _ = match
                #expect(received[0].body == [.string(S.manager), .dict(keySignature: "s", valueSignature: "v", []), .strings(["Tags"])])
            }
            await #expect(throws: IpactrError.self) {
                try await service.server.emitSignal(path: S.managerPath, interface: S.manager, member: "Undeclared")
            }
            await #expect(throws: IpactrError.self) {
                try await service.server.emitSignal(path: S.managerPath, interface: S.manager, member: "MachineNew", [.string("x")])
            }
            await #expect(throws: IpactrError.self) {
                try await service.server.propertiesChanged(path: S.managerPath, interface: S.manager, ["Version"])
            }
        }
    }

    @Test func busctlMonitorSeesTheSignals() async throws {
        try await withTestService { daemon, _ in
            let monitor = Process()
            let out = Pipe()
            monitor.executableURL = URL(fileURLWithPath: "/usr/bin/busctl")
            monitor.arguments = ["--address=\(daemon.address)", "monitor", "--json=short", S.name]
            monitor.standardOutput = out
            monitor.standardError = FileHandle.nullDevice
            try monitor.run()
            defer {
                if monitor.isRunning { kill(monitor.processIdentifier, SIGKILL) }
                monitor.waitUntilExit()
            }
            // busctl becomes a monitor asynchronously: call Ping until the
            // monitor has shown one, then it is known to be listening. The
            // deadline only keeps a broken busctl from hanging the test.
            let reader = out.fileHandleForReading
            let seen = try await withClient(daemon) { bus -> String in
                var seen = ""
                let deadline = BusConnection.monotonicMicroseconds() + 30_000_000
                func readSome() throws {
                    guard monitor.isRunning, BusConnection.monotonicMicroseconds() < deadline else {
                        throw IpactrError(.io, "busctl monitor stopped or showed nothing; output so far: \(seen)")
                    }
                    var pfd = pollfd(fd: reader.fileDescriptor, events: Int16(POLLIN), revents: 0)
                    if poll(&pfd, 1, 100) > 0 { seen += String(decoding: reader.availableData, as: UTF8.self) }
                }
                while !seen.contains("\"Ping\"") {
                    try bus.call(destination: S.name, path: "/", interface: "org.freedesktop.DBus.Peer", member: "Ping")
                    try readSome()
                }
                try bus.test(S.manager, "Boot", [.string("web-1")])
                while !(seen.contains("\"MachineNew\"") && seen.contains("\"PropertiesChanged\"")) { try readSome() }
                return seen
            }
            #expect(seen.contains("\"member\":\"MachineNew\""))
            #expect(seen.contains("\"member\":\"PropertiesChanged\""))
            #expect(seen.contains("\"data\":[\"web-1\",\"/org/ipactr1/machine/web_2d1\"]"))
        }
    }

    /// The shipped policy lets everyone read and only root change; the
    /// daemon's uid check refuses what the policy lets through.
    @Test func unprivilegedCallerMayReadButNotChange() async throws {
        // The test interface is open in the policy so the uid check is reached.
        let open = """
            <policy context="default">
              <allow send_destination="org.ipactr1" send_interface="org.ipactr1.Test"/>
            </policy>
            """
        try await withTestService(extraPolicy: open) { daemon, service in
            let busctl = ["busctl", "--address=\(daemon.address)"]
            let boot = try await run(busctl + ["call", S.name, S.managerPath, S.manager, "Boot", "s", "web-1"])
            #expect(boot.status == 0, "\(boot.stderr)")

            // Reading works for nobody.
            let list = try await run(busctl + ["call", S.name, S.managerPath, S.manager, "ListMachines"], asNobody: true)
            #expect(list.status == 0, "\(list.stderr)")
            #expect(list.stdout.contains("web-1"))
            let get = try await run(busctl + ["call", S.name, S.managerPath, S.manager, "GetMachine", "s", "web-1"], asNobody: true)
            #expect(get.status == 0, "\(get.stderr)")
            let prop = try await run(busctl + ["get-property", S.name, S.managerPath, S.manager, "MachineCount"], asNobody: true)
            #expect(prop.stdout == "u 1\n", "\(prop.stderr)")
            let all = try await run(busctl + ["introspect", S.name, try S.machinePath("web-1")], asNobody: true)
            #expect(all.status == 0, "\(all.stderr)")
            #expect(all.stdout.contains("\"running\""))
            let uid = try await run(busctl + ["call", S.name, S.managerPath, S.test, "CallerUID"], asNobody: true)
            #expect(uid.stdout == "u 65534\n", "\(uid.stderr)")
            let ping = try await run(busctl + ["call", S.name, "/", "org.freedesktop.DBus.Peer", "Ping"], asNobody: true)
            #expect(ping.status == 0, "\(ping.stderr)")
            // The policy lets the other read-only manager methods through: the
            // test service does not have them, so the service itself answers.
            let dbusSendNobody = ["dbus-send", "--bus=\(daemon.address)", "--print-reply", "--dest=\(S.name)", S.managerPath]
            for member in ["ListImages", "GetImage"] {
                let r = try await run(dbusSendNobody + ["\(S.manager).\(member)"], asNobody: true)
                #expect(r.stderr.contains("Error org.freedesktop.DBus.Error.UnknownMethod"), "\(member): \(r.stderr)")
            }

            // Changing is refused by the policy...
            let dbusSend = ["dbus-send", "--bus=\(daemon.address)", "--print-reply", "--dest=\(S.name)"]
            let bootAsNobody = try await run(dbusSend + [S.managerPath, "\(S.manager).Boot", "string:evil"], asNobody: true)
            #expect(bootAsNobody.status != 0)
            #expect(bootAsNobody.stderr.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(bootAsNobody.stderr)")
            let setAsNobody = try await run(busctl + ["set-property", S.name, S.managerPath, S.manager, "DefaultImage", "s", "x"],
                                            asNobody: true)
            #expect(setAsNobody.status != 0)
            #expect(setAsNobody.stderr.contains("Access denied") || setAsNobody.stderr.contains("Rejected"), "\(setAsNobody.stderr)")
            let poweroff = try await run(dbusSend + [try S.machinePath("web-1"), "\(S.machine).Poweroff"], asNobody: true)
            #expect(poweroff.stderr.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(poweroff.stderr)")

            // ...and, where the policy lets the call through, by the uid check.
            let reset = try await run(dbusSend + [S.managerPath, "\(S.test).Reset"], asNobody: true)
            #expect(reset.status != 0)
            #expect(reset.stderr.contains(
                "Error org.ipactr1.Error.AccessDenied: org.ipactr1.Test.Reset is only allowed for root, not for uid 65534"),
                    "\(reset.stderr)")
            #expect(service.resetCount == 0)
            let resetAsRoot = try await run(busctl + ["call", S.name, S.managerPath, S.test, "Reset"])
            #expect(resetAsRoot.status == 0, "\(resetAsRoot.stderr)")
            #expect(service.resetCount == 1)

            // Nothing changed on behalf of nobody.
            let after = try await run(busctl + ["call", S.name, S.managerPath, S.manager, "ListMachines"])
            #expect(after.stdout == "a(so) 1 \"web-1\" \"/org/ipactr1/machine/web_2d1\"\n")
            let image = try await run(busctl + ["get-property", S.name, S.managerPath, S.manager, "DefaultImage"])
            #expect(image.stdout == "s \"debian\"\n")

            // Only root may own the name.
            let own = try await run(["busctl", "--address=\(daemon.address)", "call", "org.freedesktop.DBus",
                                     "/org/freedesktop/DBus", "org.freedesktop.DBus", "RequestName", "su", "org.ipactr1", "0"],
                                    asNobody: true)
            #expect(own.status != 0)
        }
    }

    @Test func connectionAndNameHandling() async throws {
        try await withTestService { daemon, _ in
            try await withClient(daemon) { bus in
                // The name is exclusive.
                do {
                    try bus.requestName(TestService.name)
                    Issue.record("a second connection got org.ipactr1")
                } catch let e as IpactrError {
                    #expect(e.code == .exists)
                }
                // The shipped activation file is valid: the bus lists the name as activatable.
                let names = try bus.call(destination: "org.freedesktop.DBus", path: "/org/freedesktop/DBus",
                                         interface: "org.freedesktop.DBus", member: "ListActivatableNames")
                #expect(names[0].arrayValue?.contains(.string("org.ipactr1")) == true)
                #expect(bus.uniqueName.hasPrefix(":"))
            }
            // $DBUS_SYSTEM_BUS_ADDRESS picks the system bus.
            setenv("DBUS_SYSTEM_BUS_ADDRESS", daemon.address, 1)
            defer { unsetenv("DBUS_SYSTEM_BUS_ADDRESS") }
            #expect(BusConnection.systemBusAddress == daemon.address)
            let count = try await blocking {
                try BusConnection.system().getProperty(destination: S.name, path: S.managerPath,
                                                       interface: S.manager, "MachineCount")
            }
            #expect(count == .uint32(0))
        }
        // No bus there: one clear error.
        do {
            _ = try BusConnection(address: "unix:path=/nonexistent/ipactr-bus")
            Issue.record("connected to a bus that does not exist")
        } catch {
            #expect(error.code == .notFound)
            #expect(error.message == "cannot connect to the D-Bus bus at unix:path=/nonexistent/ipactr-bus: No such file or directory")
        }
    }

    @Test func callerUIDsAreCachedUntilTheCallerLeaves() async throws {
        try await withTestService { daemon, service in
            let name = try await withClient(daemon) { bus throws -> String in
                #expect(try bus.test(S.test, "CallerUID") == [.uint32(0)])
                #expect(try bus.test(S.test, "CallerUID") == [.uint32(0)])
                return bus.uniqueName
            }
            // The client has disconnected; the bus announces it asynchronously.
            var cached = try await service.server.cachedCallers()
            let deadline = BusConnection.monotonicMicroseconds() + 30_000_000
            while cached.contains(name), BusConnection.monotonicMicroseconds() < deadline {
                try await Task.sleep(nanoseconds: 10_000_000)
                cached = try await service.server.cachedCallers()
            }
            #expect(!cached.contains(name))
        }
    }

    @Test func aSlowHandlerDoesNotStallTheBus() async throws {
        try await withTestService { daemon, _ in
            async let held = withClient(daemon) { try $0.test(S.test, "Hold") }
            let released = try await withClient(daemon) { bus -> [BusValue] in
                // The loop keeps answering while Hold's handler waits.
                while try bus.getProperty(destination: S.name, path: S.managerPath, interface: S.test, "Held") != .uint32(1) {
                    usleep(1000)
                }
                return try bus.test(S.test, "Release")
            }
            #expect(released == [.uint32(1)])
            #expect(try await held == [])
        }
    }

    @Test func serverEndsWhenTheBusGoesAway() async throws {
        let daemon = try DBusDaemon()
        defer { daemon.stop() }
        let server = try BusServer(address: daemon.address)
        defer { server.stop() }
        _ = try await server.uniqueName()
        daemon.stop()
        try await blocking { server.wait() }
        await #expect(throws: IpactrError.self) { try await server.uniqueName() }
    }

    @Test func serverRegistrationAndShutdown() async throws {
        // The system policy denies method calls unless a rule allows them.
        let open = #"<policy context="default"><allow send_destination="*" send_interface="org.ipactr1.X"/></policy>"#
        try await withDBusDaemon(extraPolicy: open) { daemon in
            let server = try BusServer(address: daemon.address)
            defer { server.stop() }
            let object = BusObject([BusInterface("org.ipactr1.X", methods: [BusMethod("M") { _ in [] }])])
            try server.register(path: "/a/b", object)
            #expect(throws: IpactrError.self) { try server.register(path: "/a/b", object) }
            #expect(throws: IpactrError.self) { try server.register(path: "/a/", object) }
            #expect(throws: IpactrError.self) {
                try server.register(path: "/c", BusObject([BusInterface("org.ipactr1.X"), BusInterface("org.ipactr1.X")]))
            }
            let unique = try await server.uniqueName()
            let reply = try await withClient(daemon) { bus in
                try bus.call(destination: unique, path: "/a/b", interface: "org.ipactr1.X", member: "M")
            }
            #expect(reply == [])
            server.unregister(path: "/a/b")
            let gone = try await withClient(daemon) { bus -> IpactrError? in
                do { try bus.call(destination: unique, path: "/a/b", interface: "org.ipactr1.X", member: "M") }
                catch let e as IpactrError { return e }
                return nil
            }
            #expect(gone?.message.contains("UnknownObject") == true)

            server.stop()
            server.stop()
            await #expect(throws: IpactrError.self) { try await server.uniqueName() }
        }
    }
}
