import Testing
import SystemPackage
@testable import IpactrSystem

@Suite struct ErrorTests {
    @Test func syscallErrorMapsErrno() {
        let e = IpactrError.syscall("open /x", .noSuchFileOrDirectory)
        #expect(e.code == .notFound)
        #expect(e.message.hasPrefix("open /x: "))
        #expect(e.dbusName == "org.ipactr1.Error.NotFound")
    }
}
