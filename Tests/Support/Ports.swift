import Foundation

/// A port free for both TCP and UDP on 127.0.0.1.
public func freeTCPAndUDPPort() -> UInt16 {
    while true {
        let port = UInt16.random(in: 20000...60000)
        var ok = true
        for type in [SOCK_STREAM, SOCK_DGRAM] {
            let fd = socket(AF_INET, Int32(type.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = port.bigEndian
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            close(fd)
            if r != 0 { ok = false }
        }
        if ok { return port }
    }
}
