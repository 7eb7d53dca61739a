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
