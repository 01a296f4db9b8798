/* The lxc-attach equivalent, run by `lxcone-monitor --attach` (lxcone.native.attach spawns it).
 *
 * Joining a mount or user namespace is refused to a multithreaded process and to one that shares
 * its fs_struct (setns(2)), so a fresh single-threaded child (the "middle") joins, then clones the
 * command. Both are cloned with CLONE_PARENT: they are children of whoever spawned this helper,
 * which waits for the command and sees its real status. Why a helper at all: a plain fork of the
 * caller copies its page tables, and from a Python agent that cost grew with its RSS (2.7 ms
 * from 16 MB, 10.4 ms from 116 MB per exec); this small static process forks in microseconds. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "attach.h"
#include "container.h"
#include "syscalls.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>

static const struct {
    const char *name;
    int type;
} ns_order[] = {
    /* user last: joining it drops the host capabilities the other joins need; pid first only
     * affects children, which is exactly the command we clone next. */
    {"pid", CLONE_NEWPID}, {"net", CLONE_NEWNET}, {"uts", CLONE_NEWUTS}, {"ipc", CLONE_NEWIPC},
    {"cgroup", CLONE_NEWCGROUP}, {"mnt", CLONE_NEWNS}, {"user", CLONE_NEWUSER},
};
#define N_NS (int)(sizeof(ns_order) / sizeof(ns_order[0]))

static void report(int fd, int err, const char *call)
{
    char buf[128];
    int n = snprintf(buf, sizeof(buf), "%d %s", err, call);
    if (write(fd, buf, (size_t)n) < 0) {
        /* nobody to tell */
    }
    _exit(127);
}

static void exec_in_path(char *const *argv, char *const *envp)
{
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    char buf[4096];
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, envp);
        return;
    }
    for (char *const *e = envp; *e; e++)
        if (!strncmp(*e, "PATH=", 5))
            path = *e + 5;
    int saved = ENOENT;
    while (*path) {
        const char *end = strchrnul(path, ':');
        size_t dl = (size_t)(end - path), al = strlen(argv[0]);
        if (dl + al + 2 <= sizeof(buf)) {
            memcpy(buf, path, dl);
            buf[dl] = '/';
            memcpy(buf + dl + 1, argv[0], al + 1);
            execve(buf, argv, envp);
            if (errno != ENOENT && errno != ENOTDIR)
                saved = errno; /* e.g. EACCES: keep it, as execvp does */
        }
        path = *end ? end + 1 : end;
    }
    errno = saved;
}

/* Returns the pid of the command, or -errno with a->err naming the failing call. The command
 * and the joining child are children of the caller's parent (CLONE_PARENT): run from
 * `lxcone-monitor --attach`, whose parent reaps them. */
static int attach_run(struct lxcone_attach *a)
{
    a->mid = a->cmd = -1;
    int nsfd[N_NS], errpipe[2], pidpipe[2];
    char path[64];
    struct stat mine, theirs;
    int ret = -EINVAL;

    a->err[0] = 0;
    for (int i = 0; i < N_NS; i++) {
        nsfd[i] = -1;
        snprintf(path, sizeof(path), "/proc/%d/ns/%s", a->pid, ns_order[i].name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            ret = -errno;
            snprintf(a->err, sizeof(a->err), "open %s", path);
            goto out;
        }
        snprintf(path, sizeof(path), "/proc/self/ns/%s", ns_order[i].name);
        /* A namespace the container shares with us (no user ns for a privileged container)
         * must not be joined: setns into one's own user namespace fails with EINVAL. */
        if (fstat(fd, &theirs) == 0 && stat(path, &mine) == 0 && mine.st_ino == theirs.st_ino &&
            mine.st_dev == theirs.st_dev) {
            close(fd);
            continue;
        }
        nsfd[i] = fd;
    }
    int procfd[LXCONE_MAX_CGROUPS + 1], cgfd = -1;
    int n_procs = 0;
    if (a->n_join > LXCONE_MAX_CGROUPS) {
        ret = -E2BIG;
        snprintf(a->err, sizeof(a->err), "join %d cgroups", a->n_join);
        goto out;
    }
    n_procs = a->n_join;
    for (int i = 0; i < n_procs; i++) {
        procfd[i] = open(a->join[i], O_WRONLY | O_CLOEXEC);
        if (procfd[i] < 0) {
            ret = -errno;
            snprintf(a->err, sizeof(a->err), "open %s", a->join[i]);
            n_procs = i;
            goto out_procs;
        }
    }
    if (a->cgroup_dir) {
        cgfd = open(a->cgroup_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (cgfd < 0) {
            ret = -errno;
            snprintf(a->err, sizeof(a->err), "open %s", a->cgroup_dir);
            goto out_procs;
        }
    }
    if (pipe2(errpipe, O_CLOEXEC) < 0 || pipe2(pidpipe, O_CLOEXEC) < 0) {
        ret = -errno;
        snprintf(a->err, sizeof(a->err), "pipe2");
        goto out_procs;
    }
    /* Born in the v2 cgroup; the v1 ones are joined by the middle child (lxcone_join_cgroups
     * in container.h says why "0" to "tasks"). */
    struct lxcone_clone_args args = {.flags = CLONE_PARENT};
    if (cgfd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)cgfd;
    }
    pid_t mid = (pid_t)lxcone_clone3(&args);
    if (mid < 0 && cgfd >= 0) {
        /* No CLONE_INTO_CGROUP here (kernel < 5.7): the v2 cgroup.procs like a v1 file. Not
         * joinable either: fail, rather than run the command outside the container's cgroup. */
        char procs[4096];
        snprintf(procs, sizeof(procs), "%s/cgroup.procs", a->cgroup_dir);
        procfd[n_procs] = open(procs, O_WRONLY | O_CLOEXEC);
        if (procfd[n_procs] < 0) {
            ret = -errno;
            snprintf(a->err, sizeof(a->err), "open %.240s", procs);
            close(errpipe[0]);
            close(errpipe[1]);
            close(pidpipe[0]);
            close(pidpipe[1]);
            goto out_procs;
        }
        n_procs++;
        args.flags = CLONE_PARENT;
        args.cgroup = 0;
        mid = (pid_t)lxcone_clone3(&args);
    }
    if (mid < 0) {
        ret = -errno;
        snprintf(a->err, sizeof(a->err), "clone3");
        close(errpipe[0]);
        close(errpipe[1]);
        close(pidpipe[0]);
        close(pidpipe[1]);
        goto out_procs;
    }
    if (mid == 0) {
        close(errpipe[0]);
        close(pidpipe[0]);
        int failed;
        if (lxcone_join_cgroups(procfd, n_procs, &failed) < 0)
            report(errpipe[1], errno, "join cgroup");
        for (int i = 0; i < N_NS; i++)
            if (nsfd[i] >= 0 && setns(nsfd[i], ns_order[i].type) < 0)
                report(errpipe[1], errno, ns_order[i].name);
        if (chdir(a->cwd) < 0)
            report(errpipe[1], errno, "chdir");
        if (nsfd[N_NS - 1] >= 0 || a->uid || a->gid) {
            if (setgroups(0, NULL) < 0)
                report(errpipe[1], errno, "setgroups");
            if (setresgid((gid_t)a->gid, (gid_t)a->gid, (gid_t)a->gid) < 0)
                report(errpipe[1], errno, "setresgid");
            if (setresuid((uid_t)a->uid, (uid_t)a->uid, (uid_t)a->uid) < 0)
                report(errpipe[1], errno, "setresuid");
        }
        struct lxcone_clone_args a2 = {.flags = CLONE_PARENT};
        pid_t cmd = (pid_t)lxcone_clone3(&a2);
        if (cmd < 0)
            report(errpipe[1], errno, "clone3");
        if (cmd == 0) {
            /* Its stdio is ours: the caller's posix_spawn put the command's on fds 0-2. */
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            lxcone_close_range(3, (unsigned)errpipe[1] - 1, 0);
            lxcone_close_range((unsigned)errpipe[1] + 1, ~0U, 0);
            exec_in_path(a->argv, a->envp);
            report(errpipe[1], errno, "execve");
        }
        char buf[16];
        int n = snprintf(buf, sizeof(buf), "%d", cmd);
        _exit(write(pidpipe[1], buf, (size_t)n) == n ? 0 : 1);
    }
    close(errpipe[1]);
    close(pidpipe[1]);
    a->mid = mid;
    /* The middle is our caller's child, not ours: its pid, or EOF when it exited without one. */
    char buf[128] = "";
    ssize_t n = read(pidpipe[0], buf, sizeof(buf) - 1);
    pid_t cmd = n > 0 ? (pid_t)strtol(buf, NULL, 10) : -1;
    close(pidpipe[0]);
    /* EOF here means the command exec'd (the pipe is CLOEXEC); text means a step failed. */
    memset(buf, 0, sizeof(buf));
    size_t used = 0;
    while ((n = read(errpipe[0], buf + used, sizeof(buf) - 1 - used)) > 0)
        used += (size_t)n;
    close(errpipe[0]);
    a->cmd = cmd; /* reaped by our caller, whatever happened */
    if (used > 0) {
        char *sp = strchr(buf, ' ');
        ret = -(int)strtol(buf, NULL, 10);
        snprintf(a->err, sizeof(a->err), "%s", sp ? sp + 1 : "attach");
    } else if (cmd <= 0) {
        ret = -ECHILD;
        snprintf(a->err, sizeof(a->err), "attach helper");
    } else {
        ret = cmd;
    }
out_procs:
    for (int i = 0; i < n_procs; i++)
        close(procfd[i]);
    if (cgfd >= 0)
        close(cgfd);
out:
    for (int i = 0; i < N_NS; i++)
        if (nsfd[i] >= 0)
            close(nsfd[i]);
    return ret;
}

/* `lxcone-monitor --attach PID CGROUP_DIR CWD UID GID N_JOIN JOIN... N_ENV ENV... ARGV...`, with
 * the command's stdio on fds 0-2 and fd 3 the report pipe: one line
 * "<0 or -errno> <middle pid> <command pid> <failed step>\n" (CGROUP_DIR "" for none). */
int lxcone_attach_main(int argc, char **argv)
{
    struct lxcone_attach a = {0};
    int i = 2;
    if (argc < 10 || fcntl(3, F_SETFD, FD_CLOEXEC) < 0)
        return 2;
    /* Not "lxcone-monitor": a resident agent reaps zombies by that name (agent/server.py), and
     * this helper and its middle child are reaped by the caller, by pid. */
    prctl(PR_SET_NAME, "lxcone-attach", 0, 0, 0);
    a.pid = atoi(argv[i++]);
    a.cgroup_dir = *argv[i] ? argv[i] : NULL;
    i++;
    a.cwd = argv[i++];
    a.uid = atoi(argv[i++]);
    a.gid = atoi(argv[i++]);
    a.n_join = atoi(argv[i++]);
    if (a.n_join < 0 || i + a.n_join >= argc)
        return 2;
    a.join = (const char *const *)argv + i;
    i += a.n_join;
    int n_env = atoi(argv[i++]);
    if (n_env < 0 || i + n_env >= argc)
        return 2;
    /* The environment entries are followed by the command; terminate them in place. */
    char **envp = calloc((size_t)n_env + 1, sizeof(char *));
    if (!envp)
        return 2;
    memcpy(envp, argv + i, sizeof(char *) * (size_t)n_env);
    a.envp = envp;
    a.argv = argv + i + n_env;
    int ret = attach_run(&a);
    dprintf(3, "%d %d %d %s\n", ret < 0 ? ret : 0, a.mid, a.cmd, ret < 0 ? a.err : "-");
    return 0;
}
