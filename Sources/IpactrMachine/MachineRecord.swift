import IpactrOCI
import IpactrSystem

/// What a user asked for when booting a machine: the options that
/// `ipactr boot` takes, kept so `start` and `reboot` make the same machine.
public struct MachineOptions: Codable, Sendable, Equatable {
    public enum Network: String, Codable, Sendable { case host, `private` }

    public struct Volume: Codable, Sendable, Equatable {
        public var hostPath: String
        public var containerPath: String
        public var readOnly: Bool
        /// Bind idmapped into the machine's range (the default): the files on
        /// the host keep their own owners (0, 389, …), root inside is root's
        /// files outside, and the volume survives a change of range.
        /// `:noidmap` binds it as it is (then the host files must belong to
        /// the range to be the machine's).
        public var idmap: Bool

        /// Parses `HOST:CONTAINER[:ro|rw][:idmap|noidmap]` (options comma- or colon-separated, as podman and nspawn spell them).
        public init(parsing text: String) throws(IpactrError) {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 2, parts[0].hasPrefix("/"), parts[1].hasPrefix("/") else {
                throw IpactrError(.invalidArgument, "bad --volume \"\(text)\": want /HOST:/CONTAINER[:ro][:noidmap]")
            }
            var readOnly = false, idmap = true
            for opt in parts.dropFirst(2).flatMap({ $0.split(separator: ",").map(String.init) }) {
                switch opt {
                case "ro": readOnly = true
                case "rw": readOnly = false
                case "idmap": idmap = true
                case "noidmap": idmap = false
                default: throw IpactrError(.invalidArgument, "bad --volume \"\(text)\": unknown option \"\(opt)\" (ro, rw, idmap, noidmap)")
                }
            }
            self.init(hostPath: parts[0], containerPath: parts[1], readOnly: readOnly, idmap: idmap)
        }

        public init(hostPath: String, containerPath: String, readOnly: Bool = false, idmap: Bool = true) {
            self.hostPath = hostPath
            self.containerPath = containerPath
            self.readOnly = readOnly
            self.idmap = idmap
        }
    }

    public var volumes: [Volume] = []
    public var tmpfs: [String] = []
    public var environment: [String] = []
    public var hostname: String?
    public var readOnly = false
    public var network: Network = .private
    public var publish: [PortForwarder.Rule] = []
    /// nil: pick one (`--uid-range auto`).
    public var uidRangeBase: UInt32?
    public var ephemeral = false
    /// nil: idmapped overlay where the kernel allows it, else a shifted copy.
    public var rootfsMode: MachineRootfs.Mode?
    /// `--nesting`: the machine may run machines of its own (optional so
    /// records written before it still decode; nil is false).
    public var nesting: Bool?

    public init() {}
}

/// A machine as recorded under ROOT/machines/NAME/machine.json.
public struct MachineRecord: Codable, Sendable, Equatable {
    public var name: String
    /// Stable across boots: PID 1's container_uuid, hence its machine id.
    public var uuid: String
    public var image: String
    public var imageID: Digest
    public var options: MachineOptions
    public var range: UIDRange
    public var rootfsMode: MachineRootfs.Mode?
    public var created: Int64
    /// PID 1's exit status from the last time it ran (128+N for a signal).
    public var lastExitStatus: Int32?

    public init(name: String, uuid: String, image: String, imageID: Digest, options: MachineOptions,
                range: UIDRange, created: Int64) {
        self.name = name
        self.uuid = uuid
        self.image = image
        self.imageID = imageID
        self.options = options
        self.range = range
        self.created = created
    }

    /// Machine names follow machined's rules for host names: they become
    /// unit instance names, D-Bus object paths and hostnames.
    public static func validate(name: String) throws(IpactrError) {
        let ok = !name.isEmpty && name.utf8.count <= 64 && name.first != "-" && name.first != "."
            && name.utf8.allSatisfy { c in
                (0x61...0x7a).contains(c) || (0x41...0x5a).contains(c) || (0x30...0x39).contains(c) || c == 0x2d || c == 0x2e || c == 0x5f
            }
        guard ok else {
            throw IpactrError(.invalidArgument, "invalid machine name \"\(name)\": use letters, digits, '-', '_' and '.', at most 64")
        }
    }
}
