import Crypto
import Foundation
import IpactrOCI
#if canImport(Glibc)
import Glibc
#endif

// Crypto also exports a `Digest`; in this test module the name means the OCI one.
typealias Digest = IpactrOCI.Digest

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Runs a command to completion; throws with its stderr when it fails.
@discardableResult
func run(_ argv: [String], cwd: String? = nil) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0])
    p.arguments = Array(argv.dropFirst())
    if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    // stderr goes to a file, so only stdout is read here and neither can fill up and block.
    let errPath = "/tmp/ipactr-registry-run-\(UUID().uuidString).err"
    guard FileManager.default.createFile(atPath: errPath, contents: nil), let errFile = FileHandle(forWritingAtPath: errPath) else {
        throw FixtureError("cannot create \(errPath)")
    }
    defer {
        try? errFile.close()
        unlink(errPath)
    }
    let out = Pipe()
    p.standardOutput = out
    p.standardError = errFile
    try p.run()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
        let errText = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        throw FixtureError("\(argv.joined(separator: " ")) exited \(p.terminationStatus): \(errText)")
    }
    return String(decoding: outData, as: UTF8.self)
}

/// A temporary directory, removed by `remove()`.
final class TempDir {
    let path: String
    init(_ prefix: String = "ipactr-registry-test") throws {
        var template = Array("/tmp/\(prefix).XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw FixtureError("mkdtemp failed") }
        path = String(cString: p)
    }
    func sub(_ name: String) -> String { "\(path)/\(name)" }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

func sha256Hex(_ data: Data) -> String {
    SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
}

/// A free TCP port on 127.0.0.1 (bound, read back, released).
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw FixtureError("socket failed") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) { ptr in
        ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> Bool in
            bind(fd, sa, len) == 0 && getsockname(fd, sa, &len) == 0
        }
    }
    guard ok else { throw FixtureError("bind failed") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

func canConnect(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &addr) { ptr in
        ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// Debian's docker-registry on a free 127.0.0.1 port with its storage in a
/// temp dir, in one of three authentication modes. `stop()` kills it (and the
/// token issuer) and removes the directory: call it from a `defer`.
final class RegistryFixture {
    enum Auth { case anonymous, basic, token, selfSignedTLS }
    static let user = "tester"
    static let password = "s3cret-pass"
    static let service = "ipactr-test-registry"

    let dir: TempDir
    let port: Int
    let auth: Auth
    private var registry: Process?
    private var registryLog: FileHandle?
    /// The token issuer and the blob redirector, when started.
    private var helpers: [Process] = []
    private(set) var tokenRealm: String?

    var host: String { "127.0.0.1:\(port)" }
    /// `.selfSignedTLS`: the name its certificate is for; `resolve` sends it to 127.0.0.1.
    static let tlsName = "registry.test"
    var tlsHost: String { "\(Self.tlsName):\(port)" }
    /// A curl `--resolve` entry (`RegistryOptions.resolve`) pinning `name` on this port to 127.0.0.1.
    func resolve(_ name: String = RegistryFixture.tlsName) -> String { "\(name):\(port):127.0.0.1" }
    /// `.selfSignedTLS`: the registry's certificate (PEM).
    var certificate: String { dir.sub("tls.crt") }
    var storage: String { dir.sub("storage") }
    var creds: String { "\(Self.user):\(Self.password)" }

    init(_ auth: Auth) throws {
        self.auth = auth
        dir = try TempDir("ipactr-registry")
        port = try freePort()
        do { try start() } catch { stop(); throw error }
    }

    private func start() throws {
        var authConfig = ""
        var tlsConfig = ""
        switch auth {
        case .anonymous:
            break
        case .basic:
            let line = try run(["/usr/bin/htpasswd", "-Bbn", Self.user, Self.password])
            try line.write(toFile: dir.sub("htpasswd"), atomically: true, encoding: .utf8)
            authConfig = """
            auth:
              htpasswd:
                realm: ipactr-test
                path: \(dir.sub("htpasswd"))
            """
        case .selfSignedTLS:
            // Self-signed (so also usable as its own CA) for the name tests pin to 127.0.0.1 and the address itself.
            try run(["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                     "-keyout", dir.sub("tls.key"), "-out", certificate, "-subj", "/CN=\(Self.tlsName)",
                     "-addext", "subjectAltName=DNS:\(Self.tlsName),IP:127.0.0.1"])
            tlsConfig = """
              tls:
                certificate: \(dir.sub("tls.crt"))
                key: \(dir.sub("tls.key"))
            """
        case .token:
            let line = try startHelper("token_issuer.py", ["--dir", dir.path, "--issuer", "ipactr-test-issuer",
                                                            "--service", Self.service, "--user", creds])
            guard let tport = Int(line) else { throw FixtureError("token issuer printed no port") }
            tokenRealm = "http://127.0.0.1:\(tport)/token"
            authConfig = """
            auth:
              token:
                realm: \(tokenRealm!)
                service: \(Self.service)
                issuer: ipactr-test-issuer
                rootcertbundle: \(dir.sub("token.crt"))
            """
        }
        let config = """
        version: 0.1
        log:
          level: error
          accesslog:
            disabled: true
        storage:
          filesystem:
            rootdirectory: \(storage)
          maintenance:
            uploadpurging:
              enabled: false
        http:
          addr: 127.0.0.1:\(port)
          secret: ipactr-test-secret
        \(tlsConfig)
        \(authConfig)

        """
        try config.write(toFile: dir.sub("config.yml"), atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/docker-registry")
        p.arguments = ["serve", dir.sub("config.yml")]
        guard FileManager.default.createFile(atPath: dir.sub("registry.log"), contents: nil),
              let log = FileHandle(forWritingAtPath: dir.sub("registry.log")) else {
            throw FixtureError("cannot create \(dir.sub("registry.log"))")
        }
        registryLog = log
        p.standardOutput = log
        p.standardError = log
        try p.run()
        registry = p
        // Readiness: the port accepts connections (bounded, not a timing assertion).
        for _ in 0..<600 {
            if !p.isRunning {
                let text = (try? String(contentsOfFile: dir.sub("registry.log"), encoding: .utf8)) ?? ""
                throw FixtureError("docker-registry exited: \(text)")
            }
            if canConnect(port: port) { return }
            usleep(50_000)
        }
        throw FixtureError("docker-registry did not listen on \(port)")
    }

    func stop() {
        for p in ([registry].compactMap { $0 } + helpers) where p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        registry = nil
        helpers = []
        try? registryLog?.close()
        registryLog = nil
        dir.remove()
    }

    /// Starts a python helper from Fixtures/ and returns the first line it
    /// prints (its ports, once it listens). It is killed by `stop()`.
    private func startHelper(_ script: String, _ args: [String]) throws -> String {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(script)").path
        let p = Process()
        // Debian's python3 with python3-cryptography (scripts/deps.sh).
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [path] + args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        helpers.append(p)
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { throw FixtureError("\(script) exited before it listened") }
            line.append(chunk)
        }
        return String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts a front that relays to this registry but redirects every blob
    /// to another port (another origin), as S3- or CDN-backed registries do.
    /// Returns the front's HOST:PORT; the blob host logs to `blobHostLog()`.
    func startBlobRedirector() throws -> String {
        let line = try startHelper("blob_redirector.py", ["--upstream", "http://\(host)", "--storage", storage,
                                                          "--log", dir.sub("blobhost.log")])
        guard let front = line.split(separator: " ").first, Int(front) != nil else {
            throw FixtureError("blob redirector printed no ports")
        }
        return "127.0.0.1:\(front)"
    }

    func blobHostLog() -> String {
        (try? String(contentsOfFile: dir.sub("blobhost.log"), encoding: .utf8)) ?? ""
    }

    /// `skopeo copy` from an OCI layout into this registry.
    func push(layout: String, tag: String = "1", to repo: String = "test/img", all: Bool = false, format: String? = nil) throws {
        var argv = ["/usr/bin/skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
        if auth != .anonymous { argv += ["--dest-creds", creds] }
        if all { argv.append("--all") }
        if let format { argv += ["--format", format] }
        argv += ["oci:\(layout):\(tag)", "docker://\(host)/\(repo):\(tag)"]
        try run(argv)
    }

    /// Pushes a single-platform layout with the registry API itself (curl,
    /// monolithic uploads): skopeo would gzip an uncompressed layer on the
    /// way, and this push must keep every byte and media type as built.
    func uploadExactly(_ image: TestImage, tag: String = "1", to repo: String = "test/img") throws {
        precondition(auth == .anonymous && image.images.count == 1)
        let built = image.images[0]
        for blob in [built.config] + built.layers {
            let location = try run(["/usr/bin/curl", "-sSf", "-X", "POST", "-o", "/dev/null", "-w", "%header{location}",
                                    "http://\(host)/v2/\(repo)/blobs/uploads/"])
            let base = location.hasPrefix("http") ? location : "http://\(host)\(location)"
            let sep = base.contains("?") ? "&" : "?"
            try run(["/usr/bin/curl", "-sSf", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                     "--data-binary", "@\(image.layout)/blobs/sha256/\(blob.digest.hex)", "\(base)\(sep)digest=\(blob.digest)"])
        }
        try run(["/usr/bin/curl", "-sSf", "-X", "PUT", "-H", "Content-Type: \(built.manifest.mediaType)",
                 "--data-binary", "@\(image.layout)/blobs/sha256/\(built.manifest.digest.hex)", "http://\(host)/v2/\(repo)/manifests/\(tag)"])
    }

    /// Where the registry keeps a blob's bytes (distribution's filesystem driver layout).
    func blobDataPath(_ digest: Digest) -> String {
        "\(storage)/docker/registry/v2/blobs/sha256/\(digest.hex.prefix(2))/\(digest.hex)/data"
    }

    /// The token issuer's request log.
    func issuerLog() -> String {
        (try? String(contentsOfFile: dir.sub("requests.log"), encoding: .utf8)) ?? ""
    }
}

/// A tiny OCI image layout built for a test: layers made with tar (and gzip,
/// zstd), a config, a manifest per platform, and index.json tagged "1".
struct TestImage {
    struct Built {
        var manifest: Descriptor
        var config: Descriptor
        var layers: [Descriptor]
        var architecture: String
    }
    let layout: String
    var images: [Built] = []
    /// The nested index for multi-platform images.
    var index: Descriptor?

    var blobDigests: Set<Digest> {
        var s = Set<Digest>()
        for i in images { s.insert(i.manifest.digest); s.insert(i.config.digest); i.layers.forEach { s.insert($0.digest) } }
        if let index { s.insert(index.digest) }
        return s
    }

    /// Builds the layout. One architecture: index.json points at its manifest;
    /// several: at an image index listing them (what `skopeo copy --all` copies).
    /// `layerMediaTypes` overrides the media type of the layers at those indexes.
    init(at layout: String, architectures: [String] = ["amd64"], compressions: [LayerCompression] = [.none, .gzip, .zstd],
         layerMediaTypes: [Int: String] = [:]) throws {
        self.layout = layout
        try FileManager.default.createDirectory(atPath: "\(layout)/blobs/sha256", withIntermediateDirectories: true)
        try #"{"imageLayoutVersion":"1.0.0"}"#.write(toFile: "\(layout)/oci-layout", atomically: true, encoding: .utf8)
        let work = "\(layout).work"
        defer { try? FileManager.default.removeItem(atPath: work) }
        for arch in architectures {
            var layers: [Descriptor] = []
            var diffIDs: [Digest] = []
            for (n, compression) in compressions.enumerated() {
                let root = "\(work)/\(arch)-\(n)"
                try FileManager.default.createDirectory(atPath: "\(root)/etc", withIntermediateDirectories: true)
                try "layer \(n) for \(arch)\n".write(toFile: "\(root)/etc/layer\(n)", atomically: true, encoding: .utf8)
                let tarPath = "\(work)/\(arch)-\(n).tar"
                try run(["/bin/tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0",
                         "-C", root, "-cf", tarPath, "."])
                let tar = try Data(contentsOf: URL(fileURLWithPath: tarPath))
                diffIDs.append(Digest(sha256Hex: sha256Hex(tar)))
                let blob: Data
                let mediaType: String
                switch compression {
                case .none:
                    blob = tar
                    mediaType = MediaType.ociLayer
                case .gzip:
                    try run(["/bin/gzip", "-n", "-k", "-f", tarPath])
                    blob = try Data(contentsOf: URL(fileURLWithPath: tarPath + ".gz"))
                    mediaType = MediaType.ociLayerGzip
                case .zstd:
                    try run(["/usr/bin/zstd", "-q", "-f", tarPath, "-o", tarPath + ".zst"])
                    blob = try Data(contentsOf: URL(fileURLWithPath: tarPath + ".zst"))
                    mediaType = MediaType.ociLayerZstd
                }
                layers.append(try write(blob, mediaType: layerMediaTypes[n] ?? mediaType))
            }
            let config = ImageConfig(architecture: arch, os: "linux", rootfs: .init(diffIDs: diffIDs), created: "1970-01-01T00:00:00Z")
            let configDesc = try write(try encode(config), mediaType: MediaType.ociConfig)
            var manifestDesc = try write(try encode(ImageManifest(config: configDesc, layers: layers)), mediaType: MediaType.ociManifest)
            manifestDesc.platform = Platform(architecture: arch, os: "linux")
            images.append(Built(manifest: manifestDesc, config: configDesc, layers: layers, architecture: arch))
        }
        let refName = ["org.opencontainers.image.ref.name": "1"]
        var top: Descriptor
        if images.count == 1 {
            top = images[0].manifest
        } else {
            let idx = try write(try encode(ImageIndex(manifests: images.map(\.manifest))), mediaType: MediaType.ociIndex)
            index = idx
            top = idx
        }
        top.annotations = refName
        try encode(ImageIndex(manifests: [top])).write(to: URL(fileURLWithPath: "\(layout)/index.json"))
    }

    private func encode<T: Encodable>(_ v: T) throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return try e.encode(v)
    }

    private func write(_ data: Data, mediaType: String) throws -> Descriptor {
        let hex = sha256Hex(data)
        try data.write(to: URL(fileURLWithPath: "\(layout)/blobs/sha256/\(hex)"))
        return Descriptor(mediaType: mediaType, digest: Digest(sha256Hex: hex), size: Int64(data.count))
    }
}

/// A ContentSink over a temp dir, as the image store will be: writers put
/// bytes in tmp/, hash them, and `commit` renames into blobs/ only when size
/// and sha256 match. Counts what happened, for the tests' checks.
final class TestSink: ContentSink {
    let root: String
    private(set) var begun = 0
    private(set) var committed = 0
    private(set) var aborted = 0

    init(root: String) throws {
        self.root = root
        try FileManager.default.createDirectory(atPath: "\(root)/blobs", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(root)/tmp", withIntermediateDirectories: true)
    }

    func path(_ d: Digest) -> String { "\(root)/blobs/\(d.hex)" }

    func hasBlob(_ digest: Digest) -> Bool { FileManager.default.fileExists(atPath: path(digest)) }

    func beginBlob(_ digest: Digest, size: Int64?) throws -> any BlobWriter {
        begun += 1
        return try Writer(sink: self, digest: digest, size: size)
    }

    var storedBlobs: Set<Digest> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/blobs")) ?? []).map { Digest(sha256Hex: $0) })
    }

    var tmpEntries: [String] { (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/tmp")) ?? [] }

    func blob(_ d: Digest) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path(d))) }

    final class Writer: BlobWriter {
        let sink: TestSink
        let digest: Digest
        let size: Int64?
        let tmp: String
        let handle: FileHandle
        var hasher = SHA256()
        var count: Int64 = 0
        var done = false

        init(sink: TestSink, digest: Digest, size: Int64?) throws {
            self.sink = sink
            self.digest = digest
            self.size = size
            tmp = "\(sink.root)/tmp/\(digest.hex).\(UUID().uuidString)"
            guard FileManager.default.createFile(atPath: tmp, contents: nil), let h = FileHandle(forWritingAtPath: tmp) else {
                throw FixtureError("cannot create \(tmp)")
            }
            handle = h
        }

        func write(_ bytes: UnsafeRawBufferPointer) throws {
            hasher.update(bufferPointer: bytes)
            count += Int64(bytes.count)
            try handle.write(contentsOf: Data(bytes))
        }

        func commit() throws {
            try handle.close()
            let got = hasher.finalize().map { String(format: "%02x", $0) }.joined()
            guard got == digest.hex, size == nil || size == count else {
                throw FixtureError("test sink: \(digest) does not match (got sha256:\(got), \(count) bytes)")
            }
            guard rename(tmp, sink.path(digest)) == 0 else { throw FixtureError("rename failed") }
            done = true
            sink.committed += 1
        }

        func abort() {
            guard !done else { return }
            try? handle.close()
            unlink(tmp)
            done = true
            sink.aborted += 1
        }
    }
}
