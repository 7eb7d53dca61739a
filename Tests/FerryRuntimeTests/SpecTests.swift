import FerryStore
import Foundation
import Testing

@testable import FerryRuntime

@Suite struct RunOptionParserTests {
    @Test func volumes() throws {
        #expect(try RunOptionParser.volume("data:/data") == VolumeMount(kind: .named, source: "data", destination: "/data", readOnly: false))
        #expect(try RunOptionParser.volume("/usr:/usr:ro") == VolumeMount(kind: .bind, source: "/usr", destination: "/usr", readOnly: true))
        #expect(try RunOptionParser.volume("/srv:/mnt/./x/:rw").destination == "/mnt/x")
        for bad in ["data", "data:", ":/data", "data:relative", "data:/a:rx", "a/b:/data", "data:/../etc", "a:b:c:d"] {
            #expect(throws: RuntimeError.self, "\(bad)") { try RunOptionParser.volume(bad) }
        }
    }

    @Test func environment() throws {
        #expect(try RunOptionParser.environment("A=b=c") == "A=b=c")
        #expect(try RunOptionParser.environment("A=") == "A=")
        #expect(try RunOptionParser.environment("HOME", lookup: { _ in "/root" }) == "HOME=/root")
        #expect(throws: RuntimeError.self) { try RunOptionParser.environment("=x") }
        #expect(throws: RuntimeError.self) { try RunOptionParser.environment("UNSET", lookup: { _ in nil }) }
    }

    @Test func memory() throws {
        #expect(try RunOptionParser.memory("64m") == 64 << 20)
        #expect(try RunOptionParser.memory("1g") == 1 << 30)
        #expect(try RunOptionParser.memory("512MiB") == 512 << 20)
        #expect(try RunOptionParser.memory("1.5g") == 3 << 29)
        #expect(try RunOptionParser.memory("8388608") == 8 << 20)
        for bad in ["lots", "", "12q", "1k", "-5m"] {
            #expect(throws: RuntimeError.self, "\(bad)") { try RunOptionParser.memory(bad) }
        }
        func refusal(_ spec: String) -> String? {
            do {
                _ = try RunOptionParser.memory(spec)
                return nil
            } catch {
                return "\(error)"
            }
        }
        #expect(refusal("1k") == "invalid memory size '1k': must be at least 4m")
        #expect(refusal("99999999999g") == "invalid memory size '99999999999g': too large (at most 8388607t)")
    }

    @Test func cpusAndPids() throws {
        #expect(try RunOptionParser.cpus("1.5") == 1.5)
        #expect(throws: RuntimeError.self) { try RunOptionParser.cpus("0") }
        #expect(throws: RuntimeError.self) { try RunOptionParser.cpus("many") }
        #expect(try RunOptionParser.pidsLimit("100") == 100)
        #expect(throws: RuntimeError.self) { try RunOptionParser.pidsLimit("-1") }
    }
}

@Suite struct SpecBuilderTests {
    func options() -> RunOptions {
        RunOptions(
            command: ["sh", "-c", "echo hi"],
            environment: ["PATH=/custom", "A=1"],
            workingDirectory: "/work",
            network: .none,
            volumes: [
                VolumeMount(kind: .named, source: "data", destination: "/data", readOnly: false),
                VolumeMount(kind: .bind, source: "/usr", destination: "/usr", readOnly: true),
            ],
            limits: CgroupLimits(memoryBytes: 64 << 20, cpus: 1.5, pidsMax: 50)
        )
    }

    @Test func buildsARuncLikeSpec() throws {
        let spec = try SpecBuilder.spec(for: options(), id: "0123456789abcdef", cgroupParent: "ferry-aaaa", volumeSources: ["data": "/root/volumes/data/_data"])
        #expect(spec.process.args == ["sh", "-c", "echo hi"])
        #expect(spec.process.cwd == "/work")
        #expect(spec.hostname == "0123456789ab")
        let env = spec.process.env ?? []
        #expect(env.contains("PATH=/custom"))
        #expect(!env.contains { $0.hasPrefix("PATH=/usr/local") }, "a user's PATH replaces the default")
        #expect(env.contains("A=1"))
        #expect(spec.createsNamespace("network"))
        #expect(spec.createsNamespace("pid") && spec.createsNamespace("mount"))
        #expect(spec.linux?.cgroupsPath == "ferry-aaaa/0123456789abcdef")
        let data = try #require(spec.mounts.first { $0.destination == "/data" })
        #expect(data.source == "/root/volumes/data/_data")
        #expect(data.options?.contains("rw") == true)
        let usr = try #require(spec.mounts.first { $0.destination == "/usr" })
        #expect(usr.options?.contains("ro") == true)
        #expect(SpecBuilder.limits(of: spec) == options().limits)
        #expect(spec.linux?.resources?.cpu?.quota == 150_000)
    }

    @Test func hostNetworkHasNoNetworkNamespace() throws {
        var opts = options()
        opts.network = .host
        let spec = try SpecBuilder.spec(for: opts, id: "x", cgroupParent: "p", volumeSources: [:])
        #expect(!spec.createsNamespace("network"))
    }

    @Test func roundTripsThroughJSON() throws {
        let spec = try SpecBuilder.spec(for: options(), id: "x", cgroupParent: "p", volumeSources: [:])
        let decoded = try JSONDecoder().decode(OCISpec.self, from: try JSONEncoder().encode(spec))
        #expect(decoded == spec)
    }
}

@Suite struct MountPlanTests {
    @Test func optionsBecomeFlagsAndData() throws {
        let plan = try MountPlan.plan(SpecBuilder.defaultMounts)
        let dev = try #require(plan.first { $0.target == "/dev" })
        #expect(dev.kind == .filesystem)
        #expect(dev.fsType == "tmpfs")
        #expect(dev.flags & UInt(MS_NOSUID) != 0)
        #expect(dev.flags & UInt(MS_STRICTATIME) != 0)
        #expect(dev.data == "mode=755,size=65536k")
        let sys = try #require(plan.first { $0.target == "/sys" })
        #expect(sys.readOnly)
        let pts = try #require(plan.first { $0.target == "/dev/pts" })
        #expect(pts.data == "newinstance,ptmxmode=0666,mode=0620")
    }

    @Test func bindsAndBundleRelativeSources() throws {
        let mounts = [
            OCISpec.Mount(destination: "/data", type: "bind", source: "/srv/data", options: ["rbind", "rprivate", "ro"]),
            OCISpec.Mount(destination: "/etc/hosts", type: nil, source: "hosts", options: ["bind"]),
            OCISpec.Mount(destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["ro"]),
        ]
        let plan = try MountPlan.plan(mounts, bundleDirectory: "/bundles/one")
        #expect(plan.count == 2, "cgroup mounts are skipped")
        #expect(plan[0] == PlannedMount(kind: .bind, source: "/srv/data", target: "/data", fsType: "", flags: UInt(MS_RDONLY), data: nil, recursive: true))
        #expect(plan[1].source == "/bundles/one/hosts")
        #expect(!plan[1].recursive)
    }

    @Test func rejectsEscapingDestinations() {
        #expect(throws: RuntimeError.self) {
            try MountPlan.plan([OCISpec.Mount(destination: "/a/../../etc", type: "tmpfs", source: "tmpfs", options: nil)])
        }
        #expect(throws: RuntimeError.self) {
            try MountPlan.plan([OCISpec.Mount(destination: "relative", type: "tmpfs", source: "tmpfs", options: nil)])
        }
    }
}
