#if canImport(Glibc)
import Glibc
#endif
import Foundation
import IpactrBus
import IpactrImageStore
import IpactrMachine
import IpactrSystem
import Logging

/// ipactrd: serves the machine and image tables of one state root on D-Bus.
///
/// The daemon keeps no state of its own that a crash could lose: machines
/// are the records under ROOT/machines and their monitors (a running
/// machine's monitor holds the flock on its monitor.lock and publishes
/// status.json), images are the store's refs. The daemon reads them on start
/// and then polls them (every `pollInterval`, and right after each of its own
/// changes), registers and drops objects, and announces what changed. Polling
/// rather than inotify because the status files are replaced by rename in
/// per-machine run directories that come and go, and machines change under
/// the CLI too; one pass over a few small files costs little.
///
/// Long operations (boot and start wait for READY=1, poweroff for the stop)
/// run on threads of their own, never on the bus loop or the concurrency
/// pool; boot and start are also served as job objects while they run (`Job`).
public final class ManagerDaemon: @unchecked Sendable {
    public static let busName = "org.ipactr1"
    public static let managerPath = "/org/ipactr1"
    public static let machinePrefix = "/org/ipactr1/machine"
    public static let imagePrefix = "/org/ipactr1/image"
    public static let jobPrefix = "/org/ipactr1/job"
    public static let jobInterface = "org.ipactr1.Job"
    public static let managerInterface = "org.ipactr1.Manager"
    public static let machineInterface = "org.ipactr1.Machine"
    public static let imageInterface = "org.ipactr1.Image"

    public struct Configuration: Sendable {
        public var root: String
        public var busAddress: String
        /// The `ipactr-worker` binary: `ipactr-worker monitor NAME` and the workers.
        public var monitorExecutable: String
        public var pollInterval: Double = 0.5
        /// The file system root `enable` installs units under when systemd
        /// is not on the bus (`systemctl --root`); "/" for the host.
        public var unitRoot = "/"

        public init(root: String, busAddress: String, monitorExecutable: String) {
            self.root = root
            self.busAddress = busAddress
            self.monitorExecutable = monitorExecutable
        }
    }

    let configuration: Configuration
    var control: MachineControl
    let server: BusServer
    let logger: Logger

    // Guarded by `lock`: the last snapshot, which getters read and polls diff against.
    let lock = NSLock()
    var machineSnapshot: [String: MachineInfo.Summary] = [:]
    private var images: [String: ImageRecord] = [:]
    private var jobs: [UInt32: Job] = [:]
    private var lastJobID: UInt32 = 0
    // Serialises refreshes (the snapshot diff and object registration).
    private let refreshLock = NSLock()
    private var poller: Task<Void, Never>?
    /// Worker children (`Worker.swift`): reaped by their runs, not by `reapChildren`.
    let workers = WorkerSet()

    public init(_ configuration: Configuration, logger: Logger = Logger(label: "ipactrd")) throws {
        self.configuration = configuration
        self.logger = logger
        control = MachineControl(root: configuration.root, monitorExecutable: configuration.monitorExecutable)
        // On a systemd host whose systemd has ipactr@.service, machines run as units.
        control.units = SystemdUnits.available(busAddress: configuration.busAddress, monitorExecutable: configuration.monitorExecutable,
                                               root: configuration.root, defaultRoot: ImageStore.defaultRoot)
        guard access(configuration.monitorExecutable, X_OK) == 0 else {
            throw IpactrError(.notFound, "the monitor binary \(configuration.monitorExecutable) is not executable (use --monitor PATH)")
        }
        server = try BusServer(address: configuration.busAddress, description: "ipactrd", logger: logger)
    }

    /// Registers the objects for what is on disk, takes the bus name and starts polling.
    public func start() async throws {
        do {
            try server.register(path: Self.managerPath, BusObject([managerInterfaceDescription()]))
            // Objects before the name, so no caller finds the name without them.
            _ = refreshSnapshot()
            try await server.requestName(Self.busName)
        } catch {
            server.stop()
            throw error
        }
        let interval = configuration.pollInterval
        poller = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64(interval * 1e9))
                guard let self else { return }
                self.reapChildren()
                await self.refresh()
            }
        }
    }

    /// Blocks until the bus connection ends.
    public func wait() {
        server.wait()
    }

    public func stop() {
        poller?.cancel()
        server.stop()
    }

    /// Monitors started by this daemon are its children until they exit;
    /// collect them (the machine layer watches their locks, not their pids).
    func reapChildren() {
        while true {
            // Look without reaping: a worker's exit status belongs to its run.
            var info = siginfo_t()
            guard waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0 else { return }
            let pid = info._sifields._sigchld.si_pid
            guard pid > 0 else { return }
            let isWorker = workers.withLock { $0.contains(pid) }
            if isWorker { return }
            _ = waitpid(pid, nil, WNOHANG)
        }
    }

    // MARK: Snapshot

    enum Event {
        case machineNew(String, String)
        case machineRemoved(String, String)
        case changed(path: String, interface: String, [String])
    }

    /// Reads the tables again and emits what changed.
    func refresh() async {
        for event in refreshSnapshot() {
            do {
                switch event {
                case .machineNew(let name, let path):
                    try await server.emitSignal(path: Self.managerPath, interface: Self.managerInterface, member: "MachineNew",
                                                [.string(name), .objectPath(path)])
                case .machineRemoved(let name, let path):
                    try await server.emitSignal(path: Self.managerPath, interface: Self.managerInterface, member: "MachineRemoved",
                                                [.string(name), .objectPath(path)])
                case .changed(let path, let interface, let names):
                    try await server.propertiesChanged(path: path, interface: interface, names)
                }
            } catch {
                // The object may have gone meanwhile; the next pass tells the truth.
                logger.debug("cannot announce \(event): \(error)")
            }
        }
    }

    /// Diffs the disk against the snapshot, (un)registers objects, returns the events.
    func refreshSnapshot() -> [Event] {
        refreshLock.withLock {
            let newMachines = Dictionary(control.manager.list().map { ($0.record.name, $0.summary) }, uniquingKeysWith: { a, _ in a })
            let newImages = Dictionary(((try? ImageStore(root: configuration.root).images()) ?? []).map { ($0.name, $0) },
                                       uniquingKeysWith: { a, _ in a })
            let (oldMachines, oldImages) = lock.withLock { () -> ([String: MachineInfo.Summary], [String: ImageRecord]) in
                defer { machineSnapshot = newMachines; images = newImages }
                return (machineSnapshot, images)
            }
            var events: [Event] = []
            for (name, old) in oldMachines.sorted(by: { $0.key < $1.key }) {
                guard let path = try? Self.machinePath(name) else { continue }
                guard let new = newMachines[name] else {
                    server.unregister(path: path)
                    events.append(.machineRemoved(name, path))
                    continue
                }
                let changed = Self.changedMachineProperties(old, new)
                if !changed.isEmpty { events.append(.changed(path: path, interface: Self.machineInterface, changed)) }
            }
            for name in newMachines.keys.sorted() where oldMachines[name] == nil {
                guard let path = try? Self.machinePath(name) else { continue }
                do {
                    try server.register(path: path, BusObject([machineInterfaceDescription(name)]))
                    events.append(.machineNew(name, path))
                } catch {
                    logger.error("cannot serve machine \(name): \(error)")
                }
            }
            for (name, old) in oldImages {
                guard let path = try? Self.imagePath(name) else { continue }
                guard let new = newImages[name] else {
                    server.unregister(path: path)
                    continue
                }
                if new != old { events.append(.changed(path: path, interface: Self.imageInterface, ["Id", "Size", "Created", "Layers"])) }
            }
            for job in lock.withLock({ jobs.values.sorted { $0.id < $1.id } }) {
                let changed = job.update(from: newMachines[job.machine])
                if !changed.isEmpty { events.append(.changed(path: job.path, interface: Self.jobInterface, changed)) }
            }
            for name in newImages.keys where oldImages[name] == nil {
                guard let path = try? Self.imagePath(name) else { continue }
                do { try server.register(path: path, BusObject([imageInterfaceDescription(name)])) } catch {
                    logger.error("cannot serve image \(name): \(error)")
                }
            }
            return events
        }
    }

    static func changedMachineProperties(_ a: MachineInfo.Summary, _ b: MachineInfo.Summary) -> [String] {
        var out: [String] = []
        if a.state != b.state { out.append("State") }
        if a.leader != b.leader { out.append("Leader") }
        if a.uidRange != b.uidRange { out.append("UIDRange") }
        if a.ready != b.ready { out.append("Ready") }
        if a.statusText != b.statusText { out.append("StatusText") }
        if a.lastExitStatus != b.lastExitStatus { out.append("LastExitStatus") }
        return out
    }

    public static func machinePath(_ name: String) throws(IpactrError) -> String {
        try BusPath.encode(prefix: machinePrefix, name: name)
    }

    public static func imagePath(_ name: String) throws(IpactrError) -> String {
        try BusPath.encode(prefix: imagePrefix, name: name)
    }

    func machine(_ name: String) throws(IpactrError) -> MachineInfo.Summary {
        guard let m = lock.withLock({ machineSnapshot[name] }) else { throw IpactrError(.notFound, "no machine named \"\(name)\"") }
        return m
    }

    func image(_ name: String) throws(IpactrError) -> ImageRecord {
        guard let i = lock.withLock({ images[name] }) else { throw IpactrError(.notFound, "no image \"\(name)\"") }
        return i
    }

    /// Looks a machine up, reading the disk again when the snapshot does not
    /// know it yet (booted by the CLI since the last poll).
    func lookupMachine(_ name: String) async throws -> MachineInfo.Summary {
        if let m = try? machine(name) { return m }
        try MachineRecord.validate(name: name)
        await refresh()
        return try machine(name)
    }

    // MARK: Long operations

    /// Runs blocking machine-layer work on a thread of its own and refreshes
    /// afterwards (also after a failure, which may have changed things too).
    func offLoop<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        let result: Result<T, Error> = await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: Result { try body() }) }
            thread.name = "ipactrd-op"
            thread.start()
        }
        await refresh()
        switch result {
        case .success(let v): return v
        case .failure(let e as MachineControl.BootFailure):
            // The console lines on lines of their own, as the CLI prints them.
            var message = e.error.message
            if !e.console.isEmpty { message += "\nlast console lines:\n" + e.console.map { "  " + $0 }.joined(separator: "\n") }
            throw IpactrError(e.error.code, message)
        case .failure(let e as IpactrError): throw e
        case .failure(let e): throw IpactrError(.internalError, "\(e)")
        }
    }

    // MARK: Jobs

    /// Runs `body` as job `type` for `machine` or `image`: served and announced while it runs.
    func asJob<T: Sendable>(_ type: String, machine: String = "", image: String = "",
                            _ body: @escaping @Sendable (Job) async throws -> T) async throws -> T {
        let job = try lock.withLock { () throws -> Job in
            lastJobID &+= 1
            let job = try Job(id: lastJobID, type: type, machine: machine, image: image)
            jobs[job.id] = job
            return job
        }
        do {
            try server.register(path: job.path, BusObject([job.interface]))
            try await server.emitSignal(path: Self.managerPath, interface: Self.managerInterface, member: "JobNew",
                                        [.uint32(job.id), .objectPath(job.path), .string(type), .string(machine.isEmpty ? image : machine)])
        } catch {
            logger.error("cannot serve job \(job.id): \(error)")
        }
        let result: Result<T, Error>
        do { result = .success(try await body(job)) } catch { result = .failure(error) }
        lock.withLock { _ = jobs.removeValue(forKey: job.id) }
        server.unregister(path: job.path)
        let outcome: String
        if case .success = result { outcome = "done" } else { outcome = "failed" }
        try? await server.emitSignal(path: Self.managerPath, interface: Self.managerInterface, member: "JobRemoved",
                                     [.uint32(job.id), .objectPath(job.path), .string(outcome)])
        return try result.get()
    }

    /// Announces job properties that changed outside the polls (a worker's progress).
    func announce(_ job: Job, _ names: [String]) {
        guard !names.isEmpty else { return }
        let server = self.server
        Task { try? await server.propertiesChanged(path: job.path, interface: Self.jobInterface, names) }
    }

    // MARK: Interfaces

    func managerInterfaceDescription() -> BusInterface {
        let name = BusArgument("name", "s")
        let path = BusArgument("machine", "o")
        return BusInterface(Self.managerInterface, methods: [
            BusMethod("ListMachines", outputs: [BusArgument("machines", "a(sso)")]) { [self] _ in
                await refresh()
                let all = lock.withLock { machineSnapshot.values.sorted { $0.name < $1.name } }
                return [.array(elementSignature: "(sso)", try all.map {
                    .structure([.string($0.name), .string($0.state), .objectPath(try Self.machinePath($0.name))])
                })]
            },
            BusMethod("GetMachine", inputs: [name], outputs: [path]) { [self] call in
                // Fresh: the caller reads the properties next (a poll may be up to 0.5 s old).
                await refresh()
                let m = try await lookupMachine(call.arguments[0].stringValue ?? "")
                return [.objectPath(try Self.machinePath(m.name))]
            },
            BusMethod("BootMachine", inputs: [BusArgument("image", "s"), name, BusArgument("options", "a{sv}")],
                      outputs: [path], access: .root) { [self] call in
                let image = call.arguments[0].stringValue ?? ""
                let given = call.arguments[1].stringValue ?? ""
                let options = try BootOptions(parsing: call.arguments[2].stringDictValue ?? [:])
                let control = self.control
                // The job names the machine it makes (the default name as boot picks it).
                let jobMachine = given.isEmpty ? control.defaultName(for: image) : given
                let booted = try await asJob("boot", machine: jobMachine) { [self] _ in
                    try await offLoop { () throws -> String in
                        _ = try control.boot(image: image, name: given.isEmpty ? nil : given, options: options.machine,
                                             wait: options.wait, timeoutSeconds: options.timeoutSeconds)
                        return given.isEmpty ? jobMachine : given
                    }
                }
                return [.objectPath(try Self.machinePath(booted))]
            },
            BusMethod("StartMachine", inputs: [name, BusArgument("wait", "b")], outputs: [path], access: .root) { [self] call in
                let n = try await lookupMachine(call.arguments[0].stringValue ?? "").name
                let control = self.control
                let wait = call.arguments[1].boolValue ?? true
                _ = try await asJob("start", machine: n) { [self] _ in
                    try await offLoop { _ = try control.start(n, wait: wait, timeoutSeconds: 120) }
                }
                return [.objectPath(try Self.machinePath(n))]
            },
            // timeout_sec: seconds before SIGKILL; 0 = 90.
            BusMethod("PoweroffMachine", inputs: [name, BusArgument("timeout_sec", "u")], outputs: [BusArgument("exit_status", "i")],
                      access: .root) { [self] call in
                let n = try await lookupMachine(call.arguments[0].stringValue ?? "").name
                let timeout: Double
                if case .uint32(let t) = call.arguments[1], t > 0 { timeout = Double(t) } else { timeout = 90 }
                let control = self.control
                let status = try await offLoop { try control.poweroff(n, timeoutSeconds: timeout) }
                return [.int32(status ?? -1)]
            },
            BusMethod("RebootMachine", inputs: [name], access: .root) { [self] call in
                let n = try await lookupMachine(call.arguments[0].stringValue ?? "").name
                let control = self.control
                try await offLoop { try control.reboot(n, timeoutSeconds: 90) }
                return []
            },
            BusMethod("TerminateMachine", inputs: [name], access: .root) { [self] call in
                let n = try await lookupMachine(call.arguments[0].stringValue ?? "").name
                let control = self.control
                _ = try await offLoop { try control.terminate(n, timeoutSeconds: 30) }
                return []
            },
            BusMethod("KillMachine", inputs: [name, BusArgument("signal", "i")], access: .root) { [self] call in
                let n = try await lookupMachine(call.arguments[0].stringValue ?? "").name
                guard case .int32(let sig) = call.arguments[1], sig > 0, sig < 65 else {
                    throw IpactrError(.invalidArgument, "invalid signal number \(call.arguments[1].int64Value ?? 0)")
                }
                let control = self.control
                try await offLoop { try control.kill(n, signal: sig) }
                return []
            },
            BusMethod("RemoveMachine", inputs: [name], access: .root) { [self] call in
                let n = try await lookupMachine(call.arguments[0].stringValue ?? "").name
                let control = self.control
                try await offLoop { try control.manager.remove(n) }
                return []
            },
            BusMethod("ListJobs", outputs: [BusArgument("jobs", "a(ussso)")]) { [self] _ in
                let all = lock.withLock { jobs.values.sorted { $0.id < $1.id } }
                return [.array(elementSignature: "(ussso)", all.map {
                    .structure([.uint32($0.id), .string($0.type), .string($0.machine), .string($0.stage.rawValue), .objectPath($0.path)])
                })]
            },
            BusMethod("ListImages", outputs: [BusArgument("images", "a(ssto)")]) { [self] _ in
                await refresh()
                let all = lock.withLock { images.values.sorted { $0.name < $1.name } }
                return [.array(elementSignature: "(ssto)", try all.map {
                    .structure([.string($0.name), .string($0.id.description), .uint64(UInt64(max(0, $0.size))),
                                .objectPath(try Self.imagePath($0.name))])
                })]
            },
            BusMethod("GetImage", inputs: [name], outputs: [BusArgument("image", "o")]) { [self] call in
                let n = call.arguments[0].stringValue ?? ""
                if (try? image(n)) == nil { await refresh() }
                return [.objectPath(try Self.imagePath(try image(n).name))]
            },
            // Returns the name removed and the image's id (`n` may be an id prefix).
            BusMethod("RemoveImage", inputs: [name], outputs: [BusArgument("removed", "s"), BusArgument("id", "s")],
                      access: .root) { [self] call in
                let n = call.arguments[0].stringValue ?? ""
                let root = configuration.root
                let manager = control.manager
                let removed = try await offLoop { () throws -> [String] in
                    let store = try ImageStore(root: root)
                    // Unknown names are left to `remove`, which reports them after
                    // its writer lock has cleaned what killed writers left.
                    if let image = try? store.image(n) { try manager.checkImageUnused(image.name) }
                    let r = try store.remove(n)
                    return [r.name, r.id.description]
                }
                return [.string(removed[0]), .string(removed[1])]
            },
        ] + verbMethods(), signals: [
            BusSignal("MachineNew", [BusArgument("name", "s"), path]),
            BusSignal("MachineRemoved", [BusArgument("name", "s"), path]),
            BusSignal("JobNew", [BusArgument("id", "u"), BusArgument("job", "o"), BusArgument("type", "s"), BusArgument("machine", "s")]),
            // result: "done" or "failed" (the method call's reply says why).
            BusSignal("JobRemoved", [BusArgument("id", "u"), BusArgument("job", "o"), BusArgument("result", "s")]),
        ])
    }

    func machineInterfaceDescription(_ name: String) -> BusInterface {
        func get(_ f: @escaping @Sendable (MachineInfo.Summary) -> BusValue) -> BusProperty.Getter {
            { [self] in f(try machine(name)) }
        }
        return BusInterface(Self.machineInterface, properties: [
            BusProperty("Name", "s", emitsChange: .const, get: get { .string($0.name) }),
            BusProperty("Image", "s", emitsChange: .const, get: get { .string($0.image) }),
            // starting, running, stopping, rebooting or stopped.
            BusProperty("State", "s", get: get { .string($0.state) }),
            // PID 1 as the host sees it; 0 when not running.
            BusProperty("Leader", "u", get: get { .uint32(UInt32(max(0, $0.leader ?? 0))) }),
            // First and last host uid of the machine's range ("524288-589823").
            BusProperty("UIDRange", "s", get: get { .string($0.uidRange) }),
            BusProperty("Ready", "b", get: get { .bool($0.ready) }),
            BusProperty("StatusText", "s", get: get { .string($0.statusText ?? "") }),
            // PID 1's exit status the last time it stopped; -1 when it never did.
            BusProperty("LastExitStatus", "i", get: get { .int32($0.lastExitStatus ?? -1) }),
            // ipactr@NAME.service is wanted by machines.target (`ipactr enable`).
            BusProperty("Enabled", "b", emitsChange: .invalidates) { [self] in .bool(isEnabled(name)) },
        ])
    }

    func imageInterfaceDescription(_ name: String) -> BusInterface {
        func get(_ f: @escaping @Sendable (ImageRecord) -> BusValue) -> BusProperty.Getter {
            { [self] in f(try image(name)) }
        }
        // A name may be re-imported as another image: all but the name can change.
        return BusInterface(Self.imageInterface, properties: [
            BusProperty("Name", "s", emitsChange: .const, get: get { .string($0.name) }),
            BusProperty("Id", "s", emitsChange: .invalidates, get: get { .string($0.id.description) }),
            BusProperty("Size", "t", emitsChange: .invalidates, get: get { .uint64(UInt64(max(0, $0.size))) }),
            // The config's creation time (RFC 3339); empty when it has none.
            BusProperty("Created", "s", emitsChange: .invalidates, get: get { .string($0.created ?? "") }),
            // Uncompressed layer digests, bottom first.
            BusProperty("Layers", "as", emitsChange: .invalidates, get: get { .strings($0.diffIDs.map(\.description)) }),
        ])
    }
}
