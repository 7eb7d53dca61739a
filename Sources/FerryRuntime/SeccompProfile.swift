import Foundation

/// Seccomp profiles as values: Ferry's default, and the docker/OCI JSON a user gives with
/// `--security-opt seccomp=FILE.json`, both turned into the spec's `linux.seccomp`.
public enum SeccompProfile {
    /// errno values the profiles return.
    static let eperm: UInt32 = 1
    static let enosys: UInt32 = 38

    /// System calls the default profile refuses (EPERM) unless the container holds the
    /// capability that makes them legitimate; "" means always. The effect of
    /// containers-common's default profile, written as a deny list.
    static let denied: [(capabilities: [String], names: [String])] = [
        // Kernel keyrings are not namespaced; obsolete or never-implemented calls.
        (
            [],
            [
                "keyctl", "add_key", "request_key", "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old",
                "create_module", "query_module", "get_kernel_syms", "afs_syscall", "tuxcall", "security", "putpmsg", "getpmsg",
                "vserver",
            ]
        ),
        // Mounts, namespaces, swap, quotas, fanotify: the host's view of storage.
        (
            ["CAP_SYS_ADMIN"],
            [
                "mount", "umount", "umount2", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
                "pivot_root", "unshare", "setns", "swapon", "swapoff", "quotactl", "quotactl_fd", "lookup_dcookie", "fanotify_init",
            ]
        ),
        (["CAP_SYS_ADMIN", "CAP_BPF"], ["bpf"]),
        (["CAP_SYS_ADMIN", "CAP_PERFMON"], ["perf_event_open"]),
        (["CAP_DAC_READ_SEARCH"], ["open_by_handle_at"]),
        (["CAP_SYS_BOOT"], ["reboot", "kexec_load", "kexec_file_load"]),
        (["CAP_SYS_MODULE"], ["init_module", "finit_module", "delete_module"]),
        (["CAP_SYS_TIME"], ["settimeofday", "stime", "clock_settime"]),
        (["CAP_SYS_PACCT"], ["acct"]),
        (["CAP_SYS_PTRACE"], ["kcmp", "pidfd_getfd", "userfaultfd"]),
        (["CAP_SYS_RAWIO"], ["iopl", "ioperm"]),
        (["CAP_SYS_NICE"], ["move_pages", "migrate_pages"]),
        (["CAP_SYSLOG"], ["syslog"]),
        (["CAP_SYS_TTY_CONFIG"], ["vhangup"]),
    ]

    /// The namespace flags clone(2) may not pass without CAP_SYS_ADMIN: CLONE_NEWNS,
    /// NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
    static let cloneNamespaceFlags: UInt64 = 0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000

    /// The personalities a container may switch to: PER_LINUX, PER_LINUX32, UNAME26 and
    /// their combination, and the query 0xffffffff. Others (ADDR_NO_RANDOMIZE,
    /// READ_IMPLIES_EXEC...) weaken the process's own defences.
    static let personalities: [UInt64] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff]

    /// Ferry's default profile for a container holding `capabilities`.
    ///
    /// libseccomp cannot compare one argument twice in a rule, so "personality with
    /// another value" cannot be a deny rule; the profile is therefore an allow list, as
    /// containers-common's is: every system call libseccomp knows for this machine
    /// (`known`) but the denied ones, personality and clone with their allowed arguments,
    /// and ENOSYS for anything else (clone3 among them, whose flags sit in memory seccomp
    /// cannot read; the C library then falls back to clone).
    /// - Parameter architecture: the machine's (`SeccompFilter.nativeArchitecture`); its
    ///   32-bit companions are added, so a 32-bit program gets the same rules instead of
    ///   being killed for its architecture.
    public static func defaultProfile(capabilities: [String], known: [String], architecture: String = "SCMP_ARCH_X86_64") -> OCISpec.Seccomp {
        let held = Set(capabilities)
        var refused: Set<String> = []
        for group in denied where group.capabilities.isEmpty || held.isDisjoint(with: group.capabilities) {
            refused.formUnion(group.names)
        }
        let admin = held.contains("CAP_SYS_ADMIN")
        var special: Set<String> = ["personality", "clone"]
        if !admin { special.insert("clone3") }
        let allowed = known.filter { !refused.contains($0) && !special.contains($0) }.sorted()
        var rules: [OCISpec.Seccomp.Syscall] = [OCISpec.Seccomp.Syscall(names: allowed, action: "SCMP_ACT_ALLOW")]
        for value in personalities {
            rules.append(
                .init(names: ["personality"], action: "SCMP_ACT_ALLOW", args: [.init(index: 0, value: value, op: "SCMP_CMP_EQ")]))
        }
        if admin {
            rules.append(.init(names: ["clone"], action: "SCMP_ACT_ALLOW"))
        } else {
            rules.append(
                .init(
                    names: ["clone"], action: "SCMP_ACT_ALLOW",
                    args: [.init(index: 0, value: cloneNamespaceFlags, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ")]))
        }
        let refusedKnown = known.filter { refused.contains($0) }.sorted()
        if !refusedKnown.isEmpty {
            rules.append(.init(names: refusedKnown, action: "SCMP_ACT_ERRNO", errnoRet: eperm))
        }
        let companions: [String: [String]] = [
            "SCMP_ARCH_X86_64": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"], "SCMP_ARCH_AARCH64": ["SCMP_ARCH_ARM"],
        ]
        return OCISpec.Seccomp(
            defaultAction: "SCMP_ACT_ERRNO", defaultErrnoRet: enosys, architectures: [architecture] + (companions[architecture] ?? []),
            syscalls: rules)
    }

    /// A profile file in docker's format (containers-common's seccomp.json is one) or the
    /// OCI form, for a container holding `capabilities` on a machine with `architecture`
    /// (libseccomp's "SCMP_ARCH_X86_64") and kernel `kernel` ("6.1.0-13-amd64"): rules
    /// whose `includes`/`excludes` do not fit are left out, as podman does.
    public static func parse(
        _ data: Data, capabilities: [String], architecture: String, kernel: String, source: String
    ) throws(RuntimeError) -> OCISpec.Seccomp {
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: data)
        } catch {
            throw RuntimeError(.invalidArgument, "seccomp profile '\(source)' is not a valid profile", cause: error)
        }
        var architectures = file.architectures ?? []
        for entry in file.archMap ?? [] where entry.architecture == architecture {
            architectures = [entry.architecture] + (entry.subArchitectures ?? [])
        }
        let held = Set(capabilities)
        var rules: [OCISpec.Seccomp.Syscall] = []
        for rule in file.syscalls ?? [] {
            var names = rule.names ?? []
            if let name = rule.name { names.append(name) }
            if let includes = rule.includes {
                if let caps = includes.caps, !caps.allSatisfy(held.contains) { continue }
                if let arches = includes.arches, !arches.contains(where: { matches($0, architecture) }) { continue }
                if let minimum = includes.minKernel, !kernelAtLeast(kernel, minimum) { continue }
            }
            if let excludes = rule.excludes {
                if let caps = excludes.caps, caps.contains(where: held.contains) { continue }
                if let arches = excludes.arches, arches.contains(where: { matches($0, architecture) }) { continue }
                if let minimum = excludes.minKernel, kernelAtLeast(kernel, minimum) { continue }
            }
            guard !names.isEmpty else { continue }
            rules.append(.init(names: names, action: rule.action, errnoRet: rule.errnoRet, args: rule.args))
        }
        return OCISpec.Seccomp(
            defaultAction: file.defaultAction, defaultErrnoRet: file.defaultErrnoRet, architectures: architectures.isEmpty ? nil : architectures,
            syscalls: rules)
    }

    /// docker's arch spellings ("amd64") beside libseccomp's ("SCMP_ARCH_X86_64").
    static func matches(_ arch: String, _ architecture: String) -> Bool {
        let aliases: [String: String] = [
            "amd64": "SCMP_ARCH_X86_64", "x86_64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64", "aarch64": "SCMP_ARCH_AARCH64",
            "386": "SCMP_ARCH_X86", "x86": "SCMP_ARCH_X86", "x32": "SCMP_ARCH_X32", "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
            "riscv64": "SCMP_ARCH_RISCV64",
        ]
        return (aliases[arch] ?? arch) == architecture
    }

    /// "6.1.0-13-amd64" >= "4.8".
    static func kernelAtLeast(_ kernel: String, _ minimum: String) -> Bool {
        func numbers(_ text: String) -> [Int] {
            text.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        }
        let have = numbers(kernel)
        let want = numbers(minimum)
        for index in 0..<max(have.count, want.count) {
            let h = index < have.count ? have[index] : 0
            let w = index < want.count ? want[index] : 0
            if h != w { return h > w }
        }
        return true
    }

    /// The file format: docker's (archMap, includes/excludes) and the OCI form.
    struct File: Decodable {
        var defaultAction: String
        var defaultErrnoRet: UInt32?
        var architectures: [String]?
        var archMap: [ArchMap]?
        var syscalls: [Rule]?

        struct ArchMap: Decodable {
            var architecture: String
            var subArchitectures: [String]?
        }

        struct Rule: Decodable {
            var name: String?
            var names: [String]?
            var action: String
            var errnoRet: UInt32?
            var args: [OCISpec.Seccomp.Argument]?
            var includes: Filter?
            var excludes: Filter?
        }

        struct Filter: Decodable {
            var caps: [String]?
            var arches: [String]?
            var minKernel: String?
        }
    }
}
