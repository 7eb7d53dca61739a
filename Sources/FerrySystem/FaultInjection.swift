#if canImport(Glibc)
    import Glibc
#endif

/// Named points where Ferry fails on purpose when a test asks it to, as CRIU's own
/// CRIU_FAULT does: `FERRY_FAULT=lose-committed ferry serve ...`.
///
/// Only for faults a test on one machine cannot cause from outside at the right instant
/// (one message lost while the connection that carries it is otherwise fine). Each point
/// is named in docs/faults.md beside the test that arms it; unset, nothing changes.
public enum FaultInjection {
    public enum Point: String, Sendable, CaseIterable {
        /// The destination of a migration lets the container run after `commit`, then
        /// closes the control channel instead of answering `committed`.
        case loseCommitted = "lose-committed"
        /// A streamed export stops reading CRIU's pipes when CRIU opens its last image
        /// (inventory.img), waits a second (CRIU has written it into the pipe by then)
        /// and kills itself: images CRIU counts as written never reach the disk.
        case dieBeforeImagesWritten = "die-before-images-written"
        /// A streamed export kills itself right after telling CRIU that every image is
        /// written (the post-dump hook's answer), before CRIU has ended the tree.
        case dieAfterImagesWritten = "die-after-images-written"
    }

    /// Whether `point` is listed in FERRY_FAULT (comma-separated).
    public static func isArmed(_ point: Point) -> Bool {
        guard let raw = getenv("FERRY_FAULT") else { return false }
        return String(cString: raw).split(separator: ",").contains { $0 == point.rawValue }
    }
}
