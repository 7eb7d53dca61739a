import CArchive
import FerrySystem
@_exported import FerryTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

let isRoot = getuid() == 0

func makeDir(_ path: String, mode: mode_t = 0o755) throws {
    try Files.createDirectory(path)
    try Files.setPermissions(path, mode)
}

func writeFile(_ path: String, _ content: String, mode: mode_t = 0o644) throws {
    try Files.writeAtomically(Array(content.utf8), to: path)
    try Files.setPermissions(path, mode)
}

func makeSymlink(_ path: String, to target: String) {
    precondition(symlink(target, path) == 0, "symlink \(path): \(errno)")
}

func makeHardlink(_ path: String, to existing: String) {
    precondition(link(existing, path) == 0, "link \(path): \(errno)")
}

func changeOwner(_ path: String, _ uid: uid_t, _ gid: gid_t) {
    precondition(lchown(path, uid, gid) == 0, "lchown \(path): \(errno)")
}

/// Runs a command, failing the test if it does not exit 0.
func run(_ arguments: [String]) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "\(arguments.joined(separator: " ")) failed")
}

/// A tree with most kinds of files: regular files (one executable, one setuid, one
/// empty), nested and empty directories, relative and absolute symlinks, a dangling
/// symlink, a hardlink, a FIFO, and when running as root a device node and files owned
/// by other users.
func makeSampleTree(at root: String) throws {
    try makeDir(root, mode: 0o755)
    try makeDir("\(root)/bin")
    try makeDir("\(root)/etc")
    try makeDir("\(root)/empty", mode: 0o700)
    try makeDir("\(root)/tmp", mode: 0o1777)
    try makeDir("\(root)/usr/share/doc")
    try writeFile("\(root)/bin/tool", "#!/bin/sh\necho hi\n", mode: 0o755)
    try writeFile("\(root)/bin/suid", "setuid\n", mode: 0o4755)
    try writeFile("\(root)/etc/hostname", "ferry\n")
    try writeFile("\(root)/etc/empty", "")
    try writeFile("\(root)/usr/share/doc/big", String(repeating: "0123456789abcdef", count: 200_000))
    makeSymlink("\(root)/bin/sh", to: "tool")
    makeSymlink("\(root)/etc/abs", to: "/etc/hostname")
    makeSymlink("\(root)/dangling", to: "../nowhere/at/all")
    makeHardlink("\(root)/bin/tool-link", to: "\(root)/bin/tool")
    precondition(mkfifo("\(root)/tmp/fifo", 0o600) == 0)
    if isRoot {
        precondition(mknod("\(root)/null", S_IFCHR | 0o666, deviceNumber(1, 3)) == 0)
        changeOwner("\(root)/etc/hostname", 1000, 1001)
        changeOwner("\(root)/bin/sh", 1000, 1000)
        changeOwner("\(root)/usr", 12345, 54321)
    }
}

/// glibc's makedev(3) for small numbers (the macro is not imported into Swift).
func deviceNumber(_ major: UInt64, _ minor: UInt64) -> dev_t {
    dev_t((major << 8) | minor)
}

/// The inode of a path (without following a symlink).
func inode(_ path: String) throws -> UInt64 {
    try Files.status(path, followSymlinks: false).inode
}

// MARK: - Archives written with libarchive, for members tar itself would not write

enum Member {
    case file(String, String, mode: mode_t = 0o644)
    case directory(String, mode: mode_t = 0o755)
    case symlink(String, target: String)
    case hardlink(String, target: String)
    case fileWithXattr(String, String, name: String, value: String)
}

/// Writes a pax tar (optionally gzip-compressed) containing exactly `members`.
func writeTar(_ members: [Member], to path: String, gzip: Bool = false) {
    guard let archive = archive_write_new() else { preconditionFailure("libarchive: no memory for a writer") }
    defer { archive_write_free(archive) }
    archive_write_set_format_pax_restricted(archive)
    if gzip { archive_write_add_filter_gzip(archive) }
    precondition(archive_write_open_filename(archive, path) == ARCHIVE_OK)
    for member in members {
        guard let entry = archive_entry_new() else { preconditionFailure("libarchive: no memory for an entry") }
        defer { archive_entry_free(entry) }
        var content: [UInt8] = []
        switch member {
        case let .file(name, text, mode):
            archive_entry_set_pathname(entry, name)
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFREG))
            archive_entry_set_perm(entry, mode)
            content = Array(text.utf8)
        case let .fileWithXattr(name, text, xattrName, value):
            archive_entry_set_pathname(entry, name)
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFREG))
            archive_entry_set_perm(entry, 0o644)
            archive_entry_xattr_add_entry(entry, xattrName, value, value.utf8.count)
            content = Array(text.utf8)
        case let .directory(name, mode):
            archive_entry_set_pathname(entry, name)
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFDIR))
            archive_entry_set_perm(entry, mode)
        case let .symlink(name, target):
            archive_entry_set_pathname(entry, name)
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFLNK))
            archive_entry_set_perm(entry, 0o777)
            archive_entry_set_symlink(entry, target)
        case let .hardlink(name, target):
            archive_entry_set_pathname(entry, name)
            archive_entry_set_filetype(entry, UInt32(Glibc.S_IFREG))
            archive_entry_set_perm(entry, 0o644)
            archive_entry_set_hardlink(entry, target)
        }
        archive_entry_set_size(entry, la_int64_t(content.count))
        precondition(archive_write_header(archive, entry) == ARCHIVE_OK, String(cString: archive_error_string(archive)))
        if !content.isEmpty {
            _ = content.withUnsafeBytes { archive_write_data(archive, $0.baseAddress, $0.count) }
        }
    }
    precondition(archive_write_close(archive) == ARCHIVE_OK)
}

/// The extended attributes of a file, read with libarchive (Swift's Glibc module does
/// not export getxattr).
func extendedAttributes(of path: String) -> [String: String] {
    guard let disk = archive_read_disk_new() else { preconditionFailure("libarchive: no memory for a disk reader") }
    defer { archive_read_free(disk) }
    archive_read_disk_set_symlink_physical(disk)
    guard let entry = archive_entry_new() else { preconditionFailure("libarchive: no memory for an entry") }
    defer { archive_entry_free(entry) }
    archive_entry_copy_sourcepath(entry, path)
    _ = archive_read_disk_entry_from_file(disk, entry, -1, nil)
    var result: [String: String] = [:]
    archive_entry_xattr_reset(entry)
    var name: UnsafePointer<CChar>? = nil
    var value: UnsafeRawPointer? = nil
    var size = 0
    while archive_entry_xattr_next(entry, &name, &value, &size) == ARCHIVE_OK {
        guard let name, let value else { continue }
        let bytes = UnsafeRawBufferPointer(start: value, count: size)
        result[String(cString: name)] = String(decoding: bytes, as: UTF8.self)
    }
    return result
}

/// Names directly inside a directory.
func entries(_ path: String) throws -> [String] {
    try Files.listDirectory(path)
}
