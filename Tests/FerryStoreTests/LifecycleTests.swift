import Foundation
import Testing

@testable import FerryStore

@Suite struct LifecycleTests {
    let checkpoint = CheckpointState(checkpointedAt: Date(timeIntervalSince1970: 1000), imagesDirectory: "checkpoint")
    let running = RunningState(pid: 42, pidStartTime: 7, supervisorPid: 41, startedAt: Date(timeIntervalSince1970: 2000))
    let began = LifecycleEvent.restoreBegan(supervisorPid: 41, supervisorStartTime: 6, at: Date(timeIntervalSince1970: 1500))

    @Test func aRestoreClaimsTheCheckpointAndGivesItBackOnFailure() throws {
        let restoring = try ContainerStatus.checkpointed(checkpoint).after(began, container: "c")
        guard case .restoring(let state) = restoring else {
            Issue.record("not restoring: \(restoring)")
            return
        }
        #expect(state.supervisorPid == 41 && state.supervisorStartTime == 6 && state.checkpoint == checkpoint)
        #expect(try restoring.after(.restoreAbandoned, container: "c") == .checkpointed(checkpoint))
        #expect(try restoring.after(.launched(running), container: "c") == .running(running))
    }

    @Test func onlyOneRestoreAtATime() throws {
        let restoring = try ContainerStatus.checkpointed(checkpoint).after(began, container: "c")
        #expect(throws: StoreError.self) { try restoring.after(began, container: "c") }
        for status in [
            ContainerStatus.created, .running(running), .checkpointing(running), .exited(ExitState(exitCode: 0, startedAt: nil, finishedAt: Date())),
        ] {
            #expect(throws: StoreError.self, "\(status.name)") { try status.after(began, container: "c") }
        }
        do {
            _ = try ContainerStatus.running(running).after(began, container: "web")
        } catch {
            #expect(error.message == "cannot restore container 'web': it is running, not checkpointed")
        }
    }

    @Test func aStartClaimsTheContainerAndGivesItBackOnFailure() throws {
        let start = LifecycleEvent.startBegan(supervisorPid: 41, supervisorStartTime: 6, at: Date(timeIntervalSince1970: 1500))
        let exit = ExitState(exitCode: 3, startedAt: nil, finishedAt: Date(timeIntervalSince1970: 900))
        let fromCreated = try ContainerStatus.created.after(start, container: "c")
        let fromExited = try ContainerStatus.exited(exit).after(start, container: "c")
        #expect(try fromCreated.after(.startAbandoned, container: "c") == .created)
        #expect(try fromExited.after(.startAbandoned, container: "c") == .exited(exit))
        #expect(try fromExited.after(.launched(running), container: "c") == .running(running))
        #expect(fromExited.claimingSupervisor?.pid == 41)
        // A second start while the first holds its claim, or of a running container, is refused.
        for status in [fromExited, .running(running), .checkpointing(running), .checkpointed(checkpoint)] {
            #expect(throws: StoreError.self, "\(status.name)") { try status.after(start, container: "c") }
        }
    }

    @Test func launchesOnlyUnderAClaim() throws {
        // The init may only be recorded running by the supervisor that claimed the start.
        let exited = ContainerStatus.exited(ExitState(exitCode: 1, startedAt: nil, finishedAt: Date()))
        for status in [ContainerStatus.created, exited, .running(running), .checkpointing(running), .checkpointed(checkpoint)] {
            #expect(throws: StoreError.self, "\(status.name)") { try status.after(.launched(running), container: "c") }
        }
        #expect(throws: StoreError.self) { try ContainerStatus.checkpointed(checkpoint).after(.restoreAbandoned, container: "c") }
        #expect(throws: StoreError.self) { try ContainerStatus.created.after(.startAbandoned, container: "c") }
    }

    @Test func restoringRoundTripsThroughJSON() throws {
        let status = try ContainerStatus.checkpointed(checkpoint).after(began, container: "c")
        let data = try JSONEncoder().encode(status)
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["state"] as? String == "restoring")
        #expect(try JSONDecoder().decode(ContainerStatus.self, from: data) == status)
    }
}
