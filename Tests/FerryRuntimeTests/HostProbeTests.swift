import FerrySystem
import Testing

@testable import FerryRuntime

#if canImport(Glibc)
    import Glibc
#endif

struct HostProbeTests {
    @Test func kernelReleaseMatchesProc() throws {
        let release = try HostProbe.kernelRelease()
        let proc = try Files.readString("/proc/sys/kernel/osrelease")
        #expect(!release.isEmpty)
        #expect(release + "\n" == proc)
    }

    @Test func parsesProcFilesystems() {
        let text = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n\tvfat\n"
        let names = HostProbe.filesystems(in: text)
        #expect(names.contains("overlay"))
        #expect(names.contains("ext4"))
        #expect(!names.contains("nodev"))
        #expect(!HostProbe.filesystems(in: "nodev\tsysfs\n\text4\n").contains("overlay"))
    }

    @Test func findsModulesInModuleIndexes() {
        let dep = """
            kernel/fs/overlayfs/overlay.ko.xz:
            kernel/fs/fuse/fuse.ko.xz:
            kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/llc/llc.ko.xz
            """
        #expect(HostProbe.moduleListed("overlay", in: dep))
        #expect(HostProbe.moduleListed("bridge", in: "kernel/net/bridge/bridge.ko\n"))
        // A dependency named on the right of the colon is not the module itself.
        #expect(!HostProbe.moduleListed("llc", in: dep))
        #expect(!HostProbe.moduleListed("lay", in: dep))
        #expect(HostProbe.moduleListed("overlay", in: "kernel/fs/overlayfs/overlay.ko\n"))
    }

    @Test func parsesPipeMaxSize() {
        #expect(HostProbe.parsePipeMaxSize("1048576\n") == 1_048_576)
        #expect(HostProbe.parsePipeMaxSize("") == nil)
        #expect(HostProbe.parsePipeMaxSize("lots\n") == nil)
    }

    @Test func readsPipeMaxSizeFromProc() {
        // Linux's floor for pipe-max-size is one page.
        let size = HostProbe.pipeMaxSize()
        #expect(size != nil)
        #expect((size ?? 0) >= 4096)
    }

    @Test func overlayProbeAgreesWithProcFilesystems() throws {
        let text = try Files.readString("/proc/filesystems")
        if HostProbe.filesystems(in: text).contains("overlay") {
            #expect(HostProbe.overlayfsSupported())
        }
    }

    /// Root may always create a userfaultfd when the kernel has it; /dev/userfaultfd is
    /// there exactly when it does (5.11+).
    @Test(.enabled(if: getuid() == 0 && Files.exists("/dev/userfaultfd"), "needs root and a userfaultfd kernel"))
    func userfaultfdAvailableToRoot() {
        #expect(HostProbe.userfaultfdAvailable())
    }
}
