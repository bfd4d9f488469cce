import Foundation
import IpactrBus
import IpactrMachine

/// A long operation in progress (boot, start, pull, import), served at
/// /org/ipactr1/job/ID as org.ipactr1.Job while it runs, as systemd serves
/// its jobs: JobNew when it begins, JobRemoved(id, path, result) when it
/// ends, just before the method call that made it returns. A machine job's
/// progress is the stage it has reached and the machine's own systemd status
/// line (STATUS= on the notify socket), updated by the daemon's polls; an
/// image job's is the bytes fetched of the total and what its worker does.
///
/// Jobs live in the daemon's memory only: after a crash the boot itself goes
/// on under the machine's monitor, and the machine says how it went.
final class Job: @unchecked Sendable {
    enum Stage: String {
        /// Checking the image and options, recording the machine.
        case preparing
        /// The monitor runs; waiting for the machine's READY=1.
        case booting
        /// A worker pulls or imports an image.
        case running
    }

    let id: UInt32
    let type: String
    let machine: String
    let image: String
    let path: String
    private let lock = NSLock()
    private var _stage = Stage.preparing
    private var _statusText = ""
    private var _bytesDone: UInt64 = 0
    private var _bytesTotal: UInt64 = 0

    init(id: UInt32, type: String, machine: String, image: String = "") throws {
        self.id = id
        self.type = type
        self.machine = machine
        self.image = image
        path = ManagerDaemon.jobPrefix + "/" + String(id)
    }

    var stage: Stage { lock.withLock { _stage } }
    var statusText: String { lock.withLock { _statusText } }
    var bytes: (done: UInt64, total: UInt64) { lock.withLock { (_bytesDone, _bytesTotal) } }

    /// Takes one progress line of a pull worker (`total N`, `done N`,
    /// `status TEXT`); returns the properties that changed.
    func apply(workerLine line: String) -> [String] {
        let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return [] }
        return lock.withLock {
            var changed: [String] = []
            if _stage != .running { _stage = .running; changed.append("Stage") }
            switch parts[0] {
            case "total": if let n = UInt64(parts[1]) { _bytesTotal = n; changed.append("BytesTotal") }
            case "done": if let n = UInt64(parts[1]) { _bytesDone = n; changed.append("BytesDone") }
            case "status": _statusText = parts[1]; changed.append("StatusText")
            default: break
            }
            return changed
        }
    }

    /// Takes what the machine's summary says; returns the properties that changed.
    func update(from summary: MachineInfo.Summary?) -> [String] {
        guard !machine.isEmpty else { return [] }
        return lock.withLock {
            var changed: [String] = []
            // A monitor that runs has the machine "starting" (or further, for
            // the instant before the method returns).
            if let s = summary, s.state != "stopped", _stage == .preparing {
                _stage = .booting
                changed.append("Stage")
            }
            let text = summary?.statusText ?? ""
            if text != _statusText {
                _statusText = text
                changed.append("StatusText")
            }
            return changed
        }
    }

    var interface: BusInterface {
        BusInterface(ManagerDaemon.jobInterface, properties: [
            BusProperty("Id", "u", emitsChange: .const) { [id] in .uint32(id) },
            // "boot", "start", "pull" or "import".
            BusProperty("Type", "s", emitsChange: .const) { [type] in .string(type) },
            // The machine a boot or start is for ("" for image jobs).
            BusProperty("Machine", "s", emitsChange: .const) { [machine] in .string(machine) },
            // The reference or path a pull or import is for ("" for machine jobs).
            BusProperty("Image", "s", emitsChange: .const) { [image] in .string(image) },
            // "preparing", then "booting" once the machine's monitor runs, or
            // "running" once a pull or import worker reports.
            BusProperty("Stage", "s") { [self] in .string(stage.rawValue) },
            // The machine's systemd status line while it boots; what a pull does.
            BusProperty("StatusText", "s") { [self] in .string(statusText) },
            // A pull's bytes received (blobs already present count as received) and to receive.
            BusProperty("BytesDone", "t") { [self] in .uint64(bytes.done) },
            BusProperty("BytesTotal", "t") { [self] in .uint64(bytes.total) },
        ])
    }
}
