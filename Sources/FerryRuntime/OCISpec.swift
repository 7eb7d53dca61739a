/// The subset of the OCI runtime specification (config.json) that Ferry reads and writes.
///
/// A container's config lives in its state directory as an OCI config.json, so a bundle
/// made by `runc spec` is valid input too. Fields Ferry does not act on (capabilities,
/// seccomp, rlimits...) are not modelled; decoding ignores them.
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

        public init(terminal: Bool? = false, user: User = User(), args: [String], env: [String]?, cwd: String) {
            self.terminal = terminal
            self.user = user
            self.args = args
            self.env = env
            self.cwd = cwd
        }
    }

    public struct User: Codable, Sendable, Equatable {
        public var uid: UInt32
        public var gid: UInt32

        public init(uid: UInt32 = 0, gid: UInt32 = 0) {
            self.uid = uid
            self.gid = gid
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

        public init(namespaces: [Namespace]?, resources: Resources?, cgroupsPath: String? = nil) {
            self.namespaces = namespaces
            self.resources = resources
            self.cgroupsPath = cgroupsPath
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

        public init(memory: Memory? = nil, cpu: CPU? = nil, pids: Pids? = nil) {
            self.memory = memory
            self.cpu = cpu
            self.pids = pids
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
