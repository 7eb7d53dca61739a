// CFerryLinux: the few steps Swift cannot take safely.
//
// Why C: starting a container means clone() with new namespaces, then mounts, pivot_root
// and exec in the child. The Swift process is multithreaded, so the child (a copy with one
// thread) may only make async-signal-safe system calls: no allocation, no locks, no Swift
// runtime. Likewise, setns() into a pid or mount namespace must not happen in the
// multithreaded parent. Everything here runs between fork/clone and exec, uses only
// system calls, and reports failure back as (stage, errno, index) over a close-on-exec pipe.
#pragma once

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// How a mount is made inside the container.
enum ferry_mount_kind {
    /// A new filesystem instance: mount(source, target, fstype, flags, data).
    FERRY_MOUNT_FS = 0,
    /// A bind of a host path: cloned with open_tree() before pivot_root, so that after
    /// pivot_root the host is no longer reachable by any path.
    FERRY_MOUNT_BIND = 1,
};

struct ferry_mount {
    const char *source;     // FS: device/name; BIND: host path
    const char *target;     // absolute path inside the container
    const char *fstype;     // FS only
    unsigned long flags;    // MS_* flags; for BIND only MS_RDONLY is honoured
    const char *data;       // FS only, may be NULL
    int kind;               // enum ferry_mount_kind
    int recursive;          // BIND: clone submounts too
};

struct ferry_device {
    const char *path;       // absolute path inside the container
    unsigned int mode;      // S_IFCHR | permissions
    unsigned int major;
    unsigned int minor;
};

struct ferry_symlink {
    const char *target;     // what the link points to
    const char *path;       // absolute path of the link inside the container
};

/// One resource limit (setrlimit).
struct ferry_rlimit {
    int resource;                       // RLIMIT_*
    unsigned long long soft;
    unsigned long long hard;
};

/// What the container's process may do: applied in the child, after its mounts and right
/// before exec, in runc's order (rlimits, no_new_privs, bounding set, user and groups,
/// capabilities, seccomp last).
struct ferry_security {
    unsigned long long cap_bounding;    // bit N: capability N
    unsigned long long cap_effective;
    unsigned long long cap_permitted;
    unsigned long long cap_inheritable;
    unsigned long long cap_ambient;
    int no_new_privileges;
    const void *seccomp_filter;         // struct sock_filter[]; NULL: no filter
    size_t seccomp_length;              // in bytes
    unsigned int uid;
    unsigned int gid;
    const unsigned int *groups;         // supplementary groups
    size_t n_groups;
    const struct ferry_rlimit *rlimits;
    size_t n_rlimits;
};

struct ferry_spawn {
    int new_network;                    // new network namespace with lo up, else the host's
    int new_cgroup_namespace;           // unshared once the supervisor has placed the child
    const char *rootfs;                 // host path of the prepared root filesystem
    const struct ferry_mount *mounts;
    size_t n_mounts;
    const struct ferry_device *devices;
    size_t n_devices;
    const struct ferry_symlink *symlinks;
    size_t n_symlinks;
    const char *hostname;               // NULL: leave as is
    const char *cwd;                    // inside the container; created if missing
    char *const *argv;                  // argv[0] is searched in the container's PATH
    char *const *envp;
    int stdio[3];                       // descriptors for 0, 1, 2
    const char *const *masked_paths;    // a file gets /dev/null over it, a directory a ro tmpfs
    size_t n_masked;
    const char *const *readonly_paths;  // bound onto themselves read-only
    size_t n_readonly;
    int readonly_root;                  // remount / read-only once everything is mounted
    int terminal;                       // non-zero: a new pty of the container's devpts as stdio
    int console_socket;                 // with terminal: where the pty's master is sent
    struct ferry_security security;
    // A pod's namespaces to join instead of making new ones (a pod member): with
    // join_pod set, each fd >= 0 is an open nsfs file the child setns()es into first.
    int join_pod;
    int join_net_fd;
    int join_ipc_fd;
    int join_uts_fd;
};

/// Where a child failed, for the error message.
enum ferry_stage {
    FERRY_STAGE_NONE = 0,
    FERRY_STAGE_STDIO,
    FERRY_STAGE_SETSID,
    FERRY_STAGE_MOUNT_PRIVATE,
    FERRY_STAGE_OPEN_TREE,
    FERRY_STAGE_ROOT_BIND,
    FERRY_STAGE_PIVOT_ROOT,
    FERRY_STAGE_MOUNT_TARGET,
    FERRY_STAGE_MOUNT,
    FERRY_STAGE_DEVICE,
    FERRY_STAGE_SYMLINK,
    FERRY_STAGE_HOSTNAME,
    FERRY_STAGE_LOOPBACK,
    FERRY_STAGE_CWD,
    FERRY_STAGE_IDS,
    FERRY_STAGE_SYNC,
    FERRY_STAGE_CGROUP,
    FERRY_STAGE_SETNS,
    FERRY_STAGE_FORK,
    FERRY_STAGE_EXEC,
    FERRY_STAGE_MASK,
    FERRY_STAGE_READONLY_PATH,
    FERRY_STAGE_READONLY_ROOT,
    FERRY_STAGE_CGROUP_NAMESPACE,
    FERRY_STAGE_RLIMIT,
    FERRY_STAGE_NO_NEW_PRIVILEGES,
    FERRY_STAGE_CAPABILITIES,
    FERRY_STAGE_SECCOMP,
    FERRY_STAGE_TERMINAL,
};

/// What a child reports on its error pipe before exiting.
struct ferry_child_error {
    int stage;   // enum ferry_stage
    int err;     // errno
    int index;   // which mount/device/namespace, or -1
};

/// A human name for a stage ("pivot_root", "exec", ...).
const char *ferry_stage_name(int stage);

/// Starts a container's init process in new namespaces.
///
/// Returns the child's pid (in the caller's pid namespace) or -errno. The child prepares
/// its mounts, then blocks until the caller writes one byte to *sync_fd (after placing it
/// in its cgroups) or closes it (abort). The caller then reads *error_fd: end-of-file means
/// the exec succeeded; a struct ferry_child_error means it failed and the child has exited.
/// Both descriptors are close-on-exec and owned by the caller.
pid_t ferry_spawn_container(const struct ferry_spawn *spec, int *sync_fd, int *error_fd);

struct ferry_exec {
    const int *ns_fds;        // open /proc/PID/ns/* descriptors; mnt must be last
    size_t n_ns;
    const int *cgroup_fds;    // open cgroup.procs descriptors to join first
    size_t n_cgroup;
    const char *cwd;          // inside the container
    char *const *argv;
    char *const *envp;
    struct ferry_security security;  // the same as the container's init
    int terminal;             // non-zero: a new session with a new pty of the container as stdio
    int console_socket;       // with terminal: where the pty's master is sent
};

/// Runs a command inside an existing container's namespaces and cgroups.
///
/// Forks a helper that joins the cgroups and namespaces, then forks the command (a pid
/// namespace only applies to children) and exits with its status. Returns the helper's
/// pid or -errno; *error_fd reports failure as in ferry_spawn_container. The command
/// inherits the caller's stdio.
pid_t ferry_exec_in(const struct ferry_exec *spec, int *error_fd);

/// A new network namespace with only loopback up, returned as an open (close-on-exec)
/// descriptor, or -errno. A short-lived child unshares it, since the multithreaded
/// caller must not; the namespace lives on as long as the descriptor is open. CRIU
/// restores a container into it (an external netns), instead of dumping and rebuilding
/// a namespace that holds nothing but lo.
int ferry_new_network_namespace(void);

/// A pod's namespaces: a short-lived child (the multithreaded caller must not unshare)
/// unshares net, ipc and uts, sets `hostname`, brings lo up and bind-mounts its
/// /proc/self/ns/{net,ipc,uts} onto the three existing files, which then keep the
/// namespaces alive without any process (as `ip netns add` does). Returns 0 or -errno.
int ferry_pin_pod_namespaces(const char *hostname, const char *net_path, const char *ipc_path, const char *uts_path);

/// memfd_create(name, MFD_CLOEXEC), which Swift's Glibc module does not export (a
/// _GNU_SOURCE name): a descriptor, or -1 with errno set.
int ferry_memfd(const char *name);

/// pipe2(fds, O_CLOEXEC): Swift's Glibc module does not export pipe2.
int ferry_pipe_cloexec(int fds[2]);

// A pseudo-terminal pair, both ends close-on-exec: fds[0] the master, fds[1] the slave.
// Why C: glibc declares posix_openpt/grantpt/unlockpt/ptsname_r only with _XOPEN_SOURCE,
// which Swift's Glibc module does not define. Returns 0, or -1 with errno.
int ferry_open_pty(int fds[2]);

/// A terminal's window size (TIOCGWINSZ): 0, or -1 with errno. Why C: ioctl is variadic,
/// which Swift cannot call.
int ferry_get_window_size(int fd, unsigned short *rows, unsigned short *columns);
/// Sets a terminal's window size (TIOCSWINSZ); the kernel then sends SIGWINCH to the
/// terminal's foreground process group. 0, or -1 with errno.
int ferry_set_window_size(int fd, unsigned short rows, unsigned short columns);

/// pivot_root(2), which glibc does not wrap.
int ferry_pivot_root(const char *new_root, const char *put_old);

#ifdef __cplusplus
}
#endif

// ---- Host probes ----------------------------------------------------------------------
// Why C: glibc has no userfaultfd() wrapper, and Swift cannot call the variadic syscall().

#ifdef __cplusplus
extern "C" {
#endif

/// userfaultfd(2) with the given flags (O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY):
/// a new descriptor, or -1 with errno set.
int ferry_userfaultfd(int flags);

#ifdef __cplusplus
}
#endif

// ---- userfaultfd ioctls and events --------------------------------------------------------
// Why C: ioctl() is variadic, and struct uffd_msg is a union of anonymous structs that
// Swift imports poorly. Each function is one ioctl or one read; every one returns 0 (or
// the count noted) on success and -errno on failure.

#include <stdint.h>

#define FERRY_UFFD_PAGEFAULT 1
#define FERRY_UFFD_FORK      2
#define FERRY_UFFD_REMAP     3
#define FERRY_UFFD_REMOVE    4
#define FERRY_UFFD_UNMAP     5
#define FERRY_UFFD_OTHER     6

/// One userfaultfd event, flattened: `address` for a fault; `start`/`length` for remove
/// and unmap; `start` (from), `to`, `length` for remap; `fd` (a new descriptor the read
/// installed in this process) for fork.
struct ferry_uffd_event {
    int kind;
    int fd;
    uint64_t address;
    uint64_t start;
    uint64_t to;
    uint64_t length;
};

#ifdef __cplusplus
extern "C" {
#endif

/// UFFDIO_API with `features`; the features the kernel grants are written back.
int ferry_uffd_api(int uffd, uint64_t *features);
/// UFFDIO_REGISTER in missing mode (tests register their own memory with it).
int ferry_uffd_register_missing(int uffd, uint64_t start, uint64_t length);
int ferry_uffd_unregister(int uffd, uint64_t start, uint64_t length);
/// UFFDIO_COPY; `copied` gets the bytes copied, also when it fails part-way.
int ferry_uffd_copy(int uffd, uint64_t destination, const void *source, uint64_t length, int64_t *copied);
int ferry_uffd_zeropage(int uffd, uint64_t start, uint64_t length);
int ferry_uffd_wake(int uffd, uint64_t start, uint64_t length);
/// Reads one event: 1 with `event` filled, 0 when none is pending (EAGAIN), -errno.
int ferry_uffd_read_event(int uffd, struct ferry_uffd_event *event);
/// Receives one byte with one descriptor attached (SCM_RIGHTS), as CRIU's send_fd sends
/// it: 1 with `fd` set (close-on-exec), 0 at end of stream, -errno.
int ferry_recv_fd(int sock, int *fd);
/// Sends one byte with `fd` attached (SCM_RIGHTS): 0, or -errno.
int ferry_send_fd(int sock, int fd);
/// sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE), which glibc declares only
/// with _GNU_SOURCE: starts writeback of the range without waiting. 0, or -errno.
int ferry_start_writeback(int fd, long long offset, long long count);
/// fcntl(fd, F_SETPIPE_SZ, size) (_GNU_SOURCE only): the pipe's new capacity, or -errno.
int ferry_set_pipe_size(int fd, int size);

#ifdef __cplusplus
}
#endif

// ---- Confined path resolution and extended attributes -----------------------------------
// Why C: glibc 2.36 has no openat2() wrapper and Swift cannot call the variadic syscall();
// <sys/xattr.h> is not part of Swift's Glibc module. Used to extract untrusted trees
// relative to a directory descriptor (see FerrySystem's OwnedFD.openBeneath).

/// RESOLVE_* flags of openat2(2), from <linux/openat2.h> (not included here so that the
/// header stays free of kernel uapi headers).
#define FERRY_RESOLVE_NO_XDEV       0x01
#define FERRY_RESOLVE_NO_MAGICLINKS 0x02
#define FERRY_RESOLVE_NO_SYMLINKS   0x04
#define FERRY_RESOLVE_BENEATH       0x08
#define FERRY_RESOLVE_IN_ROOT       0x10

/// O_PATH from <fcntl.h>, which Swift's Glibc module leaves out (it is a _GNU_SOURCE
/// name): a descriptor that only names a directory, for use as the base of *at calls.
#define FERRY_O_PATH 010000000

#ifdef __cplusplus
extern "C" {
#endif

/// openat2(2) with `struct open_how {flags, mode, resolve}`: a new descriptor, or -1 with
/// errno set (ENOSYS before Linux 5.6).
int ferry_openat2(int dirfd, const char *path, int flags, unsigned int mode, unsigned long long resolve);

/// fgetxattr(2): the value's length, or -1 with errno set.
long ferry_fgetxattr(int fd, const char *name, void *value, size_t size);

/// fsetxattr(2): 0, or -1 with errno set.
int ferry_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags);

/// flistxattr(2): the length of the NUL-separated name list, or -1 with errno set.
long ferry_flistxattr(int fd, char *list, size_t size);

#ifdef __cplusplus
}
#endif

#include <spawn.h>
#ifdef __cplusplus
extern "C" {
#endif
/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34+), which Swift's Glibc module
/// does not export: the spawned program gets no descriptor at or above `from` that the
/// caller forgot to mark close-on-exec.
int ferry_spawn_actions_closefrom(posix_spawn_file_actions_t *actions, int from);
#ifdef __cplusplus
}
#endif

// ---- Descriptors of other processes ----------------------------------------------------
// Why C: glibc 2.36 has no pidfd_open()/pidfd_getfd() wrappers and Swift cannot call the
// variadic syscall(). Used to take a dumped process's socket out of TCP repair mode when a
// lazy dump fails after CRIU locked the connections (see FerryCRIU's TCPRepairRelease).

#ifdef __cplusplus
extern "C" {
#endif

/// pidfd_open(2) with no flags: a descriptor for `pid`, or -1 with errno set.
int ferry_pidfd_open(int pid);

/// pidfd_getfd(2): a duplicate, in this process, of descriptor `fd` of the process behind
/// `pidfd` (close-on-exec), or -1 with errno set.
int ferry_pidfd_getfd(int pidfd, int fd);

#ifdef __cplusplus
}
#endif

// Links, addresses and routes for bridge networks.
#include "ferry_net.h"
