import Testing
import IpactrTestSupport
import Foundation
@testable import IpactrMachine
import IpactrSystem
import CIpactrShim

/// Scratch directory on the host's disk (idmapped mounts need a filesystem
/// that supports them: ext4 here), removed with everything mounted below it.
final class Scratch {
    let path: String
    init(_ name: String) throws {
        path = "/var/tmp/ipactr-test-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit {
        for point in Mount.mountPoints(under: path) { try? Mount.unmount(point) }
        try? removeTree(path)
    }
}

func owner(_ path: String) -> (uid: UInt32, gid: UInt32)? {
    var st = stat()
    guard lstat(path, &st) == 0 else { return nil }
    return (st.st_uid, st.st_gid)
}

@Suite(.serialized) struct MachineRootfsTests {
    /// Two layers in overlay-lower format: the top one deletes a file with a
    /// whiteout and hides a directory's lower contents with the opaque xattr.
    func makeLayers(_ s: Scratch) throws -> [String] {
        let l0 = "\(s.path)/layer0", l1 = "\(s.path)/layer1"
        let fm = FileManager.default
        for d in ["\(l0)/etc", "\(l0)/opq", "\(l1)/opq", "\(l1)/etc"] {
            try fm.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        try "gone".write(toFile: "\(l0)/etc/removed", atomically: false, encoding: .utf8)
        try "kept".write(toFile: "\(l0)/etc/kept", atomically: false, encoding: .utf8)
        try "hidden".write(toFile: "\(l0)/opq/hidden", atomically: false, encoding: .utf8)
        try "new".write(toFile: "\(l1)/opq/new", atomically: false, encoding: .utf8)
        #expect(chown("\(l0)/etc/kept", 0, 42) == 0)
        #expect(mknod("\(l1)/etc/removed", S_IFCHR | 0o000, 0) == 0)
        try runTool("/usr/bin/setfattr", ["-n", "trusted.overlay.opaque", "-v", "y", "\(l1)/opq"])
        return [l0, l1]
    }

    @Test func idmappedOverlayShiftsOwnersWithoutTouchingLayers() throws {
        let s = try Scratch("rootfs")
        let layers = try makeLayers(s)
        let range = UIDRange(base: 1_310_720)
        let rootfs = try MachineRootfs.mountIdmappedOverlay(layers: layers, range: range,
                                                            stateDirectory: "\(s.path)/state", runDirectory: "\(s.path)/run")
        defer { rootfs.remove() }
        let r = rootfs.path
        // Owners appear shifted into the range; the layer on disk keeps its own.
        #expect(owner("\(r)/etc/kept")! == (range.base, range.base + 42))
        #expect(owner("\(layers[0])/etc/kept")! == (0, 42))
        #expect(owner(r)! == (range.base, range.base))
        // Whiteout and opaque directory work through the idmapped lowers.
        #expect(owner("\(r)/etc/removed") == nil)
        #expect(owner("\(r)/opq/hidden") == nil)
        #expect(FileManager.default.fileExists(atPath: "\(r)/opq/new"))
        // A change copies up into the machine's upper dir with the mapped owner;
        // the shared layer is untouched.
        #expect(chmod("\(r)/etc/kept", 0o600) == 0)
        #expect(owner("\(s.path)/state/upper/etc/kept")! == (range.base, range.base + 42))
        var st = stat()
        #expect(lstat("\(layers[0])/etc/kept", &st) == 0 && st.st_mode & 0o777 != 0o600)
        // Lower layers are read-only through their binds.
        #expect(open("\(s.path)/run/l/0/etc/new", O_CREAT | O_WRONLY, 0o644) == -1 && errno == EROFS)
    }

    @Test func shiftedCopyMatchesTheOverlay() throws {
        let s = try Scratch("rootfs-copy")
        let layers = try makeLayers(s)
        // Things a naive copy loses: a hard link, an xattr, a setuid bit.
        #expect(link("\(layers[0])/etc/kept", "\(layers[0])/etc/kept-link") == 0)
        #expect(chmod("\(layers[0])/etc/kept", 0o4755) == 0)
        try runTool("/usr/bin/setfattr", ["-n", "user.test", "-v", "v1", "\(layers[0])/etc/kept"])
        let range = UIDRange(base: 1_507_328)
        let rootfs = try MachineRootfs.shiftedCopy(layers: layers, range: range,
                                                   stateDirectory: "\(s.path)/state", runDirectory: "\(s.path)/run")
        defer { rootfs.remove() }
        let r = rootfs.path
        #expect(rootfs.mode == .shiftedCopy)
        #expect(owner("\(r)/etc/kept")! == (range.base, range.base + 42))
        #expect(owner(r)! == (range.base, range.base))
        #expect(owner("\(r)/etc/removed") == nil)
        #expect(owner("\(r)/opq/hidden") == nil)
        #expect(FileManager.default.fileExists(atPath: "\(r)/opq/new"))
        var a = stat(), b = stat()
        #expect(lstat("\(r)/etc/kept", &a) == 0 && lstat("\(r)/etc/kept-link", &b) == 0)
        #expect(a.st_ino == b.st_ino)
        #expect(a.st_mode & 0o7777 == 0o4755)
        var value = [CChar](repeating: 0, count: 16)
        #expect(lgetxattr("\(r)/etc/kept", "user.test", &value, 16) == 2)
        // The flattening mount is gone; the layers are untouched.
        #expect(Mount.mountPoints(under: "\(s.path)/run").isEmpty)
        #expect(owner("\(layers[0])/etc/kept")! == (0, 42))
    }

    @Test func shiftedCopyOfAOneLayerImage() throws {
        let s = try Scratch("rootfs-copy1")
        let layers = try makeLayers(s)
        let rootfs = try MachineRootfs.shiftedCopy(layers: [layers[0]], range: UIDRange(base: 1_572_864),
                                                   stateDirectory: "\(s.path)/state", runDirectory: "\(s.path)/run")
        #expect(owner("\(rootfs.path)/etc/kept")! == (1_572_864, 1_572_864 + 42))
        #expect(owner("\(rootfs.path)/opq/hidden") != nil)
    }

    @Test func removeLeavesNoMount() throws {
        let s = try Scratch("rootfs-rm")
        let layers = try makeLayers(s)
        let rootfs = try MachineRootfs.mountIdmappedOverlay(layers: layers, range: UIDRange(base: 1_376_256),
                                                            stateDirectory: nil, runDirectory: "\(s.path)/run")
        #expect(!Mount.mountPoints(under: "\(s.path)/run").isEmpty)
        rootfs.remove()
        #expect(Mount.mountPoints(under: "\(s.path)/run").isEmpty)
        #expect(owner("\(s.path)/run") == nil)
    }

    @Test func failedMountCleansUp() throws {
        let s = try Scratch("rootfs-fail")
        #expect(throws: IpactrError.self) {
            _ = try MachineRootfs.mountIdmappedOverlay(layers: ["\(s.path)/missing"], range: UIDRange(base: 1_441_792),
                                                       stateDirectory: nil, runDirectory: "\(s.path)/run")
        }
        #expect(Mount.mountPoints(under: s.path).isEmpty)
        #expect(owner("\(s.path)/run") == nil)
    }
}

func runTool(_ path: String, _ args: [String]) throws {
    let status = try capture([path] + args).status
    #expect(status == 0, "\(path) \(args) failed")
}
