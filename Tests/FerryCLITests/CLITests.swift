import ArgumentParser
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

    @Test func networkIsValidated() {
        #expect(throws: (any Error).self) {
            _ = try Ferry.parseAsRoot(["run", "--network", "bridge", "img", "true"])
        }
    }
}
