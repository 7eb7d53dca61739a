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
            #expect(error.description == "cannot restore container 'web': it is running, not checkpointed")
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

    @Test func aCheckpointEndsCheckpointedRunningOrExited() throws {
        let checkpointing = try ContainerStatus.running(running).after(.checkpointBegan(pid: 42), container: "c")
        #expect(checkpointing == .checkpointing(running))
        #expect(try checkpointing.after(.checkpointDone(checkpoint), container: "c") == .checkpointed(checkpoint))
        #expect(try checkpointing.after(.checkpointResumed, container: "c") == .running(running))
        let lost = try checkpointing.after(.checkpointLost(at: Date(timeIntervalSince1970: 3000)), container: "c")
        #expect(lost == .exited(ExitState(exitCode: 255, startedAt: running.startedAt, finishedAt: Date(timeIntervalSince1970: 3000))))
        // Only a running container whose init is the one frozen, not paused, and one
        // checkpoint at a time.
        #expect(throws: StoreError.self) { try ContainerStatus.running(running).after(.checkpointBegan(pid: 43), container: "c") }
        var paused = running
        paused.paused = true
        do {
            _ = try ContainerStatus.running(paused).after(.checkpointBegan(pid: 42), container: "web")
            Issue.record("a paused container was checkpointed")
        } catch {
            #expect(error.description == "cannot checkpoint container 'web': it is paused; unpause it first")
        }
        do {
            _ = try checkpointing.after(.checkpointBegan(pid: 42), container: "web")
            Issue.record("two checkpoints at once")
        } catch {
            #expect(error.description == "cannot checkpoint container 'web': another checkpoint of it is in progress")
        }
        // A checkpoint's end applies to a checkpointing container only: a state that
        // changed meanwhile (settled by another command) is not overwritten.
        for status in [ContainerStatus.created, .running(running), .checkpointed(checkpoint)] {
            #expect(throws: StoreError.self, "\(status.name)") { try status.after(.checkpointDone(checkpoint), container: "c") }
            #expect(throws: StoreError.self, "\(status.name)") { try status.after(.checkpointResumed, container: "c") }
        }
    }

    @Test func aRollbackReplacesOnlyAStoppedContainer() throws {
        let exit = ExitState(exitCode: 1, startedAt: nil, finishedAt: Date())
        for status in [ContainerStatus.created, .exited(exit), .checkpointed(checkpoint)] {
            #expect(try status.after(.rolledBack(checkpoint), container: "c") == .checkpointed(checkpoint), "\(status.name)")
        }
        // A container started or restored meanwhile keeps running: one copy.
        let claimed = try ContainerStatus.created.after(.startBegan(supervisorPid: 1, supervisorStartTime: nil, at: Date()), container: "c")
        for status in [ContainerStatus.running(running), .checkpointing(running), claimed] {
            #expect(throws: StoreError.self, "\(status.name)") { try status.after(.rolledBack(checkpoint), container: "c") }
        }
    }

    @Test func pauseExitAndTheirRefusals() throws {
        let paused = try ContainerStatus.running(running).after(.paused, container: "c")
        guard case .running(let state) = paused else {
            Issue.record("not running: \(paused)")
            return
        }
        #expect(state.paused == true && paused.stateName == "paused")
        #expect(throws: StoreError.self) { try paused.after(.paused, container: "c") }
        #expect(try paused.after(.unpaused, container: "c") == .running(running))
        #expect(throws: StoreError.self) { try ContainerStatus.running(running).after(.unpaused, container: "c") }
        let exit = ExitState(exitCode: 0, startedAt: running.startedAt, finishedAt: Date())
        #expect(try ContainerStatus.running(running).after(.initExited(exit), container: "c") == .exited(exit))
        // A checkpoint ends the tree on purpose: that is not an exit.
        #expect(throws: StoreError.self) { try ContainerStatus.checkpointing(running).after(.initExited(exit), container: "c") }
        #expect(throws: StoreError.self) { try ContainerStatus.checkpointed(checkpoint).after(.paused, container: "c") }
    }
}
