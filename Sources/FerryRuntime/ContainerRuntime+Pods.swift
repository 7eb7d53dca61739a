import CFerryLinux
import FerryNetwork
import FerryStore
import FerrySystem
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Pods (podman's): network, ipc and uts namespaces that several containers share.
///
/// How the namespaces are held: `pod create` has a short-lived child unshare them and
/// bind-mount its nsfs files under `pods/<name>/ns/`, so they live without any process
/// (no infra container to supervise, restart or checkpoint). A container of the pod is
/// an ordinary container whose config.json lists those three namespaces with their
/// paths (OCI's way of joining), which its init setns()es into before it mounts
/// anything. The pod's address, MAC and published ports are held in the pod's record,
/// and its veth is made in the pinned network namespace at `pod create`; `pod rm`
/// deletes the veth, unmounts the three files (the namespaces end with their last
/// user) and syncs the host's nftables table and bridges with what is left.
extension ContainerRuntime {
    public var pods: PodStore { PodStore(root: root) }

    /// The containers of `pod`, any state.
    public func members(of pod: String) -> [ContainerRecord] {
        list().filter { $0.pod == pod }
    }

    /// `spec` changed to join `pod`'s namespaces: network, ipc and uts listed with the
    /// pod's paths, and no hostname of its own (the pod's uts namespace has it).
    static func joining(_ pod: PodRecord, spec: OCISpec, store: PodStore) -> OCISpec {
        var spec = spec
        var namespaces = (spec.linux?.namespaces ?? []).filter { !["network", "ipc", "uts"].contains($0.type) }
        for (type, _) in PodStore.namespaceFiles {
            namespaces.append(OCISpec.Namespace(type: type, path: store.namespacePath(pod.name, type: type)))
        }
        spec.linux?.namespaces = namespaces
        spec.hostname = nil
        spec.process.env = (spec.process.env ?? []).filter { !$0.hasPrefix("HOSTNAME=") } + ["HOSTNAME=\(pod.hostname)"]
        return spec
    }

    /// `pod create`: the namespaces pinned, then (with `network`) the address allocated,
    /// the veth made and the ports published. A failure undoes every step.
    public func createPod(name: String, hostname: String?, network request: NetworkRequest?) throws -> PodRecord {
        try Self.requireRoot()
        try Names.validate(name, kind: "pod")
        return try pods.withLock { () throws -> PodRecord in
            if pods.exists(name) {
                throw StoreError(.alreadyExists, "the pod name '\(name)' is already in use (remove it with: ferry pod rm \(name))")
            }
            var record = PodRecord(id: ContainerStore.newID(), name: name, created: Date(), hostname: hostname ?? name, endpoint: nil)
            try pods.prepare(name)
            do {
                try pinNamespaces(record)
                guard let request else {
                    try pods.save(record)
                    return record
                }
                try networks.withLock {
                    var network = try networks.load(request.network)
                    if network.isDefault, !networks.isRecorded(network.name) {
                        network.created = Date()
                        try networks.save(network)
                    }
                    let others = containers.list().compactMap(\.endpoint) + pods.list().compactMap(\.endpoint)
                    let endpoint = try NetworkStore.allocate(request, on: network, others: others, container: name)
                    record.endpoint = endpoint
                    try pods.save(record)
                    let namespace = try OwnedFD.open(pods.namespacePath(name, type: "network"), O_RDONLY)
                    try HostNetwork.attach(endpoint, network: network, containerID: record.id, namespace: namespace)
                    try HostNetwork.sync(root: root, containers: containers.list())
                }
                return record
            } catch {
                releasePod(record)
                throw RuntimeError(.invalidArgument, "cannot create pod '\(name)'", cause: error)
            }
        }
    }

    /// Unshares the pod's namespaces in a child and pins them on the pod's files.
    private func pinNamespaces(_ record: PodRecord) throws(RuntimeError) {
        let rc = ferry_pin_pod_namespaces(
            record.hostname, pods.namespacePath(record.name, type: "network"), pods.namespacePath(record.name, type: "ipc"),
            pods.namespacePath(record.name, type: "uts"))
        if rc < 0 {
            throw RuntimeError(.spawnFailed, "cannot make the pod's namespaces", cause: Errno(rawValue: -rc))
        }
    }

    /// Everything the pod added to the host, removed: its veth, its pinned namespaces,
    /// its directory, and its ports and (unused) bridge. Best effort: used on failure too.
    private func releasePod(_ record: PodRecord) {
        if record.endpoint != nil {
            do {
                try HostNetwork.deleteInterface(containerID: record.id)
            } catch {
                logger.warning("cannot delete a pod's veth", metadata: ["ferry.pod": "\(record.name)", "error": "\(error)"])
            }
        }
        for (type, _) in PodStore.namespaceFiles {
            try? Mounts.unmount(pods.namespacePath(record.name, type: type), detach: true)
        }
        try? pods.remove(record.name)
        if record.endpoint != nil {
            do {
                try networks.withLock { try HostNetwork.sync(root: root, containers: containers.list()) }
            } catch {
                logger.warning("cannot remove a pod's network rules", metadata: ["ferry.pod": "\(record.name)", "error": "\(error)"])
            }
        }
    }

    /// `pod rm`: refused while the pod has containers, unless `force`, which removes them
    /// (killing running ones) first.
    public func removePod(_ name: String, force: Bool, removeContainer: (String) throws -> Void) throws {
        try pods.withLock {
            let record = try pods.load(name)
            let members = members(of: name)
            if !members.isEmpty, !force {
                let names = members.map(\.name).joined(separator: ", ")
                throw RuntimeError(
                    .invalidState, "cannot remove pod '\(name)': it has container\(members.count == 1 ? "" : "s") \(names) (remove them first or use pod rm -f)"
                )
            }
            for member in members { try removeContainer(member.id) }
            releasePod(record)
        }
    }

    /// `pod start`: starts every created or exited container of the pod.
    public func startPod(_ name: String) throws {
        _ = try pods.load(name)
        for member in members(of: name) { try start(member.id) }
    }

    /// `pod stop`: stops every running container of the pod; the namespaces stay.
    public func stopPod(_ name: String, timeout: Double) throws {
        _ = try pods.load(name)
        for member in members(of: name) {
            if case .running = member.status { try stop(member.id, timeout: timeout) }
        }
    }
}
