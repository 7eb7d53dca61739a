import ArgumentParser
import Foundation
import Testing

@testable import FerryCLI

/// `checkpoint --all`, `restore --all` and `generate systemd`: their flags and units.
@Suite struct HostMaintenanceTests {
    func refusal(_ arguments: [String]) -> String? {
        do {
            _ = try Ferry.parseAsRoot(arguments)
            return nil
        } catch {
            return Ferry.message(for: error)
        }
    }

    @Test func allTakesNoNameAndNoExport() throws {
        let checkpoint = try #require(try Ferry.parseAsRoot(["checkpoint", "-a", "--tcp-established"]) as? CheckpointCommand)
        #expect(checkpoint.all && checkpoint.container == nil && checkpoint.tcpEstablished)
        let restore = try #require(try Ferry.parseAsRoot(["restore", "--all", "--file-locks", "--tcp-established"]) as? RestoreCommand)
        #expect(restore.all && restore.fileLocks && restore.tcpEstablished && restore.container == nil)
        #expect(refusal(["checkpoint", "--all", "web"])?.contains("give a container name, or --all") == true)
        #expect(refusal(["checkpoint"])?.contains("give a container name, or --all") == true)
        #expect(refusal(["checkpoint", "--all", "--export", "x.tar"])?.contains("does not go with --all") == true)
        for bad in [["restore", "--all", "web"], ["restore", "--all", "--import", "x.tar"], ["restore"]] {
            #expect(refusal(bad)?.contains("give a container name, --import FILE or --all") == true, "\(bad)")
        }
    }
}
