import FerryArchive
import FerryRuntime
import Testing

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
}
