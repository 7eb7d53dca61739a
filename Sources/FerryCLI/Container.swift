import ArgumentParser

/// `ferry container VERB`: the container verbs under one group, as podman has them
/// (`ferry container checkpoint web`, `ferry container ls`).
struct ContainerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "container",
        abstract: "Manage containers (the same verbs as at the top level).",
        subcommands: containerVerbs
    )

    static let containerVerbs: [any ParsableCommand.Type] = [
        Run.self, Ps.self, Logs.self, Exec.self, Start.self, Stop.self, Restart.self, Kill.self, Pause.self, Unpause.self, Wait.self,
        Rename.self, Rm.self, Inspect.self, CheckpointCommand.self, RestoreCommand.self,
    ]
}
