import ArgumentParser
import FoundationEssentials
import IpactrBus
import IpactrClient
import IpactrSystem

/// `ipactr boot IMAGE`: a new machine from an image, returned when its systemd is ready.
struct BootCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot",
        abstract: "Boot a new machine from an image and wait until its systemd is ready.")

    @Argument(help: "Image name in the store.") var image: String
    @Option(name: .long, help: "Machine name (default: the image's name).") var name: String?
    @Option(name: [.short, .long], help: ArgumentHelp("Bind a host path, idmapped into the machine's range unless :noidmap: /HOST:/CONTAINER[:ro][:noidmap].", valueName: "VOLUME"))
    var volume: [String] = []
    @Option(name: .long, help: ArgumentHelp("Mount a tmpfs at PATH.", valueName: "PATH")) var tmpfs: [String] = []
    @Option(name: [.short, .long], help: ArgumentHelp("Set K=V in PID 1's environment.", valueName: "K=V")) var env: [String] = []
    @Option(name: [.customShort("h"), .long], help: "Host name (FreeIPA needs a fully qualified one).") var hostname: String?
    @Flag(name: .long, help: "Read-only root file system (keep state on volumes).") var readOnly = false
    @Option(name: .long, help: "host, or private (own network namespace with loopback).") var network: String = "private"
    @Option(name: [.short, .long], help: ArgumentHelp("Publish a port of a private network: [IP:]HOSTPORT:PORT[/udp].", valueName: "SPEC"))
    var publish: [String] = []
    @Option(name: .long, help: ArgumentHelp("auto, the first host uid of the machine's 65536 (a multiple of 65536), or identity (0 → 0, for a machine nested in another).", valueName: "auto|BASE|identity"))
    var uidRange: String = "auto"
    @Flag(name: .long, help: "Keep changes on a tmpfs; they are gone at poweroff.") var ephemeral = false
    @Flag(name: .long, help: "Let the machine run machines of its own (unmasked proc and sysfs at /dev/.ipactr).") var nesting = false
    @Option(name: .long, help: ArgumentHelp("auto, idmapped-overlay or shifted-copy.", valueName: "MODE")) var rootfs: String = "auto"
    @Flag(name: .long, help: "Return once the machine is started, without waiting for READY=1.") var noWait = false
    @Flag(name: .long, help: "Follow the machine's console until it stops; exit with PID 1's exit status.") var console = false
    @Option(name: .long, help: "Seconds to wait for READY=1.") var timeout: UInt32 = 120

    /// BootMachine's options (ipactrd's `BootOptions` checks them).
    func options() throws -> [String: BusValue] {
        for e in env where !e.contains("=") { throw IpactrError(.invalidArgument, "bad --env \"\(e)\": want K=V") }
        var o: [String: BusValue] = [
            "Volumes": .strings(volume),
            "Tmpfs": .strings(tmpfs), "Environment": .strings(env), "Network": .string(network),
            "Publish": .strings(publish), "ReadOnly": .bool(readOnly), "Ephemeral": .bool(ephemeral),
            "NoWait": .bool(noWait || console), "Nesting": .bool(nesting),
        ]
        if let hostname { o["Hostname"] = .string(hostname) }
        switch uidRange {
        case "auto": break
        // Base 0 is the identity range (BootOptions).
        case "identity": o["UIDRangeBase"] = .uint32(0)
        default:
            guard let base = UInt32(uidRange), base != 0 else {
                throw IpactrError(.invalidArgument, "bad --uid-range \"\(uidRange)\": auto, identity or a multiple of 65536")
            }
            o["UIDRangeBase"] = .uint32(base)
        }
        if rootfs != "auto" { o["RootfsMode"] = .string(rootfs) }
        return o
    }

    func run() throws {
        var exitStatus: Int32 = 0
        try runVerb {
            guard timeout > 0 else { throw IpactrError(.invalidArgument, "--timeout must be positive") }
            let client = try daemon()
            let path = try withConsoleLines { try client.boot(image: image, name: name ?? "", options: try options(), timeoutSeconds: timeout) }
            let machineName = (try? client.machine(fromPath: path).name) ?? name ?? image
            if console {
                exitStatus = try followConsole(client, machineName)
            } else if noWait {
                say("\(machineName) started")
            } else {
                let m = try client.machine(machineName)
                say("\(m.name) is running (PID 1 \(m.leader), uid range \(m.uidRange))")
            }
        }
        if exitStatus != 0 { throw ExitCode(exitStatus) }
    }
}

/// A failed boot's error carries the machine's last console lines (ipactrd
/// puts them after the first line): they go to stderr before the one error line.
func withConsoleLines<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as IpactrError {
        guard let split = e.message.firstRange(of: "\nlast console lines:\n") else { throw e }
        writeAll(2, Array(("last console lines:\n" + e.message[split.upperBound...] + "\n").utf8))
        throw IpactrError(e.code, String(e.message[..<split.lowerBound]))
    }
}

/// `ipactr start NAME`: boot an existing, stopped machine again.
struct StartCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Boot an existing machine again.")

    @Argument(help: "Machine name.") var name: String
    @Flag(name: .long, help: "Return without waiting for READY=1.") var noWait = false

    func run() throws {
        try runVerb {
            let client = try daemon()
            try withConsoleLines { try client.start(name, wait: !noWait) }
            if !noWait {
                let m = try client.machine(name)
                say("\(m.name) is running (PID 1 \(m.leader))")
            }
        }
    }
}
