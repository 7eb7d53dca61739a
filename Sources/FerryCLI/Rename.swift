import ArgumentParser
import FerryRuntime

struct Rename: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Give a container a new name.")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Container name or id.", completion: Completions.container)
    var container: String

    @Argument(help: "The new name.")
    var name: String

    mutating func run() throws {
        try Context(global).runtime.rename(container, to: name)
    }
}
