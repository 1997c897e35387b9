/* SPDX-License-Identifier: MIT */
/* An emulated device: what the preload library (src/preload/) needs of one to answer the libc calls
 * an unmodified program makes on it. The engine implements each (ashmem in src/android/, /dev/ksm in
 * src/merge/); the preload holds the one table of them. Every fd operation returns MV_VDEV_PASS when
 * the fd is not the device's, or a value / -errno when it answered. Internal. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "common/util.h"

#define MV_VDEV_PASS (-1000000L) /* not this device's: let libc have it */

struct mvd_vdev {
	const char *name;
	/* The path opens this device. */
	bool (*path_is)(const char *path);
	/* open(2) of the device: a new fd, or -errno. */
	int (*open)(int flags);
	/* The fd is one of this device's. */
	bool (*tracked)(int fd);
	/* What stat(2) shows for the device node, and for its fds. */
	void (*dev_stat)(struct stat *st);
	/* Ioctls of this type go to the device even on fds it does not know yet (it may adopt them);
	 * others only on its own fds. 0: its own fds only. */
	unsigned ioctl_type;
	long (*ioctl)(int fd, unsigned long req, unsigned long arg);
	/* May be NULL: mmap, lseek pass to libc; read and write fail with EINVAL, as on a device without
	 * them. */
	int (*mmap_check)(int fd, int prot, size_t len, off_t off);
	ssize_t (*read)(int fd, void *buf, size_t n);
	off_t (*lseek)(int fd, off_t off, int whence);
	/* After a successful dup of oldfd to newfd (whatever newfd was: it may have been ours). */
	void (*dup)(int oldfd, int newfd);
	/* After close of fd, or of every fd in [lo, hi]. */
	void (*forget)(int fd);
	void (*forget_range)(unsigned lo, unsigned hi);
};

/* The devices the engine emulates, exported for the preload through MEMVISOR_PRIVATE. */
MV_PRIVATE extern const struct mvd_vdev mva_vdev; /* /dev/ashmem */
MV_PRIVATE extern const struct mvd_vdev mvk_vdev; /* /dev/ksm, the first KSM proposal's device */
