import FerryStore

/// What `checkpoint --all` or `restore --all` did to one container.
public struct BatchOutcome<Value> {
    /// The container's name when it was chosen.
    public var container: String
    public var result: Result<Value, any Error>
    /// How long this container's checkpoint or restore took, failed or not.
    public var duration: Duration
}

/// Runs `body` for each of `names` in turn, recording every outcome.
func eachContainer<Value>(_ names: [String], _ body: (String) throws -> Value) -> [BatchOutcome<Value>] {
    let clock = ContinuousClock()
    return names.map { name in
        let start = clock.now
        let result = Result { try body(name) }
        return BatchOutcome(container: name, result: result, duration: clock.now - start)
    }
}

extension Checkpointer {
    /// podman's `checkpoint --all`: every running container (not paused, as podman's
    /// "running" state excludes paused ones), one after the other, in name order. One
    /// container's failure is recorded and the others go on; containers in any other
    /// state stay as they are. With `options.exportPath` unset: one archive cannot hold
    /// several containers.
    public func checkpointAll(options: CheckpointOptions) -> [BatchOutcome<CheckpointResult>] {
        let chosen = runtime.list().filter { $0.status.stateName == "running" }.map(\.name).sorted()
        return eachContainer(chosen) { try checkpoint($0, options: options) }
    }

    /// podman's `restore --all`: every checkpointed container, in name order; stopped
    /// (exited, created) containers stay stopped. One failure is recorded and the others
    /// go on; a container that fails stays checkpointed.
    public func restoreAll(requireTCPEstablished: Bool = false) -> [BatchOutcome<ContainerRecord>] {
        let chosen = runtime.list().filter { if case .checkpointed = $0.status { true } else { false } }.map(\.name).sorted()
        return eachContainer(chosen) { try restore($0, requireTCPEstablished: requireTCPEstablished) }
    }
}
