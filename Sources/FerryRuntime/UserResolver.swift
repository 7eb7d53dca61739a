import FerrySystem

#if canImport(Glibc)
    import Glibc
#endif

/// Turns `--user` and `--group-add` into numeric ids, reading the image's /etc/passwd and
/// /etc/group as podman does.
///
/// The image is untrusted: its files are opened relative to the rootfs with openat2
/// (`RESOLVE_IN_ROOT`, no magic links), so a symlinked /etc/passwd resolves inside the
/// image, never to the host's; each file is read up to 1 MiB.
public enum UserResolver {
    /// `user`: "UID", "UID:GID", "NAME", "NAME:GROUP" (mixed forms too).
    public static func resolve(_ user: String, groupAdd: [String], rootfs: String) throws(RuntimeError) -> OCISpec.User {
        let parts = user.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let userPart = parts.first, !userPart.isEmpty, parts.count == 1 || !parts[1].isEmpty else {
            throw RuntimeError(.invalidArgument, "invalid --user '\(user)': expected UID[:GID] or NAME[:GROUP]")
        }
        let passwd = entries(rootfs: rootfs, file: "etc/passwd")
        let groups = entries(rootfs: rootfs, file: "etc/group")
        // passwd: name:password:uid:gid:gecos:home:shell
        let account: [String]? =
            if let uid = UInt32(userPart) {
                passwd.first { $0.count >= 4 && UInt32($0[2]) == uid }
            } else {
                passwd.first { $0.count >= 4 && $0[0] == userPart }
            }
        let uid: UInt32
        if let number = UInt32(userPart) {
            uid = number
        } else {
            guard let account, let number = UInt32(account[2]) else {
                throw RuntimeError(.invalidArgument, "invalid --user '\(user)': no user '\(userPart)' in the image's /etc/passwd")
            }
            uid = number
        }
        func group(_ name: String, flag: String) throws(RuntimeError) -> UInt32 {
            if let number = UInt32(name) { return number }
            // group: name:password:gid:members
            guard let entry = groups.first(where: { $0.count >= 3 && $0[0] == name }), let number = UInt32(entry[2]) else {
                throw RuntimeError(.invalidArgument, "invalid \(flag) '\(name)': no group '\(name)' in the image's /etc/group")
            }
            return number
        }
        let gid = parts.count == 2 ? try group(parts[1], flag: "--user") : account.flatMap { UInt32($0[3]) } ?? 0
        var additional: [UInt32] = []
        if let name = account?[0] {
            for entry in groups where entry.count >= 4 && entry[3].split(separator: ",").contains(Substring(name)) {
                if let number = UInt32(entry[2]), number != gid, !additional.contains(number) { additional.append(number) }
            }
        }
        for name in groupAdd {
            let number = try group(name, flag: "--group-add")
            if !additional.contains(number) { additional.append(number) }
        }
        return OCISpec.User(uid: uid, gid: gid, additionalGids: additional.isEmpty ? nil : additional)
    }

    /// The colon-separated fields of each line of `file` in the image; none if it is
    /// missing or unreadable. `rootfs` is one tree or an image's layers joined by ':',
    /// top first: the topmost layer holding the file wins, and a whiteout of it in a
    /// layer above hides the ones below, as the overlay would show it.
    static func entries(rootfs: String, file: String) -> [[String]] {
        let name = file.split(separator: "/").last.map(String.init) ?? file
        let whiteout = file.dropLast(name.count) + ".wh." + name
        for layer in rootfs.split(separator: ":").map(String.init) {
            guard let root = try? OwnedFD.open(layer, O_RDONLY | O_DIRECTORY) else { continue }
            func open(_ path: String) -> OwnedFD? {
                try? root.open(beneath: Array(path.utf8), O_RDONLY | O_NOCTTY | O_NONBLOCK, resolve: [.inRoot, .noMagicLinks])
            }
            if let handle = open(file) {
                guard let status = try? handle.status(), status.kind == .regular, let bytes = try? handle.read(upTo: 1 << 20) else { return [] }
                return String(decoding: bytes, as: UTF8.self).split(separator: "\n").filter { !$0.hasPrefix("#") }.map {
                    $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                }
            }
            if open(String(whiteout)) != nil { return [] }
        }
        return []
    }
}
