// See include/ferry_net.h for why this is C.
#define _GNU_SOURCE
#include "ferry_net.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>

#define FERRY_NL_BUFFER 4096

struct ferry_nl_request {
    struct nlmsghdr header;
    char payload[FERRY_NL_BUFFER - sizeof(struct nlmsghdr)];
};

static struct rtattr *tail_of(struct nlmsghdr *header) {
    return (struct rtattr *)((char *)header + NLMSG_ALIGN(header->nlmsg_len));
}

static int add_attribute(struct nlmsghdr *header, unsigned short type, const void *data, size_t length) {
    size_t size = RTA_LENGTH(length);
    if (NLMSG_ALIGN(header->nlmsg_len) + RTA_ALIGN(size) > FERRY_NL_BUFFER) return -ENOBUFS;
    struct rtattr *attribute = tail_of(header);
    attribute->rta_type = type;
    attribute->rta_len = (unsigned short)size;
    if (length > 0) memcpy(RTA_DATA(attribute), data, length);
    header->nlmsg_len = NLMSG_ALIGN(header->nlmsg_len) + RTA_ALIGN(size);
    return 0;
}

static int add_string(struct nlmsghdr *header, unsigned short type, const char *value) {
    return add_attribute(header, type, value, strlen(value) + 1);
}

static int add_u32(struct nlmsghdr *header, unsigned short type, uint32_t value) {
    return add_attribute(header, type, &value, sizeof value);
}

static struct rtattr *begin_nest(struct nlmsghdr *header, unsigned short type) {
    struct rtattr *nest = tail_of(header);
    if (add_attribute(header, type, NULL, 0) != 0) return NULL;
    return nest;
}

static void end_nest(struct nlmsghdr *header, struct rtattr *nest) {
    nest->rta_len = (unsigned short)((char *)tail_of(header) - (char *)nest);
}

static void start(struct ferry_nl_request *request, unsigned short type, unsigned short flags, size_t body) {
    memset(request, 0, sizeof *request);
    request->header.nlmsg_len = (uint32_t)NLMSG_LENGTH(body);
    request->header.nlmsg_type = type;
    request->header.nlmsg_flags = (unsigned short)(NLM_F_REQUEST | NLM_F_ACK | flags);
    request->header.nlmsg_seq = 1;
}

/// Sends the request and reads until its acknowledgement. A reply of `want` (a
/// RTM_NEWLINK answering RTM_GETLINK) gives its ifinfomsg index back through `index`.
static int transact(int nl, struct ferry_nl_request *request, int want, int *index) {
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    ssize_t sent;
    do {
        sent = sendto(nl, request, request->header.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) return -errno;
    char buffer[16384];
    for (;;) {
        ssize_t received;
        do { received = recv(nl, buffer, sizeof buffer, 0); } while (received < 0 && errno == EINTR);
        if (received < 0) return -errno;
        if (received == 0) return -EIO;
        int length = (int)received;
        for (struct nlmsghdr *reply = (struct nlmsghdr *)buffer; NLMSG_OK(reply, length); reply = NLMSG_NEXT(reply, length)) {
            if (reply->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *error = (struct nlmsgerr *)NLMSG_DATA(reply);
                return error->error;  // 0 is the acknowledgement
            }
            // The answer comes before the acknowledgement, which is read too so that
            // it cannot be taken for the answer to the next request.
            if (want >= 0 && reply->nlmsg_type == want && index != NULL) {
                struct ifinfomsg *info = (struct ifinfomsg *)NLMSG_DATA(reply);
                *index = info->ifi_index;
            }
            if (reply->nlmsg_type == NLMSG_DONE) return 0;
        }
    }
}

int ferry_netlink_socket(int netns_fd) {
    if (netns_fd < 0) {
        int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
        return fd < 0 ? -errno : fd;
    }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair) != 0) return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int saved = errno;
        close(pair[0]);
        close(pair[1]);
        return -saved;
    }
    if (pid == 0) {
        // Only system calls from here: the parent is multithreaded.
        close(pair[0]);
        int result = 0;
        int fd = -1;
        if (setns(netns_fd, CLONE_NEWNET) != 0) result = errno;
        if (result == 0) {
            fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
            if (fd < 0) result = errno;
        }
        char control[CMSG_SPACE(sizeof(int))];
        memset(control, 0, sizeof control);
        struct iovec iov = {.iov_base = &result, .iov_len = sizeof result};
        struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1};
        if (fd >= 0) {
            message.msg_control = control;
            message.msg_controllen = sizeof control;
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
        }
        ssize_t ignored = sendmsg(pair[1], &message, 0);
        (void)ignored;
        _exit(0);
    }
    close(pair[1]);
    int result = EIO;
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &result, .iov_len = sizeof result};
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    ssize_t received;
    do { received = recvmsg(pair[0], &message, MSG_CMSG_CLOEXEC); } while (received < 0 && errno == EINTR);
    int saved = errno;
    close(pair[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (received < 0) return -saved;
    if (received != sizeof result) return -EIO;
    if (result != 0) return -result;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);
    if (cmsg == NULL || cmsg->cmsg_type != SCM_RIGHTS) return -EIO;
    int fd;
    memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
    return fd;
}

int ferry_link_add_bridge(int nl, const char *name) {
    struct ferry_nl_request request;
    start(&request, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof(struct ifinfomsg));
    struct ifinfomsg *info = NLMSG_DATA(&request.header);
    info->ifi_family = AF_UNSPEC;
    if (add_string(&request.header, IFLA_IFNAME, name) != 0) return -ENOBUFS;
    struct rtattr *linkinfo = begin_nest(&request.header, IFLA_LINKINFO);
    if (linkinfo == NULL || add_string(&request.header, IFLA_INFO_KIND, "bridge") != 0) return -ENOBUFS;
    end_nest(&request.header, linkinfo);
    return transact(nl, &request, -1, NULL);
}

int ferry_link_add_veth(int nl, const char *host_name, int master_index, const char *peer_name, const uint8_t *peer_mac,
                        int peer_netns_fd) {
    struct ferry_nl_request request;
    start(&request, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof(struct ifinfomsg));
    struct ifinfomsg *info = NLMSG_DATA(&request.header);
    info->ifi_family = AF_UNSPEC;
    if (add_string(&request.header, IFLA_IFNAME, host_name) != 0) return -ENOBUFS;
    if (master_index > 0 && add_u32(&request.header, IFLA_MASTER, (uint32_t)master_index) != 0) return -ENOBUFS;
    struct rtattr *linkinfo = begin_nest(&request.header, IFLA_LINKINFO);
    if (linkinfo == NULL || add_string(&request.header, IFLA_INFO_KIND, "veth") != 0) return -ENOBUFS;
    struct rtattr *data = begin_nest(&request.header, IFLA_INFO_DATA);
    if (data == NULL) return -ENOBUFS;
    // The peer is described by a nested ifinfomsg followed by its own attributes.
    struct rtattr *peer = begin_nest(&request.header, VETH_INFO_PEER);
    if (peer == NULL) return -ENOBUFS;
    struct ifinfomsg peer_info = {.ifi_family = AF_UNSPEC};
    if (NLMSG_ALIGN(request.header.nlmsg_len) + NLMSG_ALIGN(sizeof peer_info) > FERRY_NL_BUFFER) return -ENOBUFS;
    memcpy(tail_of(&request.header), &peer_info, sizeof peer_info);
    request.header.nlmsg_len = NLMSG_ALIGN(request.header.nlmsg_len) + NLMSG_ALIGN(sizeof peer_info);
    if (add_string(&request.header, IFLA_IFNAME, peer_name) != 0) return -ENOBUFS;
    if (peer_mac != NULL && add_attribute(&request.header, IFLA_ADDRESS, peer_mac, 6) != 0) return -ENOBUFS;
    if (peer_netns_fd >= 0 && add_u32(&request.header, IFLA_NET_NS_FD, (uint32_t)peer_netns_fd) != 0) return -ENOBUFS;
    end_nest(&request.header, peer);
    end_nest(&request.header, data);
    end_nest(&request.header, linkinfo);
    return transact(nl, &request, -1, NULL);
}

int ferry_link_index(int nl, const char *name) {
    struct ferry_nl_request request;
    start(&request, RTM_GETLINK, 0, sizeof(struct ifinfomsg));
    struct ifinfomsg *info = NLMSG_DATA(&request.header);
    info->ifi_family = AF_UNSPEC;
    if (add_string(&request.header, IFLA_IFNAME, name) != 0) return -ENOBUFS;
    int index = 0;
    int rc = transact(nl, &request, RTM_NEWLINK, &index);
    if (rc < 0) return rc;
    return index > 0 ? index : -ENODEV;
}

int ferry_link_set_up(int nl, int index, int up) {
    struct ferry_nl_request request;
    start(&request, RTM_NEWLINK, 0, sizeof(struct ifinfomsg));
    struct ifinfomsg *info = NLMSG_DATA(&request.header);
    info->ifi_family = AF_UNSPEC;
    info->ifi_index = index;
    info->ifi_change = IFF_UP;
    info->ifi_flags = up ? IFF_UP : 0;
    return transact(nl, &request, -1, NULL);
}

int ferry_link_delete(int nl, const char *name) {
    struct ferry_nl_request request;
    start(&request, RTM_DELLINK, 0, sizeof(struct ifinfomsg));
    struct ifinfomsg *info = NLMSG_DATA(&request.header);
    info->ifi_family = AF_UNSPEC;
    if (add_string(&request.header, IFLA_IFNAME, name) != 0) return -ENOBUFS;
    return transact(nl, &request, -1, NULL);
}

int ferry_address_add(int nl, int index, uint32_t address, int prefix) {
    struct ferry_nl_request request;
    start(&request, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, sizeof(struct ifaddrmsg));
    struct ifaddrmsg *info = NLMSG_DATA(&request.header);
    info->ifa_family = AF_INET;
    info->ifa_prefixlen = (unsigned char)prefix;
    info->ifa_scope = RT_SCOPE_UNIVERSE;
    info->ifa_index = (unsigned int)index;
    if (add_attribute(&request.header, IFA_LOCAL, &address, sizeof address) != 0) return -ENOBUFS;
    if (add_attribute(&request.header, IFA_ADDRESS, &address, sizeof address) != 0) return -ENOBUFS;
    if (prefix < 31) {
        uint32_t host_bits = prefix == 0 ? 0xffffffffu : ((1u << (32 - prefix)) - 1);
        uint32_t broadcast = address | __builtin_bswap32(host_bits);
        if (add_attribute(&request.header, IFA_BROADCAST, &broadcast, sizeof broadcast) != 0) return -ENOBUFS;
    }
    return transact(nl, &request, -1, NULL);
}

int ferry_route_add_default(int nl, int index, uint32_t gateway) {
    struct ferry_nl_request request;
    start(&request, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, sizeof(struct rtmsg));
    struct rtmsg *route = NLMSG_DATA(&request.header);
    route->rtm_family = AF_INET;
    route->rtm_table = RT_TABLE_MAIN;
    route->rtm_protocol = RTPROT_BOOT;
    route->rtm_scope = RT_SCOPE_UNIVERSE;
    route->rtm_type = RTN_UNICAST;
    if (add_attribute(&request.header, RTA_GATEWAY, &gateway, sizeof gateway) != 0) return -ENOBUFS;
    if (add_u32(&request.header, RTA_OIF, (uint32_t)index) != 0) return -ENOBUFS;
    return transact(nl, &request, -1, NULL);
}
