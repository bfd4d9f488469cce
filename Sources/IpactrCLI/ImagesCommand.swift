import ArgumentParser
import Foundation
import IpactrImageStore
import IpactrSystem

/// `ipactr images`: the named images in the store.
struct ImagesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "images", abstract: "List the images in the store.")

    @OptionGroup var store: StoreOptions
    @Flag(name: .long, help: "Print JSON (an array of objects) instead of a table.")
    var json = false

    func run() throws {
        try runVerb {
            let images = try store.openStore().images()
            if json {
                let rows: [[String: Any]] = images.map { r in
                    ["name": r.name, "id": r.id.description, "digest": r.digest.description, "size": r.size,
                     "created": r.created ?? NSNull(), "layers": r.diffIDs.map(\.description)]
                }
                let data = try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
                say(String(decoding: data, as: UTF8.self))
                return
            }
            var table = [["NAME", "ID", "SIZE", "CREATED"]]
            for r in images {
                table.append([r.name, r.shortID, formatSize(r.size), formatCreated(r.created)])
            }
            let widths = (0..<4).map { c in table.map { $0[c].count }.max() ?? 0 }
            for row in table {
                say(row.enumerated().map { i, s in i == 3 ? s : s.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                    .joined(separator: "  "))
            }
        }
    }
}

/// "12.3 MB", decimal units as docker and podman print them.
func formatSize(_ n: Int64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var v = Double(n), u = 0
    while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
    return u == 0 ? "\(n) B" : String(format: v < 10 ? "%.2f %@" : (v < 100 ? "%.1f %@" : "%.0f %@"), v, units[u])
}

/// "2026-11-27 02:51" from an RFC 3339 time; "-" when unknown.
func formatCreated(_ s: String?) -> String {
    guard let s, s.count >= 16 else { return "-" }
    return s.prefix(10) + " " + s.dropFirst(11).prefix(5)
}
