/* Block-device and file ioctl shims for lxcone.storage: loop devices, BLKPG partitions, reflinks.
 * Each is a few lines so the compiler, not Python struct packing, lays out struct loop_config and
 * struct blkpg_partition from the build machine's kernel headers. All return -1 with errno set. */
#ifndef LXCONE_STORAGE_H
#define LXCONE_STORAGE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <linux/loop.h>

#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
#endif
#ifndef LO_FLAGS_DIRECT_IO
#define LO_FLAGS_DIRECT_IO 16
#endif
#ifndef FICLONE
#define FICLONE _IOW(0x94, 9, int)
#endif

static int lxcone_loop_ctl_get_free(int ctl_fd)
{
    return ioctl(ctl_fd, LOOP_CTL_GET_FREE);
}

/* LOOP_CONFIGURE (5.8+) binds and configures atomically, so no other process ever sees the device
 * bound with the wrong flags; older kernels get LOOP_SET_FD + LOOP_SET_STATUS64 (read-only then
 * comes from the backing fd's open mode alone). */
static int lxcone_loop_configure(int loop_fd, int backing_fd, uint32_t flags, uint64_t offset,
                                 uint64_t sizelimit, uint32_t block_size)
{
    struct loop_config c;
    memset(&c, 0, sizeof(c));
    c.fd = (uint32_t)backing_fd;
    c.block_size = block_size;
    c.info.lo_flags = flags;
    c.info.lo_offset = offset;
    c.info.lo_sizelimit = sizelimit;
    if (ioctl(loop_fd, LOOP_CONFIGURE, &c) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOTTY)
        return -1;
    if (ioctl(loop_fd, LOOP_SET_FD, backing_fd) < 0)
        return -1;
    if (ioctl(loop_fd, LOOP_SET_STATUS64, &c.info) < 0) {
        int saved = errno;
        ioctl(loop_fd, LOOP_CLR_FD, 0);
        errno = saved;
        return -1;
    }
    return 0;
}

static int lxcone_loop_clr_fd(int loop_fd)
{
    return ioctl(loop_fd, LOOP_CLR_FD, 0);
}

/* ENXIO when the device is not bound. */
static int lxcone_loop_get_status(int loop_fd, uint64_t *device, uint64_t *inode, uint32_t *flags,
                                  uint64_t *offset, uint64_t *sizelimit)
{
    struct loop_info64 info;
    memset(&info, 0, sizeof(info));
    if (ioctl(loop_fd, LOOP_GET_STATUS64, &info) < 0)
        return -1;
    *device = info.lo_device;
    *inode = info.lo_inode;
    *flags = info.lo_flags;
    *offset = info.lo_offset;
    *sizelimit = info.lo_sizelimit;
    return 0;
}

/* BLKPG_ADD_PARTITION / BLKPG_DEL_PARTITION (what `partx -a/-d` do): start and length in bytes. */
static int lxcone_blkpg_partition(int disk_fd, int op, int pno, long long start, long long length)
{
    struct blkpg_partition p;
    struct blkpg_ioctl_arg a;
    memset(&p, 0, sizeof(p));
    memset(&a, 0, sizeof(a));
    p.pno = pno;
    p.start = start;
    p.length = length;
    a.op = op;
    a.datalen = sizeof(p);
    a.data = &p;
    return ioctl(disk_fd, BLKPG, &a);
}

static int lxcone_blkgetsize64(int fd, uint64_t *size)
{
    return ioctl(fd, BLKGETSIZE64, size);
}

static int lxcone_ficlone(int dst_fd, int src_fd)
{
    return ioctl(dst_fd, FICLONE, src_fd);
}

#endif
