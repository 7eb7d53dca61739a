import Crypto
import FerrySystem
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What crossed the wire for one member.
public struct MemberSummary: Sendable, Equatable {
    /// The member's name.
    public var name: String
    /// Its length in bytes.
    public var size: Int64
    /// SHA-256 of its bytes.
    public var sha256: [UInt8]
    /// From the `member` frame to the `memberEnd` frame.
    public var duration: Duration

    /// The digest in lowercase hex.
    public var sha256Hex: String { sha256.map { String(format: "%02x", $0) }.joined() }

    /// Bytes per second over `duration`.
    public var bytesPerSecond: Double {
        let seconds = duration.seconds
        return seconds > 0 ? Double(size) / seconds : 0
    }
}

/// Streaming files: `member(name, size)`, `data` chunks, `memberEnd(size, sha256)`.
///
/// Memory stays bounded by one chunk and one frame whatever the file's size: the sender
/// reads a chunk, sends it, reads the next; the receiver writes each chunk before reading
/// the next frame. The sender holds the send lock for the whole member, so no other
/// message can land in its middle (another thread's `send` waits, even while a stream's
/// producer is slow).
///
/// When reading the source fails after the `member` frame went out, the receiver is left
/// in the middle of the member: send `abort(reason)` next, which its `receiveFile` turns
/// into `.peerAborted(reason)`.
extension MigrationChannel {
    /// Sends the regular file at `path` as member `name`.
    @discardableResult
    public func sendFile(name: String, path: String) throws(MigrationError) -> MemberSummary {
        let fd: OwnedFD
        do {
            fd = try OwnedFD.open(path, O_RDONLY)
        } catch {
            throw MigrationError(.io(error), "cannot send '\(path)' to \(peerName): open", peer: peerName, cause: error)
        }
        return try sendFile(name: name, from: fd)
    }

    /// Sends the regular file open at `fd` (from its current offset; its size from
    /// fstat) as member `name`. A file that ends early fails the send: it changed while
    /// being sent.
    @discardableResult
    public func sendFile(name: String, from fd: borrowing OwnedFD) throws(MigrationError) -> MemberSummary {
        let status: FileStatus
        do {
            status = try fd.status()
        } catch {
            throw MigrationError(.io(error), "cannot send '\(name)' to \(peerName): fstat", peer: peerName, cause: error)
        }
        guard status.kind == .regular else {
            throw MigrationError(.invalidArgument, "cannot send '\(name)' to \(peerName): not a regular file (use sendStream)", peer: peerName)
        }
        return try sendMember(name: name, size: status.size, from: fd)
    }

    /// Sends everything readable from `fd` until its end (a pipe, a socket) as member
    /// `name` of unknown size: the `member` frame says -1, `memberEnd` the total.
    @discardableResult
    public func sendStream(name: String, from fd: borrowing OwnedFD) throws(MigrationError) -> MemberSummary {
        try sendMember(name: name, size: -1, from: fd)
    }

    private func sendMember(name: String, size: Int64, from fd: borrowing OwnedFD) throws(MigrationError) -> MemberSummary {
        let started = ContinuousClock.now
        let timeout = configuration.timeout
        let chunkSize = configuration.chunkSize
        let peer = peerName
        let summary = try withSendLock { () throws(MigrationError) -> MemberSummary in
            try unlockedSend(.member(name: name, size: size), timeout: timeout)
            if chunkBuffer.count < chunkSize { chunkBuffer = [UInt8](repeating: 0, count: chunkSize) }
            var hasher = SHA256()
            var total: Int64 = 0
            while true {
                let wanted = size < 0 ? chunkSize : Int(min(Int64(chunkSize), size - total))
                if wanted == 0 { break }
                // One read, one frame: a pipe's bytes go out as soon as they arrive.
                let count: Int
                do throws(Errno) {
                    count = try chunkBuffer.withMutableBytes { raw throws(Errno) in
                        try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<wanted]))
                    }
                } catch {
                    throw MigrationError(.io(error), "cannot send '\(name)' to \(peer): read", peer: peer, cause: error)
                }
                if count == 0 {
                    if size < 0 { break }
                    throw MigrationError(
                        .io(nil),
                        "cannot send '\(name)' to \(peer): it ended after \(total) of its \(size) bytes (it changed while being sent)",
                        peer: peer)
                }
                try chunkBuffer.withBytes { raw throws(MigrationError) in
                    let chunk = UnsafeRawBufferPointer(rebasing: raw[0..<count])
                    hasher.update(bufferPointer: chunk)
                    try unlockedSendFrame(kind: MigrationMessage.Kind.data.rawValue, payload: chunk, timeout: timeout)
                }
                total += Int64(count)
            }
            let digest = Array(hasher.finalize())
            try unlockedSend(.memberEnd(size: total, sha256: digest), timeout: timeout)
            return MemberSummary(name: name, size: total, sha256: digest, duration: ContinuousClock.now - started)
        }
        logger.debug(
            "member sent",
            metadata: [
                "ferry.phase": "transfer", "ferry.member": "\(name)", "ferry.bytes": "\(summary.size)",
                "ferry.bytesPerSecond": "\(Int64(summary.bytesPerSecond))",
            ])
        return summary
    }

    /// Receives the next member, which must be called `expectedName`, into `fd` (written
    /// at its current offset).
    ///
    /// - Parameter limit: the most bytes accepted (nil: as many as announced; a stream
    ///   of unknown size is then unbounded).
    /// - Throws: `.protocolViolation` for another message or name, or more bytes than
    ///   announced or allowed; `.integrityFailed` when the SHA-256 differs;
    ///   `.peerAborted` when the sender gives up; `.io` when writing fails.
    @discardableResult
    public func receiveFile(expectedName: String, into fd: borrowing OwnedFD, limit: Int64? = nil) throws(MigrationError) -> MemberSummary {
        let timeout = configuration.timeout
        return try withReceiveLock { () throws(MigrationError) -> MemberSummary in
            let message = try unlockedSessionReceive(timeout: timeout)
            guard case let .member(name, size) = message else {
                throw failReceive(unexpected(message, expected: "member '\(expectedName)'"))
            }
            guard name == expectedName else {
                throw failReceive(
                    MigrationError(
                        .protocolViolation(unexpected: .member),
                        "cannot migrate: \(peerName) sent member '\(name)' where '\(expectedName)' was expected",
                        peer: peerName))
            }
            return try unlockedReceiveMemberData(name: name, size: size, into: fd, limit: limit)
        }
    }

    /// Receives the next member, which must be called `expectedName`, into a new file at
    /// `path` (created with O_EXCL and `mode`; removed again if the transfer fails).
    @discardableResult
    public func receiveFile(expectedName: String, path: String, mode: mode_t = 0o600, limit: Int64? = nil) throws(MigrationError) -> MemberSummary {
        let fd: OwnedFD
        do {
            fd = try OwnedFD.open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: mode)
        } catch {
            throw MigrationError(.io(error), "cannot receive '\(expectedName)' from \(peerName): create \(path)", peer: peerName, cause: error)
        }
        do {
            return try receiveFile(expectedName: expectedName, into: fd, limit: limit)
        } catch {
            _ = unlink(path)
            throw error
        }
    }

    /// Receives the `data` and `memberEnd` frames of a member whose `member(name, size)`
    /// message `receive()` has just returned, into `fd`. For callers that decide where a
    /// member goes from its name (which they must validate: it comes from the peer).
    @discardableResult
    public func receiveMemberData(name: String, size: Int64, into fd: borrowing OwnedFD, limit: Int64? = nil) throws(MigrationError) -> MemberSummary {
        try withReceiveLock { () throws(MigrationError) -> MemberSummary in
            try unlockedReceiveMemberData(name: name, size: size, into: fd, limit: limit)
        }
    }

    private func unlockedReceiveMemberData(name: String, size: Int64, into fd: borrowing OwnedFD, limit: Int64?) throws(MigrationError) -> MemberSummary {
        let started = ContinuousClock.now
        let timeout = configuration.timeout
        let peer = peerName
        if let limit, size > limit {
            throw failReceive(
                MigrationError(
                    .protocolViolation(unexpected: .member),
                    "cannot migrate: \(peer) announced member '\(name)' of \(describe(bytes: size)), more than the \(describe(bytes: limit)) allowed",
                    peer: peer))
        }
        var hasher = SHA256()
        var total: Int64 = 0
        while true {
            let end = try unlockedReceiveFrame(timeout: timeout) { rawKind, payload throws(MigrationError) -> MigrationMessage? in
                guard rawKind == MigrationMessage.Kind.data.rawValue else {
                    return try MigrationMessage.decode(kind: rawKind, payload: payload)
                }
                let after = total + Int64(payload.count)
                if size >= 0, after > size {
                    throw MigrationError(
                        .protocolViolation(unexpected: .data),
                        "cannot migrate: \(peer) sent more than the \(size) bytes it announced for '\(name)'",
                        peer: peer)
                }
                if let limit, after > limit {
                    throw MigrationError(
                        .protocolViolation(unexpected: .data),
                        "cannot migrate: \(peer) sent more than the \(describe(bytes: limit)) allowed for '\(name)'",
                        peer: peer)
                }
                do throws(Errno) {
                    try fd.writeAll(payload)
                } catch {
                    throw MigrationError(.io(error), "cannot receive '\(name)' from \(peer): write", peer: peer, cause: error)
                }
                hasher.update(bufferPointer: payload)
                total = after
                return nil
            }
            guard let end else { continue }
            guard case let .memberEnd(endSize, sha256) = end else {
                throw failReceive(unexpected(end, expected: "data or memberEnd for '\(name)'"))
            }
            guard endSize == total, size < 0 || size == total else {
                throw failReceive(
                    MigrationError(
                        .protocolViolation(unexpected: .memberEnd),
                        "cannot migrate: \(peer) ended '\(name)' after \(total) bytes, announcing \(size < 0 ? endSize : size)",
                        peer: peer))
            }
            let digest = Array(hasher.finalize())
            guard digest.withUnsafeBytes({ a in sha256.withUnsafeBytes { b in constantTimeEqual(a, b) } }) else {
                throw failReceive(
                    MigrationError(
                        .integrityFailed, "cannot migrate: the SHA-256 of '\(name)' from \(peer) does not match the one it sent", peer: peer))
            }
            let summary = MemberSummary(name: name, size: total, sha256: digest, duration: ContinuousClock.now - started)
            logger.debug(
                "member received",
                metadata: [
                    "ferry.phase": "transfer", "ferry.member": "\(name)", "ferry.bytes": "\(total)",
                    "ferry.bytesPerSecond": "\(Int64(summary.bytesPerSecond))",
                ])
            return summary
        }
    }
}
