#if canImport(Glibc)
import Glibc
#endif
import CIpactrShim
import Foundation
import IpactrBus
import IpactrImageStore
import IpactrMachine
import IpactrSystem

/// A worker that ended with a non-zero status: its error line already went
/// to the caller's stderr; the method returns the status, the job failed.
struct WorkerFailed: Error { var status: Int32 }

extension ManagerDaemon {
    /// The org.ipactr1.Manager methods behind `ipactr`'s verbs beyond the
    /// machine1-like core: JSON descriptions for `list`/`status`/`images`
    /// `--json` and `image inspect`, the console, exec and shell on the
    /// caller's descriptors, and the image jobs (pull, import) run as workers.
    func verbMethods() -> [BusMethod] {
        let name = BusArgument("name", "s")
        let stdio = [BusArgument("stdin", "h"), BusArgument("stdout", "h"), BusArgument("stderr", "h")]
        let status = BusArgument("exit_status", "i")
        return [
            // JSON: what `ipactr list --json` prints.
            BusMethod("DescribeMachines", outputs: [BusArgument("json", "s")]) { [self] _ in
                await refresh()
                let all = lock.withLock { machineSnapshot.values.sorted { $0.name < $1.name } }
                return [.string(try Self.json(all.map { m in var m = m; m.enabled = isEnabled(m.name); return m }))]
            },
            // JSON: what `ipactr status --json` prints, without the system state.
            BusMethod("DescribeMachine", inputs: [name], outputs: [BusArgument("json", "s")]) { [self] call in
                await refresh()
                var m = try await lookupMachine(call.arguments[0].stringValue ?? "")
                m.enabled = isEnabled(m.name)
                return [.string(try Self.json(m))]
            },
            // Start the machine at host boot (ipactr@NAME.service wanted by machines.target), as `machinectl enable`.
            BusMethod("EnableMachine", inputs: [name], access: .root) { [self] call in
                try await setEnabled(try await lookupMachine(call.arguments[0].stringValue ?? "").name, true)
                return []
            },
            BusMethod("DisableMachine", inputs: [name], access: .root) { [self] call in
                try await setEnabled(try await lookupMachine(call.arguments[0].stringValue ?? "").name, false)
                return []
            },
            // `systemctl is-system-running` inside and the failed units; state "" when it cannot be asked.
            BusMethod("GetSystemState", inputs: [name], outputs: [BusArgument("state", "s"), BusArgument("failed_units", "as")]) { [self] call in
                let n = try await lookupMachine(call.arguments[0].stringValue ?? "").name
                let control = self.control
                let s = try await offLoop { control.systemState(n) }
                return [.string(s?.state ?? ""), .strings(s?.failedUnits ?? [])]
            },
            BusMethod("ConsoleTail", inputs: [name, BusArgument("lines", "u")], outputs: [BusArgument("lines", "as")],
                      access: .root) { [self] call in
                let n = try await lookupMachine(call.arguments[0].stringValue ?? "").name
                guard case .uint32(let count) = call.arguments[1] else { throw IpactrError(.invalidArgument, "ConsoleTail takes (s, u)") }
                return [.strings(control.manager.consoleTail(n, lines: Int(min(count, 10_000))))]
            },
            // The console log from `offset` (at most `max` bytes) and the offset after it.
            BusMethod("ReadConsole", inputs: [name, BusArgument("offset", "t"), BusArgument("max", "u")],
                      outputs: [BusArgument("data", "ay"), BusArgument("next", "t")], access: .root) { [self] call in
                let n = try await lookupMachine(call.arguments[0].stringValue ?? "").name
                guard case .uint64(let offset) = call.arguments[1], case .uint32(let max) = call.arguments[2] else {
                    throw IpactrError(.invalidArgument, "ReadConsole takes (s, t, u)")
                }
                let bytes = try Self.readBytes(control.manager.paths.consoleLog(n), at: offset, max: Int(min(max, 1 << 18)))
                return [.array(elementSignature: "y", bytes.map { .byte($0) }), .uint64(offset + UInt64(bytes.count))]
            },
            // The lifeline passes the caller's signals on: a byte is a signal
            // number for the command, its hang-up a SIGHUP (the caller is gone).
            BusMethod("ExecMachine", inputs: [name, BusArgument("command", "as"), BusArgument("environment", "as"),
                                              BusArgument("directory", "s")] + stdio + [BusArgument("lifeline", "h")],
                      outputs: [status], access: .root) { [self] call in
                var fds = Self.descriptors(call.arguments, from: 4, count: 4)
                let lifeline = fds.removeLast()
                let n: String
                do { n = try await lookupMachine(call.arguments[0].stringValue ?? "").name } catch { fds.forEach { close($0) }; throw error }
                var args = ["exec"]
                for e in call.arguments[2].arrayValue?.compactMap(\.stringValue) ?? [] { args += ["--env", e] }
                args += ["--workdir", call.arguments[3].stringValue ?? "/", n]
                args += call.arguments[1].arrayValue?.compactMap(\.stringValue) ?? []
                return [.int32(try await run(WorkerRun(arguments: args, stdio: fds, lifeline: lifeline, forwardsSignals: true)))]
            },
            BusMethod("ShellMachine", inputs: [name, BusArgument("command", "as"), BusArgument("term", "s")] + stdio
                        + [BusArgument("lifeline", "h")], outputs: [status], access: .root) { [self] call in
                var fds = Self.descriptors(call.arguments, from: 3, count: 4)
                let lifeline = fds.removeLast()
                let n: String
                do { n = try await lookupMachine(call.arguments[0].stringValue ?? "").name } catch { fds.forEach { close($0) }; throw error }
                var args = ["shell"]
                if let term = call.arguments[2].stringValue, !term.isEmpty { args += ["--term", term] }
                args.append(n)
                args += call.arguments[1].arrayValue?.compactMap(\.stringValue) ?? []
                return [.int32(try await run(WorkerRun(arguments: args, stdio: fds, lifeline: lifeline, forwardsSignals: true)))]
            },
            // format: "auto" (OCI layout, oci-archive, docker-archive), "tar" or "fs"; name "" = the archive's.
            BusMethod("ImportImage", inputs: [BusArgument("format", "s"), BusArgument("source", "s"), name] + stdio
                        + [BusArgument("lifeline", "h")], outputs: [status], access: .root) { [self] call in
                var fds = Self.descriptors(call.arguments, from: 3, count: 4)
                let lifeline = fds.removeLast()
                let format = call.arguments[0].stringValue ?? "", source = call.arguments[1].stringValue ?? ""
                let image = call.arguments[2].stringValue ?? ""
                let verb: String
                switch format {
                case "auto": verb = "import"
                case "tar": verb = "import-tar"
                case "fs": verb = "import-fs"
                default:
                    (fds + [lifeline]).forEach { close($0) }
                    throw IpactrError(.invalidArgument, "import format must be auto, tar or fs, not \"\(format)\"")
                }
                guard source.hasPrefix("/") else {
                    (fds + [lifeline]).forEach { close($0) }
                    throw IpactrError(.invalidArgument, "the import source must be an absolute path, not \"\(source)\"")
                }
                let args = [verb, source] + (image.isEmpty ? [] : [image])
                return [.int32(try await imageJob("import", source, WorkerRun(arguments: args, stdio: fds, lifeline: lifeline)))]
            },
            // options: TLSVerify b, Username s, Password s, AuthFile s, CertDir s, Quiet b.
            BusMethod("PullImage", inputs: [BusArgument("reference", "s"), BusArgument("options", "a{sv}")] + stdio
                        + [BusArgument("lifeline", "h")], outputs: [status], access: .root) { [self] call in
                var fds = Self.descriptors(call.arguments, from: 2, count: 4)
                let lifeline = fds.removeLast()
                let reference = call.arguments[0].stringValue ?? ""
                var args = ["pull"]
                do {
                    let o = try PullOptions(parsing: call.arguments[1].stringDictValue ?? [:])
                    if let v = o.tlsVerify { args.append("--tls-verify=\(v)") }
                    if let f = o.authFile { args += ["--authfile", f] }
                    if let d = o.certDir { args += ["--cert-dir", d] }
                    if o.quiet { args.append("--quiet") }
                    if let user = o.username {
                        // On the worker's stdin, never on a command line others can read.
                        close(fds[0])
                        fds[0] = try Self.pipeWith("\(user):\(o.password ?? "")\n")
                        args.append("--creds-stdin")
                    }
                } catch {
                    (fds + [lifeline]).forEach { close($0) }
                    throw error
                }
                args += ["--", reference]
                return [.int32(try await imageJob("pull", reference, WorkerRun(arguments: args, stdio: fds, lifeline: lifeline)))]
            },
            BusMethod("PruneImages", outputs: [BusArgument("blobs", "u"), BusArgument("layers", "u")], access: .root) { [self] _ in
                let root = configuration.root
                let (blobs, layers) = try await offLoop { try ImageStore(root: root).prune() }
                return [.uint32(UInt32(blobs)), .uint32(UInt32(layers))]
            },
            // JSON: what `ipactr images --json` prints.
            BusMethod("DescribeImages", outputs: [BusArgument("json", "s")]) { [self] _ in
                let root = configuration.root
                return [.string(try await offLoop { try ImageDescription.list(ImageStore(root: root)) })]
            },
            // JSON: what `ipactr image inspect` prints (name or id prefix).
            BusMethod("InspectImage", inputs: [name], outputs: [BusArgument("json", "s")]) { [self] call in
                let root = configuration.root, n = call.arguments[0].stringValue ?? ""
                return [.string(try await offLoop { try ImageDescription.inspect(ImageStore(root: root), n) })]
            },
        ]
    }

    static func unitName(_ machine: String) -> String { "ipactr@\(machine).service" }

    /// What `systemctl enable` leaves for a unit with WantedBy=machines.target.
    func isEnabled(_ machine: String) -> Bool {
        let root = configuration.unitRoot == "/" ? "" : configuration.unitRoot
        return lstatOrNil(root + "/etc/systemd/system/machines.target.wants/" + Self.unitName(machine)) != nil
    }

    /// Enables or disables ipactr@NAME.service: through systemd's manager on
    /// the bus when it is there (it also reloads), else with
    /// `systemctl --root=UNITROOT`, which edits the unit links offline (a
    /// host or image without a running systemd).
    func setEnabled(_ machine: String, _ enable: Bool) async throws {
        let unit = Self.unitName(machine), config = configuration
        try await offLoop {
            if config.unitRoot == "/", let bus = try? BusConnection(address: config.busAddress, description: "ipactrd-units") {
                let systemd = BusProxy(bus, "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
                do {
                    if enable {
                        // machines.target too, as `machinectl enable` does: it pulls the machines in at boot.
                        _ = try systemd.call("EnableUnitFilesWithFlags", [.strings([unit, "machines.target"]), .uint64(0)], timeout: 60_000_000)
                    } else {
                        _ = try systemd.call("DisableUnitFilesWithFlags", [.strings([unit]), .uint64(0)], timeout: 60_000_000)
                    }
                    _ = try systemd.call("Reload", [], timeout: 120_000_000)
                    return
                } catch let e as IpactrError where e.message.contains("ServiceUnknown") || e.message.contains("NameHasNoOwner") {
                    // No systemd on this bus: the links are made offline below.
                }
            }
            let root = config.unitRoot == "/" ? "" : config.unitRoot
            let target = ["/lib", "/usr/lib"].contains { lstatOrNil(root + $0 + "/systemd/system/machines.target") != nil }
            try Self.systemctl(["--root=\(config.unitRoot)", enable ? "enable" : "disable", unit] + (enable && target ? ["machines.target"] : []))
        }
        announce(machine: machine, ["Enabled"])
    }

    static func systemctl(_ args: [String]) throws {
        var out: [Int32] = [-1, -1]
        guard ipactr_pipe2(&out, O_CLOEXEC) == 0 else { throw IpactrError.syscall("pipe", .init(rawValue: errno)) }
        let pid: pid_t
        do {
            defer { close(out[1]) }
            pid = try spawnProcess(["/bin/systemctl"] + args, descriptors: [0: .open("/dev/null", flags: O_RDONLY),
                                                                             1: .open("/dev/null", flags: O_WRONLY), 2: .dup(out[1])])
        } catch {
            close(out[0])
            throw error
        }
        let bytes = readAll(out[0])
        close(out[0])
        let status = waitForExit(pid)
        guard status == 0 else {
            // systemctl's last line says why ("unit … does not exist").
            let why = String(decoding: bytes, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? "exit status \(status)"
            throw IpactrError(.io, "systemctl \(args.joined(separator: " ")): \(why)")
        }
    }

    /// PropertiesChanged for a machine's properties changed outside the polls.
    func announce(machine: String, _ names: [String]) {
        guard let path = try? Self.machinePath(machine) else { return }
        let server = self.server
        Task { try? await server.propertiesChanged(path: path, interface: Self.machineInterface, names) }
    }

    /// Runs a pull or import worker as a job; a pull worker's progress lines feed the job.
    func imageJob(_ type: String, _ image: String, _ worker: WorkerRun) async throws -> Int32 {
        do {
            return try await asJob(type, image: image) { [self] job in
                var fed = worker
                if type == "pull" { fed.onLine = { [weak self] line in self?.announce(job, job.apply(workerLine: line)) } }
                let status = try await run(fed)
                await refresh()
                if status != 0 { throw WorkerFailed(status: status) }
                return status
            }
        } catch let failed as WorkerFailed {
            return failed.status
        }
    }

    static func descriptors(_ arguments: [BusValue], from: Int, count: Int = 3) -> [Int32] {
        arguments[from..<(from + count)].map { if case .unixFD(let fd) = $0 { return fd }; return -1 }
    }

    /// The read end of a pipe that holds `text` (small: it fits the pipe buffer).
    static func pipeWith(_ text: String) throws -> Int32 {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw IpactrError.syscall("pipe", .init(rawValue: errno)) }
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
        close(fds[1])
        return fds[0]
    }

    static func readBytes(_ path: String, at offset: UInt64, max: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        // Not written yet (a monitor just started): nothing to read.
        if fd < 0 { return [] }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: max)
        let n = pread(fd, &buffer, max, off_t(offset))
        guard n >= 0 else { throw IpactrError.syscall("read \(path)", .init(rawValue: errno)) }
        return Array(buffer[0..<n])
    }

    static func json<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}

/// PullImage's options, decoded strictly like `BootOptions`.
struct PullOptions {
    var tlsVerify: Bool?
    var username: String?
    var password: String?
    var authFile: String?
    var certDir: String?
    var quiet = false

    static let keys: [String: String] = ["TLSVerify": "b", "Username": "s", "Password": "s", "AuthFile": "s", "CertDir": "s",
                                         "Quiet": "b"]

    init(parsing dict: [String: BusValue]) throws(IpactrError) {
        for (key, value) in dict {
            guard let want = Self.keys[key] else {
                throw IpactrError(.invalidArgument, "unknown pull option \"\(key)\" (known: \(Self.keys.keys.sorted().joined(separator: ", ")))")
            }
            guard value.signature == want else {
                throw IpactrError(.invalidArgument, "pull option \(key) takes type \"\(want)\", got \"\(value.signature)\"")
            }
        }
        tlsVerify = dict["TLSVerify"]?.boolValue
        username = dict["Username"]?.stringValue
        password = dict["Password"]?.stringValue
        authFile = dict["AuthFile"]?.stringValue
        certDir = dict["CertDir"]?.stringValue
        quiet = dict["Quiet"]?.boolValue ?? false
        for (key, path) in [("AuthFile", authFile), ("CertDir", certDir)] where path.map({ !$0.hasPrefix("/") }) ?? false {
            throw IpactrError(.invalidArgument, "pull option \(key) must be an absolute path")
        }
    }
}

/// The JSON `ipactr images --json` and `image inspect` print.
enum ImageDescription {
    static func list(_ store: ImageStore) throws -> String {
        let rows: [[String: Any]] = try store.images().map { r in
            ["name": r.name, "id": r.id.description, "digest": r.digest.description, "size": r.size,
             "created": r.created ?? NSNull(), "layers": r.diffIDs.map(\.description)]
        }
        return try text(rows)
    }

    static func inspect(_ store: ImageStore, _ name: String) throws -> String {
        let r = try store.image(name)
        let manifest = try store.manifest(of: r)
        let configJSON = try JSONSerialization.jsonObject(with: Data(readFile(store.path + "/blobs/sha256/" + r.id.hex)))
        let layers: [[String: Any]] = zip(manifest.layers, r.diffIDs).map { l, d in
            ["digest": l.digest.description, "diffID": d.description, "mediaType": l.mediaType, "size": l.size,
             "path": store.layerPath(d)]
        }
        let out: [String: Any] = ["name": r.name, "id": r.id.description, "digest": r.digest.description,
                                  "size": r.size, "created": r.created ?? NSNull(), "layers": layers, "config": configJSON]
        return try text(out)
    }

    private static func text(_ object: Any) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }
}
