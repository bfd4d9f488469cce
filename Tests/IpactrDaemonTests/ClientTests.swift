import Foundation
import IpactrTestSupport
import Testing
import IpactrBus
import IpactrClient
import IpactrMachine
import IpactrSystem

/// The project's own client against the real ipactrd.
@Suite(.serialized) struct ClientTests {
    @Test func clientDrivesAMachineThroughTheDaemon() throws {
        let f = try DaemonFixture()
        let client = try ManagerClient(address: f.bus.address)
        let images = try client.listImages()
        #expect(images.map(\.name) == ["debian"])
        #expect(images.first?.path == "/org/ipactr1/image/debian")
        #expect(images.first.map { $0.size > 0 && $0.id.hasPrefix("sha256:") } == true)

        #expect(try client.boot(image: "debian", name: "web-1", options: ["Hostname": .string("web.example.test")]) == "/org/ipactr1/machine/web_2d1")
        let m = try client.machine("web-1")
        #expect(m.name == "web-1" && m.image == "debian" && m.state == "running" && m.ready)
        #expect(m.leader > 0 && m.lastExitStatus == -1)
        #expect(try client.listMachines() == [.init(name: "web-1", state: "running", path: "/org/ipactr1/machine/web_2d1")])
        // The option reached the machine.
        #expect(try capture(["/usr/bin/nsenter", "-t", String(m.leader), "-u", "hostname"]).line == "web.example.test")

        // Errors come back as the daemon's IpactrErrors.
        do {
            _ = try client.machine("nope")
            Issue.record("found a machine that does not exist")
        } catch {
            #expect(error.code == .notFound && error.message == "no machine named \"nope\"", "\(error)")
        }
        do {
            try client.remove("web-1")
            Issue.record("removed a running machine")
        } catch {
            #expect(error.code == .busy, "\(error)")
        }
        #expect(try client.poweroff("web-1") == 0)
        try client.remove("web-1")
        #expect(try client.listMachines().isEmpty)
        #expect(MachineManager(root: f.root).names().isEmpty)
    }

    @Test func clientSaysWhenTheDaemonIsNotRunning() throws {
        let bus = try SystemBus()
        defer { bus.stop() }
        let client = try ManagerClient(address: bus.address)
        do {
            _ = try client.listMachines()
            Issue.record("a call succeeded without ipactrd")
        } catch {
            #expect(error.message == "ipactrd is not running (start it with `systemctl start ipactrd`, or run `ipactrd` as root)")
        }
        // No bus at all: one line too.
        #expect(throws: IpactrError.self) { try ManagerClient(address: "unix:path=\(bus.directory)/none") }
    }
}
