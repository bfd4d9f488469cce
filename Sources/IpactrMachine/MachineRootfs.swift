#if canImport(Glibc)
import Glibc
#endif
import IpactrSystem

/// A machine's root directory, built from the image's shared layers without
/// copying or chowning them: each layer is bind-mounted idmapped into the
/// machine's uid range, and an overlay puts a per-machine upper directory
/// (owned by the range) on top. Shared layers stay read-only and unshifted;
/// a machine costs O(1) however large the image.
///
/// Where the kernel or filesystem refuses idmapped mounts, `shiftedCopy`
/// gives the same tree as a private copy chowned into the range.
public struct MachineRootfs: Sendable {
    public enum Mode: String, Codable, Sendable {
        case idmappedOverlay = "idmapped-overlay"
        case shiftedCopy = "shifted-copy"
        /// The identity range: the layers are the lower dirs as they are.
        case overlay
    }

    /// Where the machine's root is mounted (the runtime config's root.path).
    public let path: String
    public let mode: Mode
    /// Directory holding the mounts this rootfs made (torn down by `remove`).
    public let runDirectory: String

    /// Mounts the overlay under `runDirectory`: lower layers at `l/N`, the root at `root`.
    /// - Parameters:
    ///   - layers: unpacked layer directories in overlay-lower format, bottom first.
    ///   - stateDirectory: per-machine persistent directory (upper and work dirs live there),
    ///     or nil for an ephemeral machine whose upper dir is on a tmpfs.
    public static func mountIdmappedOverlay(layers: [String], range: UIDRange, stateDirectory: String?,
                                            runDirectory: String) throws(IpactrError) -> MachineRootfs {
        guard !layers.isEmpty else { throw IpactrError(.invalidArgument, "image has no layers") }
        // 0711: the machine's init (unprivileged on the host) passes through to `root`.
        try makeDirectory(runDirectory, mode: 0o711)
        var done = false
        defer { if !done { teardown(runDirectory) } }

        var lowers: [String] = layers
        if !range.isIdentity {
            let userns = try Mount.userNamespace(uidMap: range.idMapLine, gidMap: range.idMapLine)
            defer { close(userns) }
            lowers = []
            for (i, layer) in layers.enumerated() {
                let target = "\(runDirectory)/l/\(i)"
                try makeDirectory(target, mode: 0o700)
                try Mount.idmappedBind(source: layer, target: target, usernsFD: userns, readOnly: true)
                lowers.append(target)
            }
        }

        let upperBase: String
        if let stateDirectory {
            upperBase = stateDirectory
        } else {
            upperBase = "\(runDirectory)/ephemeral"
            try makeDirectory(upperBase, mode: 0o700)
            try Mount.mount(source: "tmpfs", target: upperBase, type: "tmpfs", flags: UInt(MS_NOSUID | MS_NODEV),
                            data: "mode=0700")
        }
        let upper = "\(upperBase)/upper", work = "\(upperBase)/work"
        let fresh = !exists(upper)
        try makeDirectory(upper, mode: 0o755)
        try makeDirectory(work, mode: 0o700)
        if fresh {
            // The merged root takes the upper dir's owner: the machine's root.
            try syscall("chown \(upper)") { chown(upper, range.base, range.base) }
        }

        let root = "\(runDirectory)/root"
        try makeDirectory(root, mode: 0o755)
        // overlayfs lists lower layers top first.
        let options = "lowerdir=\(lowers.reversed().joined(separator: ":")),upperdir=\(upper),workdir=\(work)"
        try Mount.mount(source: "overlay", target: root, type: "overlay", flags: 0, data: options)
        done = true
        return MachineRootfs(path: root, mode: range.isIdentity ? .overlay : .idmappedOverlay, runDirectory: runDirectory)
    }

    /// Unmounts everything under the run directory and removes it.
    public func remove() {
        MachineRootfs.teardown(runDirectory)
    }

    static func teardown(_ runDirectory: String) {
        for point in Mount.mountPoints(under: runDirectory) {
            try? Mount.unmount(point)
        }
        try? removeTree(runDirectory)
    }
}

func exists(_ path: String) -> Bool { lstatOrNil(path) != nil }

func makeDirectory(_ path: String, mode: mode_t) throws(IpactrError) {
    do { try makeDirectories(path, mode: mode) } catch let e as IpactrError { throw e } catch { throw IpactrError(.io, "\(error)") }
}
