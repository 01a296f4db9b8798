/* What the monitor knows about one container; filled from the config file the runtime writes. */
#ifndef LXCONE_CONTAINER_H
#define LXCONE_CONTAINER_H

#include <stddef.h>

#define LXCONE_MAX_ARGS 64
#define LXCONE_MAX_ENV 128
#define LXCONE_MAX_BINDS 32
#define LXCONE_MAX_CGROUPS 16
#define LXCONE_MAX_MAPS 8

struct lxcone_bind {
    char *source, *target; /* target is relative to the container root */
    int readonly;
};

struct lxcone_ct {
    char *name, *rootfs, *hostname, *run_dir, *cgroup_dir;
    char console_path[64];       /* the pty slave, e.g. /dev/pts/3 (host devpts) */
    unsigned long long ns_flags; /* CLONE_NEW* to create */
    char *uid_map[LXCONE_MAX_MAPS], *gid_map[LXCONE_MAX_MAPS];
    int n_uid_map, n_gid_map;
    int root_uid, tty_gid;       /* host ids of the container's uid 0 and gid 5 */
    /* v1 "tasks" files, one per hierarchy, and the fds the monitor opened on them (once the
     * runtime has made the directories, after the clone: they reach the child with the go-ahead):
     * the child moves itself by writing "0" to each (lxcone_join_cgroups). The v2 cgroup is
     * cgroup_dir, entered through clone3(CLONE_INTO_CGROUP). */
    char *cgroup_join[LXCONE_MAX_CGROUPS];
    int cgroup_join_fd[LXCONE_MAX_CGROUPS];
    int n_cgroup_join;
    char *argv[LXCONE_MAX_ARGS + 1];
    int argc;
    char *envp[LXCONE_MAX_ENV + 1];
    int envc;
    struct lxcone_bind binds[LXCONE_MAX_BINDS];
    int n_binds;
};

/* Fds the monitor hands the child with the go-ahead (SCM_RIGHTS). */
struct lxcone_child_fds {
    int rootfs;                      /* detached (maybe idmapped) clone of the rootfs tree */
    int binds[LXCONE_MAX_BINDS];     /* likewise per bind mount */
    int console;                     /* pty slave */
    int cgroups[LXCONE_MAX_CGROUPS]; /* ct->cgroup_join_fd, in the same order */
};

/* Runs in the freshly cloned child; never returns. Reports failures on sync_fd as
 * "error <errno> <call> <path>\n" then exits 1; success is the EOF exec gives (CLOEXEC). */
void lxcone_child_main(const struct lxcone_ct *ct, int sync_fd);

/* Moves the calling single-threaded task into the cgroups of the n "tasks" fds. Returns 0, or
 * -1 with errno and *failed set to the index of the failing fd. Writing "0" to a v1 "tasks" file moves only the
 * writer, and for that the kernel skips the global cgroup_threadgroup_rwsem that any write of a
 * pid to cgroup.procs takes (cgroup_procs_write_start); after an idle period that write waits an
 * RCU grace period, 6-12 ms on our VMs, per start and per exec. */
int lxcone_join_cgroups(const int *fds, int n, int *failed);

/* Sends/receives the go-ahead with the fds above over a unix socket; both sides know the counts
 * (ct->n_binds, ct->n_cgroup_join) from the same config. */
int lxcone_send_go(int sock, const struct lxcone_child_fds *fds, int n_binds, int n_cgroups);
int lxcone_recv_go(int sock, struct lxcone_child_fds *fds, int n_binds, int n_cgroups);

#endif
