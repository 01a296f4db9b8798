/* Raw syscall shims and constant fallbacks shared by the cffi module and lxcone-monitor.
 * glibc 2.36 (Debian 12) lacks wrappers for most of the new mount API and pidfds, so each is a
 * two-line syscall() shim; constants missing from older headers get #ifndef fallbacks here only. */
#ifndef LXCONE_SYSCALLS_H
#define LXCONE_SYSCALLS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <unistd.h>
#include <linux/sched.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC 02000000
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOVE_MOUNT_T_EMPTY_PATH
#define MOVE_MOUNT_T_EMPTY_PATH 0x00000040
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef RESOLVE_IN_ROOT
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_NO_SYMLINKS 0x04
#define RESOLVE_BENEATH 0x08
#define RESOLVE_IN_ROOT 0x10
#endif

/* Our own copy of the kernel ABI structs: Debian 12's linux-libc-dev has clone_args but not
 * mount_attr / open_how on every architecture we may build on. */
struct lxcone_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};
struct lxcone_mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};
struct lxcone_open_how {
    uint64_t flags, mode, resolve;
};

static inline long lxcone_clone3(struct lxcone_clone_args *args)
{
    return syscall(SYS_clone3, args, sizeof(*args));
}
static inline int lxcone_pivot_root(const char *new_root, const char *put_old)
{
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}
static inline int lxcone_open_tree(int dfd, const char *path, unsigned int flags)
{
    return (int)syscall(SYS_open_tree, dfd, path, flags);
}
static inline int lxcone_move_mount(int from_dfd, const char *from_path, int to_dfd,
                                    const char *to_path, unsigned int flags)
{
    return (int)syscall(SYS_move_mount, from_dfd, from_path, to_dfd, to_path, flags);
}
static inline int lxcone_mount_setattr_idmap(int dfd, const char *path, unsigned int flags,
                                             int userns_fd)
{
    struct lxcone_mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)userns_fd};
    return (int)syscall(SYS_mount_setattr, dfd, path, flags, &attr, sizeof(attr));
}
static inline int lxcone_pidfd_open(int pid, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_open, pid, flags);
}
static inline int lxcone_pidfd_send_signal(int pidfd, int sig, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, flags);
}
static inline int lxcone_close_range(unsigned int first, unsigned int last, unsigned int flags)
{
    return (int)syscall(SYS_close_range, first, last, flags);
}
static inline int lxcone_openat2(int dfd, const char *path, uint64_t flags, uint64_t resolve)
{
    struct lxcone_open_how how = {.flags = flags, .resolve = resolve};
    return (int)syscall(SYS_openat2, dfd, path, &how, sizeof(how));
}

/* Opens a path inside a container root without ever leaving it: a hostile rootfs may hold
 * symlinks such as proc -> /etc, and in a privileged container following them would mount over
 * the host's files. RESOLVE_IN_ROOT treats the rootfs as "/" for every component. */
static inline int lxcone_open_in_root(int rootfd, const char *rel, int flags)
{
    return lxcone_openat2(rootfd, rel, (uint64_t)(flags | O_CLOEXEC),
                          RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
}

#endif
