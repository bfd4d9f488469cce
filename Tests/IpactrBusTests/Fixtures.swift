import Foundation
import IpactrBus
import IpactrSystem
import IpactrTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The bus fixture is shared with the daemon's tests.
typealias DBusDaemon = SystemBus

/// Runs `body` with a fresh dbus-daemon, stopped and removed afterwards even
/// when `body` throws.
func withDBusDaemon<T>(extraPolicy: String = "", _ body: (DBusDaemon) async throws -> T) async throws -> T {
    let daemon = try DBusDaemon(extraPolicy: extraPolicy)
    defer { daemon.stop() }
    return try await body(daemon)
}

/// Runs blocking work (sd-bus client calls, subprocesses) on a thread of its
/// own: blocking the Swift concurrency pool could starve the server's
/// handler Tasks and deadlock the test.
func blocking<T>(_ body: @escaping () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.start()
    }
}

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a command, as root or (through setpriv) as the unprivileged user nobody.
func run(_ arguments: [String], asNobody: Bool = false) async throws -> CommandResult {
    try await blocking {
        let process = Process()
        let out = Pipe()
        let err = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let prefix = asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []
        process.arguments = prefix + arguments
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return CommandResult(status: process.terminationStatus,
                             stdout: String(decoding: stdout, as: UTF8.self),
                             stderr: String(decoding: stderr, as: UTF8.self))
    }
}

/// A small manager-shaped service served with the bus layer: machines by
/// name, properties of each kind, signals, a root-only method.
final class TestService: @unchecked Sendable {
    static let name = "org.ipactr1"
    static let managerPath = "/org/ipactr1"
    static let machinePrefix = "/org/ipactr1/machine"
    static let manager = "org.ipactr1.Manager"
    static let machine = "org.ipactr1.Machine"
    static let test = "org.ipactr1.Test"

    let server: BusServer
    private let lock = NSLock()
    private var machines: [String: String] = [:]  // name → state
    private var defaultImage = "debian"
    private var tags: [String] = ["a"]
    private var resets = 0
    private var held: [CheckedContinuation<Void, Never>] = []

    init(address: String) async throws {
        server = try BusServer(address: address, description: "ipactr-test")
        do {
            try server.register(path: Self.managerPath, BusObject([managerInterface(), testInterface()]))
            try await server.requestName(Self.name)
        } catch {
            server.stop()
            throw error
        }
    }

    func stop() { server.stop() }

    var resetCount: Int { lock.withLock { resets } }

    func setTags(_ t: [String]) async throws {
        lock.withLock { tags = t }
        try await server.propertiesChanged(path: Self.managerPath, interface: Self.manager, ["Tags"])
    }

    static func machinePath(_ name: String) throws -> String {
        try BusPath.encode(prefix: machinePrefix, name: name)
    }

    private func managerInterface() -> BusInterface {
        BusInterface(Self.manager, methods: [
            BusMethod("ListMachines", outputs: [BusArgument("machines", "a(so)")]) { [self] _ in
                let names = lock.withLock { machines.keys.sorted() }
                return [.array(elementSignature: "(so)", try names.map {
                    .structure([.string($0), .objectPath(try Self.machinePath($0))])
                })]
            },
            BusMethod("GetMachine", inputs: [BusArgument("name", "s")], outputs: [BusArgument("machine", "o")]) { [self] call in
                let name = call.arguments[0].stringValue!
                guard lock.withLock({ machines[name] }) != nil else {
                    throw IpactrError(.notFound, "no machine named \(name)")
                }
                return [.objectPath(try Self.machinePath(name))]
            },
            BusMethod("Boot", inputs: [BusArgument("name", "s")], outputs: [BusArgument("machine", "o")],
                      access: .root) { [self] call in
                let name = call.arguments[0].stringValue!
                let path = try Self.machinePath(name)
                let added = lock.withLock { () -> Bool in
                    guard machines[name] == nil else { return false }
                    machines[name] = "running"
                    return true
                }
                guard added else { throw IpactrError(.exists, "machine \(name) exists") }
                try server.register(path: path, BusObject([machineInterface(name)]))
                try await server.emitSignal(path: Self.managerPath, interface: Self.manager, member: "MachineNew",
                                            [.string(name), .objectPath(path)])
                try await server.propertiesChanged(path: Self.managerPath, interface: Self.manager, ["MachineCount"])
                return [.objectPath(path)]
            },
        ], properties: [
            BusProperty("Version", "s", emitsChange: .const) { .string("test-1") },
            BusProperty("MachineCount", "u") { [self] in .uint32(UInt32(lock.withLock { machines.count })) },
            BusProperty("DefaultImage", "s", get: { [self] in .string(lock.withLock { defaultImage }) },
                        set: { [self] value, _ in
                            guard let s = value.stringValue, !s.isEmpty else {
                                throw IpactrError(.invalidArgument, "DefaultImage must not be empty")
                            }
                            lock.withLock { defaultImage = s }
                        }),
            BusProperty("Tags", "as", emitsChange: .invalidates) { [self] in .strings(lock.withLock { tags }) },
        ], signals: [
            BusSignal("MachineNew", [BusArgument("name", "s"), BusArgument("machine", "o")]),
            BusSignal("MachineRemoved", [BusArgument("name", "s"), BusArgument("machine", "o")]),
        ])
    }

    private func testInterface() -> BusInterface {
        BusInterface(Self.test, methods: [
            BusMethod("Echo", inputs: [BusArgument("value", "v")], outputs: [BusArgument("value", "v")]) { call in
                call.arguments
            },
            BusMethod("Concat", inputs: [BusArgument("parts", "as"), BusArgument("separator", "s")],
                      outputs: [BusArgument("joined", "s"), BusArgument("count", "u")]) { call in
                let parts = call.arguments[0].arrayValue!.map { $0.stringValue! }
                return [.string(parts.joined(separator: call.arguments[1].stringValue!)), .uint32(UInt32(parts.count))]
            },
            BusMethod("CallerUID", outputs: [BusArgument("uid", "u")]) { call in
                guard let uid = call.caller.uid else { throw IpactrError(.internalError, "no caller uid") }
                return [.uint32(uid)]
            },
            BusMethod("InodeOf", inputs: [BusArgument("fd", "h")], outputs: [BusArgument("inode", "t")]) { call in
                guard case .unixFD(let fd) = call.arguments[0] else { throw IpactrError(.invalidArgument, "no fd") }
                defer { close(fd) }
                var st = stat()
                guard fstat(fd, &st) == 0 else { throw IpactrError(.io, "fstat failed") }
                return [.uint64(UInt64(st.st_ino))]
            },
            BusMethod("Reset", access: .root) { [self] _ in
                lock.withLock { resets += 1 }
                return []
            },
            BusMethod("Malformed", outputs: [BusArgument("text", "s")]) { _ in [.int32(1)] },
            // Hold does not return until Release is called: a slow handler.
            BusMethod("Hold") { [self] _ in
                await withCheckedContinuation { c in lock.withLock { held.append(c) } }
                return []
            },
            BusMethod("Release", outputs: [BusArgument("released", "u")]) { [self] _ in
                let waiting = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
                    defer { held = [] }
                    return held
                }
                waiting.forEach { $0.resume() }
                return [.uint32(UInt32(waiting.count))]
            },
        ], properties: [
            BusProperty("Held", "u", emitsChange: .false) { [self] in .uint32(UInt32(lock.withLock { held.count })) },
        ])
    }

    private func machineInterface(_ name: String) -> BusInterface {
        BusInterface(Self.machine, methods: [
            BusMethod("Poweroff", access: .root) { [self] _ in
                lock.withLock { machines[name] = "stopped" }
                try await server.propertiesChanged(path: try Self.machinePath(name), interface: Self.machine, ["State"])
                return []
            },
        ], properties: [
            BusProperty("Name", "s", emitsChange: .const) { .string(name) },
            BusProperty("State", "s") { [self] in .string(lock.withLock { machines[name] ?? "gone" }) },
        ])
    }
}

/// Runs `body` with a dbus-daemon and the test service on it, both torn down
/// afterwards (service first).
func withTestService<T>(extraPolicy: String = "",
                        _ body: (DBusDaemon, TestService) async throws -> T) async throws -> T {
    try await withDBusDaemon(extraPolicy: extraPolicy) { daemon in
        let service = try await TestService(address: daemon.address)
        defer { service.stop() }
        return try await body(daemon, service)
    }
}

/// Opens a client connection on a thread of its own and runs `body` with it.
func withClient<T>(_ daemon: DBusDaemon, _ body: @escaping (BusConnection) throws -> T) async throws -> T {
    try await blocking {
        let connection = try BusConnection(address: daemon.address, description: "ipactr-test-client")
        return try body(connection)
    }
}

extension BusConnection {
    /// A call to the test service.
    @discardableResult
    func test(_ interface: String, _ member: String, _ arguments: [BusValue] = [],
              path: String = TestService.managerPath) throws -> [BusValue] {
        try call(destination: TestService.name, path: path, interface: interface, member: member, arguments)
    }
}
