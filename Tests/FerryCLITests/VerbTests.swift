import ArgumentParser
import Foundation
import Testing

@testable import FerryCLI

/// podman's lifecycle verbs, and the `container` group that aliases them.
@Suite struct VerbTests {
    @Test func helpListsTheLifecycleVerbs() {
        let help = Ferry.helpMessage()
        for verb in ["start", "restart", "pause", "unpause", "wait", "rename", "container"] {
            #expect(help.contains("  \(verb)"), "help lacks \(verb)")
        }
    }

    @Test func theContainerGroupHasEveryContainerVerb() {
        let help = Ferry.helpMessage(for: ContainerCommand.self)
        for verb in [
            "run", "ps", "logs", "exec", "start", "stop", "restart", "kill", "pause", "unpause", "wait", "rename", "rm", "inspect", "checkpoint", "restore",
        ] {
            #expect(help.contains("  \(verb)"), "container help lacks \(verb)")
        }
    }

    @Test func containerVerbsParseAsTheTopLevelOnes() throws {
        let checkpoint = try #require(try Ferry.parseAsRoot(["container", "checkpoint", "-R", "web"]) as? CheckpointCommand)
        #expect(checkpoint.leaveRunning && checkpoint.container == "web")
        let ls = try #require(try Ferry.parseAsRoot(["container", "ls", "-a"]) as? Ps)
        #expect(ls.all)
        #expect(try Ferry.parseAsRoot(["container", "list"]) is Ps)
        let restart = try #require(try Ferry.parseAsRoot(["container", "restart", "-t", "2", "a", "b"]) as? Restart)
        #expect(restart.time == 2 && restart.containers == ["a", "b"])
        let rename = try #require(try Ferry.parseAsRoot(["rename", "old", "new"]) as? Rename)
        #expect(rename.container == "old" && rename.name == "new")
        let wait = try #require(try Ferry.parseAsRoot(["wait", "--timeout", "5", "web"]) as? Wait)
        #expect(wait.timeout == 5 && wait.containers == ["web"])
        #expect(try Ferry.parseAsRoot(["pause", "web"]) is Pause)
        #expect(try Ferry.parseAsRoot(["unpause", "web"]) is Unpause)
        #expect(try Ferry.parseAsRoot(["start", "web"]) is Start)
    }
}

@Suite struct TopLevelTests {
    @Test func topLevelHelpShowsRootAndVersion() {
        let help = Ferry.helpMessage()
        #expect(help.contains("--root <dir>"))
        #expect(help.contains("--version"))
    }

    @Test func versionIsOnlyAtTheTop() throws {
        let top = try #require(try Ferry.parseAsRoot(["--version"]) as? Ferry)
        #expect(top.version)
        #expect(!Ferry.helpMessage(for: Ps.self).contains("--version"))
        #expect(throws: (any Error).self) { _ = try FerryMain.parse(["ps", "--version"]) }
        #expect(throws: (any Error).self) { _ = try FerryMain.parse(["run", "--version", "img"]) }
        #expect(try FerryMain.parse(["--version"]) is Ferry)
        let run = try #require(try FerryMain.parse(["run", "img", "python3", "--version"]) as? Run)
        #expect(try run.options().command == ["python3", "--version"])
        let exec = try #require(try FerryMain.parse(["exec", "web", "python3", "--version"]) as? Exec)
        #expect(exec.arguments == ["web", "python3", "--version"])
    }
}
