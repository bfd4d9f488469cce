import Foundation
import IpactrOCI
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Hooks run in order, with the state on stdin: prestart, createRuntime,
/// poststart and poststop in the runtime's namespace, createContainer and
/// startContainer in the container's.
@Suite(.serialized) struct HookTests {
    func hook(_ script: String, path: String = "/bin/sh", timeout: Int? = nil) -> RuntimeSpec.Hook {
        var h: [String: Any] = ["path": path, "args": ["sh", "-c", script]]
        if let t = timeout { h["timeout"] = t }
        return try! JSONDecoder().decode(RuntimeSpec.Hook.self, from: JSONSerialization.data(withJSONObject: h))
    }

    func noHooks() throws -> RuntimeSpec.Hooks {
        try JSONDecoder().decode(RuntimeSpec.Hooks.self, from: Data("{}".utf8))
    }

    /// Nothing of the fixture's containers is left: no state, cgroup or mount.
    func expectNothingLeft(_ f: RuntimeFixture, _ id: String) throws {
        // A config refused before anything is made leaves no --root at all.
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: f.stateRoot)) ?? []).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: try f.cgroupDir(id)))
        let mounts = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(!mounts.contains(f.dir))
    }

    /// `create` with `set` applied to empty hooks fails with exactly
    /// `message` on stderr and leaves nothing behind.
    func expectCreateFails(_ set: (inout RuntimeSpec.Hooks) -> Void, _ message: String,
                           sourceLocation: SourceLocation = #_sourceLocation) throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        var hooks = try noHooks()
        set(&hooks)
        f.spec.hooks = hooks
        try f.writeSpec()
        let id = f.newID()
        let out = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(out.status != 0, sourceLocation: sourceLocation)
        #expect(out.stderr == message, sourceLocation: sourceLocation)
        try expectNothingLeft(f, id)
    }

    /// All six hooks in one container: their order, where each ran (mount
    /// namespace, root, cwd) and the state each got on stdin.
    @Test func allSixHooksInOrderAndInTheirNamespaces() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let fm = FileManager.default
        let logs = f.dir + "/hooklog"
        try fm.createDirectory(atPath: logs, withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: f.rootfs + "/bin/readlink", withDestinationPath: "busybox")
        // Only the container's root has this file.
        fm.createFile(atPath: f.rootfs + "/rootfs-marker", contents: nil)
        // Each hook records into DIR (the host's view of the log directory, or
        // /hooklog inside the container) under its name NAME.
        let record = """
            echo $NAME >> $DIR/order; readlink /proc/self/ns/mnt > $DIR/$NAME.mnt; pwd > $DIR/$NAME.cwd
            if test -e /rootfs-marker; then echo container > $DIR/$NAME.root; else echo host > $DIR/$NAME.root; fi
            cat > $DIR/$NAME.state
            """
        // createContainer's path resolves in the runtime's namespace (a file
        // only the host has), startContainer's in the container's (a file
        // only the rootfs has).
        let hostScript = f.dir + "/hook-on-host.sh", containerScript = "/hook-in-container.sh"
        try ("#!/bin/sh\n" + record + "\n").write(toFile: hostScript, atomically: true, encoding: .utf8)
        try ("#!/bin/sh\n" + record + "\n").write(toFile: f.rootfs + containerScript, atomically: true, encoding: .utf8)
        chmod(hostScript, 0o755)
        chmod(f.rootfs + containerScript, 0o755)
        func h(_ name: String, _ path: String, dir: String = logs) -> [RuntimeSpec.Hook] {
            let json: [String: Any] = ["path": path, "args": [path], "env": ["NAME=\(name)", "DIR=\(dir)", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]]
            return [try! JSONDecoder().decode(RuntimeSpec.Hook.self, from: JSONSerialization.data(withJSONObject: json))]
        }
        var hooks = try noHooks()
        hooks.prestart = h("prestart", hostScript)
        hooks.createRuntime = h("createRuntime", hostScript)
        hooks.createContainer = h("createContainer", hostScript)
        hooks.startContainer = h("startContainer", containerScript, dir: "/hooklog")
        hooks.poststart = h("poststart", hostScript)
        hooks.poststop = h("poststop", hostScript)
        f.spec.hooks = hooks
        f.spec.mounts = (f.spec.mounts ?? []) + [RuntimeSpec.Mount(destination: "/hooklog", type: "bind", source: logs, options: ["rbind", "rw"])]
        f.spec.process?.args = ["sleep", "1000"]
        f.spec.process?.cwd = "/tmp"
        try f.writeSpec()
        let id = f.newID()
        let created = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(created.status == 0, "\(created.stderr)")
        let pid = try #require(try f.state(id)?.pid)
        let containerMnt = try fm.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/mnt")
        let hostMnt = try fm.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")
        #expect(containerMnt != hostMnt)
        let started = try f.runtime(["start", id])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(try f.runtime(["delete", "--force", id]).status == 0)

        func read(_ name: String) throws -> String {
            try String(contentsOfFile: logs + "/" + name, encoding: .utf8).trimmingCharacters(in: .newlines)
        }
        let order = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
        #expect(try read("order").split(separator: "\n").map(String.init) == order)
        for name in order {
            let inside = name == "createContainer" || name == "startContainer"
            #expect(try read(name + ".mnt") == (inside ? containerMnt : hostMnt), "\(name)")
            // createContainer runs before pivot_root: the host's root is still "/".
            #expect(try read(name + ".root") == (name == "startContainer" ? "container" : "host"), "\(name)")
        }
        #expect(try read("createContainer.cwd") == f.rootfs)
        #expect(try read("startContainer.cwd") == "/tmp")
        let states = try order.map { try JSONDecoder().decode(RuntimeState.self, from: Data(read($0 + ".state").utf8)) }
        #expect(states.map(\.status) == ["creating", "creating", "creating", "created", "running", "stopped"])
        #expect(states.allSatisfy { $0.id == id && $0.bundle == f.bundle })
        #expect(states[0...4].allSatisfy { $0.pid == pid })
    }

    @Test func failingCreateContainerHookFailsCreateAndCleansUp() throws {
        try expectCreateFails({ $0.createContainer = [hook("exit 3")] }, "ipactr-runtime: createContainer hook /bin/sh: exit status 3\n")
    }

    @Test func missingCreateContainerHookIsAnError() throws {
        try expectCreateFails({ $0.createContainer = [hook("", path: "/nonexistent/hook")] }, "ipactr-runtime: createContainer hook /nonexistent/hook: No such file or directory\n")
    }

    /// A hook past its timeout is killed (with what it started: the init's
    /// pid namespace goes) and fails `create`.
    @Test func createContainerHookTimeoutIsEnforced() throws {
        try expectCreateFails({ $0.createContainer = [hook("sleep 1000", timeout: 1)] }, "ipactr-runtime: createContainer hook /bin/sh: timed out after 1 s\n")
    }

    /// runtime-spec: a failing startContainer hook fails `start`, the payload
    /// never runs, the container is stopped, and `delete` (with poststop) removes it.
    @Test func failingStartContainerHookFailsStartAndStopsTheContainer() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        let poststop = f.dir + "/poststop.log"
        var hooks = try noHooks()
        hooks.startContainer = [hook("exit 4")]
        hooks.poststop = [hook("cat > \(poststop)")]
        f.spec.hooks = hooks
        f.spec.process?.args = ["sh", "-c", "touch /tmp/payload-ran; sleep 1000"]
        try f.writeSpec()
        let id = f.newID()
        let created = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(created.status == 0, "\(created.stderr)")
        let pid = try #require(try f.state(id)?.pid)
        let out = try f.runtime(["start", id])
        #expect(out.status != 0)
        #expect(out.stderr == "ipactr-runtime: startContainer hook /bin/sh: exit status 4\n")
        #expect(try f.state(id)?.status == "stopped")
        #expect(processGone(pid))
        #expect(!FileManager.default.fileExists(atPath: f.rootfs + "/tmp/payload-ran"))
        let deleted = try f.runtime(["delete", id])
        #expect(deleted.status == 0, "\(deleted.stderr)")
        let st = try JSONDecoder().decode(RuntimeState.self, from: Data(contentsOf: URL(fileURLWithPath: poststop)))
        #expect(st.id == id && st.status == "stopped")
        try expectNothingLeft(f, id)
    }

    /// `run` executes the startContainer hooks too, before the payload, and
    /// passes their failure on.
    @Test func startContainerHooksUnderRun() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        var hooks = try noHooks()
        hooks.startContainer = [hook("echo hooked > /tmp/by-hook")]
        f.spec.hooks = hooks
        let ok = try f.run(["cat", "/tmp/by-hook"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stdout == "hooked\n")
        hooks.startContainer = [hook("exit 5")]
        f.spec.hooks = hooks
        let bad = try f.run(["echo", "payload"])
        #expect(bad.status != 0)
        #expect(bad.stdout == "")
        #expect(bad.stderr == "ipactr-runtime: startContainer hook /bin/sh: exit status 5\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.stateRoot).isEmpty)
    }

    /// In a user-namespaced container both in-container hooks run as the
    /// mapped root, inside the user namespace, and still read their state.
    @Test func containerHooksInAUserNamespace() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        IsolationTests.userns(&f.spec)
        let logs = f.dir + "/ulog"
        try FileManager.default.createDirectory(atPath: logs, withIntermediateDirectories: true)
        chmod(logs, 0o1777)
        var hooks = try noHooks()
        hooks.createContainer = [hook("cat /proc/self/uid_map > \(logs)/create.map; cat > \(logs)/create.state")]
        hooks.startContainer = [hook("cat /proc/self/uid_map > /tmp/start.map; cat > /tmp/start.state")]
        f.spec.hooks = hooks
        f.spec.process?.args = ["sleep", "1000"]
        try f.writeSpec()
        let id = f.newID()
        let created = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(created.status == 0, "\(created.stderr)")
        let pid = try #require(try f.state(id)?.pid)
        let started = try f.runtime(["start", id])
        #expect(started.status == 0, "\(started.stderr)")
        for path in [logs + "/create", f.rootfs + "/tmp/start"] {
            let map = try String(contentsOfFile: path + ".map", encoding: .utf8).split(separator: " ").joined(separator: " ")
            #expect(map == "0 100000 65536\n", "\(path)")
            #expect(owner(path + ".map")?.uid == 100000, "\(path)")
            let st = try JSONDecoder().decode(RuntimeState.self, from: Data(contentsOf: URL(fileURLWithPath: path + ".state")))
            #expect(st.id == id && st.pid == pid, "\(path)")
        }
        #expect(try f.runtime(["delete", "--force", id]).status == 0)
    }

    /// runtime-spec: a hook's path is absolute and its timeout positive.
    @Test func malformedContainerHooksAreRefused() throws {
        let f = try RuntimeFixture()
        defer { f.cleanup() }
        var hooks = try noHooks()
        hooks.startContainer = [hook("true", path: "bin/sh")]
        f.spec.hooks = hooks
        try f.writeSpec()
        let id = f.newID()
        let out = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(out.status != 0)
        #expect(out.stderr == "ipactr-runtime: config.json: startContainer hook path bin/sh is not absolute\n")
        hooks.startContainer = nil
        hooks.createContainer = [hook("true", timeout: 0)]
        f.spec.hooks = hooks
        try f.writeSpec()
        let zero = try f.runtime(["create", "--bundle", f.bundle, id])
        #expect(zero.status != 0)
        #expect(zero.stderr == "ipactr-runtime: config.json: createContainer hook /bin/sh: timeout must be greater than zero\n")
        try expectNothingLeft(f, id)
    }

    @Test func featuresListAllSixHooks() throws {
        let out = try RuntimeFixture.exec([RuntimeFixture.binary, "features"])
        #expect(out.status == 0)
        let obj = try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any]
        #expect(obj?["hooks"] as? [String] == ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"])
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
        try expectCreateFails({ $0.createRuntime = [hook("exit 3")] }, "ipactr-runtime: createRuntime hook /bin/sh: exit status 3\n")
    }
}
