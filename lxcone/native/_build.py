"""cffi out-of-line API-mode build of ``lxcone.native._native`` (run at install time).

Declarations live here; the C lives in ``csrc/``. Constants are ``#define X ...`` so the compiler
supplies their values from the kernel headers of the build machine.
"""

from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent / "csrc"

# Prototypes of csrc/hotmount.c: declared once, for both the cdef and the module's C preamble.
HOTMOUNT_DECLS = """
int lxcone_mount_setattr(int dfd, const char *path, unsigned int flags, uint64_t attr_set,
                         uint64_t attr_clr, int userns_fd);
int lxcone_hotmount_attach(int pidfd, int join_userns, int tree_fd, const char *target,
                           char *created, size_t created_len, char *err, size_t err_len);
int lxcone_hotmount_detach(int pidfd, int join_userns, const char *target,
                           const char *rmdir_upto, char *err, size_t err_len);
"""

CDEF = """
#define CLONE_NEWNS ...
#define CLONE_NEWUTS ...
#define CLONE_NEWIPC ...
#define CLONE_NEWUSER ...
#define CLONE_NEWPID ...
#define CLONE_NEWNET ...
#define CLONE_NEWCGROUP ...
#define MS_RDONLY ...
#define MS_NOSUID ...
#define MS_NODEV ...
#define MS_NOEXEC ...
#define MS_REMOUNT ...
#define MS_BIND ...
#define MS_MOVE ...
#define MS_REC ...
#define MS_PRIVATE ...
#define MS_SLAVE ...
#define MS_SHARED ...
#define MNT_DETACH ...
#define MNT_FORCE ...
#define OPEN_TREE_CLONE ...
#define OPEN_TREE_CLOEXEC ...
#define AT_RECURSIVE ...
#define AT_EMPTY_PATH ...
#define MOVE_MOUNT_F_EMPTY_PATH ...
#define MOVE_MOUNT_T_EMPTY_PATH ...

int setns(int fd, int nstype);
int unshare(int flags);
int mount(const char *source, const char *target, const char *fstype,
          unsigned long flags, const void *data);
int umount2(const char *target, int flags);
int sethostname(const char *name, size_t len);
int lxcone_pivot_root(const char *new_root, const char *put_old);
int lxcone_open_tree(int dfd, const char *path, unsigned int flags);
int lxcone_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path,
                      unsigned int flags);
int lxcone_mount_setattr_idmap(int dfd, const char *path, unsigned int flags, int userns_fd);
int lxcone_pidfd_open(int pid, unsigned int flags);
int lxcone_pidfd_send_signal(int pidfd, int sig, unsigned int flags);

struct lxcone_attach {
    int pid;
    const char *cgroup_dir;
    const char *const *join;
    int n_join;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int uid, gid;
    int stdin_fd, stdout_fd, stderr_fd;
    char err[256];
};
int lxcone_attach_run(struct lxcone_attach *a);

static const char LXCONE_NATIVE_VERSION[];

/* storage: loop devices, BLKPG partitions, reflinks, syncfs (csrc/storage.h) */
#define LO_FLAGS_READ_ONLY ...
#define LO_FLAGS_AUTOCLEAR ...
#define LO_FLAGS_PARTSCAN ...
#define LO_FLAGS_DIRECT_IO ...
#define BLKPG_ADD_PARTITION ...
#define BLKPG_DEL_PARTITION ...
#define UMOUNT_NOFOLLOW ...
int syncfs(int fd);
int lxcone_loop_ctl_get_free(int ctl_fd);
int lxcone_loop_configure(int loop_fd, int backing_fd, uint32_t flags, uint64_t offset,
                          uint64_t sizelimit, uint32_t block_size);
int lxcone_loop_clr_fd(int loop_fd);
int lxcone_loop_get_status(int loop_fd, uint64_t *device, uint64_t *inode, uint32_t *flags,
                           uint64_t *offset, uint64_t *sizelimit);
int lxcone_blkpg_partition(int disk_fd, int op, int pno, long long start, long long length);
int lxcone_blkgetsize64(int fd, uint64_t *size);
int lxcone_ficlone(int dst_fd, int src_fd);

/* hot mounts into a running container (csrc/hotmount.c) */
#define MOUNT_ATTR_RDONLY ...
#define MOUNT_ATTR_NOSUID ...
#define MOUNT_ATTR_NODEV ...
#define MOUNT_ATTR_NOEXEC ...
#define MOUNT_ATTR_IDMAP ...
""" + HOTMOUNT_DECLS

ffibuilder = FFI()
ffibuilder.cdef(CDEF)


def _version() -> str:
    for line in (CSRC.parent.parent / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("lxcone/__init__.py has no __version__")


ffibuilder.set_source(
    "lxcone.native._native",
    f"""
#include <sched.h>
#include <sys/mount.h>
#include <fcntl.h>
#include "syscalls.h"
#include "attach.h"
#include "storage.h"
static const char LXCONE_NATIVE_VERSION[] = "{_version()}";
/* csrc/hotmount.c: its prototypes, shared with the cdef */
{HOTMOUNT_DECLS}""",
    # setuptools wants these relative to setup.py (the build always runs from the repo root)
    sources=["lxcone/native/csrc/attach.c", "lxcone/native/csrc/hotmount.c"],
    include_dirs=["lxcone/native/csrc"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
