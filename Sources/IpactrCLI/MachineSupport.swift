import ArgumentParser
import Foundation
import IpactrImageStore
import IpactrMachine
import IpactrSystem

extension StoreOptions {
    var stateRoot: String { root ?? ImageStore.defaultRoot }

    /// Machine operations; the monitor is this same binary (`ipactr monitor`).
    func machineControl() -> MachineControl {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return MachineControl(root: stateRoot, monitorExecutable: exe)
    }
}

/// Prints rows as aligned columns (the last one unpadded), as machinectl does.
func printTable(_ rows: [[String]]) {
    guard let first = rows.first else { return }
    let widths = (0..<first.count).map { c in rows.map { $0[c].count }.max() ?? 0 }
    for row in rows {
        say(row.enumerated().map { i, s in i == row.count - 1 ? s : s.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  "))
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    say(String(decoding: try encoder.encode(value), as: UTF8.self))
}
