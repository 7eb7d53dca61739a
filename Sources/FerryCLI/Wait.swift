import ArgumentParser
import FerryRuntime

struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Wait until containers exit; print each one's exit code.")

    @OptionGroup var global: GlobalOptions

    @Option(help: ArgumentHelp("Give up after this many seconds (default: wait as long as it runs).", valueName: "seconds"))
    var timeout: Double?

    @Argument(help: "Container names or ids.", completion: Completions.container)
    var containers: [String]

    mutating func run() throws {
        let runtime = try Context(global).runtime
        for container in containers {
            print(try runtime.wait(container, timeout: timeout))
        }
    }
}
