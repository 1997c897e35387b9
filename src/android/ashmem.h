/* SPDX-License-Identifier: MIT */
/* Ashmem file semantics on memvisor regions. Internal; used by the libcutils API and the preload library.
 *
 * An ashmem fd before its first mmap is an area file (an empty sealed memfd) whose record, an extended
 * attribute, holds the name, size and prot mask for every holder of the open file description (dup, fork,
 * SCM_RIGHTS). The first mmap by any of them creates the region, turns every fd of it in that process into
 * the region's memfd (dup3) and leaves the region with the broker for the others, who swap their fds on
 * their next call. From then on the fd is a real region that can be passed anywhere. Fds of regions this
 * process never saw (inherited over exec, received over a socket) are adopted on their first ashmem ioctl.
 * All calls return the driver's result or -errno; MVA_PASS means "not an ashmem fd".
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "../common/util.h"

#include "common/vdev.h"

#define MVA_PASS MV_VDEV_PASS

/* Called by the preload library, which sees every close: table entries need no re-validation. */
MV_PRIVATE void mva_set_table_exact(void);

MV_HIDDEN bool mva_path_is_ashmem(const char *path);
MV_HIDDEN int mva_open(int oflags);
MV_HIDDEN bool mva_tracked(int fd);
MV_HIDDEN long mva_ioctl(int fd, unsigned long cmd, unsigned long arg);
MV_HIDDEN int mva_mmap_check(int fd, int prot, size_t len, off_t off);
MV_HIDDEN ssize_t mva_read(int fd, void *buf, size_t n);
MV_HIDDEN off_t mva_lseek(int fd, off_t off, int whence);
MV_HIDDEN int mva_fstat(int fd, struct stat *st);
MV_HIDDEN void mva_dev_stat(struct stat *st);
MV_HIDDEN void mva_dup(int oldfd, int newfd);
MV_HIDDEN void mva_forget(int fd);
MV_HIDDEN void mva_forget_range(unsigned lo, unsigned hi);
/* libcutils' create: a real region right away, so that a plain mmap of the fd works without the
 * preload library. */
MV_HIDDEN int mva_create_region(const char *name, size_t size);
