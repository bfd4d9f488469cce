import Foundation
import IpactrBus
import IpactrMachine

/// A long operation in progress (boot, start), served at
/// /org/ipactr1/job/ID as org.ipactr1.Job while it runs, as systemd serves
/// its jobs: JobNew when it begins, JobRemoved(id, path, result) when it
/// ends, just before the method call that made it returns. Its progress is
/// the stage it has reached and the machine's own systemd status line
/// (STATUS= on the notify socket), updated by the daemon's polls.
///
/// Jobs live in the daemon's memory only: after a crash the boot itself goes
/// on under the machine's monitor, and the machine says how it went.
final class Job: @unchecked Sendable {
    enum Stage: String {
        /// Checking the image and options, recording the machine.
        case preparing
        /// The monitor runs; waiting for the machine's READY=1.
        case booting
    }

    let id: UInt32
    let type: String
    let machine: String
    let path: String
    private let lock = NSLock()
    private var _stage = Stage.preparing
    private var _statusText = ""

    init(id: UInt32, type: String, machine: String) throws {
        self.id = id
        self.type = type
        self.machine = machine
        path = ManagerDaemon.jobPrefix + "/" + String(id)
    }

    var stage: Stage { lock.withLock { _stage } }
    var statusText: String { lock.withLock { _statusText } }

    /// Takes what the machine's summary says; returns the properties that changed.
    func update(from summary: MachineInfo.Summary?) -> [String] {
        lock.withLock {
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
            // "boot" or "start".
            BusProperty("Type", "s", emitsChange: .const) { [type] in .string(type) },
            BusProperty("Machine", "s", emitsChange: .const) { [machine] in .string(machine) },
            // "preparing", then "booting" once the machine's monitor runs.
            BusProperty("Stage", "s") { [self] in .string(stage.rawValue) },
            // The machine's systemd status line while it boots.
            BusProperty("StatusText", "s") { [self] in .string(statusText) },
        ])
    }
}
