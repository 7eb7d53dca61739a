import FerryMigration
import Foundation
import Synchronization
import Testing

/// The relay that carries CRIU's page-server connection between hosts.
@Suite("Relay over a channel")
struct RelayTests {
    /// Reads exactly `count` bytes from `transport`.
    static func read(_ transport: MemoryTransport, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = try bytes.withUnsafeMutableBytes { raw in
                try transport.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[done...]), timeout: .seconds(10))
            }
            if n == 0 { break }
            done += n
        }
        return Array(bytes[..<done])
    }

    @Test("bytes cross both ways, and a proper end on both sides ends both relays")
    func bothWays() async throws {
        let session = try await establishedSession()
        let (criu, sourceLocal) = MemoryTransport.pair()
        let (daemon, destinationLocal) = MemoryTransport.pair()
        let request = [UInt8](repeating: 7, count: 24)
        let response = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }

        let received = Mutex<[UInt8]>([])
        let criuSide = Thread {
            // CRIU answers the request and ends its side.
            let asked = (try? Self.read(criu, count: 24)) ?? []
            if asked == request { try? response.withUnsafeBytes { try criu.write(all: $0, timeout: .seconds(10)) } }
            criu.close()
        }
        let daemonSide = Thread {
            // The daemon asks, reads the answer, and ends its side.
            try? request.withUnsafeBytes { try daemon.write(all: $0, timeout: .seconds(10)) }
            let got = (try? Self.read(daemon, count: response.count)) ?? []
            received.withLock { $0 = got }
            daemon.close()
        }
        criuSide.start()
        daemonSide.start()
        let (source, destination) = await bothSides(
            { try session.source.relay(sourceLocal, idleTimeout: .seconds(10)) },
            { try session.destination.relay(destinationLocal, idleTimeout: .seconds(10)) })
        let up = try source.get()
        #expect(up.sent == Int64(response.count) && up.received == 24)
        let down = try destination.get()
        #expect(down.sent == 24 && down.received == Int64(response.count))
        #expect(received.withLock { $0 } == response)
    }

    @Test("an end the relay may not pass on fails it and tells the local side first")
    func improperEnd() async throws {
        let session = try await establishedSession()
        let (_, sourceLocal) = MemoryTransport.pair()
        let (daemon, destinationLocal) = MemoryTransport.pair()
        let told = Atomic<Bool>(false)
        // The daemon goes away at once: to CRIU that must not look like success.
        daemon.close()
        let (source, _) = await bothSides(
            {
                try session.source.relay(sourceLocal, idleTimeout: .seconds(10), mayEnd: { false }, onFailure: { _ in told.store(true, ordering: .relaxed) })
            },
            { try session.destination.relay(destinationLocal, idleTimeout: .seconds(10)) })
        #expect(source.migrationError != nil, "the source relay fails")
        let ran = told.load(ordering: .relaxed)
        #expect(ran, "onFailure ran")
    }
}
