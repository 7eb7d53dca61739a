/// The subset of the OCI runtime specification (config.json) that Ferry reads and writes.
///
/// A container's config lives in its state directory as an OCI config.json, so a bundle
/// made by `runc spec` is valid input too. Fields Ferry does not act on (apparmor, selinux,
/// devices...) are not modelled; decoding ignores them.
public struct OCISpec: Codable, Sendable, Equatable {
    public var ociVersion: String
    public var process: Process
    public var root: Root
    public var hostname: String?
    public var mounts: [Mount]
    public var linux: Linux?
    public var annotations: [String: String]?

    public init(
        ociVersion: String = "1.0.2", process: Process, root: Root, hostname: String?, mounts: [Mount], linux: Linux?, annotations: [String: String]? = nil
    ) {
        self.ociVersion = ociVersion
        self.process = process
        self.root = root
        self.hostname = hostname
        self.mounts = mounts
        self.linux = linux
        self.annotations = annotations
    }

    public struct Process: Codable, Sendable, Equatable {
        public var terminal: Bool?
        public var user: User
        public var args: [String]
        public var env: [String]?
        public var cwd: String
        /// Absent: Ferry's defaults (podman's capability set). Present but with a set
        /// missing: that set is empty, as in runc.
        public var capabilities: Capabilities?
        public var noNewPrivileges: Bool?
        public var rlimits: [Rlimit]?

        public init(
            terminal: Bool? = false, user: User = User(), args: [String], env: [String]?, cwd: String, capabilities: Capabilities? = nil,
            noNewPrivileges: Bool? = nil, rlimits: [Rlimit]? = nil
        ) {
            self.terminal = terminal
            self.user = user
            self.args = args
            self.env = env
            self.cwd = cwd
            self.capabilities = capabilities
            self.noNewPrivileges = noNewPrivileges
            self.rlimits = rlimits
        }
    }

    public struct User: Codable, Sendable, Equatable {
        public var uid: UInt32
        public var gid: UInt32
        public var additionalGids: [UInt32]?

        public init(uid: UInt32 = 0, gid: UInt32 = 0, additionalGids: [UInt32]? = nil) {
            self.uid = uid
            self.gid = gid
            self.additionalGids = additionalGids
        }
    }

    /// Capability names as the spec spells them ("CAP_CHOWN").
    public struct Capabilities: Codable, Sendable, Equatable {
        public var bounding: [String]?
        public var effective: [String]?
        public var inheritable: [String]?
        public var permitted: [String]?
        public var ambient: [String]?

        public init(bounding: [String]?, effective: [String]?, inheritable: [String]?, permitted: [String]?, ambient: [String]?) {
            self.bounding = bounding
            self.effective = effective
            self.inheritable = inheritable
            self.permitted = permitted
            self.ambient = ambient
        }
    }

    /// One resource limit: `type` is "RLIMIT_NOFILE" and the like.
    public struct Rlimit: Codable, Sendable, Equatable {
        public var type: String
        public var hard: UInt64
        public var soft: UInt64

        public init(type: String, hard: UInt64, soft: UInt64) {
            self.type = type
            self.hard = hard
            self.soft = soft
        }
    }

    /// `linux.seccomp`: the OCI form (architectures as "SCMP_ARCH_X86_64").
    public struct Seccomp: Codable, Sendable, Equatable {
        public var defaultAction: String
        public var defaultErrnoRet: UInt32?
        public var architectures: [String]?
        public var flags: [String]?
        public var syscalls: [Syscall]?

        public init(defaultAction: String, defaultErrnoRet: UInt32? = nil, architectures: [String]? = nil, syscalls: [Syscall]? = nil) {
            self.defaultAction = defaultAction
            self.defaultErrnoRet = defaultErrnoRet
            self.architectures = architectures
            self.syscalls = syscalls
        }

        public struct Syscall: Codable, Sendable, Equatable {
            public var names: [String]
            public var action: String
            public var errnoRet: UInt32?
            public var args: [Argument]?

            public init(names: [String], action: String, errnoRet: UInt32? = nil, args: [Argument]? = nil) {
                self.names = names
                self.action = action
                self.errnoRet = errnoRet
                self.args = args
            }
        }

        public struct Argument: Codable, Sendable, Equatable {
            public var index: UInt32
            public var value: UInt64
            public var valueTwo: UInt64?
            public var op: String

            public init(index: UInt32, value: UInt64, valueTwo: UInt64? = nil, op: String) {
                self.index = index
                self.value = value
                self.valueTwo = valueTwo
                self.op = op
            }
        }
    }

    public struct Root: Codable, Sendable, Equatable {
        public var path: String
        public var readonly: Bool?

        public init(path: String, readonly: Bool? = false) {
            self.path = path
            self.readonly = readonly
        }
    }

    public struct Mount: Codable, Sendable, Equatable {
        public var destination: String
        public var type: String?
        public var source: String?
        public var options: [String]?

        public init(destination: String, type: String?, source: String?, options: [String]?) {
            self.destination = destination
            self.type = type
            self.source = source
            self.options = options
        }
    }

    public struct Linux: Codable, Sendable, Equatable {
        public var namespaces: [Namespace]?
        public var resources: Resources?
        public var cgroupsPath: String?
        /// Absent: no filter (a bundle without one, or `seccomp=unconfined`).
        public var seccomp: Seccomp?
        /// Paths made unreadable: a file gets /dev/null bound over it, a directory an
        /// empty read-only tmpfs.
        public var maskedPaths: [String]?
        /// Paths bound onto themselves read-only.
        public var readonlyPaths: [String]?

        public init(
            namespaces: [Namespace]?, resources: Resources?, cgroupsPath: String? = nil, seccomp: Seccomp? = nil, maskedPaths: [String]? = nil,
            readonlyPaths: [String]? = nil
        ) {
            self.namespaces = namespaces
            self.resources = resources
            self.cgroupsPath = cgroupsPath
            self.seccomp = seccomp
            self.maskedPaths = maskedPaths
            self.readonlyPaths = readonlyPaths
        }
    }

    public struct Namespace: Codable, Sendable, Equatable {
        public var type: String
        public var path: String?

        public init(type: String, path: String? = nil) {
            self.type = type
            self.path = path
        }
    }

    public struct Resources: Codable, Sendable, Equatable {
        public var memory: Memory?
        public var cpu: CPU?
        public var pids: Pids?
        /// The device cgroup's rules, in order; absent: devices are not restricted.
        public var devices: [DeviceRule]?

        public init(memory: Memory? = nil, cpu: CPU? = nil, pids: Pids? = nil, devices: [DeviceRule]? = nil) {
            self.memory = memory
            self.cpu = cpu
            self.pids = pids
            self.devices = devices
        }
    }

    /// One device cgroup rule: type "a", "c" or "b"; nil major/minor is any ("*").
    public struct DeviceRule: Codable, Sendable, Equatable {
        public var allow: Bool
        public var type: String?
        public var major: Int64?
        public var minor: Int64?
        public var access: String?

        public init(allow: Bool, type: String? = nil, major: Int64? = nil, minor: Int64? = nil, access: String? = nil) {
            self.allow = allow
            self.type = type
            self.major = major
            self.minor = minor
            self.access = access
        }

        /// The line the v1 devices controller takes: "c 1:3 rwm", "a"; nil for a rule
        /// the controller would not take (a spec is untrusted input).
        public var cgroupRule: String? {
            let kind = type ?? "a"
            let access = access ?? "rwm"
            guard ["a", "b", "c"].contains(kind), !access.isEmpty, access.allSatisfy({ "rwm".contains($0) }),
                (major ?? 0) >= 0, (minor ?? 0) >= 0
            else { return nil }
            if kind == "a" { return "a" }
            let majorText = major.map(String.init) ?? "*"
            let minorText = minor.map(String.init) ?? "*"
            return "\(kind) \(majorText):\(minorText) \(access)"
        }
    }

    public struct Memory: Codable, Sendable, Equatable {
        public var limit: Int64?
        public init(limit: Int64?) { self.limit = limit }
    }

    public struct CPU: Codable, Sendable, Equatable {
        public var quota: Int64?
        public var period: UInt64?
        public init(quota: Int64?, period: UInt64?) {
            self.quota = quota
            self.period = period
        }
    }

    public struct Pids: Codable, Sendable, Equatable {
        public var limit: Int64
        public init(limit: Int64) { self.limit = limit }
    }

    /// Whether the spec asks for a new namespace of `type` ("network", "pid"...): listed
    /// without a path.
    public func createsNamespace(_ type: String) -> Bool {
        linux?.namespaces?.contains { $0.type == type && ($0.path ?? "").isEmpty } ?? false
    }
}
