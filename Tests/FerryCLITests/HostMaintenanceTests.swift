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

    @Test func generateSystemdTakesNamesOrAll() throws {
        let command = try #require(try Ferry.parseAsRoot(["generate", "systemd", "--files", "web", "db"]) as? GenerateSystemd)
        #expect(command.files && command.containers == ["web", "db"])
        #expect(try #require(try Ferry.parseAsRoot(["generate", "systemd", "--all"]) as? GenerateSystemd).all)
        #expect(refusal(["generate", "systemd"])?.contains("give container names, or --all") == true)
        #expect(refusal(["generate", "systemd", "--all", "web"])?.contains("give container names, or --all") == true)
        #expect(refusal(["generate", "systemd", "--stop-timeout", "0", "web"])?.contains("at least 1 second") == true)
    }

    @Test func unitRestoresAtStartAndCheckpointsAtStop() {
        let unit = SystemdUnit(container: "web", ferry: "/usr/local/bin/ferry", root: "/var/lib/ferry", stopTimeout: 120)
        #expect(unit.fileName == "ferry-web.service")
        let lines = unit.text.split(separator: "\n").map(String.init)
        for expected in [
            "ExecStart=/usr/local/bin/ferry --root /var/lib/ferry start --restore web",
            "ExecStop=-/usr/local/bin/ferry --root /var/lib/ferry checkpoint web",
            "Type=oneshot", "RemainAfterExit=yes", "TimeoutStopSec=120", "RequiresMountsFor=/var/lib/ferry",
            "After=network-online.target", "WantedBy=multi-user.target",
        ] {
            #expect(lines.contains(expected), "\(expected) missing from:\n\(unit.text)")
        }
    }

    @Test func unitQuotesWhatSystemdWouldInterpret() {
        #expect(SystemdUnit.quoted("/var/lib/ferry") == "/var/lib/ferry")
        #expect(SystemdUnit.quoted("/srv/my ferry") == "\"/srv/my ferry\"")
        #expect(SystemdUnit.quoted("/srv/100%") == "/srv/100%%")
        #expect(SystemdUnit.quoted("/srv/$HOME") == "/srv/$$HOME")
        #expect(SystemdUnit.quoted("a\"b") == "\"a\\\"b\"")
        #expect(SystemdUnit.escapedPath("/srv/my ferry/100%") == "/srv/my\\x20ferry/100%%")
    }
}
