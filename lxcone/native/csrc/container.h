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
    char *cgroup_procs[LXCONE_MAX_CGROUPS];
    int n_cgroup_procs;
    char *argv[LXCONE_MAX_ARGS + 1];
    int argc;
    char *envp[LXCONE_MAX_ENV + 1];
    int envc;
    struct lxcone_bind binds[LXCONE_MAX_BINDS];
    int n_binds;
};

/* Fds the monitor hands the child with the go-ahead (SCM_RIGHTS). */
struct lxcone_child_fds {
    int rootfs;                  /* detached (maybe idmapped) clone of the rootfs tree */
    int binds[LXCONE_MAX_BINDS]; /* likewise per bind mount */
    int console;                 /* pty slave */
};

/* Runs in the freshly cloned child; never returns. Reports failures on sync_fd as
 * "error <errno> <call> <path>\n" then exits 1; success is the EOF exec gives (CLOEXEC). */
void lxcone_child_main(const struct lxcone_ct *ct, int sync_fd);

/* Sends/receives the go-ahead with the fds above over a unix socket. */
int lxcone_send_go(int sock, const struct lxcone_child_fds *fds, int n_binds);
int lxcone_recv_go(int sock, struct lxcone_child_fds *fds, int n_binds);

#endif
