import ArgumentParser
import FerryStore
import Foundation
import Testing

@testable import FerryCLI

@Suite struct CLITests {
    @Test func helpListsTheVerbs() {
        let help = Ferry.helpMessage()
        for verb in ["run", "ps", "logs", "exec", "stop", "kill", "rm", "inspect", "image", "volume", "check"] {
            #expect(help.contains("  \(verb)"), "help lacks \(verb)")
        }
        #expect(!help.contains("_supervise"))
    }

    @Test func runHelpDocumentsTheFlags() {
        let help = Ferry.helpMessage(for: Run.self)
        for flag in ["--detach", "--name", "--env", "--volume", "--workdir", "--hostname", "--network", "--memory", "--cpus", "--pids-limit", "--bundle"] {
            #expect(help.contains(flag), "run help lacks \(flag)")
        }
    }

    @Test func containerCommandKeepsItsOwnFlags() throws {
        let command = try #require(try Ferry.parseAsRoot(["run", "-d", "--name", "x", "img", "python3", "-v", "-c", "print(1)"]) as? Run)
        #expect(command.detach)
        #expect(command.name == "x")
        let options = try command.options()
        #expect(options.command == ["python3", "-v", "-c", "print(1)"])
        #expect(options.volumes.isEmpty)
    }

    @Test func doubleDashSeparatesTheCommand() throws {
        let command = try #require(try Ferry.parseAsRoot(["run", "img", "--", "ls", "-l"]) as? Run)
        #expect(try command.options().command == ["ls", "-l"])
    }

    @Test func rootMayComeBeforeTheVerb() {
        let rest = hoistingGlobalOptions(["--root", "/tmp/x", "ps", "-a"])
        #expect(rest == ["ps", "-a"])
        #expect(ProcessInfo.processInfo.environment["FERRY_ROOT"] == "/tmp/x")
    }

    @Test func networkIsValidated() throws {
        for bad in [
            ["run", "--network", "bad/name", "img", "true"], ["run", "--ip", "10.89.0.5", "img", "true"],
            ["run", "--network", "none", "--ip", "10.89.0.5", "img", "true"], ["run", "--network", "host", "-p", "80:80", "img", "true"],
            ["run", "--mac-address", "02:00:00:00:00:01", "img", "true"], ["run", "--network", "web", "--add-host", "db", "img", "true"],
            ["network", "create", "--driver", "macvlan", "n"], ["network", "create", "--gateway", "10.1.0.1", "n"],
        ] {
            #expect(throws: (any Error).self, "\(bad) parsed") { _ = try Ferry.parseAsRoot(bad) }
        }
        let run = try #require(try Ferry.parseAsRoot(["run", "-p", "8080:80", "img", "true"]) as? Run)
        #expect(run.networkMode == .bridge)
        let request = try #require(try run.options().networkRequest)
        #expect(request.network == "ferry" && request.ports.map(\.description) == ["0.0.0.0:8080->80/tcp"])
        let named = try #require(try Ferry.parseAsRoot(["run", "--network", "web", "--ip", "10.89.0.5", "img", "true"]) as? Run)
        #expect(try named.options().networkRequest?.address?.description == "10.89.0.5")
        let plain = try #require(try Ferry.parseAsRoot(["run", "img", "true"]) as? Run)
        let plainRequest = try plain.options().networkRequest
        #expect(plain.networkMode == .none && plainRequest == nil)
    }

    @Test func portPrintsAsPodman() throws {
        let ports = [try PortMapping.parse("8080:80"), try PortMapping.parse("127.0.0.1:5353:53/udp")]
        #expect(PortCommand.lines(ports, only: nil) == ["80/tcp -> 0.0.0.0:8080", "53/udp -> 127.0.0.1:5353"])
        #expect(PortCommand.lines(ports, only: "53/udp") == ["127.0.0.1:5353"])
    }
}
