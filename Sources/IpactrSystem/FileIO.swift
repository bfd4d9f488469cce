import SystemPackage

/// Reads a whole (small) file as UTF-8: configuration, /proc and /sys files.
public func readFileString(_ path: String) throws(IpactrError) -> String {
    do {
        let fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
        defer { try? fd.close() }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0, retryOnInterrupt: true) }
            if n == 0 { break }
            data.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: data, as: UTF8.self)
    } catch let e as Errno {
        throw IpactrError.syscall("read \(path)", e)
    } catch {
        throw IpactrError(.io, "read \(path): \(error)")
    }
}
