import FerrySystem
import Foundation
import Testing

@testable import FerryMigration

#if canImport(Glibc)
    import Glibc
#endif

/// True when this host has ::1 (IPv6 can be disabled).
let hasIPv6Loopback: Bool = {
    guard let text = try? Files.readString("/proc/net/if_inet6") else { return false }
    return text.contains("00000000000000000000000000000001")
}()

/// A source and a destination connected over TCP on `host`, handshake done.
func tcpSession(host: String = "127.0.0.1", timeout: Duration = .seconds(20)) async throws -> (MigrationChannel, MigrationChannel) {
    let listener = try TCPListener(host: host, port: 0)
    let address = listener.address
    #expect(address.port != 0)
    let configuration = MigrationChannel.Configuration(timeout: timeout, handshakeTimeout: .seconds(10))
    let (d, s) = await bothSides(
        { () throws -> MigrationChannel in
            let channel = MigrationChannel(transport: try listener.accept(timeout: .seconds(10)), configuration: configuration)
            try channel.handshake(role: .destination, token: testToken)
            return channel
        },
        { () throws -> MigrationChannel in
            let transport = try TCPTransport.connect(to: address, timeout: .seconds(5))
            let channel = MigrationChannel(transport: transport, configuration: configuration)
            try channel.handshake(role: .source, token: testToken)
            return channel
        })
    return (try s.get(), try d.get())
}

@Suite("TCP transport on loopback", .timeLimit(.minutes(2)))
struct TCPTests {
    @Test("handshake and messages over 127.0.0.1, on an ephemeral port")
    func loopback() async throws {
        try await onThread("loopback") {
            let (source, destination) = try await tcpSession()
            defer {
                source.close()
                destination.close()
            }
            #expect(source.peerName.hasPrefix("127.0.0.1:"))
            try source.send(.preflightRequest(sampleRequest))
            #expect(try destination.receive() == .preflightRequest(sampleRequest))
            try destination.send(.preflightResponse(sampleResponse))
            #expect(try source.receive() == .preflightResponse(sampleResponse))
        }
    }

    @Test("handshake over [::1]", .enabled(if: hasIPv6Loopback))
    func loopbackIPv6() async throws {
        try await onThread("loopbackIPv6") {
            let (source, destination) = try await tcpSession(host: "::1")
            defer {
                source.close()
                destination.close()
            }
            #expect(source.peerName.hasPrefix("[::1]:"))
            try source.send(.done)
            #expect(try destination.receive() == .done)
        }
    }

    @Test("a wrong token over TCP: both sides refuse, naming the peer")
    func wrongToken() async throws {
        try await onThread("wrongToken") {
            let listener = try TCPListener(host: "127.0.0.1", port: 0)
            let address = listener.address
            let (d, s) = await bothSides(
                {
                    let channel = MigrationChannel(transport: try listener.accept(timeout: .seconds(10)))
                    defer { channel.close() }
                    try channel.handshake(role: .destination, token: otherToken)
                },
                {
                    let channel = MigrationChannel(transport: try TCPTransport.connect(to: address, timeout: .seconds(5)))
                    defer { channel.close() }
                    try channel.handshake(role: .source, token: testToken)
                })
            #expect(d.migrationError?.code == .authenticationFailed)
            let error = try #require(s.migrationError)
            #expect(error.code == .authenticationFailed)
            #expect(error.description.hasPrefix("cannot migrate: \(address) "))
            #expect(error.peer == address.description)
        }
    }

    @Test("a busy destination's refusal reaches the source over TCP")
    func refusal() async throws {
        try await onThread("refusal") {
            let listener = try TCPListener(host: "127.0.0.1", port: 0)
            let address = listener.address
            let (_, s) = await bothSides(
                { MigrationChannel(transport: try listener.accept(timeout: .seconds(10))).refuse(reason: "busy") },
                {
                    let channel = MigrationChannel(transport: try TCPTransport.connect(to: address, timeout: .seconds(5)))
                    defer { channel.close() }
                    try channel.handshake(role: .source, token: testToken)
                })
            let error = try #require(s.migrationError)
            #expect(error.code == .refused(reason: "busy"))
            #expect(error.description == "cannot migrate: \(address) refused the session: busy")
        }
    }

    @Test("a closed port: the connection is refused, naming the address")
    func refusedConnection() async throws {
        try await onThread("refusedConnection") {
            var port: UInt16 = 0
            do {
                let listener = try TCPListener(host: "127.0.0.1", port: 0)
                port = listener.address.port
            }
            let error = expectMigrationError({ $0 == .io(.connectionRefused) }) {
                _ = try TCPTransport.connect(host: "127.0.0.1", port: port, timeout: .seconds(5))
            }
            #expect(error?.description == "cannot connect to 127.0.0.1:\(port): connect: Connection refused")
        }
    }

    @Test("a TCP peer that accepts but never talks: timedOut within the timeout")
    func silentPeer() async throws {
        try await onThread("silentPeer") {
            let listener = try TCPListener(host: "127.0.0.1", port: 0)
            let address = listener.address
            let (held, client) = await bothSides(
                { () throws -> TCPTransport in try listener.accept(timeout: .seconds(10)) },
                { () throws -> Duration in
                    let channel = MigrationChannel(
                        transport: try TCPTransport.connect(to: address, timeout: .seconds(5)),
                        configuration: MigrationChannel.Configuration(handshakeTimeout: .milliseconds(300)))
                    defer { channel.close() }
                    let started = ContinuousClock.now
                    do {
                        try channel.handshake(role: .source, token: testToken)
                    } catch let error as MigrationError where error.code == .timedOut {
                        #expect(error.description == "cannot migrate: \(address) sent nothing for 300 ms")
                        return ContinuousClock.now - started
                    }
                    throw MigrationError(.io(nil), "no timeout")
                })
            let elapsed = try client.get()
            #expect(elapsed >= .milliseconds(290) && elapsed < .seconds(5))
            try held.get().close()
        }
    }

    @Test("accept times out, and close() wakes a waiting accept")
    func acceptTimeoutAndClose() async throws {
        try await onThread("acceptTimeoutAndClose") {
            let listener = try TCPListener(host: "127.0.0.1", port: 0)
            expectMigrationError({ $0 == .timedOut }) { _ = try listener.accept(timeout: .milliseconds(100)) }
            let (accepted, _) = await bothSides(
                { () throws -> TCPTransport in try listener.accept() },
                {
                    usleep(100_000)
                    listener.close()
                })
            #expect(accepted.migrationError?.code == .connectionClosed)
        }
    }

    @Test("the peer closing a TCP session: connectionClosed on the other side")
    func peerCloses() async throws {
        try await onThread("peerCloses") {
            let (source, destination) = try await tcpSession()
            source.close()
            expectMigrationError({ $0 == .connectionClosed }) { _ = try destination.receive(timeout: .seconds(5)) }
            expectMigrationError({ $0 == .connectionClosed }) { try source.send(.done) }
            destination.close()
        }
    }

    @Test("50 MiB file over TCP loopback: identical content, bounded memory")
    func largeFile() async throws {
        try await onThread("largeFile") {
            let dir = try TempDir()
            defer { dir.cleanup() }
            let size = 50 * (1 << 20)
            let digest = try writeTestFile(dir.sub("pages.img"), size: size)
            let (source, destination) = try await tcpSession()
            defer {
                source.close()
                destination.close()
            }
            let started = ContinuousClock.now
            let (sent, received) = await bothSides(
                { try source.sendFile(name: "checkpoint/pages-1.img", path: dir.sub("pages.img")) },
                { try destination.receiveFile(expectedName: "checkpoint/pages-1.img", path: dir.sub("received.img")) })
            let elapsed = ContinuousClock.now - started
            let summary = try received.get()
            #expect(try sent.get().sha256 == digest)
            #expect(summary.sha256 == digest)
            #expect(summary.size == Int64(size))
            #expect(try sha256(ofFile: dir.sub("received.img")) == digest)
            // The channels' buffers never exceed one frame, whatever the file's size.
            for size in source.bufferSizes() + destination.bufferSizes() {
                #expect(size <= MigrationProtocol.maxFrameSize)
            }
            let mibPerSecond = Double(size) / 1_048_576 / elapsed.seconds
            print("50 MiB over TCP loopback: \(elapsed), \(Int(mibPerSecond)) MiB/s (debug build; informational)")
        }
    }

    @Test("memory stays bounded: a 256 MiB file moves with a few MiB of buffers")
    func boundedMemory() async throws {
        try await onThread("boundedMemory") {
            // The process's peak RSS is shared with every test running in parallel (tens of
            // MiB at times), so the file is large enough for loading it to stand out: a sparse
            // file reads as zeros without touching the disk, and the copy goes to /dev/null.
            let dir = try TempDir()
            defer { dir.cleanup() }
            let size: Int64 = 256 << 20
            let file = try OwnedFD.open(dir.sub("sparse"), O_WRONLY | O_CREAT, mode: 0o600)
            try file.truncate(to: size)
            let (source, destination) = try await tcpSession()
            defer {
                source.close()
                destination.close()
            }
            let rssBefore = processStatus("VmRSS") ?? 0
            // Reset the peak (VmHWM) to the current RSS (proc(5), clear_refs "5").
            try? Files.writeControl("5", to: "/proc/self/clear_refs")
            let (sent, received) = await bothSides(
                { try source.sendFile(name: "big", path: dir.sub("sparse")) },
                { try destination.receiveFile(expectedName: "big", into: try OwnedFD.open("/dev/null", O_WRONLY)) })
            let growth = max(0, (processStatus("VmHWM") ?? 0) - rssBefore) / 1024
            #expect(try sent.get().size == size)
            #expect(try received.get().size == size)
            #expect(growth < 96, "peak RSS grew by \(growth) MiB while moving a 256 MiB file")
            print("256 MiB over TCP loopback: peak RSS growth \(growth) MiB (informational)")
        }
    }

    @Test(
        "addresses: ADDR:PORT and [V6]:PORT",
        arguments: [
            ("127.0.0.1:7070", "127.0.0.1", 7070),
            ("[::1]:7071", "::1", 7071),
            ("[2001:db8::7]:1", "2001:db8::7", 1),
            ("0.0.0.0:0", "0.0.0.0", 0),
            ("10.1.2.3", "10.1.2.3", 7070),
            ("[fe80::1]", "fe80::1", 7070),
        ])
    func parse(text: String, host: String, port: Int) throws {
        let address = try MigrationAddress(parsing: text, defaultPort: 7070)
        #expect(address.host == host)
        #expect(Int(address.port) == port)
        #expect(try MigrationAddress(parsing: address.description) == address)
    }

    @Test(
        "bad addresses are refused with the reason",
        arguments: [
            ("::1:7070", "brackets"),
            ("example.com:7070", "not an IPv4 or IPv6 address literal"),
            ("127.0.0.1:70000", "0 to 65535"),
            ("127.0.0.1", "no port"),
            ("[::1", "missing ']'"),
            ("[::1]7070", "':PORT'"),
            (":7070", "no address"),
            ("[fe80::1%eth0]:7070", "not an IPv4 or IPv6 address literal"),
            ("300.1.1.1:80", "not an IPv4 or IPv6 address literal"),
        ])
    func badAddress(text: String, reason: String) {
        let error = expectMigrationError({ $0 == .invalidArgument }) { _ = try MigrationAddress(parsing: text) }
        #expect(error?.description.contains(reason) == true, "\(String(describing: error))")
        #expect(error?.description.contains("'\(text)'") == true)
    }
}
