#ifndef LXCONE_ATTACH_H
#define LXCONE_ATTACH_H

/* Run a command inside a running container: its cgroups, then all of its namespaces. */
struct lxcone_attach {
    int pid;                  /* the container's init, as seen from the caller */
    const char *cgroup_dir;   /* v2 cgroup, entered with clone3(CLONE_INTO_CGROUP), or NULL */
    const char *const *join;  /* v1 "tasks" files the middle child writes "0" to (container.h) */
    int n_join;
    char *const *argv;        /* argv[0] is looked up in PATH from envp if it has no slash */
    char *const *envp;
    const char *cwd;
    int uid, gid;             /* inside the container */
    char err[256];            /* on failure: "<call> <path>" */
    int mid, cmd;             /* out: the joining child and the command, both children of the
                               * helper's parent (CLONE_PARENT), -1 if not created */
};

/* The `lxcone-monitor --attach ...` entry point (argv layout in attach.c). */
int lxcone_attach_main(int argc, char **argv);

#endif
