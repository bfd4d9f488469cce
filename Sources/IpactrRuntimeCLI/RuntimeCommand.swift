import ArgumentParser
import FoundationEssentials
import IpactrOCI
import IpactrRuntime
import IpactrSystemdCgroup
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// runc's global options. They come before the subcommand (`ipactr-runtime
/// --root R --log L create …`, as go-runc sends them), so they are taken off
/// the argument list before swift-argument-parser sees it.
struct Globals {
    var root = "/run/ipactr-runtime"
    var log: String?
    var logFormat = "text"
    var debug = false
    /// --cgroup-manager (crun's): cgroupfs (default), systemd, disabled;
    /// runc's --systemd-cgroup means systemd.
    var cgroupManager = "cgroupfs"
    var rootless: String?

    /// Consumes leading global options; returns the rest.
    mutating func parse(_ args: [String]) throws(IpactrError) -> [String] {
        var rest = args[...]
        func value(_ name: String, _ inline: String?) throws(IpactrError) -> String {
            if let v = inline { return v }
            rest = rest.dropFirst()
            guard let v = rest.first else { throw IpactrError(.invalidArgument, "option \(name) needs a value") }
            return v
        }
        while let a = rest.first, a.hasPrefix("-") {
            let parts = a.split(separator: "=", maxSplits: 1).map(String.init)
            let name = parts[0].hasPrefix("--") ? parts[0] : "-" + parts[0]
            let inline = parts.count > 1 ? parts[1] : nil
            switch name {
            case "--root": root = try value(name, inline)
            case "--log": log = try value(name, inline)
            case "--log-format": logFormat = try value(name, inline)
            case "--debug": debug = true
            case "--systemd-cgroup": cgroupManager = "systemd"
            case "--cgroup-manager":
                cgroupManager = try value(name, inline)
                guard ["cgroupfs", "systemd", "disabled"].contains(cgroupManager) else {
                    throw IpactrError(.invalidArgument, "--cgroup-manager \(cgroupManager): expected cgroupfs, systemd or disabled")
                }
            case "--rootless": rootless = try value(name, inline)
            case "--criu": _ = try value(name, inline)
            case "---help", "--help", "-h", "--version", "-v": return Array(rest)
            default: return Array(rest)
            }
            rest = rest.dropFirst()
        }
        return Array(rest)
    }
}

nonisolated(unsafe) var globals = Globals()

/// The runc-compatible command tree of `ipactr-runtime`.
public struct RuntimeCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ipactr-runtime",
        abstract: "An OCI runtime with runc's command line.",
        discussion: """
            Global options (before the command): --root DIR, --log FILE, --log-format text|json, --debug,
            --cgroup-manager cgroupfs|systemd|disabled (cgroupfs: the runtime makes the container's cgroup, the default;
            disabled: no cgroup, the container stays in the caller's, and limits, pause, resume and update are refused),
            --systemd-cgroup (runc's name for --cgroup-manager systemd).
            """,
        version: "ipactr-runtime version 0.1.0\nspec: \(RuntimeSpec.version)",
        subcommands: [Create.self, Start.self, Run.self, Exec.self, State.self, Kill.self, Delete.self,
                      List.self, Ps.self, Pause.self, Resume.self, Update.self, Spec.self, Features.self]
    )

    public init() {}

    public static func main(arguments: [String]) -> Never {
        do {
            let rest = try globals.parse(arguments)
            var command = try parseAsRoot(rest)
            if let run = command as? Run { Glibc.exit(try run.execute()) }
            if let exec = command as? Exec { Glibc.exit(try exec.execute()) }
            try command.run()
            Glibc.exit(0)
        } catch let error as IpactrError {
            report(error.message)
            Glibc.exit(error.code.exitStatus)
        } catch {
            if let log = globals.log, exitCode(for: error) != .success {
                appendLog(log, fullMessage(for: error))
            }
            exit(withError: error)
        }
    }

    /// One line on stderr, and the same in --log where go-runc looks for it.
    static func report(_ message: String) {
        printError(tool: "ipactr-runtime", message)
        if let log = globals.log { appendLog(log, message) }
    }

    static func appendLog(_ path: String, _ message: String) {
        let line: String
        if globals.logFormat == "json" {
            struct Entry: Encodable { var level: String; var msg: String; var time: String }
            let data = (try? JSONEncoder().encode(Entry(level: "error", msg: message, time: timestamp()))) ?? Data()
            line = String(decoding: data, as: UTF8.self) + "\n"
        } else {
            line = "time=\"\(timestamp())\" level=error msg=\"\(message)\"\n"
        }
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        var b = Array(line.utf8)
        _ = b.withUnsafeMutableBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    static func timestamp() -> String {
        var t = time(nil)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        var buf = [CChar](repeating: 0, count: 32)
        strftime(&buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tmv)
        return String(cString: buf)
    }
}

/// The chosen manager makes new containers; later verbs use the one named
/// in the container's state (systemd's connects only when used).
let runtime: Runtime = {
    let systemd = SystemdCgroupManager()
    let chosen: any CgroupManager
    switch globals.cgroupManager {
    case "disabled": chosen = DisabledCgroupManager()
    case "systemd": chosen = systemd
    default: chosen = CgroupfsManager()
    }
    return Runtime(root: globals.root, cgroupManager: chosen, otherCgroupManagers: [systemd])
}()

func printJSON<T: Encodable>(_ value: T) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    let data = try enc.encode(value)
    print(String(decoding: data, as: UTF8.self))
}

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a container; process.args waits for start.")
    @Option(name: [.short, .long], help: "Bundle directory.") var bundle: String = "."
    @Option(name: .long, help: "Write the init's pid here.") var pidFile: String?
    @Option(name: .long, help: "AF_UNIX socket that receives the pty master (process.terminal).") var consoleSocket: String?
    @Option(name: .long, help: "AF_UNIX socket that receives a pidfd of the init (SCM_RIGHTS).") var pidfdSocket: String?
    @Flag(name: .long, help: "Use chroot-like MS_MOVE instead of pivot_root.") var noPivot = false
    @Flag(name: .long, help: "Accepted for runc compatibility: no session keyring is made.") var noNewKeyring = false
    @Option(name: .long, help: "Pass N extra fds (3 … 3+N-1) to the process.") var preserveFds: Int = 0
    @Argument var id: String

    func run() throws {
        try runtime.create(id: id, .init(bundle: bundle, pidFile: pidFile, noPivot: noPivot, preserveFds: preserveFds, consoleSocket: consoleSocket,
                                           notifySocket: callerNotifySocket(), pidfdSocket: pidfdSocket))
    }
}

/// NOTIFY_SOCKET of whoever runs us (systemd, podman): proxied into the container.
func callerNotifySocket() -> String? {
    guard let v = getenv("NOTIFY_SOCKET") else { return nil }
    let s = String(cString: v)
    return s.isEmpty ? nil : s
}


struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Run process.args of a created container.")
    @Argument var id: String
    func run() throws { try runtime.start(id: id) }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Create and start a container; wait for it unless --detach.")
    @Option(name: [.short, .long]) var bundle: String = "."
    @Option(name: .long) var pidFile: String?
    @Option(name: .long) var consoleSocket: String?
    @Option(name: .long) var pidfdSocket: String?
    @Flag(name: [.short, .long]) var detach = false
    @Flag(name: .long) var noPivot = false
    @Flag(name: .long) var noNewKeyring = false
    @Option(name: .long) var preserveFds: Int = 0
    @Argument var id: String

    func run() throws { _ = try execute() }

    /// The payload's exit status, which `run` passes on unchanged.
    func execute() throws -> Int32 {
        return try runtime.run(id: id, .init(bundle: bundle, pidFile: pidFile, noPivot: noPivot, preserveFds: preserveFds, consoleSocket: consoleSocket,
                                           notifySocket: callerNotifySocket(), pidfdSocket: pidfdSocket), detach: detach)
    }
}

struct State: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "state", abstract: "Print the container's state (runtime-spec JSON).")
    @Argument var id: String
    func run() throws { try printJSON(try runtime.state(id: id)) }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kill", abstract: "Send a signal (number or name, e.g. KILL, RTMIN+3) to the init.")
    @Flag(name: [.short, .long], help: "Signal every process in the container.") var all = false
    @Argument var id: String
    @Argument var signal: String = "SIGTERM"
    func run() throws { try runtime.kill(id: id, signal: try parseSignal(signal), all: all) }
}

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a container and all that create made.")
    @Flag(name: [.short, .long], help: "Kill it first if it still runs.") var force = false
    @Argument var id: String
    func run() throws { try runtime.delete(id: id, force: force) }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List containers under --root.")
    @Option(name: [.short, .long]) var format: String = "table"
    @Flag(name: [.short, .long]) var quiet = false
    func run() throws {
        let all = runtime.list()
        if quiet { for s in all { print(s.id) }; return }
        switch format {
        case "json": try printJSON(all)
        case "table":
            print("ID\tPID\tSTATUS\tBUNDLE")
            for s in all { print("\(s.id)\t\(s.pid ?? 0)\t\(s.status)\t\(s.bundle)") }
        default: throw IpactrError(.invalidArgument, "unknown format \(format)")
        }
    }
}

struct Ps: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ps", abstract: "List the container's processes (host pids).")
    @Option(name: [.short, .long]) var format: String = "table"
    @Argument var id: String
    func run() throws {
        let pids = try runtime.processes(id: id)
        switch format {
        case "json": try printJSON(pids)
        case "table":
            print("PID\tCMD")
            for p in pids {
                let cmd = processCommandLine(p)
                print("\(p)\t\(cmd)")
            }
        default: throw IpactrError(.invalidArgument, "unknown format \(format)")
        }
    }
}

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pause", abstract: "Freeze every process of the container (cgroup.freeze).")
    @Argument var id: String
    func run() throws { try runtime.pause(id: id) }
}

struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Thaw a paused container.")
    @Argument var id: String
    func run() throws { try runtime.resume(id: id) }
}

struct Spec: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "spec", abstract: "Write a template config.json into the bundle.")
    @Option(name: [.short, .long]) var bundle: String = "."
    @Flag(name: .long, help: "Template for an unprivileged user (user namespace).") var rootless = false
    func run() throws {
        let path = bundle + "/config.json"
        if access(path, F_OK) == 0 { throw IpactrError(.exists, "\(path) already exists") }
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try enc.encode(RuntimeSpec.template(rootless: rootless))
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        if fd < 0 { throw IpactrError.syscall("create \(path)", .init(rawValue: errno)) }
        defer { close(fd) }
        var bytes = Array(data) + [10]
        _ = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress, $0.count) }
    }
}

struct Features: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "features", abstract: "Print what this runtime implements (runtime-spec features.md).")
    func run() throws { try printJSON(RuntimeFeatures.current()) }
}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "exec", abstract: "Run a new process inside a running container; passes on its exit status.")
    @Option(name: [.short, .long], help: "runtime-spec process JSON.") var process: String?
    @Flag(name: [.short, .long]) var detach = false
    @Flag(name: [.short, .long], help: "Allocate a pty (needs --console-socket).") var tty = false
    @Option(name: .long) var consoleSocket: String?
    @Option(name: .long) var pidFile: String?
    @Option(name: [.short, .long], parsing: .singleValue) var env: [String] = []
    @Option(name: .long) var cwd: String?
    @Option(name: [.short, .long], help: "uid[:gid]") var user: String?
    @Option(name: .long) var preserveFds: Int = 0
    @Option(name: .long, help: "AF_UNIX socket that receives a pidfd of the process (SCM_RIGHTS).") var pidfdSocket: String?
    @Argument var id: String
    @Argument(parsing: .captureForPassthrough) var command: [String] = []

    func run() throws { _ = try execute() }

    func execute() throws -> Int32 {
        var o = Runtime.ExecOptions()
        o.processFile = process
        o.args = command.first == "--" ? Array(command.dropFirst()) : command
        o.env = env
        o.cwd = cwd
        o.user = user
        o.detach = detach
        o.pidFile = pidFile
        o.preserveFds = preserveFds
        o.tty = tty
        o.consoleSocket = consoleSocket
        o.pidfdSocket = pidfdSocket
        return try runtime.exec(id: id, o)
    }
}

struct Update: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "update", abstract: "Apply new resource limits (runtime-spec linux.resources JSON) to a running container.")
    @Option(name: [.short, .long], help: "JSON file, or - for stdin.") var resources: String
    @Argument var id: String
    func run() throws {
        let data: Data
        if resources == "-" {
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(0, &buf, buf.count)
                if n <= 0 { break }
                bytes += buf[0..<n]
            }
            data = Data(bytes)
        } else {
            let fd = open(resources, O_RDONLY | O_CLOEXEC)
            if fd < 0 { throw IpactrError.syscall("open \(resources)", .init(rawValue: errno)) }
            defer { close(fd) }
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(fd, &buf, buf.count)
                if n <= 0 { break }
                bytes += buf[0..<n]
            }
            data = Data(bytes)
        }
        let r: RuntimeSpec.Resources
        do { r = try JSONDecoder().decode(RuntimeSpec.Resources.self, from: data) } catch {
            throw IpactrError(.invalidArgument, "--resources: not runtime-spec linux.resources JSON (\(error))")
        }
        try runtime.update(id: id, resources: r)
    }
}
