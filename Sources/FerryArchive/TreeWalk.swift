import FerrySystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One file met by `TreeWalk`.
struct TreeNode {
    /// The path relative to the root, without a leading "./"; empty for the root.
    let relativePath: [UInt8]
    /// The name within the parent directory; "." for the root, which is visited with its
    /// own descriptor as the "parent".
    let name: [UInt8]
    /// `lstat` of the file: symlinks are described, never followed.
    let status: FileStatus
}

/// Walks a directory tree depth-first, each directory's entries in bytewise order of
/// their names, relative to directory descriptors.
///
/// Every name is looked up with `fstatat(AT_SYMLINK_NOFOLLOW)` and every directory is
/// opened with `O_NOFOLLOW` relative to its parent, so a symlink inside the tree can
/// never lead the walk outside it (a path-based walk would follow symlinks in
/// intermediate components). Directories on another filesystem than the root's (mount
/// points) are visited but not entered, like `cp -x`.
///
/// One descriptor is open per level of depth.
enum TreeWalk {
    typealias Visitor = (borrowing OwnedFD, TreeNode) throws(ArchiveError) -> Void

    /// Visits the root itself, then everything below it. `context` starts every error
    /// message ("cannot copy '/src'").
    static func walk(root: String, context: String, _ visit: Visitor) throws(ArchiveError) {
        let rootFD: OwnedFD
        let status: FileStatus
        do {
            rootFD = try OwnedFD.open(root, O_RDONLY | O_DIRECTORY)
            status = try rootFD.status()
        } catch {
            throw ArchiveError(.io, "\(context): open \(root): \(error)")
        }
        try visit(rootFD, TreeNode(relativePath: [], name: [MemberPath.dot], status: status))
        try walkDirectory(rootFD, prefix: [], rootDevice: status.device, context: context, visit)
    }

    private static func walkDirectory(
        _ directory: borrowing OwnedFD, prefix: [UInt8], rootDevice: UInt64, context: String, _ visit: Visitor
    ) throws(ArchiveError) {
        let names: [[UInt8]]
        do {
            names = try directory.directoryEntries()
        } catch {
            throw ArchiveError(.io, "\(context): read directory '\(display(prefix.isEmpty ? [MemberPath.dot] : prefix))': \(error)")
        }
        for name in names {
            let relative = MemberPath.join(prefix, name)
            let status: FileStatus
            do {
                status = try directory.status(of: name)
            } catch {
                throw ArchiveError(.io, "\(context): lstat '\(display(relative))': \(error)")
            }
            try visit(directory, TreeNode(relativePath: relative, name: name, status: status))
            guard status.kind == .directory, status.device == rootDevice else { continue }
            let child: OwnedFD
            do {
                child = try directory.openAt(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            } catch {
                throw ArchiveError(.io, "\(context): open directory '\(display(relative))': \(error)")
            }
            try walkDirectory(child, prefix: relative, rootDevice: rootDevice, context: context, visit)
        }
    }
}
