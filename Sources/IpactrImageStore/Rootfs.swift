#if canImport(Glibc)
import Glibc
#endif
import IpactrOCI
import IpactrSystem
import SystemPackage

extension ImageStore {
    /// Mounts the flattened, read-only root file system of `image` at
    /// `target` (an existing directory): an overlay of its layer directories,
    /// or a read-only bind mount when it has one layer. Undo with `unmountRootfs`.
    /// Needs CAP_SYS_ADMIN in the initial namespace (overlayfs reads the
    /// trusted.* xattrs that mark opaque directories).
    public func mountRootfs(_ image: ImageRecord, at target: String) throws {
        let lowers = lowerDirs(of: image)
        guard !lowers.isEmpty else { throw IpactrError(.invalidArgument, "image \(image.name) has no layers") }
        for l in lowers where lstatOrNil(l) == nil {
            throw IpactrError(.corrupt, "layer directory \(l) of \(image.name) is missing")
        }
        if lowers.count == 1 {
            try syscall("bind mount \(lowers[0]) on \(target)") { mount(lowers[0], target, nil, UInt(MS_BIND), nil) }
            do {
                try syscall("remount \(target) read-only") {
                    mount(nil, target, nil, UInt(MS_BIND | MS_REMOUNT | MS_RDONLY), nil)
                }
            } catch {
                umount2(target, Int32(MNT_DETACH))
                throw error
            }
            return
        }
        // Two or more lower dirs and no upper dir: a read-only overlay. The
        // layers are named by /proc/self/fd/N, not their long store paths, so
        // some 200 fit in mount(2)'s one page of options.
        let fds = try lowers.map { try FD.open($0, O_RDONLY | O_DIRECTORY) }
        let options = "lowerdir=" + fds.map { "/proc/self/fd/\($0.raw)" }.joined(separator: ":")
        guard options.utf8.count < 4000 else {
            throw IpactrError(.unsupported, "image \(image.name) has too many layers (\(lowers.count)) to mount with one mount(2) call")
        }
        try syscall("mount overlay on \(target)") { mount("overlay", target, "overlay", UInt(MS_RDONLY), options) }
        withExtendedLifetime(fds) {}
    }

    /// Unmounts what `mountRootfs` mounted.
    public func unmountRootfs(at target: String) throws {
        try syscall("umount \(target)") { umount2(target, 0) }
    }
}
