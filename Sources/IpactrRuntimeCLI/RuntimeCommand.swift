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

/// The runc-compatible command line of `ipactr-runtime`.
public enum RuntimeCommand {
    static let version = "ipactr-runtime version 0.1.0\nspec: \(RuntimeSpec.version)"

    static let verbs: [Verb] = [create, start, run, exec, state, kill, delete, list, ps, pause, resume, update, spec, features]

    public static func main(arguments: [String]) -> Never {
        do {
            let rest = try globals.parse(arguments)
            Glibc.exit(try dispatch(rest))
        } catch let error as IpactrError {
            report(error.message)
            Glibc.exit(error.code.exitStatus)
        } catch let usage as UsageError {
            report(usage.message + " (see ipactr-runtime --help)")
            Glibc.exit(64)
        } catch {
            report("\(error)")
            Glibc.exit(1)
        }
    }

    static func dispatch(_ args: [String]) throws -> Int32 {
        guard let first = args.first else { print(help, terminator: ""); return 0 }
        switch first {
        case "--version", "-v": print(version); return 0
        case "--help", "-h", "---help", "help":
            if args.count > 1, let verb = verbs.first(where: { $0.name == args[1] }) { print(verb.help, terminator: "") } else { print(help, terminator: "") }
            return 0
        default: break
        }
        if first.hasPrefix("-") { throw UsageError("unknown global option \(first)") }
        guard let verb = verbs.first(where: { $0.name == first }) else { throw UsageError("unknown command '\(first)'") }
        let parsed: VerbArguments
        do { parsed = try VerbArguments(Array(args.dropFirst()), for: verb) } catch {
            if error.isHelp { print(verb.help, terminator: ""); return 0 }
            throw error
        }
        return try verb.run(parsed)
    }

    static var help: String {
        var text = """
        USAGE: ipactr-runtime [GLOBAL OPTIONS] COMMAND [OPTIONS] ARGUMENTS…
        An OCI runtime with runc's command line.

        GLOBAL OPTIONS (before the command):
          --root DIR                  State directory (default /run/ipactr-runtime).
          --log FILE                  Append errors here (as runc: the shim reads them).
          --log-format text|json      Format of --log (default text).
          --debug                     Accepted for runc compatibility.
          --cgroup-manager MANAGER    cgroupfs (default: the runtime makes the container's cgroup),
                                      systemd (a transient scope per container, needs systemd on the
                                      system bus), or disabled (no cgroup: the container stays in the
                                      caller's; limits, pause, resume and update are refused).
          --systemd-cgroup            runc's name for --cgroup-manager systemd.
          -v, --version               Print the version.

        COMMANDS:

        """
        for v in verbs { text += "  " + v.name.padding(12) + v.summary + "\n" }
        return text + "\nSee 'ipactr-runtime COMMAND --help'.\n"
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

/// NOTIFY_SOCKET of whoever runs us (systemd, podman): proxied into the container.
func callerNotifySocket() -> String? {
    guard let v = getenv("NOTIFY_SOCKET") else { return nil }
    let s = String(cString: v)
    return s.isEmpty ? nil : s
}

// MARK: - The verbs

/// Options `create` and `run` share.
private let createOptions: [VerbOption] = [
    .value("bundle", "b", "DIR", "Bundle directory (default: the current one)."),
    .value("pid-file", nil, "FILE", "Write the init's pid here."),
    .value("console-socket", nil, "PATH", "AF_UNIX socket that receives the pty master (process.terminal)."),
    .value("pidfd-socket", nil, "PATH", "AF_UNIX socket that receives a pidfd of the init (SCM_RIGHTS)."),
    .flag("no-pivot", nil, "Use MS_MOVE and chroot instead of pivot_root."),
    .flag("no-new-keyring", nil, "Accepted for runc compatibility: no session keyring is made."),
    .value("preserve-fds", nil, "N", "Pass N extra fds (3 … 3+N-1) to the process."),
]

private func createOptions(_ a: VerbArguments) throws -> Runtime.CreateOptions {
    .init(bundle: a.value("bundle") ?? ".", pidFile: a.value("pid-file"), noPivot: a.flag("no-pivot"),
          preserveFds: try a.int("preserve-fds"), consoleSocket: a.value("console-socket"),
          notifySocket: callerNotifySocket(), pidfdSocket: a.value("pidfd-socket"))
}

private let create = Verb(name: "create", summary: "Create a container; process.args waits for start.",
                          options: createOptions, arguments: ["ID"], required: 1, maximum: 1) { a in
    try runtime.create(id: a.positionals[0], try createOptions(a))
    return 0
}

private let start = Verb.onID("start", "Run process.args of a created container.") { try runtime.start(id: $0) }

/// The payload's exit status, which `run` passes on unchanged.
private let run = Verb(name: "run", summary: "Create and start a container; wait for it unless --detach.",
                       options: createOptions + [.flag("detach", "d", "Return once the process runs.")],
                       arguments: ["ID"], required: 1, maximum: 1) { a in
    try runtime.run(id: a.positionals[0], try createOptions(a), detach: a.flag("detach"))
}

private let exec = Verb(
    name: "exec", summary: "Run a new process inside a running container; passes on its exit status.",
    options: [
        .value("process", "p", "FILE", "runtime-spec process JSON."),
        .flag("detach", "d", "Return once the process runs."),
        .flag("tty", "t", "Allocate a pty (needs --console-socket)."),
        .value("console-socket", nil, "PATH", "AF_UNIX socket that receives the pty master."),
        .value("pid-file", nil, "FILE", "Write the process's pid here."),
        .value("env", "e", "K=V", "Set an environment variable (repeatable).", repeatable: true),
        .value("cwd", nil, "DIR", "Working directory inside the container."),
        .value("user", "u", "UID[:GID]", "Run as this user."),
        .value("preserve-fds", nil, "N", "Pass N extra fds (3 … 3+N-1) to the process."),
        .value("pidfd-socket", nil, "PATH", "AF_UNIX socket that receives a pidfd of the process (SCM_RIGHTS)."),
    ],
    arguments: ["ID", "[COMMAND [ARG…]]"], required: 1, maximum: nil
) { a in
    var o = Runtime.ExecOptions()
    o.processFile = a.value("process")
    o.args = Array(a.positionals.dropFirst())
    o.env = a.all("env")
    o.cwd = a.value("cwd")
    o.user = a.value("user")
    o.detach = a.flag("detach")
    o.pidFile = a.value("pid-file")
    o.preserveFds = try a.int("preserve-fds")
    o.tty = a.flag("tty")
    o.consoleSocket = a.value("console-socket")
    o.pidfdSocket = a.value("pidfd-socket")
    return try runtime.exec(id: a.positionals[0], o)
}

private let state = Verb(name: "state", summary: "Print the container's state (runtime-spec JSON).",
                         options: [], arguments: ["ID"], required: 1, maximum: 1) { a in
    try printJSON(try runtime.state(id: a.positionals[0]))
    return 0
}

private let kill = Verb(name: "kill", summary: "Send a signal (number or name, e.g. KILL, RTMIN+3) to the init.",
                        options: [.flag("all", "a", "Signal every process in the container.")],
                        arguments: ["ID", "[SIGNAL]"], required: 1, maximum: 2) { a in
    let signal = a.positionals.count > 1 ? a.positionals[1] : "SIGTERM"
    try runtime.kill(id: a.positionals[0], signal: try parseSignal(signal), all: a.flag("all"))
    return 0
}

private let delete = Verb(name: "delete", summary: "Delete a container and all that create made.",
                          options: [.flag("force", "f", "Kill it first if it still runs.")],
                          arguments: ["ID"], required: 1, maximum: 1) { a in
    try runtime.delete(id: a.positionals[0], force: a.flag("force"))
    return 0
}

private let list = Verb(name: "list", summary: "List containers under --root.",
                        options: [.value("format", "f", "table|json", "Output format (default table)."),
                                  .flag("quiet", "q", "Only the IDs.")],
                        arguments: [], required: 0, maximum: 0) { a in
    let all = runtime.list()
    if a.flag("quiet") { for s in all { print(s.id) }; return 0 }
    switch a.value("format") ?? "table" {
    case "json": try printJSON(all)
    case "table":
        print("ID\tPID\tSTATUS\tBUNDLE")
        for s in all { print("\(s.id)\t\(s.pid ?? 0)\t\(s.status)\t\(s.bundle)") }
    case let f: throw UsageError("unknown format \(f)")
    }
    return 0
}

private let ps = Verb(name: "ps", summary: "List the container's processes (host pids).",
                      options: [.value("format", "f", "table|json", "Output format (default table).")],
                      arguments: ["ID"], required: 1, maximum: 1) { a in
    let format = a.value("format") ?? "table"
    guard format == "table" || format == "json" else { throw UsageError("unknown format \(format)") }
    let pids = try runtime.processes(id: a.positionals[0])
    if format == "json" { try printJSON(pids); return 0 }
    print("PID\tCMD")
    for p in pids { print("\(p)\t\(processCommandLine(p))") }
    return 0
}

private let pause = Verb.onID("pause", "Freeze every process of the container (cgroup.freeze).") { try runtime.pause(id: $0) }

private let resume = Verb.onID("resume", "Thaw a paused container.") { try runtime.resume(id: $0) }

private let update = Verb(name: "update", summary: "Apply new resource limits (runtime-spec linux.resources JSON) to a running container.",
                          options: [.value("resources", "r", "FILE", "JSON file, or - for stdin.")],
                          arguments: ["ID"], required: 1, maximum: 1) { a in
    guard let path = a.value("resources") else { throw UsageError("'update' needs --resources FILE (or - for stdin)") }
    let bytes: [UInt8]
    if path == "-" { bytes = readAll(0) } else {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw IpactrError.syscall("open \(path)", .init(rawValue: errno)) }
        defer { close(fd) }
        bytes = readAll(fd)
    }
    let r: RuntimeSpec.Resources
    do { r = try JSONDecoder().decode(RuntimeSpec.Resources.self, from: Data(bytes)) } catch {
        throw IpactrError(.invalidArgument, "--resources: not runtime-spec linux.resources JSON (\(error))")
    }
    try runtime.update(id: a.positionals[0], resources: r)
    return 0
}

private let spec = Verb(name: "spec", summary: "Write a template config.json into the bundle.",
                        options: [.value("bundle", "b", "DIR", "Bundle directory (default: the current one)."),
                                  .flag("rootless", nil, "Template for an unprivileged user (user namespace).")],
                        arguments: [], required: 0, maximum: 0) { a in
    let path = (a.value("bundle") ?? ".") + "/config.json"
    if access(path, F_OK) == 0 { throw IpactrError(.exists, "\(path) already exists") }
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    let data = try enc.encode(RuntimeSpec.template(rootless: a.flag("rootless")))
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    if fd < 0 { throw IpactrError.syscall("create \(path)", .init(rawValue: errno)) }
    defer { close(fd) }
    var bytes = Array(data) + [10]
    _ = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress, $0.count) }
    return 0
}

private let features = Verb(name: "features", summary: "Print what this runtime implements (runtime-spec features.md).",
                            options: [], arguments: [], required: 0, maximum: 0) { _ in
    var f = RuntimeFeatures.current()
    // The core has no systemd manager; this binary has (SystemdCgroupInMachineTests).
    f.linux.cgroup.systemd = true
    try printJSON(f)
    return 0
}
