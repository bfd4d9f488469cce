/// Media types ipactr reads. Docker's v2 schema 2 types are accepted
/// wherever the OCI ones are, as registries and `docker save` still emit them.
public enum MediaType {
    public static let ociIndex = "application/vnd.oci.image.index.v1+json"
    public static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let ociConfig = "application/vnd.oci.image.config.v1+json"
    public static let ociLayer = "application/vnd.oci.image.layer.v1.tar"
    public static let ociLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    public static let ociLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
    public static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    public static let dockerConfig = "application/vnd.docker.container.image.v1+json"
    public static let dockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    public static let dockerLayerForeignGzip = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    public static func isIndex(_ t: String) -> Bool { t == ociIndex || t == dockerManifestList }
    public static func isManifest(_ t: String) -> Bool { t == ociManifest || t == dockerManifest }
    public static func isConfig(_ t: String) -> Bool { t == ociConfig || t == dockerConfig }

    /// The compression of a layer media type, or nil when it is not a layer type we know.
    public static func layerCompression(_ t: String) -> LayerCompression? {
        switch t {
        case ociLayer, "application/vnd.oci.image.layer.nondistributable.v1.tar": return LayerCompression.none
        case ociLayerGzip, dockerLayerGzip, dockerLayerForeignGzip,
             "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": return .gzip
        case ociLayerZstd, "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": return .zstd
        default: return nil
        }
    }
}

public enum LayerCompression: String, Codable, Sendable { case none, gzip, zstd }

/// image-spec descriptor.md
public struct Descriptor: Codable, Hashable, Sendable {
    public var mediaType: String
    public var digest: Digest
    public var size: Int64
    public var urls: [String]?
    public var annotations: [String: String]?
    public var platform: Platform?
    public var artifactType: String?

    public init(mediaType: String, digest: Digest, size: Int64, annotations: [String: String]? = nil, platform: Platform? = nil) {
        self.mediaType = mediaType
        self.digest = digest
        self.size = size
        self.annotations = annotations
        self.platform = platform
    }
}

public struct Platform: Codable, Hashable, Sendable {
    public var architecture: String
    public var os: String
    public var osVersion: String?
    public var osFeatures: [String]?
    public var variant: String?

    enum CodingKeys: String, CodingKey {
        case architecture, os, variant
        case osVersion = "os.version"
        case osFeatures = "os.features"
    }

    public init(architecture: String, os: String, variant: String? = nil) {
        self.architecture = architecture
        self.os = os
        self.variant = variant
    }

    /// The platform ipactr runs images for.
    public static let linuxAmd64 = Platform(architecture: "amd64", os: "linux")
}

/// image-spec image-index.md (also Docker's manifest list).
public struct ImageIndex: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var manifests: [Descriptor]
    public var annotations: [String: String]?

    public init(manifests: [Descriptor], mediaType: String? = MediaType.ociIndex, annotations: [String: String]? = nil) {
        self.schemaVersion = 2
        self.mediaType = mediaType
        self.manifests = manifests
        self.annotations = annotations
    }
}

/// image-spec manifest.md (also Docker's v2 schema 2 manifest).
public struct ImageManifest: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var config: Descriptor
    public var layers: [Descriptor]
    public var annotations: [String: String]?

    public init(config: Descriptor, layers: [Descriptor], mediaType: String? = MediaType.ociManifest, annotations: [String: String]? = nil) {
        self.schemaVersion = 2
        self.mediaType = mediaType
        self.config = config
        self.layers = layers
        self.annotations = annotations
    }
}

/// image-spec config.md: the parts ipactr uses.
public struct ImageConfig: Codable, Sendable {
    public var created: String?
    public var author: String?
    public var architecture: String
    public var os: String
    public var variant: String?
    public var config: ExecConfig?
    public var rootfs: RootFS
    public var history: [History]?

    public init(architecture: String = "amd64", os: String = "linux", config: ExecConfig? = nil, rootfs: RootFS, created: String? = nil) {
        self.architecture = architecture
        self.os = os
        self.config = config
        self.rootfs = rootfs
        self.created = created
    }

    public struct ExecConfig: Codable, Sendable {
        public var User: String?
        public var ExposedPorts: [String: EmptyObject]?
        public var Env: [String]?
        public var Entrypoint: [String]?
        public var Cmd: [String]?
        public var Volumes: [String: EmptyObject]?
        public var WorkingDir: String?
        public var Labels: [String: String]?
        public var StopSignal: String?

        public init() {}
    }

    public struct RootFS: Codable, Sendable {
        public var type: String
        /// Digests of the *uncompressed* layers, in order.
        public var diff_ids: [Digest]

        public init(diffIDs: [Digest]) {
            self.type = "layers"
            self.diff_ids = diffIDs
        }
    }

    public struct History: Codable, Sendable {
        public var created: String?
        public var created_by: String?
        public var comment: String?
        public var empty_layer: Bool?
    }
}

/// `{}` in JSON, as ExposedPorts and Volumes use.
public struct EmptyObject: Codable, Hashable, Sendable {
    public init() {}
}
