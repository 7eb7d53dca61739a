import CFerryLinux
import Foundation
import Testing

@testable import FerryRuntime

#if canImport(Glibc)
    import Glibc
#endif

/// The child's (stage, errno, index) report becomes an error whose code tells a missing
/// command (exit 127) from one that cannot run (exit 126) and from other failures.
@Suite struct SpawnReportTests {
    func report(stage: ferry_stage, errno: Int32) -> [UInt8] {
        var error = ferry_child_error(stage: Int32(stage.rawValue), err: errno, index: -1)
        return withUnsafeBytes(of: &error) { Array($0) }
    }

    @Test func execOfAMissingCommandIsNotFound() {
        #expect(Spawner.describe(report(stage: FERRY_STAGE_EXEC, errno: ENOENT)).code == .commandNotFound)
    }

    @Test func execOfACommandThatCannotRunIsNotInvocable() {
        #expect(Spawner.describe(report(stage: FERRY_STAGE_EXEC, errno: EACCES)).code == .commandNotInvocable)
        #expect(Spawner.describe(report(stage: FERRY_STAGE_EXEC, errno: ENOEXEC)).code == .commandNotInvocable)
    }

    @Test func otherStagesStaySpawnFailures() {
        #expect(Spawner.describe(report(stage: FERRY_STAGE_CAPABILITIES, errno: EPERM)).code == .spawnFailed)
    }

    @Test func theDetachedSupervisorsReportKeepsTheKind() {
        #expect(ContainerRuntime.parseStartReport("not-found: cannot start: exec: ENOENT\n") == (.commandNotFound, "cannot start: exec: ENOENT"))
        #expect(ContainerRuntime.parseStartReport("not-invocable: x\n").0 == .commandNotInvocable)
        #expect(ContainerRuntime.parseStartReport("error: cgroup\n") == (.supervisorFailed, "cgroup"))
        #expect(ContainerRuntime.parseStartReport("garbage").0 == .supervisorFailed)
    }
}
