import ArgumentParser
import FerryRuntime

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Freeze every process of running containers (the cgroup freezer).")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Container names or ids.", completion: Completions.container)
    var containers: [String]

    mutating func run() throws {
        let runtime = try Context(global).runtime
        for container in containers {
            try runtime.pause(container)
            print(container)
        }
    }
}

struct Unpause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Thaw paused containers.")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Container names or ids.", completion: Completions.container)
    var containers: [String]

    mutating func run() throws {
        let runtime = try Context(global).runtime
        for container in containers {
            try runtime.unpause(container)
            print(container)
        }
    }
}
