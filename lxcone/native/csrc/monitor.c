/* lxcone-monitor: one per running container, the parent of its init.
 *
 * Why a process at all: only a parent sees how init ended, and in a PID namespace reboot(2) is
 * reported as init dying of SIGHUP (halt and poweroff as SIGINT, see pid_namespaces(7)); without a
 * parent waiting for that, a container whose init reboots would simply stop. Why a separate tiny
 * executable: a forked Python process would keep its whole heap alive per container, this one
 * costs ~100 KiB. The runtime starts it and talks to it only during start-up:
 *
 *   fd 3 (monitor -> runtime): "pid <pid>\n" once init is cloned (into the v2 cgroup, which the
 *                              runtime made before starting us) and mapped, then "running\n"
 *                              or "error <errno> <call> <path>\n"
 *   fd 4 (runtime -> monitor): "cgroups\n" once the runtime has made the v1 cgroups and set the
 *                              limits (meanwhile we clone), then "go\n" once it has plugged the
 *                              NICs; EOF aborts the start
 *
 * Afterwards it only reaps init, restarts it on reboot (keeping the user and network namespaces,
 * so NICs survive, and re-reading the bind lines of its config, so hot mounts do), logs the
 * console to <run_dir>/console.log and serves <run_dir>/console.sock.
 * Killing it never stops the container: init is reparented and the runtime manages it by pid. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "attach.h"
#include "container.h"
#include "syscalls.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>

#define STATUS_FD 3
#define CONTROL_FD 4
#define LOG_MAX (1 << 20)

static struct lxcone_ct ct;
static int status_fd = -1;
static int userns_fd = -1, netns_fd = -1;
static int console_master = -1, console_slave = -1;
static pid_t pending_child = -1; /* cloned but not yet running: killed if start-up fails */

static void discard_init_file(void);

static void die(const char *call, const char *path)
{
    int err = errno;
    if (pending_child > 0) {
        kill(pending_child, SIGKILL);
        waitpid(pending_child, NULL, 0);
        discard_init_file(); /* if one was prepared for it */
    }
    if (status_fd >= 0)
        dprintf(status_fd, "error %d %s %s\n", err, call, path ? path : "-");
    else
        fprintf(stderr, "lxcone-monitor: %s %s: %s\n", call, path ? path : "", strerror(err));
    exit(1);
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d)
        die("strdup", "config");
    return d;
}

/* "bind <ro 0|1> <target>\t<source>": val is what follows "bind ". -1 if malformed. */
static int parse_bind(char *val, struct lxcone_bind *b)
{
    char *tab = strchr(val, '\t');
    if (strlen(val) < 3 || !tab)
        return -1;
    *tab = 0;
    b->readonly = val[0] == '1';
    b->target = strdup(val + 2);
    b->source = strdup(tab + 1);
    *tab = '\t';
    if (!b->target || !b->source) {
        free(b->target);
        free(b->source);
        return -1;
    }
    return 0;
}

static const char *config_path;

/* Config: one "key value" per line, value = rest of the line; the runtime rejects newlines. */
static void load_config(const char *path)
{
    FILE *f = fopen(path, "re");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    if (!f)
        die("open", path);
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = 0;
        char *val = strchr(line, ' ');
        if (!val)
            continue;
        *val++ = 0;
        errno = EINVAL;
        if (!strcmp(line, "name")) ct.name = xstrdup(val);
        else if (!strcmp(line, "rootfs")) ct.rootfs = xstrdup(val);
        else if (!strcmp(line, "hostname")) ct.hostname = xstrdup(val);
        else if (!strcmp(line, "run_dir")) ct.run_dir = xstrdup(val);
        else if (!strcmp(line, "cgroup_dir")) ct.cgroup_dir = xstrdup(val);
        else if (!strcmp(line, "ns_flags")) ct.ns_flags = strtoull(val, NULL, 10);
        else if (!strcmp(line, "root_uid")) ct.root_uid = atoi(val);
        else if (!strcmp(line, "tty_gid")) ct.tty_gid = atoi(val);
        else if (!strcmp(line, "uid_map") && ct.n_uid_map < LXCONE_MAX_MAPS)
            ct.uid_map[ct.n_uid_map++] = xstrdup(val);
        else if (!strcmp(line, "gid_map") && ct.n_gid_map < LXCONE_MAX_MAPS)
            ct.gid_map[ct.n_gid_map++] = xstrdup(val);
        else if (!strcmp(line, "cgroup_join") && ct.n_cgroup_join < LXCONE_MAX_CGROUPS)
            ct.cgroup_join[ct.n_cgroup_join++] = xstrdup(val);
        else if (!strcmp(line, "arg") && ct.argc < LXCONE_MAX_ARGS)
            ct.argv[ct.argc++] = xstrdup(val);
        else if (!strcmp(line, "env") && ct.envc < LXCONE_MAX_ENV)
            ct.envp[ct.envc++] = xstrdup(val);
        else if (!strcmp(line, "bind") && ct.n_binds < LXCONE_MAX_BINDS) {
            if (parse_bind(val, &ct.binds[ct.n_binds]) < 0)
                die("parse bind", val);
            ct.n_binds++;
        } else
            die("parse config key", line);
    }
    free(line);
    fclose(f);
    errno = EINVAL;
    if (!ct.name || !ct.rootfs || !ct.run_dir || ct.argc == 0)
        die("parse config (name, rootfs, run_dir and arg are required)", path);
}

/* Before a restart: the bind lines again, since the runtime adds and removes hot mounts in the
 * config while the container runs (Runtime.mount_into / umount_from), and the rebooted guest must
 * get the mounts it had, not those of its first boot. Nothing else is re-read: the rest cannot
 * change while the container runs. On any problem the previous list stays (and is logged). */
static void reload_binds(void)
{
    struct lxcone_bind fresh[LXCONE_MAX_BINDS];
    int n = 0, bad = 0;
    FILE *f = fopen(config_path, "re");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    if (!f) {
        fprintf(stderr, "lxcone-monitor: %s: reboot keeps the old binds: open %s: %s\n",
                ct.name, config_path, strerror(errno));
        return;
    }
    while (!bad && (len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = 0;
        if (strncmp(line, "bind ", 5) != 0)
            continue;
        if (n >= LXCONE_MAX_BINDS || parse_bind(line + 5, &fresh[n]) < 0)
            bad = 1;
        else
            n++;
    }
    free(line);
    fclose(f);
    if (bad) {
        fprintf(stderr, "lxcone-monitor: %s: reboot keeps the old binds: bad bind line in %s\n",
                ct.name, config_path);
        for (int i = 0; i < n; i++) {
            free(fresh[i].source);
            free(fresh[i].target);
        }
        return;
    }
    for (int i = 0; i < ct.n_binds; i++) {
        free(ct.binds[i].source);
        free(ct.binds[i].target);
    }
    memcpy(ct.binds, fresh, sizeof(fresh[0]) * (size_t)n);
    ct.n_binds = n;
}

static void write_file(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        die("open", path);
    size_t n = strlen(data);
    if (write(fd, data, n) != (ssize_t)n)
        die("write", path);
    close(fd);
}

static void write_map(pid_t pid, const char *kind, char **lines, int n)
{
    char path[64], buf[512] = "";
    size_t used = 0;
    for (int i = 0; i < n; i++)
        used += (size_t)snprintf(buf + used, sizeof(buf) - used, "%s\n", lines[i]);
    snprintf(path, sizeof(path), "/proc/%d/%s", pid, kind);
    write_file(path, buf);
}

static int cgroup_fd = -1; /* O_PATH of ct.cgroup_dir, for clone3(CLONE_INTO_CGROUP) */

static void open_unified(void)
{
    if (ct.cgroup_dir) {
        cgroup_fd = open(ct.cgroup_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (cgroup_fd < 0)
            die("open", ct.cgroup_dir);
    }
}

/* Kept open for the monitor's life: a reboot clones init again into the same cgroups. */
static void open_join_files(void)
{
    for (int i = 0; i < ct.n_cgroup_join; i++) {
        ct.cgroup_join_fd[i] = open(ct.cgroup_join[i], O_WRONLY | O_CLOEXEC);
        if (ct.cgroup_join_fd[i] < 0)
            die("open", ct.cgroup_join[i]);
    }
}

/* clone3 straight into the v2 cgroup, so the child never runs outside it; the child then joins
 * the v1 hierarchies itself (lxcone_join_cgroups). */
static pid_t clone_in_cgroup(struct lxcone_clone_args *args)
{
    if (cgroup_fd >= 0) {
        args->flags |= CLONE_INTO_CGROUP;
        args->cgroup = (uint64_t)cgroup_fd;
        pid_t pid = (pid_t)lxcone_clone3(args);
        if (pid >= 0)
            return pid;
        /* A kernel without CLONE_INTO_CGROUP (< 5.7), or a cgroup we may not enter this way:
         * from now on the child writes cgroup.procs of the v2 cgroup like a v1 one (only the
         * first clone can get here: open_join_files has not run yet). */
        args->flags &= ~(unsigned long long)CLONE_INTO_CGROUP;
        args->cgroup = 0;
        close(cgroup_fd);
        cgroup_fd = -1;
        char path[4096];
        snprintf(path, sizeof(path), "%s/cgroup.procs", ct.cgroup_dir);
        if (ct.n_cgroup_join < LXCONE_MAX_CGROUPS)
            ct.cgroup_join[ct.n_cgroup_join++] = xstrdup(path);
    }
    return (pid_t)lxcone_clone3(args);
}

static int open_ns(pid_t pid, const char *kind)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, kind);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open", path);
    return fd;
}

/* A detached copy of a tree, idmapped to the container's user namespace when it has one: the
 * files keep their on-disk owners (0..65535) while the container sees them as its own root's,
 * so no chown of the rootfs and no bindfs. */
static int detached_tree(const char *path)
{
    int fd = lxcone_open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (fd < 0)
        die("open_tree", path);
    if (userns_fd >= 0 &&
        lxcone_mount_setattr_idmap(fd, "", AT_EMPTY_PATH | AT_RECURSIVE, userns_fd) < 0)
        die("mount_setattr(MOUNT_ATTR_IDMAP)", path);
    return fd;
}

static void open_console(void)
{
    char name[64];
    /* Non-blocking: the pump must never hang on it, and draining it at exit stops at EAGAIN. */
    console_master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (console_master < 0)
        die("posix_openpt", "/dev/ptmx");
    if (unlockpt(console_master) < 0 || ptsname_r(console_master, name, sizeof(name)) != 0)
        die("unlockpt", "/dev/ptmx");
    /* The monitor keeps its own slave open so the master never reads EIO (and poll never spins
     * on POLLHUP) while the container has no process holding the console, e.g. across reboot. */
    snprintf(ct.console_path, sizeof(ct.console_path), "%s", name);
    console_slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (console_slave < 0)
        die("open", name);
    /* Owned by the container's root and tty group, or its init could not reopen /dev/console:
     * an inode owned by an unmapped id is beyond even the container root's capabilities. */
    if (fchown(console_slave, (uid_t)ct.root_uid, (gid_t)ct.tty_gid) < 0)
        die("fchown", name);
    struct termios tio;
    if (tcgetattr(console_slave, &tio) == 0) {
        tio.c_oflag |= ONLCR | OPOST;
        tcsetattr(console_slave, TCSANOW, &tio);
    }
}

/* The init file, "<pid> <starttime> <monitor pid>", goes to init.tmp while the child sets up (on
 * another CPU, the monitor only waits then) and is renamed into place once init runs. */
static void prepare_init_file(pid_t pid)
{
    char tmp[4096], statp[64], buf[1024];
    unsigned long long start = 0;
    snprintf(statp, sizeof(statp), "/proc/%d/stat", pid);
    int fd = open(statp, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            /* Field 22 (starttime) counted after the ")" that ends comm, which may hold spaces. */
            char *p = strrchr(buf, ')');
            for (int field = 2; p && field < 22; field++)
                p = strchr(p + 1, ' ');
            if (p)
                start = strtoull(p + 1, NULL, 10);
        }
    }
    snprintf(tmp, sizeof(tmp), "%s/init.tmp", ct.run_dir);
    FILE *f = fopen(tmp, "we");
    if (!f)
        die("open", tmp);
    fprintf(f, "%d %llu %d\n", pid, start, getpid());
    if (fclose(f) != 0)
        die("write", tmp);
}

static void publish_init_file(void)
{
    char path[4096], tmp[4096];
    snprintf(path, sizeof(path), "%s/init", ct.run_dir);
    snprintf(tmp, sizeof(tmp), "%s/init.tmp", ct.run_dir);
    if (rename(tmp, path) < 0)
        die("rename", path);
}

static void discard_init_file(void)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s/init.tmp", ct.run_dir);
    unlink(tmp);
}

/* Reads exactly the message ``want`` from the runtime on fd 4; -1 on anything else (EOF: the
 * runtime aborted the start). Messages may arrive together: never read past one. */
static int read_msg(const char *want)
{
    char buf[16];
    size_t len = strlen(want), got = 0;
    while (got < len) {
        ssize_t n = read(CONTROL_FD, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return memcmp(buf, want, len) == 0 ? 0 : -1;
}

/* The child's report, read until it closes its end (exec or exit); its length, 0 for none. */
static size_t read_report(int sock, char *err, size_t errlen)
{
    ssize_t n;
    size_t used = 0;
    while ((n = read(sock, err + used, errlen - 1 - used)) > 0)
        used += (size_t)n;
    err[used] = 0;
    return used;
}

/* Waits for the runtime's "go" (its NICs are plugged) while the child sets up. 0: go; -1: the
 * child failed or died first (err says so), or the runtime aborted (err empty). */
static int await_runtime(int sock, char *err, size_t errlen)
{
    struct pollfd p[2] = {{CONTROL_FD, POLLIN, 0}, {sock, POLLIN, 0}};
    err[0] = 0;
    while (poll(p, 2, -1) < 0)
        if (errno != EINTR)
            die("poll", "start");
    if (p[1].revents) {
        /* Before its last word the child only writes to report a failure, then exits. */
        if (read_report(sock, err, errlen) == 0) /* EOF: it died (no exec before our "x") */
            snprintf(err, errlen, "error %d %s %s\n", ECHILD, "setup (child died)", ct.name);
        return -1;
    }
    return read_msg("go\n");
}

/* Sends the go-ahead with the mounts the child needs; the child mounts while the runtime plugs
 * the NICs (when ``runtime`` is set: a first start), and execs init after our second word, "x",
 * so init finds its interfaces. Waits for exec (EOF) or an error; on success the init file is
 * ready to publish. -1 with err empty: the runtime aborted and the child still waits. */
static int release_child(pid_t pid, int sock, int runtime, char *err, size_t errlen)
{
    struct lxcone_child_fds fds;
    fds.rootfs = detached_tree(ct.rootfs);
    fds.console = console_slave;
    memcpy(fds.cgroups, ct.cgroup_join_fd, sizeof(fds.cgroups));
    for (int i = 0; i < ct.n_binds; i++)
        fds.binds[i] = detached_tree(ct.binds[i].source);
    if (lxcone_send_go(sock, &fds, ct.n_binds, ct.n_cgroup_join) < 0)
        die("sendmsg", "go");
    close(fds.rootfs);
    for (int i = 0; i < ct.n_binds; i++)
        close(fds.binds[i]);
    prepare_init_file(pid);
    err[0] = 0;
    int failed = runtime && await_runtime(sock, err, errlen) < 0;
    if (!failed) {
        /* A child that died meanwhile closed its end: the EOF below tells. */
        if (send(sock, "x", 1, MSG_NOSIGNAL) < 0 && errno != EPIPE && errno != ECONNRESET)
            die("send", "exec");
        failed = read_report(sock, err, errlen) > 0;
    }
    close(sock);
    if (failed)
        discard_init_file();
    return failed ? -1 : 0;
}

static pid_t clone_first(int *sock_out)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair", "sync");
    /* CLONE_NEWCGROUP is left to the child, once it sits in its cgroups (container.c). */
    struct lxcone_clone_args args = {.flags = ct.ns_flags & ~(unsigned long long)CLONE_NEWCGROUP,
                                     .exit_signal = SIGCHLD};
    pid_t pid = clone_in_cgroup(&args);
    if (pid < 0)
        die("clone3", ct.name);
    if (pid == 0) {
        close(sv[0]);
        lxcone_child_main(&ct, sv[1]);
    }
    pending_child = pid;
    close(sv[1]);
    if (ct.ns_flags & CLONE_NEWUSER) {
        userns_fd = open_ns(pid, "user");
        write_map(pid, "uid_map", ct.uid_map, ct.n_uid_map);
        write_map(pid, "gid_map", ct.gid_map, ct.n_gid_map);
    }
    if (ct.ns_flags & CLONE_NEWNET)
        netns_fd = open_ns(pid, "net");
    *sock_out = sv[0];
    return pid;
}

/* After a reboot the new init joins the user and network namespaces the monitor kept (NICs live
 * in that netns) and gets fresh mount/pid/uts/ipc/cgroup ones. Namespaces created by clone3 from
 * here would be owned by the host's user namespace and the container could not mount its /proc,
 * so an intermediate child joins the user namespace first, unshares, then clones init with
 * CLONE_PARENT: init stays the monitor's child. */
static pid_t clone_again(int *sock_out)
{
    int sv[2], pp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe2(pp, O_CLOEXEC) < 0)
        die("socketpair", "sync");
    struct lxcone_clone_args args = {.exit_signal = SIGCHLD};
    pid_t mid = clone_in_cgroup(&args);
    if (mid < 0)
        die("clone3", ct.name);
    if (mid == 0) {
        char buf[32];
        close(sv[0]);
        close(pp[0]);
        /* Born in the v2 cgroup; init joins the v1 ones itself, as on a first start. */
        /* Without the container's netns, never let init run on in the host's. */
        if ((ct.ns_flags & CLONE_NEWNET) && (netns_fd < 0 || setns(netns_fd, CLONE_NEWNET) < 0))
            _exit(3);
        if (userns_fd >= 0 && setns(userns_fd, CLONE_NEWUSER) < 0)
            _exit(4);
        unsigned long long fresh =
            ct.ns_flags & ~(unsigned long long)(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWCGROUP);
        if (unshare((int)fresh) < 0)
            _exit(5);
        struct lxcone_clone_args a2 = {.flags = CLONE_PARENT};
        pid_t pid = (pid_t)lxcone_clone3(&a2);
        if (pid < 0)
            _exit(6);
        if (pid == 0)
            lxcone_child_main(&ct, sv[1]);
        snprintf(buf, sizeof(buf), "%d", pid);
        _exit(write(pp[1], buf, strlen(buf)) > 0 ? 0 : 7);
    }
    close(sv[1]);
    close(pp[1]);
    char buf[32] = "";
    ssize_t n = read(pp[0], buf, sizeof(buf) - 1);
    close(pp[0]);
    int status;
    waitpid(mid, &status, 0);
    if (n <= 0) {
        errno = ECHILD;
        die("restart (intermediate exit code)", ct.name);
    }
    *sock_out = sv[0];
    return (pid_t)atoi(buf);
}

static void cleanup_cgroups(void)
{
    /* Best effort: the runtime's delete is the authoritative, idempotent cleanup; doing it here
     * too means a container that powered itself off leaves no empty cgroup behind. */
    for (int i = 0; i < ct.n_cgroup_join; i++) {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s", ct.cgroup_join[i]);
        char *slash = strrchr(dir, '/');
        if (slash) {
            *slash = 0;
            rmdir(dir);
        }
    }
    if (ct.cgroup_dir)
        rmdir(ct.cgroup_dir);
}

static void record_exit(int status)
{
    char path[4096], tmp[4096];
    snprintf(path, sizeof(path), "%s/exit", ct.run_dir);
    snprintf(tmp, sizeof(tmp), "%s/exit.tmp", ct.run_dir);
    FILE *f = fopen(tmp, "we");
    if (!f)
        return;
    if (WIFSIGNALED(status))
        fprintf(f, "signaled %d\n", WTERMSIG(status));
    else
        fprintf(f, "exited %d\n", WEXITSTATUS(status));
    if (fclose(f) == 0)
        rename(tmp, path);
}

static int log_fd = -1;

static void log_console(const char *buf, size_t n)
{
    char path[4096], old[4096];
    struct stat st;
    if (log_fd >= 0 && fstat(log_fd, &st) == 0 && st.st_size + (off_t)n > LOG_MAX) {
        /* Keep one previous generation: bounded disk use without losing the latest boot. */
        snprintf(path, sizeof(path), "%s/console.log", ct.run_dir);
        snprintf(old, sizeof(old), "%s/console.log.1", ct.run_dir);
        rename(path, old);
        close(log_fd);
        log_fd = -1;
    }
    if (log_fd < 0) {
        snprintf(path, sizeof(path), "%s/console.log", ct.run_dir);
        log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (log_fd < 0)
            return;
    }
    if (write(log_fd, buf, n) < 0) {
        /* a full disk must not stop the console pump; the bytes are lost from the log only */
    }
}

/* What init wrote just before it died may still sit in the pty buffer: log it (and pass it to
 * the attached client) before recording the exit, or a shutdown's last lines would be lost. */
static void drain_console(int client)
{
    char buf[4096];
    ssize_t n;
    while ((n = read(console_master, buf, sizeof(buf))) > 0) {
        log_console(buf, (size_t)n);
        if (client >= 0 && write(client, buf, (size_t)n) < 0) {
            /* the client went away; the log has it */
        }
    }
}

static int listen_console(void)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int n = snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/console.sock", ct.run_dir);
    if (n >= (int)sizeof(addr.sun_path))
        return -1; /* run dir too long for a socket path: the log still works */
    unlink(addr.sun_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 4) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    chmod(addr.sun_path, 0600);
    return fd;
}

static void serve(pid_t init_pid)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    int lfd = listen_console();
    int client = -1;
    char buf[4096];
    for (;;) {
        struct pollfd p[4] = {{sfd, POLLIN, 0}, {console_master, POLLIN, 0}, {lfd, POLLIN, 0},
                              {client, POLLIN, 0}};
        if (poll(p, 4, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll", "monitor");
        }
        if (p[1].revents & POLLIN) {
            ssize_t n = read(console_master, buf, sizeof(buf));
            if (n > 0) {
                log_console(buf, (size_t)n);
                if (client >= 0 && write(client, buf, (size_t)n) < 0) {
                    close(client);
                    client = -1;
                }
            }
        }
        if (p[2].revents & POLLIN) {
            int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                if (client >= 0)
                    close(client); /* one console user at a time; the newest wins, as with a tty */
                client = c;
            }
        }
        if (client >= 0 && (p[3].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = read(client, buf, sizeof(buf));
            if (n <= 0 || write(console_master, buf, (size_t)n) < 0) {
                close(client);
                client = -1;
            }
        }
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof(si)) > 0) {
            }
            int status;
            pid_t pid;
            while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                if (pid != init_pid)
                    continue;
                drain_console(client);
                if (WIFSIGNALED(status) && WTERMSIG(status) == SIGHUP) {
                    char err[512];
                    int sock;
                    status_fd = -1;
                    reload_binds(); /* before the clone: the child works from its copy of ct */
                    init_pid = clone_again(&sock);
                    pending_child = init_pid;
                    if (release_child(init_pid, sock, 0, err, sizeof(err)) < 0) {
                        fprintf(stderr, "lxcone-monitor: restart of %s failed: %s", ct.name, err);
                        kill(init_pid, SIGKILL);
                        waitpid(init_pid, &status, 0);
                        goto stopped;
                    }
                    pending_child = -1;
                    publish_init_file();
                    continue;
                }
            stopped:
                record_exit(status);
                cleanup_cgroups();
                if (lfd >= 0) {
                    snprintf(buf, sizeof(buf), "%s/console.sock", ct.run_dir);
                    unlink(buf);
                }
                exit(0);
            }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--attach"))
        return lxcone_attach_main(argc, argv);
    if (argc != 2) {
        fprintf(stderr, "usage: lxcone-monitor CONFIG (started by the lxcone runtime)\n");
        return 2;
    }
    status_fd = STATUS_FD;
    if (fcntl(STATUS_FD, F_GETFD) < 0 || fcntl(CONTROL_FD, F_GETFD) < 0) {
        status_fd = -1;
        errno = EBADF;
        die("status/control fds 3 and 4", "missing");
    }
    fcntl(STATUS_FD, F_SETFD, FD_CLOEXEC);
    fcntl(CONTROL_FD, F_SETFD, FD_CLOEXEC);
    /* The monitor must outlive the runtime that started it and ignore its terminal's signals. */
    setsid();
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGPIPE);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    ct.envp[0] = NULL;
    config_path = argv[1];
    load_config(argv[1]);
    ct.argv[ct.argc] = NULL;
    ct.envp[ct.envc] = NULL;
    open_console();
    /* Cloned at once, while the runtime makes the v1 cgroups and sets the limits: ~0.4 ms of
     * mkdir and writes in 10 hierarchies beside the ~0.7 ms clone3 of the namespaces. */
    open_unified();
    int sock;
    pid_t pid = clone_first(&sock);
    dprintf(status_fd, "pid %d\n", pid);
    char err[512] = "";
    int ok = read_msg("cgroups\n") == 0;
    if (ok) {
        open_join_files();
        ok = release_child(pid, sock, 1, err, sizeof(err)) == 0;
    }
    if (!ok) {
        /* The child's report, else the runtime aborted (or died): leave nothing running. */
        if (err[0])
            dprintf(status_fd, "%s", err);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        cleanup_cgroups();
        return 1;
    }
    pending_child = -1;
    publish_init_file();
    dprintf(status_fd, "running\n");
    close(STATUS_FD);
    close(CONTROL_FD);
    status_fd = -1;
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) {
        dup2(devnull, 0);
        dup2(devnull, 1);
    }
    serve(pid);
    return 0;
}
