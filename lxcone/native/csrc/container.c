/* The work between clone and exec: mounts, pivot_root, hostname, console, exec of init.
 * Runs in a single-threaded child of lxcone-monitor, so plain libc is safe here; every failure is
 * reported to the monitor with the call, the path and errno, never swallowed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "container.h"
#include "syscalls.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <linux/capability.h>

static int g_sync = -1;

static void fail(const char *call, const char *path)
{
    int err = errno;
    dprintf(g_sync, "error %d %s %s\n", err, call, path ? path : "-");
    _exit(1);
}

#define CHECK(expr, call, path) do { if ((expr) < 0) fail(call, path); } while (0)

/* The directory holding ``rel`` (everything before its last '/'), opened inside the root;
 * *leaf is set to the last component. */
static int open_parent_in_root(int rootfd, char *rel, const char **leaf)
{
    char *slash = strrchr(rel, '/');
    if (!slash) {
        *leaf = rel;
        return fcntl(rootfd, F_DUPFD_CLOEXEC, 3);
    }
    *slash = 0;
    int fd = lxcone_open_in_root(rootfd, rel, O_PATH | O_DIRECTORY);
    *slash = '/';
    *leaf = slash + 1;
    return fd;
}

/* mkdir -p inside the root: each parent is resolved with RESOLVE_IN_ROOT, so a symlinked
 * component (srv -> /host/path) still lands inside the container's tree. */
static void make_path(int rootfd, const char *rel, int want_dir)
{
    char buf[4096];
    if (snprintf(buf, sizeof(buf), "%s", rel) >= (int)sizeof(buf)) {
        errno = ENAMETOOLONG;
        fail("mkdir", rel);
    }
    for (char *p = buf; (p = strchr(p, '/')) != NULL; p++) {
        *p = 0;
        if (*buf)
            make_path(rootfd, buf, 1);
        *p = '/';
    }
    const char *leaf;
    int pfd = open_parent_in_root(rootfd, buf, &leaf);
    if (pfd < 0)
        fail("open", buf);
    if (want_dir) {
        if (mkdirat(pfd, leaf, 0755) < 0 && errno != EEXIST)
            fail("mkdir", rel);
    } else {
        int fd = openat(pfd, leaf, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0 && errno != EEXIST && errno != EISDIR)
            fail("create", rel);
        if (fd >= 0)
            close(fd);
    }
    close(pfd);
}

static void ensure_dir(int rootfd, const char *rel)
{
    make_path(rootfd, rel, 1);
}

static void ensure_file(int rootfd, const char *rel)
{
    make_path(rootfd, rel, 0);
}

/* The magic link /proc/self/fd/N, which names exactly the inode open on fd (the runc way: a
 * mount through it cannot be redirected by a path swapped in between). */
static const char *fd_path(int fd, char buf[32])
{
    snprintf(buf, 32, "/proc/self/fd/%d", fd);
    return buf;
}

/* mount(2) onto the inode open on fd; SELF as src binds it onto itself. Fails naming ``call``
 * (the type, or "mount --bind", when NULL) and ``rel``. */
#define SELF ((const char *)-1)
static void mount_on_fd(int fd, const char *call, const char *rel, const char *src,
                        const char *type, unsigned long flags, const char *data)
{
    char target[32];
    fd_path(fd, target);
    if (mount(src == SELF ? target : src, target, type, flags, data) < 0)
        fail(call ? call : type ? type : "mount --bind", rel);
}

/* mount(2) onto a target inside the root, opened with RESOLVE_IN_ROOT. */
static void mount_at(int rootfd, const char *rel, const char *src, const char *type,
                     unsigned long flags, const char *data)
{
    int fd = lxcone_open_in_root(rootfd, rel, O_PATH);
    if (fd < 0)
        fail("open", rel);
    mount_on_fd(fd, NULL, rel, src, type, flags, data);
    close(fd);
}

/* Remounts the bind at ``rel`` read-only (opened anew: an older fd names the mount underneath),
 * repeating ``locked``: in a user namespace a remount must keep the locked flags (nosuid, nodev,
 * noexec) of the mount it came from, or the kernel refuses it with EPERM. */
static void remount_ro_at(int rootfd, const char *rel, unsigned long locked)
{
    int fd = lxcone_open_in_root(rootfd, rel, O_PATH);
    if (fd < 0)
        fail("open", rel);
    mount_on_fd(fd, "mount -o remount,ro", rel, NULL, NULL,
                MS_BIND | MS_REMOUNT | MS_RDONLY | locked, NULL);
    close(fd);
}

static void bind_ro(int rootfd, const char *rel, unsigned long locked)
{
    int fd = lxcone_open_in_root(rootfd, rel, O_PATH);
    if (fd < 0) {
        if (errno == ENOENT)
            return; /* masking something the kernel does not have is fine */
        fail("open", rel);
    }
    mount_on_fd(fd, NULL, rel, SELF, NULL, MS_BIND | MS_REC, NULL);
    close(fd);
    remount_ro_at(rootfd, rel, locked);
}

/* runc's masked paths: kernel interfaces that leak host data or let a container poke the host. */
static const char *masked_files[] = {
    "proc/kcore", "proc/keys", "proc/latency_stats", "proc/timer_list", "proc/timer_stats",
    "proc/sched_debug", "proc/sysrq-trigger", NULL,
};
static const char *masked_dirs[] = {"proc/acpi", "proc/scsi", "sys/firmware", NULL};

static void mask_paths(int rootfd)
{
    for (const char **p = masked_files; *p; p++) {
        int fd = lxcone_open_in_root(rootfd, *p, O_PATH);
        if (fd < 0)
            continue;
        mount_on_fd(fd, "mount --bind /dev/null", *p, "/dev/null", NULL, MS_BIND, NULL);
        close(fd);
    }
    for (const char **p = masked_dirs; *p; p++) {
        int fd = lxcone_open_in_root(rootfd, *p, O_PATH | O_DIRECTORY);
        if (fd < 0)
            continue;
        mount_on_fd(fd, "mount tmpfs (mask)", *p, "tmpfs", "tmpfs",
                    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0");
        close(fd);
    }
}

static const char *dev_nodes[] = {"null", "zero", "full", "random", "urandom", "tty", NULL};

/* A node or directory made in our own fresh /dev tmpfs and opened: nothing in it comes from the
 * rootfs, so plain *at() calls relative to it cannot be redirected (no RESOLVE_IN_ROOT walk). */
static int make_in_dev(int devfd, const char *name, int dir)
{
    int fd;
    if (dir) {
        if (mkdirat(devfd, name, 0755) < 0 && errno != EEXIST)
            fail("mkdir", name);
        fd = openat(devfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    } else {
        fd = openat(devfd, name, O_CREAT | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
    }
    if (fd < 0)
        fail("create", name);
    return fd;
}

static void setup_dev(int rootfd, const char *console_path)
{
    char src[64];
    ensure_dir(rootfd, "dev");
    mount_at(rootfd, "dev", "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k");
    int devfd = lxcone_open_in_root(rootfd, "dev", O_PATH | O_DIRECTORY);
    if (devfd < 0)
        fail("open", "dev");
    /* mknod is refused inside a user namespace, so every node is a bind of the host's. */
    for (const char **n = dev_nodes; *n; n++) {
        snprintf(src, sizeof(src), "/dev/%s", *n);
        int fd = make_in_dev(devfd, *n, 0);
        mount_on_fd(fd, NULL, src + 1, src, NULL, MS_BIND, NULL);
        close(fd);
    }
    /* By path: the fd we were sent belongs to the monitor's mount namespace, and bind mounts
     * from another namespace's mount fail with EINVAL; our copy of /dev/pts has the same pty. */
    int fd = make_in_dev(devfd, "console", 0);
    mount_on_fd(fd, NULL, "dev/console", console_path, NULL, MS_BIND, NULL);
    close(fd);
    fd = make_in_dev(devfd, "pts", 1);
    mount_on_fd(fd, NULL, "dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620,gid=5");
    close(fd);
    fd = make_in_dev(devfd, "shm", 1);
    mount_on_fd(fd, NULL, "dev/shm", "shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "mode=1777,size=65536k");
    close(fd);
    if (mkdirat(devfd, "mqueue", 0755) < 0 && errno != EEXIST)
        fail("mkdir", "dev/mqueue");
    const char *links[][2] = {{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"},
                              {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"},
                              {"/proc/self/fd/2", "stderr"}, {NULL, NULL}};
    for (int i = 0; links[i][0]; i++)
        if (symlinkat(links[i][0], devfd, links[i][1]) < 0 && errno != EEXIST)
            fail("symlink", links[i][1]);
    close(devfd);
}

static void setup_proc_sys(int rootfd)
{
    const unsigned long locked = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    ensure_dir(rootfd, "proc");
    mount_at(rootfd, "proc", "proc", "proc", locked, NULL);
    /* proc:mixed as LXC does: /proc/sys read-only but /proc/sys/net writable, it belongs to the
     * container's own network namespace and init scripts set it. The net bind comes first: a
     * bind made under the read-only one would inherit its read-only flag, while the recursive
     * read-only bind below copies this one as it is and remounts only its own top. */
    int fd = lxcone_open_in_root(rootfd, "proc/sys/net", O_PATH);
    if (fd >= 0) {
        mount_on_fd(fd, NULL, "proc/sys/net", SELF, NULL, MS_BIND, NULL);
        close(fd);
    }
    bind_ro(rootfd, "proc/sys", locked);
    bind_ro(rootfd, "proc/sysrq-trigger", locked);
    ensure_dir(rootfd, "sys");
    /* A fresh sysfs shows the network devices of the mounting process's netns: ours. */
    mount_at(rootfd, "sys", "sysfs", "sysfs", locked | MS_RDONLY, NULL);
    mask_paths(rootfd);
}

static void setup_binds(const struct lxcone_ct *ct, int rootfd, const struct lxcone_child_fds *fds)
{
    for (int i = 0; i < ct->n_binds; i++) {
        const struct lxcone_bind *b = &ct->binds[i];
        struct stat st;
        if (fstat(fds->binds[i], &st) < 0)
            fail("fstat", b->source);
        if (S_ISDIR(st.st_mode))
            ensure_dir(rootfd, b->target);
        else
            ensure_file(rootfd, b->target);
        int fd = lxcone_open_in_root(rootfd, b->target, O_PATH);
        if (fd < 0)
            fail("open", b->target);
        if (lxcone_move_mount(fds->binds[i], "", fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
            fail("move_mount", b->target);
        close(fd);
        if (b->readonly)
            remount_ro_at(rootfd, b->target, 0);
    }
}

/* Capabilities no system container should have even as its own root (LXC's default drop list):
 * loading modules, setting the host clock, and the MAC policy knobs. */
static const int dropped_caps[] = {CAP_SYS_MODULE, CAP_SYS_TIME, CAP_MAC_ADMIN, CAP_MAC_OVERRIDE,
                                   CAP_SYS_RAWIO, -1};

int lxcone_join_cgroups(const int *fds, int n, int *failed)
{
    for (int i = 0; i < n; i++) {
        if (write(fds[i], "0", 1) != 1) {
            *failed = i;
            return -1;
        }
    }
    return 0;
}

void lxcone_child_main(const struct lxcone_ct *ct, int sync_fd)
{
    struct lxcone_child_fds fds;
    int userns = (ct->ns_flags & CLONE_NEWUSER) != 0 || ct->n_uid_map > 0;
    g_sync = sync_fd;
    /* exec keeps the signal mask, and the monitor blocks the signals it reads via signalfd: an
     * init started with SIGTERM/SIGCHLD blocked would neither stop nor reap. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (lxcone_recv_go(sync_fd, &fds, ct->n_binds, ct->n_cgroup_join) < 0)
        fail("recv go", ct->name);
    /* First of all, so that everything the child does is charged to the container. Not before
     * the go-ahead: the monitor clones us while the runtime is still making the v1 directories
     * (born in the v2 one), and sends their fds with it. */
    int cg;
    if (lxcone_join_cgroups(fds.cgroups, ct->n_cgroup_join, &cg) < 0)
        fail("write 0", ct->cgroup_join[cg]);
    for (int i = 0; i < ct->n_cgroup_join; i++)
        close(fds.cgroups[i]);
    /* The cgroup namespace is made here, not by clone3: its root is the cgroup we are in at
     * that moment, and only now do we sit in the container's v1 cgroups (clone3 can only target
     * a v2 one). */
    if (ct->ns_flags & CLONE_NEWCGROUP)
        CHECK(unshare(CLONE_NEWCGROUP), "unshare", "CLONE_NEWCGROUP");
    /* Resolve the rootfs path while still host uid 0: once we are the container's root (host
     * uid 100000) we may not search the host directories above it (e.g. a 0700 parent). */
    int target = open(ct->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (target < 0)
        fail("open", ct->rootfs);
    if (userns) {
        /* The monitor wrote uid_map/gid_map before the go-ahead, so 0 is mapped now. */
        CHECK(setresgid(0, 0, 0), "setresgid", "0");
        CHECK(setresuid(0, 0, 0), "setresuid", "0");
        CHECK(setgroups(0, NULL), "setgroups", "0");
    }
    /* Nothing we mount may propagate back to the host, while host unmounts still reach us. */
    CHECK(mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL), "mount --make-rslave", "/");
    CHECK(lxcone_move_mount(fds.rootfs, "", target, "",
                            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
          "move_mount", ct->rootfs);
    close(target);
    /* The tree's own fd is the root of the mount we just attached: no path lookup needed. */
    int rootfd = fds.rootfs;

    setup_proc_sys(rootfd);
    setup_dev(rootfd, ct->console_path);
    ensure_dir(rootfd, "run");
    mount_at(rootfd, "run", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=65536k");
    setup_binds(ct, rootfd, &fds);

    /* pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves only
     * the container's tree, with no directory created in the rootfs for the old root. */
    CHECK(fchdir(rootfd), "fchdir", ct->rootfs);
    CHECK(lxcone_pivot_root(".", "."), "pivot_root", ct->rootfs);
    CHECK(umount2(".", MNT_DETACH), "umount2", "old root");
    CHECK(chdir("/"), "chdir", "/");
    close(rootfd);

    if (ct->hostname)
        CHECK(sethostname(ct->hostname, strlen(ct->hostname)), "sethostname", ct->hostname);

    CHECK(setsid(), "setsid", "-");
    CHECK(ioctl(fds.console, TIOCSCTTY, 0), "ioctl TIOCSCTTY", "/dev/console");
    for (int i = 0; i < 3; i++)
        CHECK(dup2(fds.console, i), "dup2", "/dev/console");
    for (const int *c = dropped_caps; *c >= 0; c++)
        if (prctl(PR_CAPBSET_DROP, *c, 0, 0, 0) < 0 && errno != EINVAL)
            fail("prctl PR_CAPBSET_DROP", "-");
    /* Keep only stdio and the sync socket (it is CLOEXEC: exec closing it is our success signal). */
    if (sync_fd > 3)
        lxcone_close_range(3, (unsigned)sync_fd - 1, 0);
    lxcone_close_range((unsigned)sync_fd + 1, ~0U, 0);
    /* The monitor's last word: the runtime has plugged the NICs (while we mounted), so init
     * finds its interfaces from its first instruction. */
    char word = 0;
    ssize_t r;
    do
        r = read(sync_fd, &word, 1);
    while (r < 0 && errno == EINTR);
    if (r != 1 || word != 'x') {
        if (r >= 0)
            errno = r == 0 ? ECONNABORTED : EPROTO;
        fail("wait for exec", ct->name);
    }
    execve(ct->argv[0], ct->argv, ct->envp);
    fail("execve", ct->argv[0]);
}

/* The go-ahead's fds in one array: rootfs, console, cgroups..., binds... */
static int pack_fds(const struct lxcone_child_fds *fds, int n_binds, int n_cgroups, int *all)
{
    int n = 0;
    all[n++] = fds->rootfs;
    all[n++] = fds->console;
    for (int i = 0; i < n_cgroups; i++)
        all[n++] = fds->cgroups[i];
    for (int i = 0; i < n_binds; i++)
        all[n++] = fds->binds[i];
    return n;
}

#define GO_MAX_FDS (LXCONE_MAX_BINDS + LXCONE_MAX_CGROUPS + 2)

int lxcone_send_go(int sock, const struct lxcone_child_fds *fds, int n_binds, int n_cgroups)
{
    int all[GO_MAX_FDS];
    int n = pack_fds(fds, n_binds, n_cgroups, all);
    char cbuf[CMSG_SPACE(sizeof(all))];
    memset(cbuf, 0, sizeof(cbuf));
    char byte = 'g';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * n)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(c), all, sizeof(int) * n);
    return sendmsg(sock, &msg, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

int lxcone_recv_go(int sock, struct lxcone_child_fds *fds, int n_binds, int n_cgroups)
{
    int all[GO_MAX_FDS];
    int n = n_binds + n_cgroups + 2;
    char cbuf[CMSG_SPACE(sizeof(all))];
    char byte = 0;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * n)};
    ssize_t r;
    do
        r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (r < 0 && errno == EINTR);
    if (r != 1 || byte != 'g') {
        if (r == 0)
            errno = ECONNABORTED; /* the monitor gave up (the runtime aborted the start) */
        return -1;
    }
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int) * n)) {
        errno = EPROTO;
        return -1;
    }
    memcpy(all, CMSG_DATA(c), sizeof(int) * n);
    int k = 0;
    fds->rootfs = all[k++];
    fds->console = all[k++];
    for (int i = 0; i < n_cgroups; i++)
        fds->cgroups[i] = all[k++];
    for (int i = 0; i < n_binds; i++)
        fds->binds[i] = all[k++];
    return 0;
}
