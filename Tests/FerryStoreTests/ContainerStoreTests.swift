import Foundation
import Testing

@testable import FerryStore

@Suite struct ContainerStoreTests {
    func makeRoot() throws -> StateRoot {
        try StateRoot(path: "/tmp/ferry-store-test-\(UInt32.random(in: 0...UInt32.max))")
    }

    func record(_ name: String) -> ContainerRecord {
        ContainerRecord(
            id: ContainerStore.newID(), name: name, image: "busybox:latest", imageDigest: nil, lowerDirectory: "/lower",
            command: ["sh"], created: Date(), network: .none, volumes: [], status: .created
        )
    }

    @Test func createResolveSaveRemove() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root.path) }
        let store = ContainerStore(root: root)
        var web = record("web")
        try store.create(web, config: Data("{}".utf8))
        #expect(try store.resolve("web") == web.id)
        #expect(try store.resolve(web.id) == web.id)
        #expect(try store.resolve(String(web.id.prefix(12))) == web.id)
        #expect(throws: StoreError.self) { try store.resolve("nope") }
        #expect(throws: StoreError.self) { try store.resolve("../web") }

        web.status = .running(RunningState(pid: 42, pidStartTime: 7, supervisorPid: 41, startedAt: Date(timeIntervalSince1970: 1000)))
        try store.save(web)
        let loaded = try store.load(id: web.id)
        #expect(loaded.status == web.status)
        #expect(loaded.status.name == "running")

        #expect {
            try store.create(record("web"), config: Data())
        } throws: { error in
            (error as? StoreError)?.code == .alreadyExists && "\(error)".contains("already in use")
        }
        #expect(store.list().count == 1)
        try store.remove(web)
        #expect(store.list().isEmpty)
        #expect(throws: StoreError.self) { try store.resolve("web") }
        // The name is free again.
        try store.create(record("web"), config: Data())
    }

    @Test func namesAreSinglePathComponents() throws {
        for bad in ["", "a/b", "..", ".hidden", "-x", String(repeating: "a", count: 129), "sp ace"] {
            #expect(throws: StoreError.self, "\(bad)") { try Names.validate(bad, kind: "container") }
        }
        try Names.validate("web-1.prod_2", kind: "container")
    }

    @Test func rootsGetDistinctCgroupParents() throws {
        let a = try makeRoot()
        let b = try makeRoot()
        defer {
            try? FileManager.default.removeItem(atPath: a.path)
            try? FileManager.default.removeItem(atPath: b.path)
        }
        #expect(a.cgroupParent != b.cgroupParent)
        #expect(a.cgroupParent.hasPrefix("ferry-") && a.cgroupParent.count == 18)
        #expect(try StateRoot(path: a.path).cgroupParent == a.cgroupParent)
        #expect(throws: StoreError.self) { try StateRoot(path: "/tmp/ferry,bad") }
    }

    @Test func volumes() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root.path) }
        let volumes = VolumeStore(root: root)
        let created = try volumes.create("data")
        #expect(FileManager.default.fileExists(atPath: created.mountpoint))
        #expect(throws: StoreError.self) { try volumes.create("data") }
        #expect(try volumes.ensure("data").mountpoint == created.mountpoint)
        #expect(volumes.list().map(\.name) == ["data"])
        #expect { try volumes.remove("data", usedBy: ["web"]) } throws: { "\($0)".contains("in use by container(s) web") }
        try volumes.remove("data", usedBy: [])
        #expect(throws: StoreError.self) { try volumes.inspect("data") }
        #expect(throws: StoreError.self) { try volumes.create("../x") }
    }
}
