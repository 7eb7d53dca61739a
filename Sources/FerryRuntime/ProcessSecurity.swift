import FerrySystem
import Foundation

/// What a container's processes may do, from its spec, in the form the spawn shim
/// applies: capability masks, no_new_privs, the compiled seccomp program, identity and
/// resource limits. The init and every `ferry exec` get the same.
public struct ProcessSecurity: Sendable, Equatable {
    public var bounding: UInt64
    public var effective: UInt64
    public var permitted: UInt64
    public var inheritable: UInt64
    public var ambient: UInt64
    public var noNewPrivileges: Bool
    /// `struct sock_filter[]`; nil: no filter.
    public var seccompProgram: [UInt8]?
    public var uid: UInt32
    public var gid: UInt32
    public var groups: [UInt32]
    public var rlimits: [Rlimit]

    public struct Rlimit: Sendable, Equatable {
        public var resource: Int32
        public var soft: UInt64
        public var hard: UInt64
    }

    /// RLIMIT_* by name (asm-generic/resource.h numbering, as on x86_64 and arm64).
    public static let rlimitNumbers: [String: Int32] = [
        "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4, "RLIMIT_RSS": 5,
        "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10,
        "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
    ]

    /// The security of the spec's process.
    /// - Parameter held: the capabilities this process holds (its permitted set): no
    ///   container can get more, and a host whose root lacks some (here CAP_SYS_RESOURCE
    ///   may be missing) still runs `--privileged` containers with all it has.
    public static func of(_ spec: OCISpec, held: UInt64 = ProcessSecurity.heldCapabilities()) throws(RuntimeError) -> ProcessSecurity {
        let user = spec.process.user
        let capabilities = spec.process.capabilities ?? CapabilitySet.spec(CapabilitySet.podmanDefault, uid: user.uid)
        var rlimits: [Rlimit] = []
        for limit in spec.process.rlimits ?? [] {
            guard let number = rlimitNumbers[limit.type] else {
                throw RuntimeError(.invalidArgument, "unknown rlimit '\(limit.type)'")
            }
            rlimits.append(Rlimit(resource: number, soft: limit.soft, hard: limit.hard))
        }
        return ProcessSecurity(
            bounding: try CapabilitySet.mask(capabilities.bounding) & held,
            effective: try CapabilitySet.mask(capabilities.effective) & held,
            permitted: try CapabilitySet.mask(capabilities.permitted) & held,
            inheritable: try CapabilitySet.mask(capabilities.inheritable) & held,
            ambient: try CapabilitySet.mask(capabilities.ambient) & held,
            noNewPrivileges: spec.process.noNewPrivileges ?? false,
            seccompProgram: try spec.linux?.seccomp.map { profile throws(RuntimeError) in try SeccompFilter.compile(profile) },
            uid: user.uid, gid: user.gid, groups: user.additionalGids ?? [], rlimits: rlimits
        )
    }

    /// The same security for another identity (`ferry exec --user`), with the
    /// capabilities `CapabilitySet.spec` gives that identity: root gets the container's
    /// bounding set; anyone else keeps only the ambient set, which holds exactly the
    /// capabilities a non-root container was given with --cap-add (none for a root
    /// container), as podman does for a non-root exec. The bounding set, seccomp,
    /// no_new_privs and rlimits stay: exec never widens what the container may do.
    public func switchingUser(to user: OCISpec.User) -> ProcessSecurity {
        var switched = self
        switched.uid = user.uid
        switched.gid = user.gid
        switched.groups = user.additionalGids ?? []
        guard user.uid != uid else { return switched }
        let held = user.uid == 0 ? bounding : ambient
        switched.effective = held
        switched.permitted = held
        switched.inheritable = user.uid == 0 ? 0 : held
        switched.ambient = user.uid == 0 ? 0 : held
        return switched
    }

    /// This process's permitted capabilities (CapPrm in /proc/self/status).
    public static func heldCapabilities() -> UInt64 {
        guard let status = try? Files.readString("/proc/self/status") else { return ~0 }
        for line in status.split(separator: "\n") where line.hasPrefix("CapPrm:") {
            if let value = UInt64(line.dropFirst("CapPrm:".count).trimmingCharacters(in: .whitespaces), radix: 16) { return value }
        }
        return ~0
    }
}
