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
