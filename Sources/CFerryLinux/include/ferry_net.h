// Links, addresses and routes over rtnetlink, for bridge networks.
//
// Why C: the messages are C structs with nested, 4-byte aligned attributes (struct
// nlmsghdr, ifinfomsg, rtattr), which Swift can only build byte by byte; and the one
// operation that needs another network namespace (a netlink socket opened inside a
// container's namespace) needs setns(2), which the multithreaded Swift process must not
// call: a short-lived child does it and hands the socket back. Every call is one request
// and its acknowledgement; each returns 0 (or an index) or -errno, as the kernel said.
// No iproute2 binary is needed, and nothing is parsed from text.
#pragma once

#include <stdint.h>

/// A NETLINK_ROUTE socket (close-on-exec) in the network namespace `netns_fd` (-1: the
/// caller's own), or -errno. The socket keeps acting in that namespace after it is
/// handed back: a netlink socket belongs to the namespace it was created in.
int ferry_netlink_socket(int netns_fd);

/// Creates a bridge `name` (RTM_NEWLINK, kind "bridge"); -EEXIST if a link has that name.
int ferry_link_add_bridge(int nl, const char *name);

/// Creates a veth pair: `host_name` here, enslaved to `master_index` (0: none), and its
/// peer `peer_name` with MAC `peer_mac` (6 bytes; NULL: the kernel's) created directly in
/// the namespace `peer_netns_fd`.
int ferry_link_add_veth(int nl, const char *host_name, int master_index, const char *peer_name, const uint8_t *peer_mac,
                        int peer_netns_fd);

/// The index of the link `name` in the socket's namespace, or -errno (-ENODEV: none).
int ferry_link_index(int nl, const char *name);

/// Sets the link up (or down).
int ferry_link_set_up(int nl, int index, int up);

/// Deletes the link `name`; -ENODEV if there is none.
int ferry_link_delete(int nl, const char *name);

/// Adds the IPv4 address `address` (network byte order) / `prefix` to the link; -EEXIST if
/// it is there already.
int ferry_address_add(int nl, int index, uint32_t address, int prefix);

/// Adds the IPv4 default route via `gateway` (network byte order) out of link `index`.
int ferry_route_add_default(int nl, int index, uint32_t gateway);
