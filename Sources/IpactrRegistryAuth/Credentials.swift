import FoundationEssentials
import IpactrSystem
#if canImport(Glibc)
import Glibc
#endif

/// A user name and password for a registry (basic auth, or sent to a token realm).
public struct Credentials: Equatable, Sendable {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    /// `USER:PASSWORD`, as `--creds` takes it (the password may hold colons).
    public init(parsing text: String) throws(IpactrError) {
        guard let colon = text.firstIndex(of: ":"), colon != text.startIndex else {
            throw IpactrError(.invalidArgument, "--creds must be USER:PASSWORD")
        }
        self.init(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
    }

    public var basicHeader: String {
        "Basic " + Data("\(username):\(password)".utf8).base64EncodedString()
    }
}

/// Reads credentials from containers-auth.json files (the format podman,
/// skopeo and buildah write; Docker's config.json has the same `auths` map).
/// Only `auths.KEY.auth` (base64 `user:password`) is read: credential
/// helpers and identity tokens are not supported.
public struct AuthFile {
    /// The files looked at, in order: `explicit` alone when given, else
    /// `$REGISTRY_AUTH_FILE`, `/run/containers/UID/auth.json`,
    /// `~/.config/containers/auth.json`, `~/.docker/config.json` (the order
    /// containers/image uses).
    public static func searchPath(explicit: String?, environment: [String: String] = ProcessInfo.processInfo.environment,
                                  uid: UInt32 = getuid()) -> [String] {
        if let explicit { return [explicit] }
        var files: [String] = []
        if let env = environment["REGISTRY_AUTH_FILE"], !env.isEmpty { files.append(env) }
        files.append("/run/containers/\(uid)/auth.json")
        if let home = environment["HOME"], !home.isEmpty {
            files.append("\(home)/.config/containers/auth.json")
            files.append("\(home)/.docker/config.json")
        }
        return files
    }

    /// The credentials for `registry` (as written in the image reference) and
    /// `repository`, from the first file that has an entry. A missing file is
    /// skipped, except an explicit one; a malformed file is an error naming it.
    public static func lookup(registry: String, repository: String, files: [String], explicitFile: Bool = false) throws -> Credentials? {
        for path in files {
            guard let data = FileManager.default.contents(atPath: path) else {
                if explicitFile { throw IpactrError(.notFound, "auth file \(path): cannot be read") }
                continue
            }
            if let found = try lookup(registry: registry, repository: repository, json: data, file: path) { return found }
        }
        return nil
    }

    private struct FileFormat: Decodable {
        struct Entry: Decodable { var auth: String? }
        var auths: [String: Entry]?
    }

    /// Looks `registry`/`repository` up in one file's contents. The most
    /// specific key wins: `host/ns/repo`, then `host/ns`, then `host`.
    public static func lookup(registry: String, repository: String, json: Data, file: String) throws -> Credentials? {
        let parsed: FileFormat
        do { parsed = try JSONDecoder().decode(FileFormat.self, from: json) } catch {
            throw IpactrError(.invalidArgument, "auth file \(file): not valid JSON (\(error))")
        }
        guard let auths = parsed.auths else { return nil }
        var byKey: [String: FileFormat.Entry] = [:]
        for (key, entry) in auths { byKey[normalize(key)] = entry }
        for candidate in candidates(registry: registry, repository: repository) {
            guard let entry = byKey[candidate], let auth = entry.auth, !auth.isEmpty else { continue }
            guard let decoded = Data(base64Encoded: auth), let text = String(data: decoded, encoding: .utf8),
                  let colon = text.firstIndex(of: ":") else {
                throw IpactrError(.invalidArgument, "auth file \(file): the \"auth\" of \(candidate) is not base64 of user:password")
            }
            return Credentials(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
        }
        return nil
    }

    /// Keys may be URLs (`https://index.docker.io/v1/`, as docker login writes).
    public static func normalize(_ key: String) -> String {
        var k = Substring(key)
        for prefix in ["https://", "http://"] where k.hasPrefix(prefix) {
            k = k.dropFirst(prefix.count)
            // A URL key names a host only; its path (`/v1/`) is not a repository.
            if let slash = k.firstIndex(of: "/") { k = k[..<slash] }
        }
        while k.hasSuffix("/") { k = k.dropLast() }
        let host = String(k)
        return host == "index.docker.io" || host == "registry-1.docker.io" ? "docker.io" : host
    }

    static func candidates(registry: String, repository: String) -> [String] {
        var out: [String] = []
        var parts = repository.split(separator: "/").map(String.init)
        while !parts.isEmpty {
            out.append("\(registry)/\(parts.joined(separator: "/"))")
            parts.removeLast()
        }
        out.append(registry)
        return out
    }
}
