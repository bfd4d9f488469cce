// swift-tools-version:6.0
import PackageDescription

// Dependencies point one way: executables → command libraries → machine /
// runtime / image store → IpactrOCI, IpactrSystem → C bridges.
let package = Package(
    name: "ipactr",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "ipactr", targets: ["ipactr"]),
        .executable(name: "ipactrd", targets: ["ipactrd"]),
        .executable(name: "ipactr-runtime", targets: ["ipactr-runtime"]),
        .executable(name: "ipactr-worker", targets: ["ipactr-worker"]),
        .executable(name: "ipactr-pull", targets: ["ipactr-pull"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.0.0"),
    ],
    targets: [
        // C libraries from Debian's -dev packages, found with pkg-config.
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CCap", pkgConfig: "libcap", providers: [.apt(["libcap-dev"])]),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // The few lines Swift cannot (or must not) run: the child side of
        // clone, and wrappers for variadic C functions.
        .target(name: "CIpactrShim"),
        // libarchive's variadic calls (only the image store links libarchive).
        .target(name: "CArchiveShim", dependencies: ["CArchive"]),

        .target(name: "IpactrSystem", dependencies: [
            "CIpactrShim",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "IpactrOCI", dependencies: []),
        // The JSON of org.ipactr1 that ipactrd writes and its clients read.
        .target(name: "IpactrAPI", dependencies: []),
        // Registry credentials (--creds, containers-auth.json): read by the
        // CLI, which must not link the HTTP stack, and by the pull.
        .target(name: "IpactrRegistryAuth", dependencies: ["IpactrSystem"]),
        .target(name: "IpactrImageStore", dependencies: [
            "IpactrSystem", "IpactrOCI", "CArchive", "CArchiveShim", "CIpactrShim",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["README.md"]),
        // Distribution v2 client: writes through IpactrOCI's ContentSink, so it
        // never depends on the store.
        .target(name: "IpactrRegistry", dependencies: [
            "IpactrSystem", "IpactrOCI", "IpactrRegistryAuth", "CCurl",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["README.md"]),
        .target(name: "IpactrRuntime", dependencies: [
            "IpactrSystem", "IpactrOCI", "CIpactrShim", "CCap", "CSeccomp",
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["README.md"]),
        // sd-bus wrapper: the D-Bus layer ipactrd serves and ipactr calls through.
        .target(name: "IpactrBus", dependencies: [
            "CSystemd", "IpactrSystem",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // runc's systemd cgroup driver (transient scopes over sd-bus), kept out of the core.
        // libsystemd is dlopen'ed when used: ipactr-runtime links neither it nor IpactrBus (Foundation).
        .target(name: "IpactrSystemdCgroup", dependencies: ["IpactrRuntime", "IpactrSystem", "IpactrOCI"], exclude: ["README.md"]),
        .target(name: "IpactrMachine", dependencies: [
            "IpactrRuntime", "IpactrImageStore", "IpactrBus", "IpactrSystem", "IpactrOCI", "IpactrAPI", "CIpactrShim", "CArchive", "CSystemd",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["README.md"]),
        // The user's command line: a client of ipactrd and nothing more (it
        // starts twice per boot cycle: no image store, HTTP or runtime here).
        .target(name: "IpactrCLI", dependencies: [
            "IpactrClient", "IpactrBus", "IpactrAPI", "IpactrRegistryAuth", "IpactrSystem", "IpactrOCI",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // What ipactrd runs as its children: each machine's monitor, and the
        // workers (pull, import, exec, shell) on the caller's descriptors.
        .target(name: "IpactrWorkers", dependencies: [
            "IpactrCLI", "IpactrMachine", "IpactrImageStore", "IpactrSystem", "IpactrOCI",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // The pull worker, a binary of its own (as systemd-importd's
        // systemd-pull): only it links libcurl and its ~30 libraries, which
        // would otherwise slow every monitor's start.
        .target(name: "IpactrPullWorker", dependencies: [
            "IpactrCLI", "IpactrWorkers", "IpactrRegistry", "IpactrImageStore", "IpactrSystem", "IpactrOCI",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // runc's command line, parsed by a table (VerbArguments.swift says why).
        .target(name: "IpactrRuntimeCLI", dependencies: ["IpactrRuntime", "IpactrSystemdCgroup", "IpactrSystem", "IpactrOCI"]),
        .executableTarget(name: "ipactr", dependencies: ["IpactrCLI"]),
        .executableTarget(name: "ipactr-worker", dependencies: ["IpactrWorkers"]),
        .executableTarget(name: "ipactr-pull", dependencies: ["IpactrPullWorker"]),
        // The manager: machine and image tables served on D-Bus.
        .target(name: "IpactrDaemon", dependencies: [
            "IpactrBus", "IpactrMachine", "IpactrImageStore", "IpactrSystem", "CIpactrShim",
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["README.md"]),
        // The client side of org.ipactr1 (for the CLI once its verbs go through ipactrd).
        .target(name: "IpactrClient", dependencies: ["IpactrBus", "IpactrSystem", "IpactrAPI"]),
        .executableTarget(name: "ipactrd", dependencies: [
            "IpactrDaemon", "IpactrBus", "IpactrImageStore", "IpactrSystem",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "ipactr-runtime", dependencies: ["IpactrRuntimeCLI"]),

        // Helpers the test suites share (processes, built binaries, test images, a private system bus).
        .target(name: "IpactrTestSupport", dependencies: ["IpactrSystem"], path: "Tests/Support"),
        .testTarget(name: "IpactrSystemTests", dependencies: ["IpactrSystem"]),
        .testTarget(name: "IpactrOCITests", dependencies: ["IpactrOCI"]),
        .testTarget(name: "IpactrImageStoreTests", dependencies: [
            "IpactrImageStore", "IpactrSystem", "IpactrOCI", "CArchive", "CIpactrShim", "IpactrTestSupport",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .testTarget(name: "IpactrMachineTests", dependencies: ["IpactrMachine", "IpactrSystem", "IpactrOCI", "CIpactrShim", "IpactrTestSupport"]),
        .testTarget(name: "IpactrBusTests", dependencies: ["IpactrBus", "IpactrSystem", "IpactrTestSupport"]),
        .testTarget(name: "IpactrRegistryTests", dependencies: [
            "IpactrRegistry", "IpactrPullWorker", "IpactrSystem", "IpactrOCI", "IpactrTestSupport",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], exclude: ["Fixtures"]),
        .testTarget(name: "IpactrDaemonTests", dependencies: ["IpactrDaemon", "IpactrClient", "IpactrBus", "IpactrMachine", "IpactrSystem", "IpactrTestSupport"]),
        .testTarget(name: "FreeIPAImageTests", dependencies: ["IpactrOCI"]),
        .testTarget(name: "IpactrRuntimeTests", dependencies: ["IpactrRuntime", "IpactrSystemdCgroup", "IpactrSystem", "IpactrOCI", "IpactrTestSupport"]),
    ],
    // Swift 5 mode: the C bridges (libarchive, sd-bus, libcap) hand out
    // pointers and globals that strict concurrency checking cannot reason about.
    swiftLanguageModes: [.v5]
)
