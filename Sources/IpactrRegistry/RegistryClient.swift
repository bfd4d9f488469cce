import Foundation
import IpactrOCI
import IpactrSystem
import Logging

/// How a registry's transport is chosen.
public enum TLSMode: Sendable, Equatable {
    /// HTTPS with certificate verification only.
    case verify
    /// HTTPS without certificate or host-name checks; when that fails below
    /// HTTP (refused, not TLS), plain HTTP. What docker does for an insecure
    /// registry and podman for `--tls-verify=false`.
    case insecure

    /// The default, as docker does for 127.0.0.0/8: loopback registries are
    /// insecure ones, every other host must be HTTPS with a trusted certificate.
    public static func defaultMode(for host: String) -> TLSMode {
        RegistryClient.isLoopback(host) ? .insecure : .verify
    }
}

/// Settings of a `RegistryClient`.
public struct RegistryOptions: Sendable {
    /// nil: `TLSMode.defaultMode(for:)`.
    public var tls: TLSMode?
    /// Credentials given directly; when nil they are looked up in `authFiles`.
    public var credentials: Credentials?
    /// containers-auth.json files, searched in order (`AuthFile.searchPath`).
    public var authFiles: [String]
    /// True when `authFiles` is the one file the user named: a missing file is an error.
    public var authFileExplicit: Bool
    public var userAgent: String
    /// Blobs fetched at the same time.
    public var parallelDownloads: Int
    /// Name pinning as curl's `--resolve`: `HOST:PORT:ADDRESS` entries send
    /// requests for HOST:PORT to ADDRESS (TLS still checks the certificate
    /// against HOST). Empty: the system resolver only.
    public var resolve: [String] = []
    /// CA certificates (PEM) trusted besides the system's, for a registry
    /// with a private CA (`ipactr pull --cert-dir`, `certificates(inDirectory:)`).
    public var trustedCertificates: Data?
    /// When `trustedCertificates` is nil, the CA certificates of the first
    /// `DIR/REGISTRY` (`DIR/HOST:PORT`) that has `*.crt` files are trusted,
    /// as podman and docker do with their certs.d directories.
    public var certificateDirectories = ["/etc/containers/certs.d", "/etc/docker/certs.d"]

    public init(tls: TLSMode? = nil, credentials: Credentials? = nil, authFile: String? = nil,
                userAgent: String = "ipactr/0.1", parallelDownloads: Int = 3) {
        self.tls = tls
        self.credentials = credentials
        self.authFiles = AuthFile.searchPath(explicit: authFile)
        self.authFileExplicit = authFile != nil
        self.userAgent = userAgent
        self.parallelDownloads = max(1, parallelDownloads)
    }

    /// The CA certificates of a containers-certs.d(5) directory: its `*.crt`
    /// files, concatenated. (Client certificates, `*.cert` + `*.key`, are not supported.)
    public static func certificates(inDirectory dir: String) throws -> Data {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: dir) } catch {
            throw IpactrError(.notFound, "certificate directory \(dir): cannot be read")
        }
        var pem = Data()
        for name in names.sorted() where name.hasSuffix(".crt") {
            guard let data = FileManager.default.contents(atPath: "\(dir)/\(name)") else {
                throw IpactrError(.io, "certificate directory \(dir): cannot read \(name)")
            }
            pem.append(data)
            pem.append(UInt8(ascii: "\n"))
        }
        if pem.isEmpty { throw IpactrError(.invalidArgument, "certificate directory \(dir): no *.crt file in it") }
        return pem
    }
}

/// A client of one registry speaking the distribution v2 API
/// (distribution-spec "pull" endpoints): `GET /v2/`, manifests and blobs,
/// with anonymous, basic and bearer-token authentication.
public final class RegistryClient {
    /// The registry as the reference names it (`docker.io`, `127.0.0.1:5000`).
    public let registry: String
    /// Where requests go (`registry-1.docker.io` for `docker.io`).
    let endpoint: String
    let tls: TLSMode
    let options: RegistryOptions
    let logger: Logger
    private let transport: HTTPTransport
    private var baseURL: URL?
    private var credentialsLoaded = false
    private var credentials: Credentials?
    /// Tokens by scope, and whether the registry asked for basic auth.
    private var tokens: [String: String] = [:]
    private var useBasic = false
    private let lock = NSLock()

    /// Manifests larger than this are refused (containers/image uses the same bound).
    static let maxManifestSize = 4 << 20
    static let maxErrorBodySize = 1 << 20
    static let manifestAccept = [MediaType.ociIndex, MediaType.ociManifest,
                                 MediaType.dockerManifestList, MediaType.dockerManifest].joined(separator: ", ")

    public init(registry: String, options: RegistryOptions = RegistryOptions(), logger: Logger = Logger(label: "ipactr.registry")) {
        self.registry = registry
        self.endpoint = registry == ImageReference.defaultRegistry ? "registry-1.docker.io" : registry
        self.options = options
        self.tls = options.tls ?? TLSMode.defaultMode(for: RegistryClient.hostName(registry))
        self.logger = logger
        var bundle: Data?
        let fromDirectories = options.certificateDirectories.lazy.compactMap { base -> Data? in
            let dir = "\(base)/\(registry)"
            return FileManager.default.fileExists(atPath: dir) ? try? RegistryOptions.certificates(inDirectory: dir) : nil
        }.first
        if let extra = options.trustedCertificates ?? fromDirectories {
            // curl takes one CA bundle: the system's with the extra ones after it.
            bundle = (HTTPTransport.defaultCABundle() ?? Data()) + Data("\n".utf8) + extra
        }
        // The token realm and blob storage hosts get the same treatment as the registry (as in containers/image).
        transport = HTTPTransport(.init(verifyTLS: tls == .verify, resolve: options.resolve, caBundle: bundle))
    }

    static func hostName(_ registry: String) -> String {
        if registry.hasPrefix("[") , let close = registry.firstIndex(of: "]") {
            return String(registry[registry.index(after: registry.startIndex)..<close])
        }
        return String(registry.split(separator: ":", maxSplits: 1).first ?? "")
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    // MARK: Transport choice

    /// `GET /v2/`: picks the scheme. Any HTTP answer (200, 401) means the
    /// scheme works; authentication happens per request.
    public func ping() async throws {
        if lockedBaseURL() != nil { return }
        var failures: [String] = []
        var certificateProblem = false
        let schemes = tls == .verify ? ["https"] : ["https", "http"]
        for scheme in schemes {
            guard let url = URL(string: "\(scheme)://\(endpoint)/v2/") else {
                throw IpactrError(.invalidArgument, "invalid registry name \"\(registry)\"")
            }
            var request = HTTPRequest(url: url)
            request.setValue(options.userAgent, forHTTPHeaderField: "User-Agent")
            let response: HTTPResponse
            do {
                response = try await transport.send(request, maxBody: Self.maxErrorBodySize)
            } catch let error as TransportError {
                failures.append("\(error)")
                certificateProblem = certificateProblem || error.isCertificateProblem
                continue
            }
            guard response.status == 200 || response.status == 401 else {
                // An https port answers plain http with 400: the https failure is the one to report.
                failures.append("\(scheme)://\(endpoint)/v2/ answered HTTP \(response.status)")
                continue
            }
            lock.withLock { baseURL = URL(string: "\(scheme)://\(endpoint)") }
            logger.debug("registry \(registry): using \(scheme)")
            return
        }
        var message = "registry \(registry): cannot connect: \(failures.joined(separator: "; "))"
        if certificateProblem {
            message += " (the registry's certificate did not verify: trust its CA with --cert-dir or in the system store, or skip the checks with --tls-verify=false)"
        } else if tls == .verify {
            message += " (for a plain-http registry use --tls-verify=false)"
        }
        throw IpactrError(.io, message)
    }

    private func lockedBaseURL() -> URL? {
        lock.withLock { baseURL }
    }

    // MARK: Endpoints

    /// `GET /v2/REPO/manifests/REF`: the raw bytes (their digest is the
    /// manifest's identity), the media type the registry declares, and the
    /// digest it declares (`Docker-Content-Digest`), if any.
    public func fetchManifest(repository: String, reference: String) async throws -> (data: Data, mediaType: String?, declaredDigest: String?) {
        let response = try await request(path: "/v2/\(repository)/manifests/\(reference)", repository: repository,
                                         accept: Self.manifestAccept, maxBody: Self.maxManifestSize,
                                         what: "\(registry)/\(repository)\(reference.contains(":") ? "@" : ":")\(reference)")
        let type = response.header("content-type").map { String($0.split(separator: ";").first ?? "").trimmingCharacters(in: .whitespaces) }
        return (response.body, type, response.header("docker-content-digest"))
    }

    /// `GET /v2/REPO/blobs/DIGEST`, following redirects; the body goes to
    /// `handler` as it arrives. The caller verifies size and digest.
    public func fetchBlob(repository: String, digest: Digest, handler: @escaping (Data) throws -> Void) async throws {
        _ = try await request(path: "/v2/\(repository)/blobs/\(digest)", repository: repository, accept: "*/*",
                              maxBody: Self.maxErrorBodySize, what: "blob \(digest) of \(registry)/\(repository)", stream: handler)
    }

    // MARK: Requests with authentication

    private func request(path: String, repository: String, accept: String, maxBody: Int, what: String,
                         stream: ((Data) throws -> Void)? = nil) async throws -> HTTPResponse {
        try await ping()
        guard let base = lockedBaseURL(), let url = URL(string: path, relativeTo: base)?.absoluteURL else {
            throw IpactrError(.invalidArgument, "invalid repository \"\(repository)\"")
        }
        let scope = "repository:\(repository):pull"
        var retried = false
        while true {
            let response = try await send(url: url, accept: accept, authorization: try authorization(scope: scope),
                                          maxBody: maxBody, stream: stream)
            if response.status == 401 && !retried {
                retried = true
                try await authenticate(challengeHeader: response.header("www-authenticate"), scope: scope, repository: repository)
                continue
            }
            if (200..<300).contains(response.status) { return response }
            throw httpError(response, what: what, repository: repository)
        }
    }

    /// One request, following up to 10 redirects. Credentials go only to the
    /// registry's own origin: a blob redirected to a storage host (S3, a
    /// CDN) gets a pre-signed URL and no Authorization header.
    private func send(url: URL, accept: String, authorization: String?, maxBody: Int,
                      stream: ((Data) throws -> Void)?) async throws -> HTTPResponse {
        var current = url
        for _ in 0..<10 {
            var request = HTTPRequest(url: current)
            request.setValue(options.userAgent, forHTTPHeaderField: "User-Agent")
            request.setValue(accept, forHTTPHeaderField: "Accept")
            if let authorization, Self.sameOrigin(current, url) {
                request.setValue(authorization, forHTTPHeaderField: "Authorization")
            }
            let response: HTTPResponse
            do {
                response = try await transport.send(request, maxBody: maxBody, stream: stream)
            } catch let error as TransportError {
                throw IpactrError(.io, "registry \(registry): \(error)")
            } catch let error as HTTPTransport.TooLarge {
                throw IpactrError(.corrupt, "registry \(registry): \(current.path): \(error)")
            }
            guard [301, 302, 303, 307, 308].contains(response.status) else { return response }
            guard let location = response.header("location"), let next = URL(string: location, relativeTo: current)?.absoluteURL else {
                throw IpactrError(.io, "registry \(registry): redirect without a usable Location from \(current.path)")
            }
            if next.scheme == "http" && current.scheme == "https" && tls == .verify {
                throw IpactrError(.permissionDenied, "registry \(registry): refusing a redirect from https to \(next.absoluteString)")
            }
            logger.debug("redirect \(current.absoluteString) -> \(next.absoluteString)")
            current = next
        }
        throw IpactrError(.io, "registry \(registry): too many redirects for \(url.path)")
    }

    static func sameOrigin(_ a: URL, _ b: URL) -> Bool {
        a.scheme == b.scheme && a.host == b.host && a.port == b.port
    }

    /// Where credentials were looked for, for error messages.
    private var searched: String {
        options.authFiles.isEmpty ? "no auth file to look in" : "looked in \(options.authFiles.joined(separator: ", "))"
    }

    private func loadCredentials(repository: String) throws -> Credentials? {
        lock.lock()
        defer { lock.unlock() }
        if !credentialsLoaded {
            credentials = try options.credentials ?? AuthFile.lookup(registry: registry, repository: repository,
                                                                   files: options.authFiles, explicitFile: options.authFileExplicit)
            credentialsLoaded = true
        }
        return credentials
    }

    private func authorization(scope: String) throws -> String? {
        lock.lock()
        defer { lock.unlock() }
        if let token = tokens[scope] { return "Bearer \(token)" }
        if useBasic, let credentials { return credentials.basicHeader }
        return nil
    }

    /// Answers a 401's challenge: remembers basic auth, or fetches a bearer
    /// token from the realm (sending the basic credentials there when we have
    /// some, as the token-auth spec describes).
    private func authenticate(challengeHeader: String?, scope: String, repository: String) async throws {
        guard let header = challengeHeader, let challenge = AuthChallenge(header: header) else {
            throw IpactrError(.permissionDenied, "registry \(registry): 401 without a WWW-Authenticate challenge")
        }
        let creds = try loadCredentials(repository: repository)
        switch challenge.scheme {
        case "basic":
            guard creds != nil else {
                throw IpactrError(.permissionDenied, "registry \(registry) requires a login and no credentials for it were found (\(searched))")
            }
            lock.withLock { useBasic = true }
        case "bearer":
            guard let realm = challenge.parameters["realm"], var components = URLComponents(string: realm),
                  let scheme = components.scheme, scheme == "https" || scheme == "http" else {
                throw IpactrError(.permissionDenied, "registry \(registry): bearer challenge without a usable realm: \(header)")
            }
            if scheme == "http" && tls == .verify && !RegistryClient.isLoopback(components.host ?? "") && creds != nil {
                throw IpactrError(.permissionDenied, "registry \(registry): refusing to send credentials to the plain-http token realm \(realm)")
            }
            var query = components.queryItems ?? []
            if let service = challenge.parameters["service"] { query.append(URLQueryItem(name: "service", value: service)) }
            query.append(URLQueryItem(name: "scope", value: challenge.parameters["scope"] ?? scope))
            components.queryItems = query
            guard let url = components.url else {
                throw IpactrError(.permissionDenied, "registry \(registry): bad token realm \(realm)")
            }
            let token = try await fetchToken(url: url, credentials: creds)
            lock.withLock { tokens[scope] = token }
        default:
            throw IpactrError(.unsupported, "registry \(registry): unsupported authentication scheme \"\(challenge.scheme)\"")
        }
    }

    private struct TokenResponse: Decodable {
        var token: String?
        var access_token: String?
    }

    private func fetchToken(url: URL, credentials: Credentials?) async throws -> String {
        var request = HTTPRequest(url: url)
        request.setValue(options.userAgent, forHTTPHeaderField: "User-Agent")
        if let credentials { request.setValue(credentials.basicHeader, forHTTPHeaderField: "Authorization") }
        let response: HTTPResponse
        do {
            response = try await transport.send(request, maxBody: Self.maxErrorBodySize)
        } catch let error as TransportError {
            throw IpactrError(.io, "registry \(registry): token service: \(error)")
        }
        guard response.status == 200 else {
            if response.status == 401 || response.status == 403 {
                throw IpactrError(.permissionDenied, credentials == nil
                    ? "registry \(registry): the token service requires a login and no credentials were found (\(searched))"
                    : "registry \(registry): the token service rejected the credentials of user \"\(credentials!.username)\"")
            }
            throw IpactrError(.io, "registry \(registry): token service \(url.host ?? "") answered HTTP \(response.status)")
        }
        guard let decoded = try? JSONDecoder().decode(TokenResponse.self, from: response.body),
              let token = decoded.token ?? decoded.access_token, !token.isEmpty else {
            throw IpactrError(.io, "registry \(registry): token service answered without a token")
        }
        return token
    }

    // MARK: Errors

    private struct ErrorBody: Decodable {
        struct Item: Decodable { var code: String?; var message: String? }
        var errors: [Item]?
    }

    private func httpError(_ response: HTTPResponse, what: String, repository: String) -> IpactrError {
        var detail = ""
        if let body = try? JSONDecoder().decode(ErrorBody.self, from: response.body), let first = body.errors?.first {
            detail = [first.code, first.message].compactMap { $0 }.joined(separator: ": ")
        }
        let suffix = detail.isEmpty ? "" : " (\(detail))"
        switch response.status {
        case 401:
            let hadCreds = (try? loadCredentials(repository: repository)) != nil
            return IpactrError(.permissionDenied, hadCreds
                ? "registry \(registry): authentication failed for \(repository)\(suffix)"
                : "registry \(registry): \(repository) requires a login and no credentials were found (\(searched))\(suffix)")
        case 403:
            return IpactrError(.permissionDenied, "registry \(registry): access to \(repository) denied\(suffix)")
        case 404:
            return IpactrError(.notFound, "\(what): not found\(suffix)")
        case 429:
            return IpactrError(.busy, "registry \(registry): too many requests\(suffix)")
        default:
            return IpactrError(.io, "registry \(registry): \(what): HTTP \(response.status)\(suffix)")
        }
    }
}
