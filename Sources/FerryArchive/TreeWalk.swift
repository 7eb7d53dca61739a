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
        let rootFD = try io("\(context): open '\(root)'") { () throws(Errno) in
            try OwnedFD.open(root, O_RDONLY | O_DIRECTORY)
        }
        let status = try io("\(context): stat '\(root)'") { () throws(Errno) in try rootFD.status() }
        try visit(rootFD, TreeNode(relativePath: [], name: [MemberPath.dot], status: status))
        try walkDirectory(rootFD, prefix: [], rootDevice: status.device, context: context, visit)
    }

    private static func walkDirectory(
        _ directory: borrowing OwnedFD, prefix: [UInt8], rootDevice: UInt64, context: String, _ visit: Visitor
    ) throws(ArchiveError) {
        let names = try io("\(context): read directory '\(display(prefix.isEmpty ? [MemberPath.dot] : prefix))'") {
            () throws(Errno) in try directory.directoryEntries()
        }
        for name in names {
            let relative = MemberPath.join(prefix, name)
            let status = try io("\(context): lstat '\(display(relative))'") { () throws(Errno) in
                try directory.status(of: name)
            }
            try visit(directory, TreeNode(relativePath: relative, name: name, status: status))
            guard status.kind == .directory, status.device == rootDevice else { continue }
            let child = try io("\(context): open directory '\(display(relative))'") { () throws(Errno) in
                try directory.openAt(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            }
            try walkDirectory(child, prefix: relative, rootDevice: rootDevice, context: context, visit)
        }
    }
}
