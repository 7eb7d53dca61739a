import CCRIU
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension protobuf_c_boolean {
    init(_ value: Bool) { self = value ? 1 : 0 }
}

/// Post-copy (lazy pages): the dump and restore requests libcriu cannot make, sent as
/// CRIU RPC messages (see `CRIURPCCall`), with the same options as the libcriu paths.
extension CRIUSession {
    /// The address CRIU's page server listens on. Its protocol is neither authenticated
    /// nor encrypted, so it never faces the network: Ferry relays it over the migration
    /// channel.
    public static let pageServerAddress = "127.0.0.1"

    func lazyDump(_ request: DumpRequest) throws(CRIUError) {
        guard let port = request.lazyPagesPort else { return }
        let images = try openImages(request.imagesDirectory)
        let workDirectory = request.workDirectory ?? request.imagesDirectory
        let work = try openImages(workDirectory)
        // In a lazy RPC dump CRIU ignores the page server address of the request (it
        // would listen on every interface); a config file is the one way to set it.
        let config = "\(workDirectory)/criu-lazy.conf"
        do {
            try Files.writeAtomically(Array("address \(Self.pageServerAddress)\n".utf8), to: config, mode: 0o600)
        } catch {
            throw CRIUError(.optionFailed, "cannot write \(config)", cause: error)
        }
        defer { _ = unlink(config) }

        var call = CRIURPCCall(CRIU_REQ_TYPE__DUMP)
        call.set { opts, allocate in
            opts.has_pid = 1
            opts.pid = request.pid
            setCommon(
                &opts, &allocate, images: images.raw, work: work.raw, logFile: request.logFile, tcpEstablished: request.tcpEstablished,
                fileLocks: request.fileLocks)
            opts.has_leave_running = 1
            opts.leave_running = .init(request.leaveRunning)
            opts.has_ghost_limit = 1
            opts.ghost_limit = 64 << 20
            opts.freeze_cgroup = request.freezeCgroup.flatMap { allocate.string($0) }
            setExternalMounts(&opts, &allocate, request.externalMounts.map { ($0.mountPoint, $0.key) })
            if !request.externals.isEmpty {
                opts.n_external = request.externals.count
                opts.external = allocate.strings(request.externals)
            }
            if !request.cgroupDumpControllers.isEmpty {
                opts.n_cgroup_dump_controller = request.cgroupDumpControllers.count
                opts.cgroup_dump_controller = allocate.strings(request.cgroupDumpControllers)
            }
            opts.has_lazy_pages = 1
            opts.lazy_pages = 1
            let server = allocate.array(of: CriuPageServerInfo.self, count: 1)
            criu_page_server_info__init(server)
            server.pointee.has_port = 1
            server.pointee.port = Int32(port)
            opts.ps = server
            opts.config_file = allocate.string(config)
            opts.has_notify_scripts = 1
            opts.notify_scripts = 1
        }
        let notify = request.notify ?? { _ in true }
        let reply = try call.run(binary: serviceBinary, inherited: [], notify: notify)
        _ = consume images
        _ = consume work
        if !reply.success {
            throw rpcFailure(reply, operation: "dump with lazy pages", log: "\(workDirectory)/\(request.logFile)")
        }
    }

    func lazyRestoreChild(_ request: RestoreRequest) throws(CRIUError) -> Int32 {
        let images = try openImages(request.imagesDirectory)
        let workDirectory = request.workDirectory ?? request.imagesDirectory
        let work = try openImages(workDirectory)
        var call = CRIURPCCall(CRIU_REQ_TYPE__RESTORE)
        call.set { opts, allocate in
            setCommon(
                &opts, &allocate, images: images.raw, work: work.raw, logFile: request.logFile, tcpEstablished: request.tcpEstablished,
                fileLocks: request.fileLocks)
            opts.root = allocate.string(request.root)
            if let cgroupRoot = request.cgroupRoot {
                opts.n_cg_root = 1
                let roots = allocate.array(of: UnsafeMutablePointer<CgroupRoot>?.self, count: 1)
                let root = allocate.array(of: CgroupRoot.self, count: 1)
                cgroup_root__init(root)
                root.pointee.path = allocate.string(cgroupRoot)
                roots[0] = root
                opts.cg_root = roots
            }
            setExternalMounts(&opts, &allocate, request.externalMounts.map { ($0.key, $0.hostPath) })
            if !request.inheritedDescriptors.isEmpty {
                opts.n_inherit_fd = request.inheritedDescriptors.count
                let list = allocate.array(of: UnsafeMutablePointer<InheritFd>?.self, count: request.inheritedDescriptors.count)
                for (index, inherited) in request.inheritedDescriptors.enumerated() {
                    let entry = allocate.array(of: InheritFd.self, count: 1)
                    inherit_fd__init(entry)
                    entry.pointee.key = allocate.string(inherited.key)
                    entry.pointee.fd = inherited.fd
                    list[index] = entry
                }
                opts.inherit_fd = list
            }
            // The restored tree becomes this process's child, as with libcriu's
            // criu_restore_child.
            opts.has_rst_sibling = 1
            opts.rst_sibling = 1
            opts.has_lazy_pages = 1
            opts.lazy_pages = 1
            opts.has_notify_scripts = .init(request.notify != nil)
            opts.notify_scripts = .init(request.notify != nil)
        }
        let handler = request.notify
        let reply = try call.run(binary: serviceBinary, inherited: request.inheritedDescriptors.map(\.fd)) { action in
            (handler?(action) ?? 0) == 0
        }
        _ = consume images
        _ = consume work
        guard reply.success, let pid = reply.restoredPid, pid > 0 else {
            throw rpcFailure(reply, operation: "restore with lazy pages", log: "\(workDirectory)/\(request.logFile)")
        }
        return pid
    }

    /// The options every Ferry dump and restore shares (see the libcriu paths).
    private func setCommon(
        _ opts: inout CriuOpts, _ allocate: inout CRIURPCCall.Allocator, images: Int32, work: Int32, logFile: String, tcpEstablished: Bool, fileLocks: Bool
    ) {
        // CRIU opens these through /proc/<peer>/fd/N: the peer is this process.
        opts.images_dir_fd = images
        opts.has_work_dir_fd = 1
        opts.work_dir_fd = work
        opts.has_log_level = 1
        opts.log_level = 4
        opts.log_file = allocate.string(logFile)
        opts.has_tcp_established = 1
        opts.tcp_established = .init(tcpEstablished)
        opts.has_file_locks = 1
        opts.file_locks = .init(fileLocks)
        if !tcpEstablished {
            opts.has_network_lock = 1
            opts.network_lock = CRIU_NETWORK_LOCK_METHOD__SKIP
        }
        opts.has_manage_cgroups = 1
        opts.manage_cgroups = 1
        opts.has_manage_cgroups_mode = 1
        opts.manage_cgroups_mode = CRIU_CG_MODE__SOFT
    }

    private func setExternalMounts(_ opts: inout CriuOpts, _ allocate: inout CRIURPCCall.Allocator, _ pairs: [(String, String)]) {
        guard !pairs.isEmpty else { return }
        opts.n_ext_mnt = pairs.count
        let list = allocate.array(of: UnsafeMutablePointer<ExtMountMap>?.self, count: pairs.count)
        for (index, pair) in pairs.enumerated() {
            let entry = allocate.array(of: ExtMountMap.self, count: 1)
            ext_mount_map__init(entry)
            entry.pointee.key = allocate.string(pair.0)
            entry.pointee.val = allocate.string(pair.1)
            list[index] = entry
        }
        opts.ext_mnt = list
    }

    private func rpcFailure(_ reply: CRIURPCCall.Reply, operation: String, log: String) -> CRIUError {
        let cause = reply.crErrno.flatMap { $0 != 0 ? Errno(rawValue: $0) : nil }.map { ": \($0)" } ?? ""
        let excerpt = CRIULog.errorExcerpt(log)
        let detail = excerpt.isEmpty ? (reply.message.map { ": \($0)" } ?? "") : ": " + excerpt.joined(separator: " | ")
        return CRIUError(
            .rpcFailed(reply.crErrno.map { Errno(rawValue: $0) }), "cannot criu \(operation): criu reported failure\(cause)\(detail) (log: \(log))")
    }
}
