// swift-tools-version: 6.0
//
// Ferry: checkpoint, restore and live-migrate Linux containers.
// One module per concern; dependencies point downward only:
//   ferry -> FerryCLI -> FerryRuntime / FerryCRIU / FerryStore -> FerryArchive -> FerrySystem -> CFerryLinux
import PackageDescription

let strict: [SwiftSetting] = [
    .unsafeFlags(["-warnings-as-errors"])
]

let package = Package(
    name: "Ferry",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "ferry", targets: ["ferry"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // C libraries from Debian's -dev packages (and CRIU built by `make deps`).
        .systemLibrary(name: "CCRIU", path: "Sources/CCRIU", pkgConfig: "criu"),
        .systemLibrary(name: "CCRIUImages", path: "Sources/CCRIUImages", pkgConfig: "criu-images"),
        .systemLibrary(name: "CArchive", path: "Sources/CArchive", pkgConfig: "libarchive"),
        .systemLibrary(name: "CSeccomp", path: "Sources/CSeccomp", pkgConfig: "libseccomp"),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd"),
        .systemLibrary(name: "CNftables", path: "Sources/CNftables", pkgConfig: "libnftables"),

        // The few things Swift cannot do safely: clone/setns/pivot_root before exec.
        .target(name: "CFerryLinux", path: "Sources/CFerryLinux"),

        .target(
            name: "FerrySystem",
            dependencies: [
                "CFerryLinux",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "FerryArchive",
            dependencies: [
                "FerrySystem", "CArchive", "CZstd",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "FerryStore",
            dependencies: [
                "FerrySystem", "FerryArchive",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // Bridge networks on the host: links over rtnetlink (CFerryLinux), rules via libnftables.
        .target(
            name: "FerryNetwork",
            dependencies: ["FerrySystem", "FerryStore", "CFerryLinux", "CNftables", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        .target(
            name: "FerryRuntime",
            dependencies: [
                "FerrySystem", "FerryStore", "FerryNetwork", "FerryArchive", "CFerryLinux", "CSeccomp",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "FerryCRIU",
            dependencies: [
                "FerrySystem", "CCRIU", "CCRIUImages",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "FerryCheckpoint",
            dependencies: [
                "FerrySystem", "FerryStore", "FerryRuntime", "FerryNetwork", "FerryCRIU", "FerryArchive", "FerryMigration", "CFerryLinux",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The migration wire protocol and transport: never imports the runtime.
        .target(
            name: "FerryMigration",
            dependencies: [
                "FerrySystem",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "FerryCLI",
            dependencies: [
                "FerrySystem", "FerryStore", "FerryRuntime", "FerryCRIU", "FerryArchive", "FerryCheckpoint", "FerryMigration", "FerryNetwork",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(name: "ferry", dependencies: ["FerryCLI"], swiftSettings: strict),

        // Tier 1 and 2: unit tests and unprivileged real-kernel tests.
        .target(name: "FerryTestSupport", dependencies: ["FerrySystem"], path: "Tests/Support"),
        .testTarget(name: "FerrySystemTests", dependencies: ["FerrySystem"]),
        .testTarget(name: "FerryArchiveTests", dependencies: ["FerryArchive", "FerrySystem", "FerryTestSupport"]),
        .testTarget(
            name: "FerryStoreTests",
            dependencies: [
                "FerryStore", "FerryArchive", "FerrySystem", "FerryTestSupport", "CArchive",
                .product(name: "Crypto", package: "swift-crypto"),
            ]),
        .testTarget(name: "FerryRuntimeTests", dependencies: ["FerryRuntime", "FerryStore", "FerryArchive", "FerrySystem", "CFerryLinux"]),
        .testTarget(name: "FerryCRIUTests", dependencies: ["FerryCRIU", "FerrySystem", "FerryTestSupport"]),
        .testTarget(
            name: "FerryCheckpointTests",
            dependencies: ["FerryCheckpoint", "FerryArchive", "FerryStore", "FerrySystem", "FerryCRIU", "FerryMigration", "FerryTestSupport"]),
        .testTarget(name: "FerryMigrationTests", dependencies: ["FerryMigration", "FerrySystem", "FerryTestSupport"]),
        .testTarget(name: "FerryCLITests", dependencies: ["FerryCLI", "FerryRuntime", "FerryStore"]),
        .testTarget(name: "FerryNetworkTests", dependencies: ["FerryNetwork", "FerryStore"]),
        .testTarget(name: "FerryTestSupportTests", dependencies: ["FerryTestSupport"], path: "Tests/SupportTests"),
        // Tier 3: root + real kernel + real CRIU, driving the built `ferry` binary.
        .testTarget(
            name: "FerryIntegrationTests",
            dependencies: ["FerrySystem", "FerryTestSupport"],
            path: "Integration"
        ),
    ]
)
