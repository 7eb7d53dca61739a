import ArgumentParser
import FerryCheckpoint
import FerryMigration
import Foundation

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Receive migrated containers (the agent on the destination host).",
        discussion: """
            Runs until stopped. Both sides prove they hold the token (HMAC challenge-response; \
            the token never crosses the wire) and every frame is integrity-checked. Frames \
            are not encrypted: migrate over a network you trust, or a tunnel.
              ferry serve --listen 0.0.0.0:7070 --token-file /etc/ferry/token
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: ArgumentHelp("Address and port to listen on, e.g. 0.0.0.0:7070 or [::]:7070.", valueName: "addr:port"))
    var listen: String

    @Option(name: .customLong("token-file"), help: ArgumentHelp("File holding the shared secret (at least 16 bytes).", valueName: "file"))
    var tokenFile: String

    mutating func run() throws {
        let context = try Context(global)
        let token = try Migrator.readToken(tokenFile)
        try Migrator(runtime: context.runtime, logger: context.logger).serve(listen: listen, token: token)
    }
}

struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Move a running container to another host running `ferry serve`.",
        discussion: """
            stop-copy: freeze, dump and send the container; the destination restores it frozen, \
            this host ends its copy, then the destination lets it run: exactly one copy runs at \
            any time, and if anything fails before that point the container runs on here.

            lazy (post-copy): send everything but memory, let the destination run the container \
            at once, and send memory as it is touched and in the background. The downtime no \
            longer grows with memory, but UNTIL EVERY PAGE HAS ARRIVED THE CONTAINER DEPENDS ON \
            THIS HOST: if it or the network fails meanwhile, the container is lost (this copy \
            stays frozen rather than run twice). The command returns once the source is free.

            pre-copy needs memory dirty tracking, which this kernel lacks (`ferry check`). \
            auto (the default) picks lazy when both hosts support it, else stop-copy.
              ferry migrate web --to 10.0.0.2:7070 --token-file /etc/ferry/token --mode lazy
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: ArgumentHelp("The destination's `ferry serve` address.", valueName: "addr:port"))
    var to: String

    @Option(name: .customLong("token-file"), help: ArgumentHelp("File holding the shared secret.", valueName: "file"))
    var tokenFile: String

    @Option(help: "auto, stop-copy, lazy or pre-copy.")
    var mode: String = "auto"

    @Flag(help: "Move established TCP connections too (they are locked while the container moves).")
    var tcpEstablished = false

    @Option(help: "Output format: table or json.")
    var format: OutputFormat = .table

    @OptionGroup var progress: ProgressOptions

    @Argument(help: "Container name or id.", completion: Completions.container)
    var container: String

    func validate() throws {
        if !["auto", "stop-copy", "lazy", "pre-copy"].contains(mode) {
            throw ValidationError("--mode must be auto, stop-copy, lazy or pre-copy")
        }
    }

    mutating func run() throws {
        let context = try Context(global)
        let token = try Migrator.readToken(tokenFile)
        let chosen: MigrationMode? =
            switch mode {
            case "lazy": .lazy
            case "pre-copy": .preCopy
            case "stop-copy": .stopCopy
            default: nil
            }
        let sink = progress.sink
        let report = try Migrator(runtime: context.runtime, logger: context.logger).migrate(
            container, to: to, token: token, mode: chosen, tcpEstablished: tcpEstablished
        ) { step in
            sink.report(step)
        }
        sink.finish("migrated", done: report.bytesSent)
        for warning in report.warnings ?? [] { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
        if format == .json { return try Output.json(report) }
        print(
            String(
                format: "%@ migrated to %@ (%@): downtime %.0f ms, total %.0f ms, %@ sent", report.container, report.destination, report.mode,
                report.downtimeMs, report.totalMs, Output.bytes(report.bytesSent)))
    }
}
