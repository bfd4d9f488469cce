import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

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
    var underlying: Error
    var description: String {
        let text = (underlying as NSError).localizedDescription
        return "\(url.scheme ?? "")://\(url.host ?? "")\(url.port.map { ":\($0)" } ?? ""): \(text)"
    }
}

/// URLSession (libcurl underneath, shipped with the toolchain) driven through
/// a delegate so that blob bodies are streamed into the caller's handler
/// instead of being buffered, and so that redirects come back to the caller:
/// the registry client follows them itself to drop credentials when a blob
/// redirect leaves the registry's host.
final class HTTPTransport {
    private let session: URLSession
    private let delegate = Delegate()

    fileprivate final class TaskState {
        let stream: ((Data) throws -> Void)?
        let maxBody: Int
        let continuation: CheckedContinuation<HTTPResponse, Error>
        var response: HTTPURLResponse?
        var body = Data()
        var streaming = false
        var failure: Error?
        /// URLSession's own HTTP-auth handling was declined for this task.
        var challengeDeclined = false
        /// Held while `stream` runs; `finished` is set under it, so no byte
        /// reaches the caller's writer after the caller was resumed.
        let ioLock = NSLock()
        var finished = false

        init(stream: ((Data) throws -> Void)?, maxBody: Int, continuation: CheckedContinuation<HTTPResponse, Error>) {
            self.stream = stream
            self.maxBody = maxBody
            self.continuation = continuation
        }
    }

    init() {
        let config = URLSessionConfiguration.ephemeral
        // No cookies, caches or stored credentials: every header we send is ours.
        config.httpCookieStorage = nil
        config.urlCredentialStorage = nil
        config.urlCache = nil
        config.requestCachePolicy = .reloadIgnoringLocalCacheData
        config.timeoutIntervalForRequest = 120
        config.timeoutIntervalForResource = 24 * 3600
        config.httpMaximumConnectionsPerHost = 6
        // One serial queue: stream handlers (blob writers) never run concurrently.
        let queue = OperationQueue()
        queue.maxConcurrentOperationCount = 1
        session = URLSession(configuration: config, delegate: delegate, delegateQueue: queue)
    }

    /// Cancels what is running and releases the session (it retains its delegate).
    func invalidate() { session.invalidateAndCancel() }

    /// Sends `request`. A 2xx body goes to `stream` when one is given;
    /// any other body is collected, up to `maxBody` bytes.
    /// Cancellation resumes the caller at once (URLSession does not always
    /// report a task cancelled before it started).
    func send(_ request: URLRequest, maxBody: Int, stream: ((Data) throws -> Void)? = nil) async throws -> HTTPResponse {
        try Task.checkCancellation()
        let task = session.dataTask(with: request)
        let delegate = self.delegate
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<HTTPResponse, Error>) in
                delegate.register(task, TaskState(stream: stream, maxBody: maxBody, continuation: continuation))
                task.resume()
                // A cancel that ran before `register` found nothing to finish.
                if Task.isCancelled {
                    delegate.finish(task, .failure(CancellationError()))
                    task.cancel()
                }
            }
        } onCancel: {
            delegate.finish(task, .failure(CancellationError()))
            task.cancel()
        }
    }

    struct TooLarge: Error, CustomStringConvertible {
        var limit: Int
        var description: String { "response larger than \(limit) bytes" }
    }
}

/// Owns the per-task state; the session retains it (not the transport), so
/// there is no cycle.
// Unchecked: `states` is only touched under `lock`.
private final class Delegate: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    private let lock = NSLock()
    private var states: [Int: HTTPTransport.TaskState] = [:]

    func register(_ task: URLSessionTask, _ state: HTTPTransport.TaskState) {
        lock.lock()
        states[task.taskIdentifier] = state
        lock.unlock()
    }

    /// Resumes the task's caller once: whoever removes the state resumes it.
    func finish(_ task: URLSessionTask, _ result: Result<HTTPResponse, Error>) {
        lock.lock()
        let st = states.removeValue(forKey: task.taskIdentifier)
        lock.unlock()
        guard let st else { return }
        st.ioLock.withLock { st.finished = true }
        st.continuation.resume(with: result)
    }

    private func state(_ task: URLSessionTask) -> HTTPTransport.TaskState? {
        lock.lock()
        defer { lock.unlock() }
        return states[task.taskIdentifier]
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                    completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
        if let st = state(dataTask), let http = response as? HTTPURLResponse {
            st.response = http
            st.streaming = st.stream != nil && (200..<300).contains(http.statusCode)
        }
        completionHandler(.allow)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        guard let st = state(dataTask), st.failure == nil else { return }
        if st.streaming, let stream = st.stream {
            st.ioLock.withLock {
                guard !st.finished else { return }
                do { try stream(data) } catch {
                    st.failure = error
                    dataTask.cancel()
                }
            }
        } else if st.body.count + data.count > st.maxBody {
            st.failure = HTTPTransport.TooLarge(limit: st.maxBody)
            dataTask.cancel()
        } else {
            st.body.append(data)
        }
    }

    /// The registry client answers 401s itself (bearer tokens, credentials
    /// from auth files). URLSession would retry with stored credentials and,
    /// on Linux, never completes when there are none; so its handling is
    /// cancelled and the 401, already received with its body, is returned.
    func urlSession(_ session: URLSession, task: URLSessionTask, didReceive challenge: URLAuthenticationChallenge,
                    completionHandler: @escaping (URLSession.AuthChallengeDisposition, URLCredential?) -> Void) {
        let httpAuth: Set<String> = [NSURLAuthenticationMethodHTTPBasic, NSURLAuthenticationMethodHTTPDigest,
                                     NSURLAuthenticationMethodDefault, NSURLAuthenticationMethodNegotiate,
                                     NSURLAuthenticationMethodNTLM]
        guard httpAuth.contains(challenge.protectionSpace.authenticationMethod) else {
            completionHandler(.performDefaultHandling, nil)
            return
        }
        state(task)?.challengeDeclined = true
        completionHandler(.cancelAuthenticationChallenge, nil)
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                    newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
        // Hand the 3xx back to the client, which decides what the next hop may carry.
        completionHandler(nil)
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
        guard let st = state(task) else { return }
        let url = task.originalRequest?.url ?? URL(string: "about:blank")!
        if let failure = st.failure {
            finish(task, .failure(failure))
        } else if let error, !(st.challengeDeclined && st.response != nil) {
            finish(task, .failure((error as NSError).code == NSURLErrorCancelled
                ? CancellationError() : TransportError(url: url, underlying: error)))
        } else if let response = st.response {
            var headers: [String: String] = [:]
            for (k, v) in response.allHeaderFields {
                if let k = k as? String, let v = v as? String { headers[k.lowercased()] = v }
            }
            finish(task, .success(HTTPResponse(status: response.statusCode, headers: headers,
                                               url: response.url ?? url, body: st.body)))
        } else {
            finish(task, .failure(TransportError(url: url, underlying: URLError(.badServerResponse))))
        }
    }
}
