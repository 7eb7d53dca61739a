import FerryArchive
import FerryRuntime
import FerryStore
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("The image config under the user's run options")
struct ImageConfigTests {
    private func config() -> ImageRuntimeConfig {
        var config = ImageRuntimeConfig()
        config.entrypoint = ["/bin/app"]
        config.cmd = ["--serve"]
        config.env = ["PATH=/bin", "A=image"]
        config.workingDir = "/srv"
        config.user = "1000:1000"
        return config
    }

    @Test("no command runs Entrypoint + Cmd; a command replaces Cmd only")
    func command() throws {
        var options = RunOptions(command: [])
        try options.applyImage(config(), entrypoint: nil, image: "app")
        #expect(options.command == ["/bin/app", "--serve"])
        var given = RunOptions(command: ["--once"])
        try given.applyImage(config(), entrypoint: nil, image: "app")
        #expect(given.command == ["/bin/app", "--once"])
    }

    @Test("--entrypoint replaces the image's and drops its Cmd; \"\" means none")
    func entrypoint() throws {
        var options = RunOptions(command: [])
        try options.applyImage(config(), entrypoint: "/bin/sh", image: "app")
        #expect(options.command == ["/bin/sh"])
        var none = RunOptions(command: ["echo", "hi"])
        try none.applyImage(config(), entrypoint: "", image: "app")
        #expect(none.command == ["echo", "hi"])
        var empty = RunOptions(command: [])
        #expect(throws: RuntimeError.self) { try empty.applyImage(config(), entrypoint: "", image: "app") }
    }

    @Test("a plain rootfs with no command is refused")
    func noCommand() {
        var options = RunOptions(command: [])
        #expect(throws: RuntimeError.self) { try options.applyImage(nil, entrypoint: nil, image: "rootfs") }
    }

    @Test("Env merges under -e; WorkingDir and User apply only when unset")
    func defaults() throws {
        var options = RunOptions(command: [], environment: ["A=user", "B=1"])
        try options.applyImage(config(), entrypoint: nil, image: "app")
        #expect(options.environment == ["PATH=/bin", "A=user", "B=1"])
        #expect(options.workingDirectory == "/srv")
        #expect(options.user == "1000:1000")
        var set = RunOptions(command: [], workingDirectory: "/tmp")
        set.user = "0"
        try set.applyImage(config(), entrypoint: nil, image: "app")
        #expect(set.workingDirectory == "/tmp")
        #expect(set.user == "0")
    }

    @Test("StopSignal applies unless --stop-signal was given; Labels and ExposedPorts are recorded")
    func stopSignalLabelsPorts() throws {
        var image = config()
        image.stopSignal = "SIGUSR1"
        image.labels = ["org.example.role": "web"]
        image.exposedPorts = ["8080/tcp": EmptyObject(), "53/udp": EmptyObject()]
        var options = RunOptions(command: [])
        try options.applyImage(image, entrypoint: nil, image: "app")
        let settings = try #require(options.imageSettings)
        #expect(settings.stopSignal == "SIGUSR1")
        #expect(settings.labels == ["org.example.role": "web"])
        #expect(settings.exposedPorts == ["53/udp", "8080/tcp"])

        var overridden = RunOptions(command: [])
        overridden.stopSignal = "HUP"
        try overridden.applyImage(image, entrypoint: nil, image: "app")
        #expect(overridden.imageSettings?.stopSignal == "HUP")

        var plain = RunOptions(command: ["true"])
        try plain.applyImage(nil, entrypoint: nil, image: "rootfs")
        #expect(plain.imageSettings == nil, "a container without any of them records nothing")
    }

    @Test("an image whose StopSignal is no signal is refused at run, not at stop")
    func badStopSignal() {
        var image = config()
        image.stopSignal = "SIGNOPE"
        var options = RunOptions(command: [])
        #expect(throws: RuntimeError.self) { try options.applyImage(image, entrypoint: nil, image: "app") }
    }

    @Test("stop sends the recorded signal, SIGTERM when there is none or it is unreadable")
    func stopSignalOfRecord() {
        var record = ContainerRecord(
            id: "c", name: "c", image: "app", imageDigest: nil, lowerDirectory: "/", command: ["true"], created: Date(),
            network: .none, volumes: [], status: .created)
        #expect(ContainerRuntime.stopSignal(of: record) == SIGTERM)
        record.imageSettings = ContainerImageSettings(stopSignal: "SIGUSR1")
        #expect(ContainerRuntime.stopSignal(of: record) == SIGUSR1)
        record.imageSettings = ContainerImageSettings(stopSignal: "9")
        #expect(ContainerRuntime.stopSignal(of: record) == SIGKILL)
        record.imageSettings = ContainerImageSettings(stopSignal: "bogus")
        #expect(ContainerRuntime.stopSignal(of: record) == SIGTERM)
    }

    @Test("the settings survive a state.json round trip")
    func recordRoundTrip() throws {
        var record = ContainerRecord(
            id: "c", name: "c", image: "app", imageDigest: nil, lowerDirectory: "/", command: ["true"], created: Date(),
            network: .none, volumes: [], status: .created)
        record.imageSettings = ContainerImageSettings(stopSignal: "USR2", labels: ["a": "b"], exposedPorts: ["80/tcp"])
        let decoded = try JSONDecoder.ferry.decode(ContainerRecord.self, from: try JSONEncoder.ferry.encode(record))
        #expect(decoded.imageSettings == record.imageSettings)
    }
}
