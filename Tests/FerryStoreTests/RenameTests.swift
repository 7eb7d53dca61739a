import Foundation
import Testing

@testable import FerryStore

@Suite struct RenameTests {
    func record(_ name: String) -> ContainerRecord {
        ContainerRecord(
            id: ContainerStore.newID(), name: name, image: "busybox:latest", imageDigest: nil, lowerDirectory: "/lower",
            command: ["sh"], created: Date(), network: .none, volumes: [], status: .created
        )
    }

    @Test func renameMovesTheNameAndKeepsTheID() throws {
        let root = try StateRoot(path: "/tmp/ferry-rename-test-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(atPath: root.path) }
        let store = ContainerStore(root: root)
        let web = record("web")
        let db = record("db")
        try store.create(web, config: Data("{}".utf8))
        try store.create(db, config: Data("{}".utf8))

        let renamed = try store.rename("web", to: "front")
        #expect(renamed.id == web.id && renamed.name == "front")
        #expect(try store.load(id: web.id).name == "front")
        #expect(try store.resolve("front") == web.id)
        #expect(throws: StoreError.self) { try store.resolve("web") }

        // A name in use, or not a single path component, is refused and nothing changes.
        #expect {
            try store.rename("front", to: "db")
        } throws: { error in
            (error as? StoreError)?.code == .alreadyExists && "\(error)".contains("already in use")
        }
        #expect(throws: StoreError.self) { try store.rename("front", to: "../x") }
        #expect(try store.resolve("front") == web.id)
        #expect(try store.resolve("db") == db.id)

        // The old name is free again, and removing the renamed container frees the new one.
        try store.create(record("web"), config: Data("{}".utf8))
        try store.remove(try store.load(id: web.id))
        #expect(throws: StoreError.self) { try store.resolve("front") }
    }

    @Test func containersMadeInOneSecondListInTheOrderTheyWereMade() throws {
        let root = try StateRoot(path: "/tmp/ferry-order-test-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(atPath: root.path) }
        let store = ContainerStore(root: root)
        let second = Date(timeIntervalSince1970: 1_764_745_200)
        // Ids are random, so the directory order is too; ten tries make a lucky pass unlikely.
        for name in (0..<10).map({ "c\($0)" }) {
            var made = record(name)
            made.created = second
            try store.create(made, config: Data("{}".utf8))
            usleep(20_000)  // beyond the kernel's coarse timestamp granularity
        }
        #expect(store.list().map(\.name) == (0..<10).map { "c\($0)" })
    }

    @Test func pausedStateIsNamedAsPodmanNamesIt() {
        var state = RunningState(pid: 1, pidStartTime: nil, supervisorPid: 2, startedAt: Date())
        #expect(ContainerStatus.running(state).stateName == "running")
        state.paused = true
        #expect(ContainerStatus.running(state).stateName == "paused")
        #expect(ContainerStatus.running(state).name == "running")
        #expect(ContainerStatus.created.stateName == "created")
    }

    @Test func recordsWithoutThePausedKeyStillDecode() throws {
        let json = #"{"pid": 5, "supervisorPid": 4, "startedAt": "2026-01-01T00:00:00Z"}"#
        let state = try JSONDecoder.ferry.decode(RunningState.self, from: Data(json.utf8))
        #expect(state.paused == nil)
    }
}

@Suite struct ContainerFilterTests {
    func record(_ name: String, _ status: ContainerStatus, id: String = ContainerStore.newID()) -> ContainerRecord {
        ContainerRecord(
            id: id, name: name, image: "busybox:latest", imageDigest: nil, lowerDirectory: "/lower",
            command: ["sh"], created: Date(), network: .none, volumes: [], status: status
        )
    }

    @Test func keysCombineAsPodmanDoes() throws {
        var paused = RunningState(pid: 1, pidStartTime: nil, supervisorPid: 2, startedAt: Date())
        let running = record("web-1", .running(paused))
        paused.paused = true
        let frozen = record("web-2", .running(paused))
        let exited = record("db", .exited(ExitState(exitCode: 1, startedAt: nil, finishedAt: Date())), id: "abcdef" + String(repeating: "0", count: 58))
        let all = [running, frozen, exited]

        #expect(all.filter(try ContainerFilter(["name=web"]).matches).map(\.name) == ["web-1", "web-2"])
        #expect(all.filter(try ContainerFilter(["status=paused"]).matches).map(\.name) == ["web-2"])
        #expect(all.filter(try ContainerFilter(["status=running", "status=exited"]).matches).map(\.name) == ["web-1", "db"])
        #expect(all.filter(try ContainerFilter(["name=web", "status=exited"]).matches).isEmpty)
        #expect(all.filter(try ContainerFilter(["id=abcdef"]).matches).map(\.name) == ["db"])
        #expect(all.filter(ContainerFilter().matches).count == 3)
        #expect(try ContainerFilter(["status=exited"]).selectsStatus)
        #expect(try !ContainerFilter(["name=x"]).selectsStatus)
    }

    @Test func badFiltersAreRefused() {
        for bad in ["name", "label=a=b", "status=sleeping", "name="] {
            #expect(throws: StoreError.self, "\(bad)") { try ContainerFilter([bad]) }
        }
    }
}
