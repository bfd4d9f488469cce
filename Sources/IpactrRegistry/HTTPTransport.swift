import CCurl
import Foundation

/// One HTTP GET: the URL and the headers to send (set with `setValue`).
struct HTTPRequest {
    var url: URL
    private(set) var headers: [(name: String, value: String)] = []

    init(url: URL) { self.url = url }

    mutating func setValue(_ value: String, forHTTPHeaderField name: String) {
        headers.removeAll { $0.name.lowercased() == name.lowercased() }
        headers.append((name, value))
    }
}

/// One HTTP exchange's outcome. Headers are keyed in lower case.
struct HTTPResponse {
    var status: Int
    var headers: [String: String]
    var url: URL
    /// The body, unless it was streamed to the caller (2xx with a stream handler).
    var body: Data

    func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// Failures below HTTP (DNS, connect, TLS): the registry client decides from
/// these whether a plain-http fallback is allowed.
struct TransportError: Error, CustomStringConvertible {
    var url: URL
    var code: CURLcode
    /// curl's detailed message (its error buffer), else its text for `code`.
    var message: String

    /// The peer's certificate could not be verified (untrusted, expired, wrong host name) or no CA bundle was usable.
    var isCertificateProblem: Bool {
        [CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR].contains(code)
    }

    var description: String {
        "\(url.scheme ?? "")://\(url.host ?? "")\(url.port.map { ":\($0)" } ?? ""): \(message)"
    }
}

/// HTTP over libcurl, used directly (not through URLSession, which on Linux
/// cannot turn certificate verification off).
///
/// Every transfer of a transport runs in one curl multi handle, driven by one
/// thread that exists while there are transfers. Why a multi loop rather than
/// a thread per `curl_easy_perform`: connections (and TLS sessions) are
/// reused across the manifest and blob requests of a pull; all callbacks run
/// on that one thread, so stream handlers (blob writers, progress) never run
/// concurrently, as `PullProgress` promises; and a cancelled transfer is
/// simply removed from the multi handle, with no callback polling a flag.
///
/// Contract: a 2xx body goes to the caller's stream handler as it arrives;
/// any other body is collected up to `maxBody`. Redirects are not followed
/// and no authentication is attempted: the registry client does both itself.
/// Cancellation resumes the caller at once; the transfer is torn down on the
/// loop thread right after.
final class HTTPTransport: @unchecked Sendable {
    /// How connections are made; the same for every request of a transport.
    struct Settings {
        /// false: https without certificate or host-name checks (`--tls-verify=false`).
        var verifyTLS = true
        /// curl `--resolve` entries, `HOST:PORT:ADDRESS`: requests for HOST:PORT go to ADDRESS.
        var resolve: [String] = []
        /// PEM certificates to trust instead of libcurl's default bundle (nil: the default).
        var caBundle: Data?
    }

    private let settings: Settings
    private let multi: UnsafeMutableRawPointer

    // Under `lock`: work for the loop thread, and whether it runs.
    private let lock = NSLock()
    private var toAdd: [Transfer] = []
    private var toRemove: [Transfer] = []
    private var loopRunning = false

    /// Only the loop thread touches this.
    private var active: [UnsafeMutableRawPointer: Transfer] = [:]

    private static let globalInit: CURLcode = ipactr_curl_global_init()

    init(_ settings: Settings = Settings()) {
        precondition(Self.globalInit == CURLE_OK, "curl_global_init failed")
        self.settings = settings
        guard let m = curl_multi_init() else { fatalError("curl_multi_init: out of memory") }
        multi = m
    }

    deinit {
        // The loop thread holds a reference while it runs, so it is gone here.
        curl_multi_cleanup(multi)
    }

    /// Sends `request` (a GET). A 2xx body goes to `stream` when one is given;
    /// any other body is collected, up to `maxBody` bytes.
    func send(_ request: HTTPRequest, maxBody: Int, stream: ((Data) throws -> Void)? = nil) async throws -> HTTPResponse {
        try Task.checkCancellation()
        let transfer = try Transfer(request: request, settings: settings, maxBody: maxBody, stream: stream)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<HTTPResponse, Error>) in
                if transfer.attach(continuation) {
                    submit(add: transfer)
                } else {
                    transfer.release()
                }
            }
        } onCancel: {
            cancel(transfer)
        }
    }

    /// The CA bundle libcurl uses when none is given (Debian: /etc/ssl/certs/ca-certificates.crt).
    static func defaultCABundle() -> Data? {
        guard let path = ipactr_curl_default_cainfo() else { return nil }
        return FileManager.default.contents(atPath: String(cString: path))
    }

    struct TooLarge: Error, CustomStringConvertible {
        var limit: Int
        var description: String { "response larger than \(limit) bytes" }
    }

    // MARK: The loop

    private func cancel(_ transfer: Transfer) {
        guard transfer.finish(.failure(CancellationError())) else { return }
        submit(remove: transfer)
    }

    private func submit(add: Transfer? = nil, remove: Transfer? = nil) {
        let start: Bool = lock.withLock {
            if let add { toAdd.append(add) }
            if let remove { toRemove.append(remove) }
            defer { loopRunning = true }
            return !loopRunning
        }
        if start {
            let thread = Thread { [self] in loop() }
            thread.name = "ipactr-http"
            thread.start()
        } else {
            curl_multi_wakeup(multi)
        }
    }

    private func loop() {
        while true {
            // The exit is decided under the lock: once `loopRunning` is false a
            // new loop thread may start at once, and this one touches nothing more.
            let work: (adds: [Transfer], removes: [Transfer])? = lock.withLock {
                if active.isEmpty && toAdd.isEmpty && toRemove.isEmpty {
                    loopRunning = false
                    return nil
                }
                defer { toAdd = []; toRemove = [] }
                return (toAdd, toRemove)
            }
            guard let (adds, removes) = work else { return }
            for t in adds {
                if t.isFinished {
                    t.release()
                } else if curl_multi_add_handle(multi, t.easy) == CURLM_OK {
                    active[t.easy] = t
                } else {
                    t.finish(.failure(TransportError(url: t.url, code: CURLE_OUT_OF_MEMORY, message: "cannot start the transfer")))
                    t.release()
                }
            }
            // Identity, not just the address: a finished transfer's handle address may be reused.
            for t in removes where active[t.easy] === t {
                active[t.easy] = nil
                curl_multi_remove_handle(multi, t.easy)
                t.release()
            }
            var running: Int32 = 0
            curl_multi_perform(multi, &running)
            var left: Int32 = 0
            while let msg = curl_multi_info_read(multi, &left) {
                guard msg.pointee.msg == CURLMSG_DONE, let easy = msg.pointee.easy_handle,
                      let t = active.removeValue(forKey: easy) else { continue }
                let code = msg.pointee.data.result
                curl_multi_remove_handle(multi, easy)
                t.complete(code)
                t.release()
            }
            if !active.isEmpty {
                // Returns on socket activity, curl's own timers, or curl_multi_wakeup from `submit`.
                curl_multi_poll(multi, nil, 0, 1000, nil)
            }
        }
    }
}

/// One request's easy handle and state. Callbacks run on the loop thread;
/// `finish` may run on any thread, once.
private final class Transfer {
    let easy: UnsafeMutableRawPointer
    let url: URL
    let stream: ((Data) throws -> Void)?
    let maxBody: Int
    private var continuation: CheckedContinuation<HTTPResponse, Error>?
    private var requestHeaders: UnsafeMutablePointer<curl_slist>?
    private var resolve: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer: UnsafeMutablePointer<CChar>
    /// Unmanaged +1 for the callbacks' userdata; dropped by `release`.
    private var retained: Unmanaged<Transfer>?

    // Loop thread only.
    private var headers: [String: String] = [:]
    private var streaming: Bool?
    private var body = Data()
    private var failure: Error?

    /// Held while `stream` runs; `finished` is set under it, so no byte
    /// reaches the caller's writer after the caller was resumed.
    private let ioLock = NSLock()
    private var finished = false

    var isFinished: Bool { ioLock.withLock { finished } }

    init(request: HTTPRequest, settings: HTTPTransport.Settings, maxBody: Int, stream: ((Data) throws -> Void)?) throws {
        guard let e = curl_easy_init() else { throw TransportError(url: request.url, code: CURLE_OUT_OF_MEMORY, message: "curl_easy_init failed") }
        easy = e
        url = request.url
        self.stream = stream
        self.maxBody = maxBody
        errorBuffer = .allocate(capacity: ipactr_curl_error_size())
        errorBuffer.initialize(repeating: 0, count: ipactr_curl_error_size())
        retained = Unmanaged.passRetained(self)
        do { try configure(request, settings) } catch {
            release()
            throw error
        }
    }

    private func configure(_ request: HTTPRequest, _ settings: HTTPTransport.Settings) throws {
        var failed: CURLcode?
        func check(_ code: CURLcode) { if code != CURLE_OK, failed == nil { failed = code } }
        check(ipactr_curl_setopt_string(easy, CURLOPT_URL, request.url.absoluteString))
        check(ipactr_curl_setopt_string(easy, CURLOPT_PROTOCOLS_STR, "http,https"))
        check(ipactr_curl_setopt_long(easy, CURLOPT_HTTPGET, 1))
        // Threads: no SIGALRM for DNS timeouts (curl's threaded resolver is used instead).
        check(ipactr_curl_setopt_long(easy, CURLOPT_NOSIGNAL, 1))
        // The registry client follows redirects itself (credentials stay on the registry's origin).
        check(ipactr_curl_setopt_long(easy, CURLOPT_FOLLOWLOCATION, 0))
        check(ipactr_curl_setopt_long(easy, CURLOPT_CONNECTTIMEOUT, 30))
        // An idle transfer fails after two minutes; a long one that keeps moving never times out.
        check(ipactr_curl_setopt_long(easy, CURLOPT_LOW_SPEED_LIMIT, 1))
        check(ipactr_curl_setopt_long(easy, CURLOPT_LOW_SPEED_TIME, 120))
        // Larger writes into the blob writers than the 16 KiB default.
        check(ipactr_curl_setopt_long(easy, CURLOPT_BUFFERSIZE, 256 << 10))
        check(ipactr_curl_setopt_errorbuffer(easy, errorBuffer))
        if !settings.verifyTLS {
            check(ipactr_curl_setopt_long(easy, CURLOPT_SSL_VERIFYPEER, 0))
            check(ipactr_curl_setopt_long(easy, CURLOPT_SSL_VERIFYHOST, 0))
        } else if let bundle = settings.caBundle {
            var copy = bundle
            check(copy.withUnsafeMutableBytes { ipactr_curl_setopt_cainfo_blob(easy, $0.baseAddress, $0.count) })
        }
        for (name, value) in request.headers {
            requestHeaders = curl_slist_append(requestHeaders, "\(name): \(value)")
        }
        // Without this curl adds "Accept: */*" when the caller sets none; keep every header ours.
        if !request.headers.contains(where: { $0.name.lowercased() == "accept" }) {
            requestHeaders = curl_slist_append(requestHeaders, "Accept:")
        }
        check(ipactr_curl_setopt_slist(easy, CURLOPT_HTTPHEADER, requestHeaders))
        for entry in settings.resolve { resolve = curl_slist_append(resolve, entry) }
        if resolve != nil { check(ipactr_curl_setopt_slist(easy, CURLOPT_RESOLVE, resolve)) }
        let me = retained!.toOpaque()
        check(ipactr_curl_setopt_pointer(easy, CURLOPT_WRITEDATA, me))
        check(ipactr_curl_setopt_writefunction(easy) { ptr, size, count, user in
            Unmanaged<Transfer>.fromOpaque(user!).takeUnretainedValue().received(ptr, size * count)
        })
        check(ipactr_curl_setopt_pointer(easy, CURLOPT_HEADERDATA, me))
        check(ipactr_curl_setopt_headerfunction(easy) { ptr, size, count, user in
            Unmanaged<Transfer>.fromOpaque(user!).takeUnretainedValue().header(ptr, size * count)
        })
        if let failed {
            throw TransportError(url: url, code: failed, message: "cannot set up the request: \(String(cString: curl_easy_strerror(failed)))")
        }
    }

    /// Frees the handle and drops the callbacks' reference (after the handle left the multi handle).
    func release() {
        guard let r = retained else { return }
        retained = nil
        curl_easy_cleanup(easy)
        curl_slist_free_all(requestHeaders)
        curl_slist_free_all(resolve)
        errorBuffer.deallocate()
        r.release()
    }

    /// Stores the caller's continuation. When the caller was cancelled
    /// before (`finish` found nothing to resume), resumes it with
    /// CancellationError instead and returns false: the transfer must not start.
    func attach(_ c: CheckedContinuation<HTTPResponse, Error>) -> Bool {
        let start: Bool = ioLock.withLock {
            if finished { return false }
            continuation = c
            return true
        }
        if !start { c.resume(throwing: CancellationError()) }
        return start
    }

    /// Resumes the caller, once; marks the transfer finished either way.
    /// Returns false when there was no caller to resume (done already, or not attached yet).
    @discardableResult
    func finish(_ result: Result<HTTPResponse, Error>) -> Bool {
        let c: CheckedContinuation<HTTPResponse, Error>? = ioLock.withLock {
            guard !finished else { return nil }
            finished = true
            defer { continuation = nil }
            return continuation
        }
        guard let c else { return false }
        c.resume(with: result)
        return true
    }

    /// One header line (the status line starts each response's block; a
    /// 1xx response's block is replaced by the final one).
    private func header(_ ptr: UnsafeMutablePointer<CChar>?, _ n: Int) -> Int {
        guard let ptr else { return n }
        let line = String(decoding: UnsafeRawBufferPointer(start: ptr, count: n), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if line.hasPrefix("HTTP/") {
            headers = [:]
        } else if let colon = line.firstIndex(of: ":") {
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers[name] = headers[name].map { "\($0), \(value)" } ?? value
        }
        return n
    }

    private func received(_ ptr: UnsafeMutablePointer<CChar>?, _ n: Int) -> Int {
        guard let ptr, n > 0 else { return n }
        if streaming == nil { streaming = stream != nil && (200..<300).contains(status()) }
        let data = Data(bytes: ptr, count: n)
        if streaming == true, let stream {
            return ioLock.withLock {
                guard !finished else { return 0 }
                do { try stream(data) } catch {
                    failure = error
                    return 0
                }
                return n
            }
        }
        guard body.count + n <= maxBody else {
            failure = HTTPTransport.TooLarge(limit: maxBody)
            return 0
        }
        body.append(data)
        return n
    }

    private func status() -> Int {
        var code: Int = 0
        _ = ipactr_curl_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &code)
        return code
    }

    /// The transfer ended (curl's result): resumes the caller unless it already was.
    func complete(_ code: CURLcode) {
        if let failure {
            finish(.failure(failure))
        } else if code != CURLE_OK {
            let detail = String(cString: errorBuffer)
            finish(.failure(TransportError(url: url, code: code,
                                           message: detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail)))
        } else {
            finish(.success(HTTPResponse(status: status(), headers: headers, url: url, body: body)))
        }
    }
}
