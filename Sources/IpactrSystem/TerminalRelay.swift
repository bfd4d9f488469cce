#if canImport(Glibc)
import Glibc
#endif

/// Copies stdin to the pty and the pty to stdout until the pty hangs up;
/// stdin is put in raw mode meanwhile when it is a terminal.
public func relayTerminal(master: Int32) {
    var saved = termios()
    let raw = isatty(0) == 1 && tcgetattr(0, &saved) == 0
    if raw {
        var t = saved
        cfmakeraw(&t)
        tcsetattr(0, TCSANOW, &t)
    }
    defer { if raw { tcsetattr(0, TCSANOW, &saved) } }
    var buffer = [UInt8](repeating: 0, count: 16384)
    var stdinOpen = true
    // SIGWINCH only reaches a terminal's foreground process group, and the
    // caller's terminal may not be ours (ipactrd's workers run on the
    // caller's descriptors): its size is polled instead and handed to the pty.
    // Starts from the pty's own size, so a change made meanwhile is passed on too.
    var size = winsize(), probe = winsize()
    let sized = raw && ioctl(0, UInt(TIOCGWINSZ), &probe) == 0
    _ = ioctl(master, UInt(TIOCGWINSZ), &size)
    if sized && (probe.ws_row != size.ws_row || probe.ws_col != size.ws_col) {
        size = probe
        _ = ioctl(master, UInt(TIOCSWINSZ), &size)
    }
    while true {
        var fds = [pollfd(fd: master, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stdinOpen ? 0 : -1, events: Int16(POLLIN), revents: 0)]
        let ready = poll(&fds, 2, sized ? 250 : -1)
        if sized {
            var now = winsize()
            if ioctl(0, UInt(TIOCGWINSZ), &now) == 0 && (now.ws_row != size.ws_row || now.ws_col != size.ws_col) {
                size = now
                _ = ioctl(master, UInt(TIOCSWINSZ), &size)
            }
        }
        if ready < 0 { if errno == EINTR { continue }; return }
        if fds[0].revents != 0 {
            let n = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
            if n <= 0 { if n < 0 && errno == EINTR { continue }; return }  // EIO: the shell is gone
            var off = 0
            while off < n {
                let w = buffer[off..<n].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
                if w <= 0 { break }
                off += w
            }
        }
        if stdinOpen && fds[1].revents != 0 {
            let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if n <= 0 {
                // End of input: the shell sees end of file (^D) once what was typed is read.
                stdinOpen = false
                var eof: UInt8 = 4
                _ = write(master, &eof, 1)
                continue
            }
            _ = buffer.withUnsafeBytes { write(master, $0.baseAddress, n) }
        }
    }
}
