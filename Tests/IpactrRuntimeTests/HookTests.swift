import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Hooks run in the runtime's namespace, in order, with the state on stdin.
@Suite(.serialized) struct HookTests {
    func hook(_ script: String) -> RuntimeSpec.Hook {
        try! JSONDecoder().decode(RuntimeSpec.Hook.self, from: JSONSerialization.data(withJSONObject: [
            "path": "/bin/sh", "args": ["sh", "-c", script],
        ]))
    }

    @Test func hooksRunInOrderWithState() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let log = f.dir + "/hooks.log"
        var hooks = try JSONDecoder().decode(RuntimeSpec.Hooks.self, from: Data("{}".utf8))
        // Each hook appends its name and the state it was given.
        func h(_ name: String) -> [RuntimeSpec.Hook] {
            [hook("printf '\(name) ' >> \(log); cat >> \(log); echo >> \(log)")]
        }
        hooks.prestart = h("prestart")
        hooks.createRuntime = h("createRuntime")
        hooks.poststart = h("poststart")
        hooks.poststop = h("poststop")
        f.spec.hooks = hooks
        f.spec.process?.args = ["sleep", "1000"]
        try f.writeSpec()
        let id = f.newID()
        let created = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(created.status == 0, "\(created.stderr)")
        // Before pivot_root, the init's root is still the host's.
        let pid = try #require(try f.state(id)?.pid)
        #expect(try f.runtime(["start", id]).status == 0)
        #expect(try f.runtime(["delete", "--force", id]).status == 0)
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        #expect(lines.map { $0.split(separator: " ").first.map(String.init) ?? "" } == ["prestart", "createRuntime", "poststart", "poststop"])
        let states = try lines.map { line in
            try JSONDecoder().decode(RuntimeState.self, from: Data(line.drop(while: { $0 != " " }).dropFirst().utf8))
        }
        #expect(states.map(\.status) == ["creating", "creating", "running", "stopped"])
        #expect(states.allSatisfy { $0.id == id && $0.bundle == f.bundle })
        #expect(states[0].pid == pid && states[2].pid == pid)
    }

    @Test func failingCreateRuntimeHookFailsCreateAndCleansUp() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        var hooks = try JSONDecoder().decode(RuntimeSpec.Hooks.self, from: Data("{}".utf8))
        hooks.createRuntime = [hook("exit 3")]
        f.spec.hooks = hooks
        try f.writeSpec()
        let id = f.newID()
        let out = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(out.status != 0)
        #expect(out.stderr == "ipactr-runtime: createRuntime hook /bin/sh: exit status 3\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.stateRoot).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(id)))
    }
}
