import Foundation
import IpactrSystem

/// A private dbus-daemon configured like Debian's system bus (its default
/// policy, scripts/private-bus-policy.conf), with the shipped units/org.ipactr1.conf included and the shipped
/// activation file in its service directory, listening on a socket in a temp
/// dir that unprivileged users can reach. Stopped (SIGKILL) and removed by
/// `stop()` or deinit.
public final class SystemBus {
    public let directory: String
    public let address: String
    private var pid: pid_t = 0

    public init(extraPolicy: String = "") throws {
        var template = Array("/tmp/ipactr-dbus-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw IpactrError(.io, "mkdtemp failed") }
        directory = String(cString: template)
        // mkdtemp makes it 0700: the unprivileged caller must reach the socket.
        chmod(directory, 0o755)
        address = "unix:path=\(directory)/bus"
        let services = directory + "/services"
        let config = """
            <!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
             "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
            <busconfig>
              <listen>\(address)</listen>
              <servicedir>\(services)</servicedir>
              <include>\(repositoryRoot)/scripts/private-bus-policy.conf</include>
              <include>\(repositoryRoot)/units/org.ipactr1.conf</include>
              \(extraPolicy)
            </busconfig>
            """
        do {
            try FileManager.default.createDirectory(atPath: services, withIntermediateDirectories: false)
            // The shipped activation file, with Exec= pointing nowhere: the bus
            // lists org.ipactr1 as activatable, as on a host, but can never start
            // an installed /usr/local/bin/ipactrd (the host's, serving the host's
            // state) for a test that expects no daemon.
            let shipped = try String(contentsOfFile: repositoryRoot + "/units/org.ipactr1.service", encoding: .utf8)
            try shipped.replacingOccurrences(of: "\nExec=/usr/local/bin/ipactrd\n", with: "\nExec=/nonexistent/ipactrd-not-in-tests\n")
                .write(toFile: services + "/org.ipactr1.service", atomically: true, encoding: .utf8)
            try config.write(toFile: directory + "/system.conf", atomically: true, encoding: .utf8)
            pid = try spawn(["/usr/bin/dbus-daemon", "--config-file=\(directory)/system.conf", "--nofork", "--nopidfile",
                             "--print-address=1"], stdout: directory + "/address", stderr: directory + "/log")
            // It prints its address once the socket listens.
            let up = eventually(30) { ((try? String(contentsOfFile: directory + "/address", encoding: .utf8)) ?? "").contains("\n") }
            guard up else { throw IpactrError(.io, "dbus-daemon did not start: \((try? String(contentsOfFile: directory + "/log", encoding: .utf8)) ?? "")") }
        } catch {
            stop()
            throw error
        }
    }

    public func stop() {
        if pid > 0 { killAndReap(pid) }
        pid = 0
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { stop() }
}
