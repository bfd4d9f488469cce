import Foundation
import IpactrOCI
@testable import IpactrRegistry
import IpactrSystem
import Testing

@Suite struct ChallengeTests {
    @Test func bearerChallenge() throws {
        let c = try #require(AuthChallenge(header: #"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#))
        #expect(c.scheme == "bearer")
        #expect(c.parameters == ["realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                                 "scope": "repository:library/debian:pull"])
    }

    @Test func basicChallengeAndOddSpacing() throws {
        let c = try #require(AuthChallenge(header: #"Basic realm="Registry \"Realm\"""#))
        #expect(c.scheme == "basic")
        #expect(c.parameters["realm"] == #"Registry "Realm""#)
        let d = try #require(AuthChallenge(header: "bearer  realm=http://h/t , service=svc"))
        #expect(d.scheme == "bearer")
        #expect(d.parameters == ["realm": "http://h/t", "service": "svc"])
        #expect(AuthChallenge(header: "") == nil)
    }
}

@Suite struct AuthFileTests {
    func json(_ entries: [String: String]) -> Data {
        let auths = entries.mapValues { ["auth": Data($0.utf8).base64EncodedString()] }
        return try! JSONSerialization.data(withJSONObject: ["auths": auths])
    }

    @Test func mostSpecificKeyWins() throws {
        let data = json(["reg.example:5000": "a:1", "reg.example:5000/team": "b:2", "reg.example:5000/team/app": "c:3:with:colons"])
        let app = try AuthFile.lookup(registry: "reg.example:5000", repository: "team/app", json: data, file: "f")
        #expect(app == Credentials(username: "c", password: "3:with:colons"))
        let other = try AuthFile.lookup(registry: "reg.example:5000", repository: "team/other", json: data, file: "f")
        #expect(other == Credentials(username: "b", password: "2"))
        let root = try AuthFile.lookup(registry: "reg.example:5000", repository: "x", json: data, file: "f")
        #expect(root == Credentials(username: "a", password: "1"))
        #expect(try AuthFile.lookup(registry: "elsewhere", repository: "x", json: data, file: "f") == nil)
    }

    @Test func dockerStyleURLKeys() throws {
        let data = json(["https://index.docker.io/v1/": "hub:pw", "https://reg.example/": "r:pw"])
        #expect(try AuthFile.lookup(registry: "docker.io", repository: "library/debian", json: data, file: "f")?.username == "hub")
        #expect(try AuthFile.lookup(registry: "reg.example", repository: "a/b", json: data, file: "f")?.username == "r")
    }

    @Test func malformedFilesAreErrorsNamingTheFile() throws {
        #expect(throws: IpactrError.self) { try AuthFile.lookup(registry: "r", repository: "a", json: Data("{".utf8), file: "/x/auth.json") }
        do {
            _ = try AuthFile.lookup(registry: "r", repository: "a", json: Data(#"{"auths":{"r":{"auth":"bm9jb2xvbg=="}}}"#.utf8), file: "/x/auth.json")
            Issue.record("no error for an auth without a colon")
        } catch let e as IpactrError {
            #expect(e.message.contains("/x/auth.json"))
        }
        // An explicit --authfile that does not exist is an error; a default one is skipped.
        #expect(throws: IpactrError.self) {
            try AuthFile.lookup(registry: "r", repository: "a", files: ["/nonexistent/auth.json"], explicitFile: true)
        }
        #expect(try AuthFile.lookup(registry: "r", repository: "a", files: ["/nonexistent/auth.json"]) == nil)
    }

    @Test func searchOrder() {
        let env = ["REGISTRY_AUTH_FILE": "/env/auth.json", "HOME": "/home/u"]
        #expect(AuthFile.searchPath(explicit: nil, environment: env, uid: 0) ==
                ["/env/auth.json", "/run/containers/0/auth.json", "/home/u/.config/containers/auth.json", "/home/u/.docker/config.json"])
        #expect(AuthFile.searchPath(explicit: "/mine.json", environment: env, uid: 0) == ["/mine.json"])
        #expect(AuthFile.searchPath(explicit: nil, environment: [:], uid: 1000) == ["/run/containers/1000/auth.json"])
    }
}

@Suite struct ManifestTests {
    let d1 = Digest(sha256Hex: String(repeating: "1", count: 64))
    let d2 = Digest(sha256Hex: String(repeating: "2", count: 64))
    let d3 = Digest(sha256Hex: String(repeating: "3", count: 64))

    @Test func selectPlatform() throws {
        var arm = Descriptor(mediaType: MediaType.ociManifest, digest: d1, size: 1, platform: Platform(architecture: "arm64", os: "linux", variant: "v8"))
        var amd = Descriptor(mediaType: MediaType.dockerManifest, digest: d2, size: 1, platform: .linuxAmd64)
        let att = Descriptor(mediaType: MediaType.ociManifest, digest: d3, size: 1, platform: Platform(architecture: "unknown", os: "unknown"))
        let index = ImageIndex(manifests: [att, arm, amd])
        #expect(try RegistryClient.select(.linuxAmd64, from: index, source: "s").digest == d2)
        #expect(try RegistryClient.select(Platform(architecture: "arm64", os: "linux", variant: "v8"), from: index, source: "s").digest == d1)
        arm.platform = nil
        amd.platform = Platform(architecture: "amd64", os: "windows")
        do {
            _ = try RegistryClient.select(.linuxAmd64, from: ImageIndex(manifests: [arm, amd]), source: "s")
            Issue.record("picked something for linux/amd64")
        } catch let e as IpactrError {
            #expect(e.code == .notFound)
            #expect(e.message.contains("windows/amd64"))
        }
    }

    @Test func mediaTypeDecisions() throws {
        let manifest = ImageManifest(config: Descriptor(mediaType: MediaType.ociConfig, digest: d1, size: 2), layers: [], mediaType: nil)
        let data = try JSONEncoder().encode(manifest)
        // No mediaType field: the Content-Type decides, else the shape.
        guard case .manifest = try RegistryClient.parseManifest(data, contentType: MediaType.dockerManifest, source: "s") else {
            Issue.record("not a manifest"); return
        }
        guard case .manifest = try RegistryClient.parseManifest(data, contentType: "application/json", source: "s") else {
            Issue.record("not a manifest"); return
        }
        let helm = Data(#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.chart.v1+json","config":{}}"#.utf8)
        #expect(throws: IpactrError.self) { try RegistryClient.parseManifest(helm, contentType: nil, source: "s") }
        let v1 = Data(#"{"schemaVersion":1,"name":"x"}"#.utf8)
        do {
            _ = try RegistryClient.parseManifest(v1, contentType: nil, source: "s")
            Issue.record("accepted schema 1")
        } catch let e as IpactrError {
            #expect(e.code == .unsupported)
        }
        #expect(throws: IpactrError.self) { try RegistryClient.parseManifest(Data("not json".utf8), contentType: nil, source: "s") }
    }

    @Test func layerCompressionOfKnownTypes() {
        // `.none` here must be the enum case, not Optional.none.
        #expect(MediaType.layerCompression(MediaType.ociLayer) == LayerCompression.none)
        #expect(MediaType.layerCompression(MediaType.ociLayerGzip) == .gzip)
        #expect(MediaType.layerCompression(MediaType.dockerLayerGzip) == .gzip)
        #expect(MediaType.layerCompression(MediaType.ociLayerZstd) == .zstd)
        #expect(MediaType.layerCompression("application/octet-stream") == nil)
    }

    @Test func unknownConfigOrLayerTypesAreRefused() throws {
        let good = Descriptor(mediaType: MediaType.ociLayerZstd, digest: d2, size: 3)
        let config = Descriptor(mediaType: MediaType.dockerConfig, digest: d1, size: 2)
        try RegistryClient.checkMediaTypes(ImageManifest(config: config, layers: [good]), source: "s")
        let odd = Descriptor(mediaType: "application/vnd.example.layer+lz4", digest: d3, size: 3)
        do {
            try RegistryClient.checkMediaTypes(ImageManifest(config: config, layers: [good, odd]), source: "s")
            Issue.record("accepted an unknown layer type")
        } catch let e as IpactrError {
            #expect(e.code == .unsupported)
            #expect(e.message.contains("application/vnd.example.layer+lz4"))
        }
        let artifact = Descriptor(mediaType: "application/vnd.example.config+json", digest: d1, size: 2)
        #expect(throws: IpactrError.self) { try RegistryClient.checkMediaTypes(ImageManifest(config: artifact, layers: []), source: "s") }
    }

    @Test func defaultTLSModeIsInsecureOnlyForLoopback() {
        #expect(TLSMode.defaultMode(for: "127.0.0.1") == .insecure)
        #expect(TLSMode.defaultMode(for: "localhost") == .insecure)
        #expect(TLSMode.defaultMode(for: "::1") == .insecure)
        #expect(TLSMode.defaultMode(for: "registry.example") == .verify)
        #expect(RegistryClient.hostName("127.0.0.1:5000") == "127.0.0.1")
        #expect(RegistryClient.hostName("[::1]:5000") == "::1")
    }
}
