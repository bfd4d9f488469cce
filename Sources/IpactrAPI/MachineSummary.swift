/// One machine as org.ipactr1's DescribeMachines/DescribeMachine give it
/// (JSON), and as `ipactr list` and `ipactr status` show it.
public struct MachineSummary: Codable, Sendable, Equatable {
    public var name: String
    public var image: String
    public var state: String
    public var leader: Int32?
    public var uidRange: String
    public var ready: Bool
    public var statusText: String?
    public var lastExitStatus: Int32?
    public var rootfs: String?
    public var network: String
    public var addresses: [String]
    /// `systemctl is-system-running` inside, and the failed units (status only).
    public var systemState: String?
    public var failedUnits: [String]?
    /// Started at host boot (`ipactr enable`): set by ipactrd, which knows the units.
    public var enabled: Bool?

    public init(name: String, image: String, state: String, leader: Int32?, uidRange: String, ready: Bool,
                statusText: String?, lastExitStatus: Int32?, rootfs: String?, network: String, addresses: [String],
                systemState: String? = nil, failedUnits: [String]? = nil, enabled: Bool? = nil) {
        self.name = name
        self.image = image
        self.state = state
        self.leader = leader
        self.uidRange = uidRange
        self.ready = ready
        self.statusText = statusText
        self.lastExitStatus = lastExitStatus
        self.rootfs = rootfs
        self.network = network
        self.addresses = addresses
        self.systemState = systemState
        self.failedUnits = failedUnits
        self.enabled = enabled
    }
}
