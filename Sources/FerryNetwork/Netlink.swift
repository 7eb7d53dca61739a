import CFerryLinux
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A NETLINK_ROUTE socket, acting in the network namespace it was opened in. Each method
/// is one request of the C shim (ferry_net.c) and throws the kernel's errno.
public struct RouteSocket: ~Copyable {
    private let fd: OwnedFD

    /// A socket in the caller's namespace.
    public init() throws(Errno) {
        fd = OwnedFD(adopting: try Self.check(ferry_netlink_socket(-1)))
    }

    /// A socket in the namespace `namespace`: a child process joins it and hands the
    /// socket back; the caller stays where it is.
    public init(in namespace: borrowing OwnedFD) throws(Errno) {
        fd = OwnedFD(adopting: try Self.check(ferry_netlink_socket(namespace.raw)))
    }

    private static func check(_ rc: Int32) throws(Errno) -> Int32 {
        if rc < 0 { throw Errno(rawValue: -rc) }
        return rc
    }

    /// `ferry_link_add_bridge`; false if a link of that name exists already.
    @discardableResult
    public func addBridge(_ name: String) throws(Errno) -> Bool {
        let rc = ferry_link_add_bridge(fd.raw, name)
        if rc == -EEXIST { return false }
        _ = try Self.check(rc)
        return true
    }

    /// `ferry_link_add_veth`: `hostName` here on bridge `master`, `peerName` with `mac`
    /// in the namespace `peerNamespace`.
    public func addVeth(hostName: String, master: Int32, peerName: String, mac: [UInt8], peerNamespace: borrowing OwnedFD) throws(Errno) {
        let rc = mac.withUnsafeBufferPointer { ferry_link_add_veth(fd.raw, hostName, master, peerName, $0.baseAddress, peerNamespace.raw) }
        _ = try Self.check(rc)
    }

    public func index(of name: String) throws(Errno) -> Int32 {
        try Self.check(ferry_link_index(fd.raw, name))
    }

    public func setUp(_ index: Int32) throws(Errno) {
        _ = try Self.check(ferry_link_set_up(fd.raw, index, 1))
    }

    /// Deletes the link; false if there was none.
    @discardableResult
    public func deleteLink(_ name: String) throws(Errno) -> Bool {
        let rc = ferry_link_delete(fd.raw, name)
        if rc == -ENODEV { return false }
        _ = try Self.check(rc)
        return true
    }

    /// Adds `address/prefix`; false if the link has it already.
    @discardableResult
    public func addAddress(_ index: Int32, address: UInt32, prefix: Int) throws(Errno) -> Bool {
        let rc = ferry_address_add(fd.raw, index, address, Int32(prefix))
        if rc == -EEXIST { return false }
        _ = try Self.check(rc)
        return true
    }

    public func addDefaultRoute(_ index: Int32, gateway: UInt32) throws(Errno) {
        _ = try Self.check(ferry_route_add_default(fd.raw, index, gateway))
    }
}
