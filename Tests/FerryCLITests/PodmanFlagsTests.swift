import ArgumentParser
import FerryCheckpoint
import FerryRuntime
import FerryStore
import Foundation
import Testing

@testable import FerryCLI

/// The flags and exit codes a podman user types and scripts rely on.
@Suite struct PodmanFlagsTests {
    @Test func checkpointTakesPodmansShortFlags() throws {
        let command = try #require(try Ferry.parseAsRoot(["checkpoint", "-R", "-e", "web.tar.gz", "-c", "gzip", "-k", "web"]) as? CheckpointCommand)
        #expect(command.leaveRunning)
        #expect(command.export == "web.tar.gz")
        #expect(command.compress == "gzip")
        #expect(command.keep)
        #expect(command.container == "web")
    }

    @Test func checkpointKeepsItsLongFlags() throws {
        let command = try #require(
            try Ferry.parseAsRoot(["checkpoint", "--leave-running", "--export", "x.tar", "--compress", "none", "--tcp-established", "web"])
                as? CheckpointCommand)
        #expect(command.leaveRunning && command.tcpEstablished)
        #expect(command.export == "x.tar" && command.compress == "none")
        #expect(!command.keep)
    }

    @Test func restoreTakesPodmansShortFlags() throws {
        let command = try #require(try Ferry.parseAsRoot(["restore", "-i", "web.tar.zst", "-n", "web2", "-k", "--tcp-established"]) as? RestoreCommand)
        #expect(command.importPath == "web.tar.zst")
        #expect(command.name == "web2")
        #expect(command.keep)
        #expect(command.tcpEstablished)
        #expect(command.container == nil)
        let long = try #require(try Ferry.parseAsRoot(["restore", "--import", "a.tar", "--name", "b"]) as? RestoreCommand)
        #expect(long.importPath == "a.tar" && long.name == "b" && !long.tcpEstablished)
    }

    func parseError(_ arguments: [String]) -> String? {
        do {
            _ = try Ferry.parseAsRoot(arguments)
            return nil
        } catch {
            return Ferry.message(for: error)
        }
    }

    @Test func anOptionWhereTheImageGoesIsUnknown() {
        #expect(parseError(["run", "-q", "img"]) == "unknown option '-q'")
        #expect(parseError(["run", "-d", "--expose=80", "img"]) == "unknown option '--expose'")
        #expect(parseError(["exec", "-z", "web", "sh"]) == "unknown option '-z'")
        // After the image, options belong to the container's command.
        #expect(parseError(["run", "img", "ls", "-p"]) == nil)
        #expect(parseError(["run", "--", "img", "ls"]) == nil)
    }

    @Test func exitCodesAreThoseOfPodman() {
        #expect(FerryMain.exitCode(for: ExitCode(3)) == 3)
        #expect(FerryMain.exitCode(for: RuntimeError(.commandNotFound, "x")) == 127)
        #expect(FerryMain.exitCode(for: RuntimeError(.commandNotInvocable, "x")) == 126)
        #expect(FerryMain.exitCode(for: RuntimeError(.invalidState, "x")) == 125)
        // The command's own failure decides even when another layer reports it.
        let restore = CheckpointError(.restoreFailed, "cannot restore 'web'", cause: RuntimeError(.commandNotFound, "exec: no such file"))
        #expect(FerryMain.exitCode(for: restore) == 127)
        #expect(FerryMain.exitCode(for: CheckpointError(.restoreFailed, "x", cause: StoreError(.io, "y"))) == 125)
        #expect(FerryMain.exitCode(for: ValidationError("x")) == 125)
        #expect(FerryMain.exitCode(for: CleanExit.helpRequest()) == 0)
        // A parse error (an unknown flag of a verb) is Ferry's own error too.
        do {
            _ = try Ferry.parseAsRoot(["ps", "--bogus"])
            Issue.record("--bogus parsed")
        } catch {
            #expect(FerryMain.exitCode(for: error) == 125)
        }
    }
}
