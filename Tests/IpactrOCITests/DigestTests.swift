import Testing
@testable import IpactrOCI

@Suite struct DigestTests {
    @Test func parsesSha256() throws {
        let hex = String(repeating: "ab", count: 32)
        let d = try Digest(parsing: "sha256:\(hex)")
        #expect(d.hex == hex)
        #expect(d.description == "sha256:\(hex)")
    }

    @Test(arguments: ["sha256:abc", "md5:" + String(repeating: "a", count: 64), "nocolon",
                      "sha256:" + String(repeating: "A", count: 64)])
    func rejectsMalformed(_ text: String) {
        #expect(throws: DigestError.self) { try Digest(parsing: text) }
    }
}

@Suite struct ImageReferenceTests {
    @Test func hostPortRepoTag() throws {
        let r = try ImageReference(parsing: "127.0.0.1:5000/debian/systemd:12")
        #expect(r.registry == "127.0.0.1:5000")
        #expect(r.repository == "debian/systemd")
        #expect(r.tag == "12")
        #expect(r.manifestReference == "12")
    }

    @Test func defaultsToLatestAndDockerHub() throws {
        let r = try ImageReference(parsing: "debian")
        #expect(r.registry == "docker.io")
        #expect(r.repository == "library/debian")
        #expect(r.tag == "latest")
    }

    @Test func digestReference() throws {
        let hex = String(repeating: "0", count: 64)
        let r = try ImageReference(parsing: "localhost:5000/x@sha256:\(hex)")
        #expect(r.tag == nil)
        #expect(r.manifestReference == "sha256:\(hex)")
    }

    @Test(arguments: ["", "UPPER/case", "host:5000/", "a/b:bad tag", "x@sha256:12"])
    func rejects(_ text: String) {
        #expect(throws: ReferenceError.self) { try ImageReference(parsing: text) }
    }
}
