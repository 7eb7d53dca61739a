import Foundation
import Testing

@testable import FerryRuntime

@Suite struct CapabilityTests {
    @Test func podmanDefaultIsItsMask() throws {
        #expect(try CapabilitySet.mask(CapabilitySet.podmanDefault) == 0x8004_05fb)
    }

    @Test func addDropAndPrivileged() throws {
        let added = try CapabilitySet.resolve(add: ["net_raw", "CAP_SYS_ADMIN"], drop: ["chown"], privileged: false)
        #expect(added.contains("CAP_NET_RAW") && added.contains("CAP_SYS_ADMIN") && !added.contains("CAP_CHOWN"))
        #expect(try CapabilitySet.resolve(add: [], drop: ["ALL"], privileged: false).isEmpty)
        #expect(try CapabilitySet.resolve(add: ["KILL"], drop: ["all"], privileged: false) == ["CAP_KILL"])
        #expect(try CapabilitySet.resolve(add: ["ALL"], drop: ["MKNOD"], privileged: false).count == CapabilitySet.names.count - 1)
        #expect(try CapabilitySet.resolve(add: [], drop: [], privileged: true).count == CapabilitySet.names.count)
        #expect(throws: RuntimeError.self) { try CapabilitySet.resolve(add: ["FOO"], drop: [], privileged: false) }
        do {
            _ = try CapabilitySet.resolve(add: ["FOO"], drop: [], privileged: false)
        } catch {
            #expect(error.description == "--cap-add FOO: unknown capability")
        }
    }

    @Test func nonRootHoldsNothingButTheBoundingSet() {
        let spec = CapabilitySet.spec(CapabilitySet.podmanDefault, uid: 1000)
        #expect(spec.bounding == CapabilitySet.podmanDefault)
        #expect(spec.effective == [] && spec.permitted == [] && spec.ambient == [])
        let added = CapabilitySet.spec(CapabilitySet.podmanDefault + ["CAP_NET_RAW"], uid: 1000, added: ["net_raw"])
        #expect(added.effective == ["CAP_NET_RAW"] && added.ambient == ["CAP_NET_RAW"] && added.inheritable == ["CAP_NET_RAW"])
    }

    @Test func securityIsLimitedToWhatTheCallerHolds() throws {
        var options = RunOptions(command: ["true"])
        options.privileged = true
        let spec = try SpecBuilder.spec(for: options, id: "x", cgroupParent: "p", volumeSources: [:])
        let security = try ProcessSecurity.of(spec, held: 0xff)
        #expect(security.bounding == 0xff && security.effective == 0xff)
        #expect(spec.linux?.maskedPaths == nil, "--privileged lifts the masks")
    }
}

@Suite struct SeccompProfileTests {
    let known = ["read", "write", "mount", "keyctl", "personality", "clone", "clone3", "settimeofday", "bpf", "execve"]

    @Test func defaultDeniesWithoutTheCapabilities() {
        let profile = SeccompProfile.defaultProfile(capabilities: CapabilitySet.podmanDefault, known: known)
        #expect(profile.defaultAction == "SCMP_ACT_ERRNO" && profile.defaultErrnoRet == 38)
        let allowed = Set(profile.syscalls?.filter { $0.action == "SCMP_ACT_ALLOW" && $0.args == nil }.flatMap(\.names) ?? [])
        #expect(allowed == ["read", "write", "execve"])
        let refused = Set(profile.syscalls?.filter { $0.action == "SCMP_ACT_ERRNO" }.flatMap(\.names) ?? [])
        #expect(refused == ["mount", "keyctl", "settimeofday", "bpf"])
        let personality = profile.syscalls?.filter { $0.names == ["personality"] } ?? []
        #expect(personality.count == 5 && personality.allSatisfy { $0.args?.first?.op == "SCMP_CMP_EQ" })
        #expect(profile.syscalls?.first { $0.names == ["clone"] }?.args?.first?.op == "SCMP_CMP_MASKED_EQ")
    }

    @Test func capabilitiesAllowTheirSystemCalls() {
        let profile = SeccompProfile.defaultProfile(capabilities: ["CAP_SYS_ADMIN", "CAP_SYS_TIME"], known: known)
        let allowed = Set(profile.syscalls?.filter { $0.action == "SCMP_ACT_ALLOW" }.flatMap(\.names) ?? [])
        #expect(allowed.isSuperset(of: ["mount", "settimeofday", "bpf", "clone", "clone3"]))
        #expect(!allowed.contains("keyctl"), "keyrings are refused whatever the capabilities")
    }

    @Test func dockerFormatWithIncludesAndExcludes() throws {
        let json = """
            {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
             "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
             "syscalls": [
               {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
               {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
               {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
               {"names": ["uname"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
               {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
             ]}
            """
        let profile = try SeccompProfile.parse(
            Data(json.utf8), capabilities: CapabilitySet.podmanDefault, architecture: "SCMP_ARCH_X86_64", kernel: "6.1.0-13-amd64", source: "p.json")
        #expect(profile.architectures == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        let names = profile.syscalls?.flatMap(\.names) ?? []
        #expect(names == ["read", "write", "ptrace", "personality"])
        let old = try SeccompProfile.parse(
            Data(json.utf8), capabilities: ["CAP_SYS_ADMIN"], architecture: "SCMP_ARCH_X86_64", kernel: "4.4.0", source: "p.json")
        #expect(old.syscalls?.flatMap(\.names) == ["read", "write", "mount", "personality"])
        #expect(throws: RuntimeError.self) {
            try SeccompProfile.parse(Data("{}".utf8), capabilities: [], architecture: "SCMP_ARCH_X86_64", kernel: "6.1", source: "p.json")
        }
    }

    @Test func compilesToAProgram() throws {
        let profile = SeccompProfile.defaultProfile(capabilities: CapabilitySet.podmanDefault, known: SeccompFilter.knownSyscalls())
        let program = try SeccompFilter.compile(profile)
        #expect(program.count > 8 && program.count % 8 == 0)
        #expect(SeccompFilter.knownSyscalls().contains("openat"))
        #expect(throws: RuntimeError.self) { try SeccompFilter.compile(OCISpec.Seccomp(defaultAction: "SCMP_ACT_NOTIFY")) }
    }
}

@Suite struct SecurityOptionTests {
    @Test func securityOptions() throws {
        var options = RunOptions(command: ["true"])
        try RunOptionParser.securityOption("no-new-privileges", into: &options)
        #expect(options.noNewPrivileges)
        try RunOptionParser.securityOption("seccomp=unconfined", into: &options)
        #expect(options.seccomp == .unconfined)
        try RunOptionParser.securityOption("seccomp=/etc/p.json", into: &options)
        #expect(options.seccomp == .file("/etc/p.json"))
        #expect(throws: RuntimeError.self) { try RunOptionParser.securityOption("apparmor=x", into: &options) }
    }

    @Test func ulimits() throws {
        #expect(try RunOptionParser.ulimit("nofile=1024:2048") == OCISpec.Rlimit(type: "RLIMIT_NOFILE", hard: 2048, soft: 1024))
        #expect(try RunOptionParser.ulimit("core=-1") == OCISpec.Rlimit(type: "RLIMIT_CORE", hard: .max, soft: .max))
        for bad in ["nofile", "nofile=", "bogus=1", "nofile=2:1", "nofile=a", "nofile=1:2:3"] {
            #expect(throws: RuntimeError.self, "\(bad)") { try RunOptionParser.ulimit(bad) }
        }
    }

    @Test func tmpfsAndReservedDestinations() throws {
        #expect(try RunOptionParser.tmpfs("/run").options == ["rw", "noexec", "nosuid", "nodev"])
        #expect(try RunOptionParser.tmpfs("/run:size=1m,mode=1777").options == ["size=1m", "mode=1777"])
        for bad in ["run", "/proc", "/sys/x", "/a/../b"] {
            #expect(throws: RuntimeError.self, "\(bad)") { try RunOptionParser.tmpfs(bad) }
        }
        for bad in ["/tmp:/dev", "/tmp:/proc", "/tmp:/proc/sys", "/tmp:/sys/", "/tmp:/sys/fs/cgroup"] {
            #expect(throws: RuntimeError.self, "\(bad)") { try RunOptionParser.volume(bad) }
        }
        #expect(try RunOptionParser.volume("/tmp:/dev/shm").destination == "/dev/shm")
    }
}

@Suite struct UserResolverTests {
    func image() throws -> String {
        let root = NSTemporaryDirectory() + "ferry-users-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: "\(root)/etc", withIntermediateDirectories: true)
        try "root:x:0:0::/root:/bin/sh\n# comment\nwww:x:33:34::/var/www:/bin/sh\n".write(toFile: "\(root)/etc/passwd", atomically: true, encoding: .utf8)
        try "root:x:0:\nwww-data:x:34:\nstaff:x:50:www,other\naudio:x:63:\n".write(toFile: "\(root)/etc/group", atomically: true, encoding: .utf8)
        return root
    }

    @Test func namesAndNumbers() throws {
        let root = try image()
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(try UserResolver.resolve("www", groupAdd: [], rootfs: root) == OCISpec.User(uid: 33, gid: 34, additionalGids: [50]))
        #expect(try UserResolver.resolve("33", groupAdd: ["audio", "7"], rootfs: root) == OCISpec.User(uid: 33, gid: 34, additionalGids: [50, 63, 7]))
        #expect(try UserResolver.resolve("1000:staff", groupAdd: [], rootfs: root) == OCISpec.User(uid: 1000, gid: 50))
        #expect(try UserResolver.resolve("1000", groupAdd: [], rootfs: root) == OCISpec.User(uid: 1000, gid: 0))
        for bad in ["nobody", "www:nogroup", ":1", "1:"] {
            #expect(throws: RuntimeError.self, "\(bad)") { try UserResolver.resolve(bad, groupAdd: [], rootfs: root) }
        }
    }

    @Test func aSymlinkedPasswdStaysInsideTheImage() throws {
        let root = try image()
        defer { try? FileManager.default.removeItem(atPath: root) }
        // An absolute link resolves in the image (RESOLVE_IN_ROOT): the host's
        // /etc/passwd, which has "root", is never read.
        try FileManager.default.removeItem(atPath: "\(root)/etc/passwd")
        try FileManager.default.createSymbolicLink(atPath: "\(root)/etc/passwd", withDestinationPath: "/../../../../etc/elsewhere")
        #expect(throws: RuntimeError.self) { try UserResolver.resolve("root", groupAdd: [], rootfs: root) }
        try "root:x:0:0::/root:/bin/sh\nfromimage:x:77:77::/:/bin/sh\n".write(toFile: "\(root)/etc/elsewhere", atomically: true, encoding: .utf8)
        #expect(try UserResolver.resolve("fromimage", groupAdd: [], rootfs: root).uid == 77)
    }
}

@Suite struct DeviceRuleTests {
    @Test func linesForTheDevicesController() throws {
        #expect(OCISpec.DeviceRule(allow: false, access: "rwm").cgroupRule == "a")
        #expect(OCISpec.DeviceRule(allow: true, type: "c", major: 1, minor: 3, access: "rwm").cgroupRule == "c 1:3 rwm")
        #expect(OCISpec.DeviceRule(allow: true, type: "c", major: 136, access: "rwm").cgroupRule == "c 136:* rwm")
        #expect(OCISpec.DeviceRule(allow: true, type: "b", access: "m").cgroupRule == "b *:* m")
        #expect(OCISpec.DeviceRule(allow: true, type: "c 1:3 rwm\na", access: "m").cgroupRule == nil)
        #expect(OCISpec.DeviceRule(allow: true, type: "c", major: 1, minor: 3, access: "rwx").cgroupRule == nil)
        #expect(OCISpec.DeviceRule(allow: true, type: "c", major: -1, access: "r").cgroupRule == nil)
        let spec = try SpecBuilder.spec(for: RunOptions(command: ["true"]), id: "x", cgroupParent: "p", volumeSources: [:])
        #expect(spec.linux?.resources?.devices?.first == OCISpec.DeviceRule(allow: false, access: "rwm"), "deny everything first")
    }
}

@Suite struct ExecUserTests {
    private func security(uid: UInt32, added: [String] = []) throws -> ProcessSecurity {
        var options = RunOptions(command: ["true"])
        options.capAdd = added
        let spec = try SpecBuilder.spec(
            for: options, id: "x", cgroupParent: "p", volumeSources: [:], user: OCISpec.User(uid: uid, gid: uid), seccomp: nil)
        return try ProcessSecurity.of(spec, held: ~0)
    }

    @Test("exec as non-root in a root container drops every capability but keeps the bounding set")
    func rootToUser() throws {
        let root = try security(uid: 0)
        let user = root.switchingUser(to: OCISpec.User(uid: 1000, gid: 100, additionalGids: [10]))
        #expect(user.uid == 1000 && user.gid == 100 && user.groups == [10])
        #expect(user.effective == 0 && user.permitted == 0 && user.ambient == 0)
        #expect(user.bounding == root.bounding)
        #expect(user.seccompProgram == root.seccompProgram)
    }

    @Test("exec as root in a non-root container gets the bounding set; the same uid changes nothing else")
    func userToRoot() throws {
        let user = try security(uid: 1000, added: ["NET_RAW"])
        #expect(user.ambient != 0, "the added capability is ambient")
        let root = user.switchingUser(to: OCISpec.User(uid: 0, gid: 0))
        #expect(root.effective == user.bounding && root.permitted == user.bounding && root.ambient == 0)
        let same = user.switchingUser(to: OCISpec.User(uid: 1000, gid: 50))
        #expect(same.effective == user.effective && same.ambient == user.ambient && same.gid == 50)
    }
}
