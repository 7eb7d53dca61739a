import ArgumentParser
import Foundation
import Testing

@testable import FerryCLI
@testable import FerryStore

/// `ferry pod ...` and `run --pod`: parsing and the rules checked before anything runs.
@Suite struct PodCommandTests {
    @Test func helpListsThePodVerbs() {
        #expect(Ferry.helpMessage().contains("  pod"))
        let help = Ferry.helpMessage(for: PodCommand.self)
        for verb in ["create", "ls", "inspect", "start", "stop", "rm"] {
            #expect(help.contains("  \(verb)"), "pod help lacks \(verb)")
        }
    }

    @Test func runRefusesNetworkFlagsWithPod() throws {
        for flags in [
            ["--network", "web"], ["-p", "8080:80"], ["--ip", "10.89.1.5"], ["--hostname", "h"], ["--mac-address", "02:42:0a:59:00:05"],
            ["--dns", "1.1.1.1"],
        ] {
            #expect(throws: (any Error).self, "\(flags)") { _ = try FerryMain.parse(["run", "--pod", "p"] + flags + ["img", "true"]) }
        }
        let run = try #require(try FerryMain.parse(["run", "--pod", "p", "img", "true"]) as? Run)
        #expect(try run.options().pod == "p")
    }

    @Test func createParsesItsNetworkRequest() throws {
        let create = try #require(
            try Ferry.parseAsRoot(["pod", "create", "--name", "web", "--network", "lan", "--ip", "10.89.3.9", "-p", "8080:80"]) as? PodCommand.Create)
        let request = try #require(try create.request())
        #expect(request.network == "lan" && request.address == IPv4Address("10.89.3.9") && request.ports.count == 1)
        let portsOnly = try #require(try Ferry.parseAsRoot(["pod", "create", "-p", "8080:80"]) as? PodCommand.Create)
        #expect(try portsOnly.request()?.network == NetworkStore.defaultName)
        let loopbackOnly = try #require(try Ferry.parseAsRoot(["pod", "create"]) as? PodCommand.Create)
        #expect(try loopbackOnly.request() == nil)
        #expect(throws: (any Error).self) { _ = try Ferry.parseAsRoot(["pod", "create", "--network", "host"]) }
        #expect(throws: (any Error).self) { _ = try Ferry.parseAsRoot(["pod", "create", "--ip", "10.89.3.9"]) }
    }

    @Test func podStatusFollowsItsContainers() {
        let running = ContainerStatus.running(RunningState(pid: 1, pidStartTime: nil, supervisorPid: 1, startedAt: Date()))
        let exited = ContainerStatus.exited(ExitState(exitCode: 0, startedAt: nil, finishedAt: Date()))
        #expect(PodCommand.View.status([]) == "created")
        #expect(PodCommand.View.status([exited]) == "exited")
        #expect(PodCommand.View.status([exited, running]) == "running")
    }
}
