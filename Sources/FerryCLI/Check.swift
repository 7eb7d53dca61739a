import ArgumentParser
import FerryCRIU
import FerryRuntime
import FerryStore
import FerrySystem
import Foundation

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check that this host can run, checkpoint and migrate containers.",
        discussion: "Exits non-zero when checkpoints cannot work here; the last line says why."
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "Output format: table or json.")
    var format: OutputFormat = .table

    struct Item: Encodable {
        enum Status: String, Encodable {
            case ok
            case missing
            /// "warn", as the table says.
            case warn
        }

        var name: String
        var status: Status
        var detail: String
        /// Whether checkpoints need this item.
        var required: Bool
    }

    struct Report: Encodable {
        var root: String
        var cgroupParent: String?
        var checks: [Item]
        var checkpointsCanWork: Bool
        var summary: String
    }

    mutating func run() throws {
        let report = Self.report(rootPath: global.rootPath)
        if format == .json {
            try Output.json(report)
        } else {
            for item in report.checks {
                let mark = item.status == .missing ? "MISSING" : item.status.rawValue
                print("\(mark.padding(toLength: 8, withPad: " ", startingAt: 0))\(item.name.padding(toLength: 20, withPad: " ", startingAt: 0))\(item.detail)")
            }
            print(report.summary)
        }
        if !report.checkpointsCanWork { throw ExitCode(1) }
    }

    static func report(rootPath: String) -> Report {
        var items: [Item] = []
        let isRoot = getuid() == 0
        items.append(Item(name: "root", status: isRoot ? .ok : .missing, detail: isRoot ? "running as root" : "ferry must run as root", required: true))

        var root: StateRoot?
        do {
            root = try StateRoot(path: rootPath)
            items.append(Item(name: "state root", status: .ok, detail: root?.path ?? rootPath, required: true))
        } catch {
            items.append(Item(name: "state root", status: .missing, detail: "\(error)", required: true))
        }

        let kernel = (try? HostProbe.kernelRelease()) ?? "unknown"
        items.append(Item(name: "kernel", status: .ok, detail: "Linux \(kernel)", required: false))

        do {
            let layout = try CgroupLayout.current()
            let freezer = layout.unifiedMountPoint != nil || layout.v1MountPoints["freezer"] != nil
            items.append(
                Item(
                    name: "cgroups", status: freezer ? .ok : .missing, detail: layout.description + (freezer ? ", freezer available" : ", no freezer"),
                    required: true))
        } catch {
            items.append(Item(name: "cgroups", status: .missing, detail: "\(error)", required: true))
        }

        let overlay = HostProbe.overlayfsSupported()
        items.append(
            Item(
                name: "overlayfs", status: overlay ? .ok : .missing, detail: overlay ? "supported" : "not in /proc/filesystems (modprobe overlay)",
                required: true))

        do {
            let session = try CRIUSession()
            let version = try session.checkVersion()
            items.append(
                Item(name: "criu", status: .ok, detail: "\(CRIUSession.formatVersion(version)) (\(session.serviceBinary)), via libcriu", required: true))
            let features = try session.features()
            items.append(
                Item(
                    name: "memory tracking", status: features.memTrack ? .ok : .warn,
                    detail: features.memTrack
                        ? "soft-dirty available: pre-copy and incremental dumps work"
                        : "soft-dirty is off in this kernel: no pre-copy migration; snapshots deduplicate memory by content instead",
                    required: false
                ))
            items.append(
                Item(
                    name: "lazy pages", status: features.lazyPages ? .ok : .warn,
                    detail: features.lazyPages ? "available: post-copy (lazy) migration works" : "unavailable: no post-copy migration",
                    required: false
                ))
        } catch {
            items.append(Item(name: "criu", status: .missing, detail: "\(error) (run: make deps)", required: true))
        }

        let uffd = HostProbe.userfaultfdAvailable()
        items.append(Item(name: "userfaultfd", status: uffd ? .ok : .warn, detail: uffd ? "available" : "unavailable: no lazy migration", required: false))

        let pipeSize = HostProbe.pipeMaxSize() ?? 0
        let pipeOK = pipeSize >= HostProbe.lazyDumpPipeSize
        items.append(
            Item(
                name: "pipe-max-size", status: pipeOK ? .ok : .warn,
                detail: pipeOK
                    ? "\(pipeSize) bytes"
                    : "\(pipeSize) bytes: lazy dumps need 4 MiB pipes; Ferry raises /proc/sys/fs/pipe-max-size to \(HostProbe.lazyDumpPipeSize) before a lazy dump",
                required: false
            ))

        let blocking = items.filter { $0.required && $0.status == .missing }
        let canWork = blocking.isEmpty
        let summary =
            canWork
            ? "checkpoints can work here"
            : "checkpoints cannot work here: " + blocking.map { "\($0.name) (\($0.detail))" }.joined(separator: "; ")
        return Report(root: root?.path ?? rootPath, cgroupParent: root?.cgroupParent, checks: items, checkpointsCanWork: canWork, summary: summary)
    }
}
