import ArgumentParser
import FerryCheckpoint
import FerryRuntime

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start created or exited containers again, detached.",
        discussion: """
            A running container is left as it is; a checkpointed one comes back with \
            `ferry restore`, or here with --restore (what the units of `ferry generate \
            systemd` run at boot).
            """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Restore a checkpointed container from its checkpoint instead of refusing it.")
    var restore = false

    @Argument(help: "Container names or ids.", completion: Completions.container)
    var containers: [String]

    mutating func run() throws {
        let context = try Context(global)
        let runtime = context.runtime
        let checkpointer = Checkpointer(runtime: runtime, logger: context.logger)
        for container in containers {
            if restore, case .checkpointed = try runtime.load(container).status {
                _ = try checkpointer.restore(container)
            } else {
                try runtime.start(container)
            }
            print(container)
        }
    }
}

struct Restart: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop containers (SIGTERM, then SIGKILL after a timeout) and start them again.")

    @OptionGroup var global: GlobalOptions

    @Option(name: [.customShort("t"), .customLong("time")], help: "Seconds to wait before SIGKILL.")
    var time: Double = 10

    @Argument(help: "Container names or ids.", completion: Completions.container)
    var containers: [String]

    mutating func run() throws {
        let runtime = try Context(global).runtime
        for container in containers {
            try runtime.restart(container, timeout: time)
            print(container)
        }
    }
}
