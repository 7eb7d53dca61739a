// See include/ferry_linux.h for why this is C. Rules for everything that runs in a child
// before exec: system calls only, no malloc, no stdio, report errors through the pipe.
#define _GNU_SOURCE
#include "ferry_linux.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <linux/close_range.h>
#include <unistd.h>

#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif

struct ferry_mount_attr {
    unsigned long long attr_set;
    unsigned long long attr_clr;
    unsigned long long propagation;
    unsigned long long userns_fd;
};

extern char **environ;

#define FERRY_MAX_BINDS 256
#define FERRY_STACK_SIZE (1024 * 1024)

const char *ferry_stage_name(int stage) {
    switch (stage) {
    case FERRY_STAGE_STDIO: return "set up stdio";
    case FERRY_STAGE_SETSID: return "setsid";
    case FERRY_STAGE_MOUNT_PRIVATE: return "make mounts private";
    case FERRY_STAGE_OPEN_TREE: return "clone bind mount source";
    case FERRY_STAGE_ROOT_BIND: return "bind the root filesystem";
    case FERRY_STAGE_PIVOT_ROOT: return "pivot_root";
    case FERRY_STAGE_MOUNT_TARGET: return "create mount point";
    case FERRY_STAGE_MOUNT: return "mount";
    case FERRY_STAGE_DEVICE: return "create device node";
    case FERRY_STAGE_SYMLINK: return "create symlink";
    case FERRY_STAGE_HOSTNAME: return "sethostname";
    case FERRY_STAGE_LOOPBACK: return "bring up loopback";
    case FERRY_STAGE_CWD: return "change to working directory";
    case FERRY_STAGE_IDS: return "set user and group";
    case FERRY_STAGE_SYNC: return "wait for the supervisor";
    case FERRY_STAGE_CGROUP: return "join cgroup";
    case FERRY_STAGE_SETNS: return "setns";
    case FERRY_STAGE_FORK: return "fork";
    case FERRY_STAGE_EXEC: return "exec";
    case FERRY_STAGE_MASK: return "mask path";
    case FERRY_STAGE_READONLY_PATH: return "make path read-only";
    case FERRY_STAGE_READONLY_ROOT: return "make the root filesystem read-only";
    case FERRY_STAGE_CGROUP_NAMESPACE: return "create cgroup namespace";
    case FERRY_STAGE_RLIMIT: return "setrlimit";
    case FERRY_STAGE_NO_NEW_PRIVILEGES: return "set no_new_privs";
    case FERRY_STAGE_CAPABILITIES: return "set capabilities";
    case FERRY_STAGE_SECCOMP: return "load seccomp filter";
    case FERRY_STAGE_TERMINAL: return "open the container's terminal";
    default: return "start";
    }
}

int ferry_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}

int ferry_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int ferry_open_pty(int fds[2]) {
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0) return -1;
    char name[64];
    if (grantpt(master) != 0 || unlockpt(master) != 0 || ptsname_r(master, name, sizeof name) != 0) {
        int saved = errno;
        close(master);
        errno = saved;
        return -1;
    }
    int slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0) {
        int saved = errno;
        close(master);
        errno = saved;
        return -1;
    }
    fds[0] = master;
    fds[1] = slave;
    return 0;
}

int ferry_get_window_size(int fd, unsigned short *rows, unsigned short *columns) {
    struct winsize size;
    if (ioctl(fd, TIOCGWINSZ, &size) != 0) return -1;
    *rows = size.ws_row;
    *columns = size.ws_col;
    return 0;
}

int ferry_set_window_size(int fd, unsigned short rows, unsigned short columns) {
    struct winsize size = {.ws_row = rows, .ws_col = columns};
    return ioctl(fd, TIOCSWINSZ, &size);
}

int ferry_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

static void report_and_exit(int fd, int stage, int index) {
    struct ferry_child_error e = {.stage = stage, .err = errno, .index = index};
    ssize_t ignored = write(fd, &e, sizeof e);
    (void)ignored;
    _exit(127);
}

static void reset_signals(void) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        signal(sig, SIG_DFL);
    }
}

// Marks every descriptor above stdio close-on-exec (close_range, Linux 5.11+), so the
// error pipe still works until exec succeeds.
static void close_inherited_fds(void) {
    syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
}

// mkdir -p for an absolute path inside the (already pivoted) root; the last component is
// created as an empty file when as_file is set. Uses a stack buffer: no allocation.
static int make_path(const char *path, int as_file) {
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i < len; i++) {
        if (buf[i] != '/') continue;
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        buf[i] = '/';
    }
    if (as_file) {
        int fd = open(buf, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) {
            // An existing directory or file at the target is fine for a bind.
            if (errno == EISDIR || errno == EEXIST) return 0;
            return -1;
        }
        close(fd);
        return 0;
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

// Moves stdio descriptors into 0, 1, 2 even when they overlap each other.
static int setup_stdio(const int stdio[3]) {
    int moved[3];
    for (int i = 0; i < 3; i++) {
        moved[i] = fcntl(stdio[i], F_DUPFD_CLOEXEC, 10);
        if (moved[i] < 0) return -1;
    }
    for (int i = 0; i < 3; i++) {
        if (dup2(moved[i], i) < 0) return -1;
        close(moved[i]);
    }
    return 0;
}

static int loopback_up(void) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    struct ifreq req;
    memset(&req, 0, sizeof req);
    strncpy(req.ifr_name, "lo", IFNAMSIZ - 1);
    int rc = ioctl(sock, SIOCGIFFLAGS, &req);
    if (rc == 0) {
        req.ifr_flags |= IFF_UP | IFF_RUNNING;
        rc = ioctl(sock, SIOCSIFFLAGS, &req);
    }
    int saved = errno;
    close(sock);
    errno = saved;
    return rc;
}

int ferry_new_network_namespace(void) {
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) != 0) return -errno;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int saved = errno;
        close(ready[0]);
        close(ready[1]);
        return -saved;
    }
    if (pid == 0) {
        // A parent killed before it kills us must not leave us behind for good,
        // holding the namespace and every descriptor it had (seen: a supervisor killed
        // during a restore left this child and the waiting `ferry restore` for an hour).
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        close(ready[0]);
        char status = 0;
        if (unshare(CLONE_NEWNET) != 0 || loopback_up() != 0) status = 1;
        ssize_t ignored = write(ready[1], &status, 1);
        (void)ignored;
        // Stay until the parent has opened the namespace and killed us.
        for (;;) pause();
    }
    close(ready[1]);
    char status = 1;
    ssize_t n;
    do { n = read(ready[0], &status, 1); } while (n < 0 && errno == EINTR);
    close(ready[0]);
    int fd = -EIO;
    if (n == 1 && status == 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/net", (int)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) fd = -errno;
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    return fd;
}

static int set_capabilities(unsigned long long effective, unsigned long long permitted, unsigned long long inheritable) {
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    data[0].effective = (__u32)effective;
    data[1].effective = (__u32)(effective >> 32);
    data[0].permitted = (__u32)permitted;
    data[1].permitted = (__u32)(permitted >> 32);
    data[0].inheritable = (__u32)inheritable;
    data[1].inheritable = (__u32)(inheritable >> 32);
    return (int)syscall(SYS_capset, &header, data);
}

// Applies a process's limits, identity, capabilities and seccomp filter; the last thing
// before exec. On failure returns -1 with errno set and *stage/*index saying where.
static int apply_security(const struct ferry_security *s, int *stage, int *index) {
    *index = -1;
    *stage = FERRY_STAGE_RLIMIT;
    for (size_t i = 0; i < s->n_rlimits; i++) {
        struct rlimit limit = {.rlim_cur = s->rlimits[i].soft, .rlim_max = s->rlimits[i].hard};
        *index = (int)i;
        if (setrlimit(s->rlimits[i].resource, &limit) != 0) return -1;
    }
    *index = -1;
    *stage = FERRY_STAGE_NO_NEW_PRIVILEGES;
    if (s->no_new_privileges && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    // The bounding set limits what any later exec can gain, root's included.
    *stage = FERRY_STAGE_CAPABILITIES;
    for (int cap = 0; cap < 64; cap++) {
        if (s->cap_bounding & (1ULL << cap)) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL) break;  // beyond the kernel's last capability
            *index = cap;
            return -1;
        }
    }
    // Keep the permitted set across setuid to a non-root user, to set it below.
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return -1;
    *stage = FERRY_STAGE_IDS;
    if (setgroups(s->n_groups, (const gid_t *)s->groups) != 0) return -1;
    if (setresgid(s->gid, s->gid, s->gid) != 0 || setresuid(s->uid, s->uid, s->uid) != 0) return -1;
    *stage = FERRY_STAGE_CAPABILITIES;
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) return -1;
    // Without no_new_privs the kernel loads a filter only for a holder of CAP_SYS_ADMIN:
    // keep it until the filter is in, then drop it (as runc does).
    int hold_admin = s->seccomp_filter != NULL && !s->no_new_privileges;
    unsigned long long admin = hold_admin ? (1ULL << CAP_SYS_ADMIN) : 0;
    if (set_capabilities(s->cap_effective | admin, s->cap_permitted | admin, s->cap_inheritable) != 0) return -1;
    if (s->seccomp_filter != NULL) {
        *stage = FERRY_STAGE_SECCOMP;
        struct sock_fprog program = {
            .len = (unsigned short)(s->seccomp_length / sizeof(struct sock_filter)),
            .filter = (struct sock_filter *)s->seccomp_filter,
        };
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) != 0) return -1;
        *stage = FERRY_STAGE_CAPABILITIES;
        if (hold_admin && set_capabilities(s->cap_effective, s->cap_permitted, s->cap_inheritable) != 0) return -1;
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    for (int cap = 0; cap < 64; cap++) {
        if (!(s->cap_ambient & (1ULL << cap))) continue;
        *index = cap;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0) return -1;
    }
    *index = -1;
    return 0;
}

// A file gets the container's own /dev/null bound over it, a directory an empty read-only
// tmpfs: both live inside the container, so CRIU dumps and restores them as its mounts.
static int mask_path(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(st.st_mode)) return mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755");
    return mount("/dev/null", path, NULL, MS_BIND, NULL);
}

// Binds a path onto itself and remounts it read-only, keeping its other flags (a /proc
// path keeps nosuid, nodev, noexec).
static int readonly_path(const char *path) {
    if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) != 0) return errno == ENOENT ? 0 : -1;
    struct statfs fs;
    unsigned long kept = 0;
    if (statfs(path, &fs) == 0)
        kept = (unsigned long)fs.f_flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME);
    return mount(path, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | kept, NULL);
}

// The terminal is made here, inside the container, as runc does with its console
// socket: a pty of the container's own devpts instance, so `tty` names a /dev/pts path
// the container can see and CRIU finds the slave among the container's mounts. The
// master goes to the supervisor; the slave becomes stdio and the controlling terminal
// (the caller is a session leader without one).
static int take_new_terminal(int sock) {
    int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0) return -1;
    int unlock = 0;
    if (ioctl(master, TIOCSPTLCK, &unlock) != 0) return -1;
    int slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY);
    if (slave < 0) return -1;
    int sent = ferry_send_fd(sock, master);
    if (sent != 0) { errno = -sent; return -1; }
    close(master);
    close(sock);
    for (int i = 0; i < 3; i++) {
        if (dup2(slave, i) < 0) return -1;
    }
    if (slave > 2) close(slave);
    if (ioctl(0, TIOCSCTTY, 0) != 0) return -1;
    return 0;
}

struct spawn_args {
    const struct ferry_spawn *spec;
    int sync_read;
    int error_write;
};

static int container_main(void *opaque) {
    struct spawn_args *args = opaque;
    const struct ferry_spawn *spec = args->spec;
    int efd = args->error_write;
    int bind_fds[FERRY_MAX_BINDS];

    // A pod member joins the pod's namespaces before anything else: sysfs mounted
    // below shows the network namespace of whoever mounts it.
    if (spec->join_pod) {
        const int fds[3] = {spec->join_net_fd, spec->join_ipc_fd, spec->join_uts_fd};
        const int types[3] = {CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS};
        for (int i = 0; i < 3; i++) {
            if (fds[i] >= 0 && setns(fds[i], types[i]) != 0) report_and_exit(efd, FERRY_STAGE_SETNS, i);
        }
    }
    if (setup_stdio(spec->stdio) != 0) report_and_exit(efd, FERRY_STAGE_STDIO, -1);
    if (setsid() < 0) report_and_exit(efd, FERRY_STAGE_SETSID, -1);

    // Nothing we mount may propagate back to the host.
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        report_and_exit(efd, FERRY_STAGE_MOUNT_PRIVATE, -1);

    // Clone every bind source now, while host paths still resolve; after pivot_root the
    // host tree is detached and image symlinks cannot lead back to it.
    if (spec->n_mounts > FERRY_MAX_BINDS) { errno = E2BIG; report_and_exit(efd, FERRY_STAGE_OPEN_TREE, -1); }
    for (size_t i = 0; i < spec->n_mounts; i++) {
        const struct ferry_mount *m = &spec->mounts[i];
        bind_fds[i] = -1;
        if (m->kind != FERRY_MOUNT_BIND) continue;
        unsigned int flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (m->recursive ? AT_RECURSIVE : 0);
        int fd = (int)syscall(SYS_open_tree, AT_FDCWD, m->source, flags);
        if (fd < 0) report_and_exit(efd, FERRY_STAGE_OPEN_TREE, (int)i);
        if (m->flags & MS_RDONLY) {
            struct ferry_mount_attr attr = {.attr_set = MOUNT_ATTR_RDONLY};
            if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | (m->recursive ? AT_RECURSIVE : 0),
                        &attr, sizeof attr) != 0)
                report_and_exit(efd, FERRY_STAGE_OPEN_TREE, (int)i);
        }
        bind_fds[i] = fd;
    }

    if (mount(spec->rootfs, spec->rootfs, NULL, MS_BIND | MS_REC, NULL) != 0)
        report_and_exit(efd, FERRY_STAGE_ROOT_BIND, -1);
    // pivot_root(".", "."): the old root ends up stacked on the new one and is detached
    // at once, so no directory is needed for it inside the container's filesystem.
    if (chdir(spec->rootfs) != 0) report_and_exit(efd, FERRY_STAGE_PIVOT_ROOT, -1);
    if (ferry_pivot_root(".", ".") != 0) report_and_exit(efd, FERRY_STAGE_PIVOT_ROOT, -1);
    if (umount2(".", MNT_DETACH) != 0) report_and_exit(efd, FERRY_STAGE_PIVOT_ROOT, -1);
    if (chdir("/") != 0) report_and_exit(efd, FERRY_STAGE_PIVOT_ROOT, -1);

    for (size_t i = 0; i < spec->n_mounts; i++) {
        const struct ferry_mount *m = &spec->mounts[i];
        int as_file = 0;
        if (m->kind == FERRY_MOUNT_BIND) {
            struct stat st;
            if (fstat(bind_fds[i], &st) == 0 && !S_ISDIR(st.st_mode)) as_file = 1;
        }
        if (make_path(m->target, as_file) != 0) report_and_exit(efd, FERRY_STAGE_MOUNT_TARGET, (int)i);
        if (m->kind == FERRY_MOUNT_BIND) {
            if (syscall(SYS_move_mount, bind_fds[i], "", AT_FDCWD, m->target, MOVE_MOUNT_F_EMPTY_PATH) != 0)
                report_and_exit(efd, FERRY_STAGE_MOUNT, (int)i);
            close(bind_fds[i]);
        } else if (mount(m->source, m->target, m->fstype, m->flags, m->data) != 0) {
            report_and_exit(efd, FERRY_STAGE_MOUNT, (int)i);
        }
    }
    for (size_t i = 0; i < spec->n_devices; i++) {
        const struct ferry_device *d = &spec->devices[i];
        if (mknod(d->path, d->mode, makedev(d->major, d->minor)) != 0 && errno != EEXIST)
            report_and_exit(efd, FERRY_STAGE_DEVICE, (int)i);
        // mknod applies the umask: without this /dev/null would be 0644, and a
        // container process that is not root could not write to it.
        if (chmod(d->path, d->mode & 07777) != 0) report_and_exit(efd, FERRY_STAGE_DEVICE, (int)i);
    }
    for (size_t i = 0; i < spec->n_symlinks; i++) {
        if (symlink(spec->symlinks[i].target, spec->symlinks[i].path) != 0 && errno != EEXIST)
            report_and_exit(efd, FERRY_STAGE_SYMLINK, (int)i);
    }
    for (size_t i = 0; i < spec->n_masked; i++) {
        if (mask_path(spec->masked_paths[i]) != 0) report_and_exit(efd, FERRY_STAGE_MASK, (int)i);
    }
    for (size_t i = 0; i < spec->n_readonly; i++) {
        if (readonly_path(spec->readonly_paths[i]) != 0) report_and_exit(efd, FERRY_STAGE_READONLY_PATH, (int)i);
    }
    if (spec->hostname && sethostname(spec->hostname, strlen(spec->hostname)) != 0)
        report_and_exit(efd, FERRY_STAGE_HOSTNAME, -1);
    if (spec->new_network && loopback_up() != 0) report_and_exit(efd, FERRY_STAGE_LOOPBACK, -1);
    if (spec->cwd && chdir(spec->cwd) != 0) {
        if (errno != ENOENT || make_path(spec->cwd, 0) != 0 || chdir(spec->cwd) != 0)
            report_and_exit(efd, FERRY_STAGE_CWD, -1);
    }
    if (spec->readonly_root && mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0)
        report_and_exit(efd, FERRY_STAGE_READONLY_ROOT, -1);
    if (spec->terminal && take_new_terminal(spec->console_socket) != 0) report_and_exit(efd, FERRY_STAGE_TERMINAL, -1);

    // Wait until the supervisor has put us in our cgroups; EOF means it gave up.
    char byte;
    ssize_t n;
    do { n = read(args->sync_read, &byte, 1); } while (n < 0 && errno == EINTR);
    if (n != 1) { if (n == 0) errno = ECANCELED; report_and_exit(efd, FERRY_STAGE_SYNC, -1); }
    close(args->sync_read);
    // Now that the supervisor has placed us in the container's cgroup, that cgroup
    // becomes the root of our view: the host's tree is out of sight.
    if (spec->new_cgroup_namespace && unshare(CLONE_NEWCGROUP) != 0)
        report_and_exit(efd, FERRY_STAGE_CGROUP_NAMESPACE, -1);

    reset_signals();
    // Nothing but stdio may leak into the container: a stray descriptor would keep a
    // pipe of ours open and be dumped by CRIU as part of the container.
    close_inherited_fds();
    int stage, index;
    if (apply_security(&spec->security, &stage, &index) != 0) report_and_exit(efd, stage, index);
    environ = (char **)spec->envp;
    execvp(spec->argv[0], spec->argv);
    report_and_exit(efd, FERRY_STAGE_EXEC, -1);
    return 127;
}

int ferry_pin_pod_namespaces(const char *hostname, const char *net_path, const char *ipc_path, const char *uts_path) {
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid == 0) {
        // The child only unshares, sets the name and mounts: it is in the host's mount
        // namespace, so the bind mounts are the host's.
        if (unshare(CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS) != 0) _exit(1);
        if (hostname && sethostname(hostname, strlen(hostname)) != 0) _exit(2);
        if (loopback_up() != 0) _exit(3);
        const char *sources[3] = {"/proc/self/ns/net", "/proc/self/ns/ipc", "/proc/self/ns/uts"};
        const char *targets[3] = {net_path, ipc_path, uts_path};
        for (int i = 0; i < 3; i++) {
            if (mount(sources[i], targets[i], NULL, MS_BIND, NULL) != 0) {
                for (int j = 0; j < i; j++) umount2(targets[j], MNT_DETACH);
                _exit(4 + i);
            }
        }
        _exit(0);
    }
    int status = 0;
    pid_t waited;
    do { waited = waitpid(pid, &status, 0); } while (waited < 0 && errno == EINTR);
    if (waited < 0) return -errno;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -EIO;
    return 0;
}

pid_t ferry_spawn_container(const struct ferry_spawn *spec, int *sync_fd, int *error_fd) {
    int sync_pipe[2], error_pipe[2];
    if (pipe2(sync_pipe, O_CLOEXEC) != 0) return -errno;
    if (pipe2(error_pipe, O_CLOEXEC) != 0) {
        int saved = errno;
        close(sync_pipe[0]);
        close(sync_pipe[1]);
        return -saved;
    }
    void *stack = mmap(NULL, FERRY_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        int saved = errno;
        close(sync_pipe[0]); close(sync_pipe[1]); close(error_pipe[0]); close(error_pipe[1]);
        return -saved;
    }
    struct spawn_args args = {.spec = spec, .sync_read = sync_pipe[0], .error_write = error_pipe[1]};
    // Without CLONE_VM the child runs on its own copy of this stack, so it can be
    // unmapped here as soon as clone returns.
    int flags = CLONE_NEWPID | CLONE_NEWNS | (spec->new_network ? CLONE_NEWNET : 0);
    if (!spec->join_pod || spec->join_uts_fd < 0) flags |= CLONE_NEWUTS;
    if (!spec->join_pod || spec->join_ipc_fd < 0) flags |= CLONE_NEWIPC;
    pid_t pid = clone(container_main, (char *)stack + FERRY_STACK_SIZE, flags | SIGCHLD, &args);
    int saved = errno;
    munmap(stack, FERRY_STACK_SIZE);
    close(sync_pipe[0]);
    close(error_pipe[1]);
    if (pid < 0) {
        close(sync_pipe[1]);
        close(error_pipe[0]);
        return -saved;
    }
    *sync_fd = sync_pipe[1];
    *error_fd = error_pipe[0];
    return pid;
}

pid_t ferry_exec_in(const struct ferry_exec *spec, int *error_fd) {
    int error_pipe[2];
    if (pipe2(error_pipe, O_CLOEXEC) != 0) return -errno;
    pid_t helper = fork();
    if (helper < 0) {
        int saved = errno;
        close(error_pipe[0]);
        close(error_pipe[1]);
        return -saved;
    }
    if (helper == 0) {
        int efd = error_pipe[1];
        close(error_pipe[0]);
        for (size_t i = 0; i < spec->n_cgroup; i++) {
            if (write(spec->cgroup_fds[i], "0", 1) != 1) report_and_exit(efd, FERRY_STAGE_CGROUP, (int)i);
        }
        for (size_t i = 0; i < spec->n_ns; i++) {
            if (setns(spec->ns_fds[i], 0) != 0) report_and_exit(efd, FERRY_STAGE_SETNS, (int)i);
        }
        pid_t child = fork();
        if (child < 0) report_and_exit(efd, FERRY_STAGE_FORK, -1);
        if (child == 0) {
            if (spec->cwd && chdir(spec->cwd) != 0) report_and_exit(efd, FERRY_STAGE_CWD, -1);
            if (spec->terminal) {
                if (setsid() < 0) report_and_exit(efd, FERRY_STAGE_SETSID, -1);
                if (take_new_terminal(spec->console_socket) != 0) report_and_exit(efd, FERRY_STAGE_TERMINAL, -1);
            }
            reset_signals();
            close_inherited_fds();
            int stage, index;
            if (apply_security(&spec->security, &stage, &index) != 0) report_and_exit(efd, stage, index);
            environ = (char **)spec->envp;
            execvp(spec->argv[0], spec->argv);
            report_and_exit(efd, FERRY_STAGE_EXEC, -1);
        }
        close(efd);
        // The helper only relays the command's status; it ignores the terminal's signals,
        // which reach the command directly (same process group).
        signal(SIGINT, SIG_IGN);
        signal(SIGQUIT, SIG_IGN);
        int status = 0;
        while (waitpid(child, &status, 0) < 0) {
            if (errno != EINTR) _exit(127);
        }
        if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
        _exit(128 + WTERMSIG(status));
    }
    close(error_pipe[1]);
    *error_fd = error_pipe[0];
    return helper;
}

// ---- Host probes (see the header) -----------------------------------------------------

int ferry_userfaultfd(int flags) {
#ifdef SYS_userfaultfd
    return (int)syscall(SYS_userfaultfd, flags);
#else
    (void)flags;
    errno = ENOSYS;
    return -1;
#endif
}

// ---- userfaultfd ioctls and events (see the header) --------------------------------------

#include <linux/userfaultfd.h>

static int ferry_uffd_ioctl(int uffd, unsigned long request, void *argument) {
    return ioctl(uffd, request, argument) == 0 ? 0 : -errno;
}

int ferry_uffd_api(int uffd, uint64_t *features) {
    struct uffdio_api api = {.api = UFFD_API, .features = *features};
    int result = ferry_uffd_ioctl(uffd, UFFDIO_API, &api);
    if (result == 0) *features = api.features;
    return result;
}

int ferry_uffd_register_missing(int uffd, uint64_t start, uint64_t length) {
    struct uffdio_register reg = {.range = {.start = start, .len = length}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    return ferry_uffd_ioctl(uffd, UFFDIO_REGISTER, &reg);
}

int ferry_uffd_unregister(int uffd, uint64_t start, uint64_t length) {
    struct uffdio_range range = {.start = start, .len = length};
    return ferry_uffd_ioctl(uffd, UFFDIO_UNREGISTER, &range);
}

int ferry_uffd_copy(int uffd, uint64_t destination, const void *source, uint64_t length, int64_t *copied) {
    struct uffdio_copy copy = {.dst = destination, .src = (uint64_t)(uintptr_t)source, .len = length, .mode = 0, .copy = 0};
    int result = ferry_uffd_ioctl(uffd, UFFDIO_COPY, &copy);
    // On failure `copy` holds the bytes copied before it, or -errno.
    *copied = result == 0 ? (int64_t)length : (copy.copy > 0 ? copy.copy : 0);
    return result;
}

int ferry_uffd_zeropage(int uffd, uint64_t start, uint64_t length) {
    struct uffdio_zeropage zero = {.range = {.start = start, .len = length}, .mode = 0};
    return ferry_uffd_ioctl(uffd, UFFDIO_ZEROPAGE, &zero);
}

int ferry_uffd_wake(int uffd, uint64_t start, uint64_t length) {
    struct uffdio_range range = {.start = start, .len = length};
    return ferry_uffd_ioctl(uffd, UFFDIO_WAKE, &range);
}

int ferry_uffd_read_event(int uffd, struct ferry_uffd_event *event) {
    struct uffd_msg msg;
    ssize_t got = read(uffd, &msg, sizeof(msg));
    if (got < 0) return errno == EAGAIN ? 0 : -errno;
    if (got != (ssize_t)sizeof(msg)) return -EIO;
    memset(event, 0, sizeof(*event));
    event->fd = -1;
    switch (msg.event) {
    case UFFD_EVENT_PAGEFAULT:
        event->kind = FERRY_UFFD_PAGEFAULT;
        event->address = msg.arg.pagefault.address;
        break;
    case UFFD_EVENT_FORK:
        event->kind = FERRY_UFFD_FORK;
        event->fd = (int)msg.arg.fork.ufd;
        break;
    case UFFD_EVENT_REMAP:
        event->kind = FERRY_UFFD_REMAP;
        event->start = msg.arg.remap.from;
        event->to = msg.arg.remap.to;
        event->length = msg.arg.remap.len;
        break;
    case UFFD_EVENT_REMOVE:
    case UFFD_EVENT_UNMAP:
        event->kind = msg.event == UFFD_EVENT_REMOVE ? FERRY_UFFD_REMOVE : FERRY_UFFD_UNMAP;
        event->start = msg.arg.remove.start;
        event->length = msg.arg.remove.end - msg.arg.remove.start;
        break;
    default:
        event->kind = FERRY_UFFD_OTHER;
        break;
    }
    return 1;
}

// One byte carrying one descriptor: the message both ends of CRIU's send_fd build.
struct ferry_scm_message {
    char byte;
    struct iovec iov;
    struct msghdr msg;
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
};

static void ferry_scm_prepare(struct ferry_scm_message *m) {
    memset(m, 0, sizeof(*m));
    m->iov.iov_base = &m->byte;
    m->iov.iov_len = 1;
    m->msg.msg_iov = &m->iov;
    m->msg.msg_iovlen = 1;
    m->msg.msg_control = m->control.space;
    m->msg.msg_controllen = sizeof(m->control.space);
}

int ferry_recv_fd(int sock, int *fd) {
    struct ferry_scm_message m;
    ferry_scm_prepare(&m);
    ssize_t got;
    do {
        got = recvmsg(sock, &m.msg, MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    if (got < 0) return -errno;
    if (got == 0) return 0;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&m.msg);
    if (cmsg == NULL || cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS || cmsg->cmsg_len != CMSG_LEN(sizeof(int)) ||
        (m.msg.msg_flags & MSG_CTRUNC)) {
        return -EBADMSG;
    }
    memcpy(fd, CMSG_DATA(cmsg), sizeof(int));
    return 1;
}

int ferry_send_fd(int sock, int fd) {
    struct ferry_scm_message m;
    ferry_scm_prepare(&m);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&m.msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    ssize_t sent;
    do {
        sent = sendmsg(sock, &m.msg, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent == 1 ? 0 : (sent < 0 ? -errno : -EIO);
}

// ---- Confined path resolution and extended attributes (see the header) -----------------

#include <linux/openat2.h>
#include <sys/xattr.h>

int ferry_openat2(int dirfd, const char *path, int flags, unsigned int mode, unsigned long long resolve) {
#ifdef SYS_openat2
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)(unsigned int)flags;
    // The kernel refuses a mode without O_CREAT or O_TMPFILE (EINVAL). O_TMPFILE
    // includes O_DIRECTORY's bit, hence the full comparison.
    how.mode = ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) ? mode : 0;
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
#else
    (void)dirfd; (void)path; (void)flags; (void)mode; (void)resolve;
    errno = ENOSYS;
    return -1;
#endif
}

long ferry_fgetxattr(int fd, const char *name, void *value, size_t size) {
    return (long)fgetxattr(fd, name, value, size);
}

int ferry_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags) {
    return fsetxattr(fd, name, value, size, flags);
}

long ferry_flistxattr(int fd, char *list, size_t size) {
    return (long)flistxattr(fd, list, size);
}

int ferry_spawn_actions_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

// ---- Descriptors of other processes (see the header) -------------------------------------

int ferry_pidfd_open(int pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

int ferry_pidfd_getfd(int pidfd, int fd) {
#ifdef SYS_pidfd_getfd
    return (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
#else
    (void)pidfd;
    (void)fd;
    errno = ENOSYS;
    return -1;
#endif
}

int ferry_start_writeback(int fd, long long offset, long long count) {
    return sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE) == 0 ? 0 : -errno;
}

int ferry_set_pipe_size(int fd, int size) {
    int result = fcntl(fd, F_SETPIPE_SZ, size);
    return result < 0 ? -errno : result;
}
