/* Hot mounts: attach a detached mount tree inside a running container, or unmount one there.
 *
 * Joining a mount (or user) namespace is refused to a multithreaded process (setns(2)), and the
 * caller may be the resident agent with its threads, so a fresh single-threaded child does the
 * setns, the mkdir -p and the move_mount, and reports back over a pipe; the caller never changes.
 * The child shares the caller's memory (hm_run says why), so only raw syscalls run in it: no
 * malloc, no stdio, no glibc set*id (its all-threads broadcast would walk the parent's thread
 * list, and may wait on a lock one of those threads held at the clone).
 *
 * The child joins the container's mount namespace and, for an unprivileged container, its user
 * namespace as uid/gid 0 there: it then creates directories exactly as the container's root would
 * (owned by it, through the idmapped rootfs), which a host-root process could not do at all on an
 * idmapped mount (its ids have no mapping: EOVERFLOW). After setns the process root is the
 * container's root; every path inside it is still resolved with openat2(RESOLVE_IN_ROOT |
 * RESOLVE_NO_MAGICLINKS), as the monitor does at start, so symlinks planted by the guest
 * (media -> /etc, ../../..) stay inside the container's tree.
 *
 * Pipe protocol (child -> caller): "O<code>\t<created>" on success, "E<errno>\t<call>\t<path>"
 * on failure. EOF without a message means the child died. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "syscalls.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x2000
#endif

#define HM_PATH_MAX 4096

/* The 32-bit-id variants where an architecture has both (i386, arm): the plain ones take 16 bits. */
#ifdef SYS_setresuid32
#define HM_SYS_SETRESUID SYS_setresuid32
#define HM_SYS_SETRESGID SYS_setresgid32
#define HM_SYS_SETGROUPS SYS_setgroups32
#else
#define HM_SYS_SETRESUID SYS_setresuid
#define HM_SYS_SETRESGID SYS_setresgid
#define HM_SYS_SETGROUPS SYS_setgroups
#endif

/* ---- the child: raw syscalls only ------------------------------------------------------- */

static size_t hm_cpy(char *dst, size_t used, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (used + n >= cap)
        n = used < cap ? cap - 1 - used : 0;
    memcpy(dst + used, src, n);
    dst[used + n] = 0;
    return used + n;
}

static size_t hm_num(char *dst, size_t used, size_t cap, long v)
{
    char tmp[24];
    int i = (int)sizeof(tmp) - 1;
    int neg = v < 0;
    unsigned long u = neg ? (unsigned long)(-v) : (unsigned long)v;
    tmp[i] = 0;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u && i > 1);
    if (neg)
        tmp[--i] = '-';
    return hm_cpy(dst, used, cap, tmp + i);
}

static void hm_write_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* nobody to tell */
        buf += w;
        n -= (size_t)w;
    }
}

static void hm_fail(int fd, const char *call, const char *path)
{
    char buf[HM_PATH_MAX + 128];
    int err = errno;
    size_t n = hm_cpy(buf, 0, sizeof(buf), "E");
    n = hm_num(buf, n, sizeof(buf), err);
    n = hm_cpy(buf, n, sizeof(buf), "\t");
    n = hm_cpy(buf, n, sizeof(buf), call);
    n = hm_cpy(buf, n, sizeof(buf), "\t");
    n = hm_cpy(buf, n, sizeof(buf), path ? path : "-");
    hm_write_all(fd, buf, n);
    _exit(1);
}

static void hm_ok(int fd, int code, const char *created)
{
    char buf[HM_PATH_MAX + 16];
    size_t n = hm_cpy(buf, 0, sizeof(buf), "O");
    n = hm_num(buf, n, sizeof(buf), code);
    n = hm_cpy(buf, n, sizeof(buf), "\t");
    n = hm_cpy(buf, n, sizeof(buf), created ? created : "");
    hm_write_all(fd, buf, n);
    _exit(0);
}

/* The directory holding rel (a copy in buf, cut at its last '/'), opened inside the root;
 * *leaf points at the last component inside buf. */
static int hm_open_parent(int rootfd, char *buf, const char **leaf)
{
    char *slash = strrchr(buf, '/');
    if (!slash) {
        *leaf = buf;
        return lxcone_open_in_root(rootfd, ".", O_PATH | O_DIRECTORY);
    }
    *slash = 0;
    int fd = lxcone_open_in_root(rootfd, buf, O_PATH | O_DIRECTORY);
    *slash = '/';
    *leaf = slash + 1;
    return fd;
}

/* 1 if fd is the root of a mount, 0 if not, -1 (errno) when the kernel cannot tell. */
static int hm_is_mount_root(int fd)
{
    struct statx sx;
    memset(&sx, 0, sizeof(sx));
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx) < 0)
        return -1;
    if (!(sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT)) {
        errno = EOPNOTSUPP;
        return -1;
    }
    return (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
}

/* Enter the container: its mount namespace, and for an unprivileged one its user namespace as
 * its root. With a pidfd both joins happen atomically, the user namespace first. */
static void hm_enter(int errfd, int pidfd, int join_userns)
{
    int flags = CLONE_NEWNS | (join_userns ? CLONE_NEWUSER : 0);
    if (setns(pidfd, flags) < 0)
        hm_fail(errfd, join_userns ? "setns(mnt, user)" : "setns(mnt)", "pidfd");
    if (join_userns) {
        if (syscall(HM_SYS_SETGROUPS, 0, NULL) < 0)
            hm_fail(errfd, "setgroups", "0");
        if (syscall(HM_SYS_SETRESGID, 0, 0, 0) < 0)
            hm_fail(errfd, "setresgid", "0");
        if (syscall(HM_SYS_SETRESUID, 0, 0, 0) < 0)
            hm_fail(errfd, "setresuid", "0");
    }
}

/* target (absolute, inside the container) -> rel (no leading '/'), in buf. */
static const char *hm_rel(int errfd, const char *target, char *buf)
{
    while (*target == '/')
        target++;
    if (!*target || strlen(target) >= HM_PATH_MAX) {
        errno = EINVAL;
        hm_fail(errfd, "check target", target);
    }
    hm_cpy(buf, 0, HM_PATH_MAX, target);
    return buf;
}

static void hm_attach_child(int errfd, int pidfd, int join_userns, int tree_fd, const char *target)
{
    /* part is the prefix being made, relative to the root; apart the same with its '/' */
    char rel[HM_PATH_MAX], apart[HM_PATH_MAX + 1] = "/", created[HM_PATH_MAX] = "";
    char *part = apart + 1;
    struct stat tree, there;

    hm_enter(errfd, pidfd, join_userns);
    hm_rel(errfd, target, rel);
    if (fstat(tree_fd, &tree) < 0)
        hm_fail(errfd, "fstat", "mount tree");
    int rootfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
        hm_fail(errfd, "open", "/");

    int fd = lxcone_open_in_root(rootfd, rel, O_PATH);
    if (fd >= 0) {
        int mounted = hm_is_mount_root(fd);
        if (mounted < 0)
            hm_fail(errfd, "statx", target);
        if (mounted) {
            if (fstat(fd, &there) < 0)
                hm_fail(errfd, "fstat", target);
            if (there.st_dev == tree.st_dev && there.st_ino == tree.st_ino)
                hm_ok(errfd, 1, NULL); /* this very tree is mounted there already */
            errno = EEXIST;
            hm_fail(errfd, "another mount is at", target);
        }
    } else if (errno == ENOENT) {
        /* mkdir -p, each parent opened inside the root; remember the shallowest one we made. */
        size_t len = strlen(rel);
        for (size_t i = 1; i <= len; i++) {
            if (i < len && rel[i] != '/')
                continue;
            memcpy(part, rel, i);
            part[i] = 0;
            const char *leaf;
            int pfd = hm_open_parent(rootfd, part, &leaf);
            if (pfd < 0)
                hm_fail(errfd, "open", apart);
            int r;
            if (i < len || S_ISDIR(tree.st_mode)) {
                r = mkdirat(pfd, leaf, 0755);
            } else {
                r = openat(pfd, leaf, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
                if (r >= 0)
                    close(r);
            }
            if (r < 0 && errno != EEXIST)
                hm_fail(errfd, i < len || S_ISDIR(tree.st_mode) ? "mkdir" : "create", apart);
            if (r >= 0 && !created[0])
                hm_cpy(created, 0, sizeof(created), apart);
            close(pfd);
        }
        fd = lxcone_open_in_root(rootfd, rel, O_PATH);
        if (fd < 0)
            hm_fail(errfd, "open", target);
    } else {
        hm_fail(errfd, "open", target);
    }
    /* The O_PATH fd names exactly the inode resolved inside the root: nothing swapped in after
     * the checks can redirect the mount. */
    if (lxcone_move_mount(tree_fd, "", fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        hm_fail(errfd, "move_mount", target);
    hm_ok(errfd, 0, created);
}

/* rmdir target, then its parents up to and including upto (a prefix of it), while empty. */
static void hm_prune(int rootfd, const char *rel, const char *upto_rel)
{
    char part[HM_PATH_MAX];
    size_t stop = strlen(upto_rel);
    size_t len = strlen(rel);
    if (stop == 0 || stop > len || memcmp(rel, upto_rel, stop) != 0 ||
        (rel[stop] != 0 && rel[stop] != '/'))
        return;
    hm_cpy(part, 0, sizeof(part), rel);
    int leaf_level = 1;
    while (strlen(part) >= stop) {
        const char *leaf;
        int pfd = hm_open_parent(rootfd, part, &leaf);
        if (pfd < 0)
            return;
        int r = unlinkat(pfd, leaf, AT_REMOVEDIR);
        if (r < 0 && errno == ENOTDIR && leaf_level) {
            /* a file target we created empty for a file bind */
            struct stat s;
            if (fstatat(pfd, leaf, &s, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(s.st_mode) &&
                s.st_size == 0)
                r = unlinkat(pfd, leaf, 0);
        }
        close(pfd);
        if (r < 0)
            return; /* not empty, busy or gone: leave it and everything above */
        char *slash = strrchr(part, '/');
        if (!slash)
            return;
        *slash = 0;
        leaf_level = 0;
    }
}

static void hm_detach_child(int errfd, int pidfd, int join_userns, const char *target,
                            const char *rmdir_upto)
{
    char rel[HM_PATH_MAX], upto[HM_PATH_MAX], abs_target[HM_PATH_MAX + 1];
    int code = 1; /* nothing was mounted there */

    hm_enter(errfd, pidfd, join_userns);
    hm_rel(errfd, target, rel);
    int rootfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
        hm_fail(errfd, "open", "/");
    int fd = lxcone_open_in_root(rootfd, rel, O_PATH);
    if (fd < 0 && errno != ENOENT)
        hm_fail(errfd, "open", target);
    if (fd >= 0) {
        int mounted = hm_is_mount_root(fd);
        if (mounted < 0)
            hm_fail(errfd, "statx", target);
        /* Our own references would make the mount busy: close before unmounting. */
        close(fd);
        if (mounted) {
            /* By path: umount2 has no fd form, and an open fd on the mount pins it (EBUSY).
             * Our root is the container's, so the walk cannot leave it, and the kernel only
             * unmounts a mount of the namespace we are in (the container's). No MNT_DETACH: a
             * busy mount must fail, so the caller can say the disk is in use. */
            abs_target[0] = '/';
            hm_cpy(abs_target, 1, sizeof(abs_target), rel);
            if (umount2(abs_target, 0) < 0) {
                if (errno != EINVAL) /* EINVAL: not a mount point (any more) */
                    hm_fail(errfd, "umount2", target);
            } else {
                code = 0;
            }
        }
    }
    if (rmdir_upto && *rmdir_upto) {
        while (*rmdir_upto == '/')
            rmdir_upto++;
        hm_cpy(upto, 0, sizeof(upto), rmdir_upto);
        hm_prune(rootfd, rel, upto);
    }
    hm_ok(errfd, code, NULL);
}

/* ---- the caller's side --------------------------------------------------------------------- */

/* Parses the child's report. Returns the code (>= 0) or -errno; err gets "call\tpath". */
static int hm_collect(pid_t child, int rfd, char *out, size_t outlen, char *err, size_t errlen)
{
    char buf[HM_PATH_MAX + 160];
    size_t used = 0;
    ssize_t n;
    int status;
    for (;;) {
        n = read(rfd, buf + used, sizeof(buf) - 1 - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        used += (size_t)n;
        if (used >= sizeof(buf) - 1)
            break;
    }
    buf[used] = 0;
    close(rfd);
    while (waitpid(child, &status, __WALL) < 0 && errno == EINTR) {
    }
    char *tab = strchr(buf, '\t');
    if (used > 1 && buf[0] == 'O' && tab) {
        if (out && outlen)
            hm_cpy(out, 0, outlen, tab + 1);
        return (int)strtol(buf + 1, NULL, 10);
    }
    if (used > 1 && buf[0] == 'E' && tab) {
        int e = (int)strtol(buf + 1, NULL, 10);
        hm_cpy(err, 0, errlen, tab + 1);
        return -(e > 0 ? e : EIO);
    }
    hm_cpy(err, 0, errlen, "hot mount helper\texited without a report");
    return -ECHILD;
}

struct hm_job {
    int detach, errfd, pidfd, join_userns, tree_fd;
    const char *target, *rmdir_upto;
};

static int hm_child(void *arg)
{
    const struct hm_job *j = arg;
    if (j->detach)
        hm_detach_child(j->errfd, j->pidfd, j->join_userns, j->target, j->rmdir_upto);
    else
        hm_attach_child(j->errfd, j->pidfd, j->join_userns, j->tree_fd, j->target);
    return 1; /* not reached: both end in _exit */
}

#define HM_STACK_SIZE (256 << 10)

/* Runs the job in a child that shares our memory (CLONE_VM: nothing of the caller is copied; a
 * plain fork copied its page tables, 16.8 ms per hot mount from a 416 MB process against 1.9 ms
 * from 16 MB) while we wait suspended (CLONE_VFORK). It has its own fd table and fs_struct (no
 * CLONE_FILES, no CLONE_FS), which setns into a mount or user namespace requires, every signal
 * blocked (a Python handler must not run in it), and no exit signal, so a thread of the caller
 * waiting for "any child" never reaps it. Returns the code (>= 0) or -errno, as hm_collect. */
static int hm_run(struct hm_job *job, char *out, size_t outlen, char *err, size_t errlen)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        hm_cpy(err, 0, errlen, "pipe2\t-");
        return -errno;
    }
    void *stack = mmap(NULL, HM_STACK_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        int e = errno;
        close(p[0]);
        close(p[1]);
        hm_cpy(err, 0, errlen, "mmap\thelper stack");
        return -e;
    }
    job->errfd = p[1];
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t pid = clone(hm_child, (char *)stack + HM_STACK_SIZE, CLONE_VM | CLONE_VFORK, job);
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    /* Past CLONE_VFORK the child has exited: its stack is free. */
    munmap(stack, HM_STACK_SIZE);
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        hm_cpy(err, 0, errlen, "clone\t-");
        return -e;
    }
    return hm_collect(pid, p[0], out, outlen, err, errlen);
}

int lxcone_hotmount_attach(int pidfd, int join_userns, int tree_fd, const char *target,
                           char *created, size_t created_len, char *err, size_t err_len)
{
    if (created && created_len)
        created[0] = 0;
    err[0] = 0;
    struct hm_job job = {.pidfd = pidfd, .join_userns = join_userns, .tree_fd = tree_fd,
                         .target = target};
    return hm_run(&job, created, created_len, err, err_len);
}

int lxcone_hotmount_detach(int pidfd, int join_userns, const char *target, const char *rmdir_upto,
                           char *err, size_t err_len)
{
    err[0] = 0;
    struct hm_job job = {.detach = 1, .pidfd = pidfd, .join_userns = join_userns,
                         .target = target, .rmdir_upto = rmdir_upto};
    return hm_run(&job, NULL, 0, err, err_len);
}

int lxcone_mount_setattr(int dfd, const char *path, unsigned int flags, uint64_t attr_set,
                         uint64_t attr_clr, int userns_fd)
{
    struct lxcone_mount_attr attr = {.attr_set = attr_set, .attr_clr = attr_clr,
                                     .userns_fd = userns_fd >= 0 ? (uint64_t)userns_fd : 0};
    return (int)syscall(SYS_mount_setattr, dfd, path, flags, &attr, sizeof(attr));
}
