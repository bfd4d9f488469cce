import ArgumentParser
import FoundationEssentials
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// Prints rows as aligned columns (the last one unpadded), as machinectl does.
package func printTable(_ rows: [[String]]) {
    guard let first = rows.first else { return }
    let widths = (0..<first.count).map { c in rows.map { $0[c].count }.max() ?? 0 }
    for row in rows {
        say(row.enumerated().map { i, s in i == row.count - 1 ? s : s + String(repeating: " ", count: widths[i] - s.count) }
            .joined(separator: "  "))
    }
}

package func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    say(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Writes raw bytes on a descriptor (the console's output goes out as it came).
package func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var rest = bytes[...]
    while !rest.isEmpty {
        let n = rest.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0 { if errno == EINTR { continue }; return }
        rest = rest.dropFirst(n)
    }
}
