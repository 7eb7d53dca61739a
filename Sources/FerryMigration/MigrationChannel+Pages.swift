import Foundation

extension MigrationChannel {
    /// Sends a `pages` message laid out by the caller in `payload`: the first
    /// `PageRange.encodedSize` bytes are left for the range (written here), the pages
    /// follow; the pages are not copied once more on the way.
    public func sendPages(_ range: PageRange, payload: UnsafeMutableRawBufferPointer) throws(MigrationError) {
        range.encode(into: payload)
        try withSendLock { () throws(MigrationError) in
            try unlockedSendFrame(kind: MigrationMessage.Kind.pages.rawValue, payload: UnsafeRawBufferPointer(payload), timeout: configuration.timeout)
        }
    }
}

extension MigrationChannel {
    /// Receives the next message. A `pages` message is handed to `pages` in place (its
    /// bytes are valid only during the call: they are the channel's receive buffer) and
    /// nil is returned; any other message is returned.
    public func receive(timeout: Duration? = nil, pages: (PageRange, UnsafeRawBufferPointer) -> Void) throws(MigrationError) -> MigrationMessage? {
        try withReceiveLock { () throws(MigrationError) -> MigrationMessage? in
            let message = try unlockedReceiveFrame(timeout: timeout ?? configuration.timeout) { kind, payload throws(MigrationError) -> MigrationMessage? in
                if kind == MigrationMessage.Kind.pages.rawValue, let range = PageRange(decoding: payload), let bytes = range.pages(in: payload) {
                    pages(range, bytes)
                    return nil
                }
                return try decode(kind: kind, payload: payload)
            }
            return try message.map { (message) throws(MigrationError) in try sessionMessage(message) }
        }
    }
}
