/* SPDX-License-Identifier: MIT */
/* The seed's /dev/ksm, emulated: the fd table the preload library and the mv_ksm_* functions share. */
#ifndef MV_MERGE_DEVKSM_H
#define MV_MERGE_DEVKSM_H

#include <stdbool.h>
#include <sys/stat.h>

#include "common/util.h"

#define MVK_PASS (-100000L) /* not one of ours: let libc have it */

MV_PRIVATE bool mvk_path_is_ksm(const char *path);
MV_PRIVATE bool mvk_tracked(int fd);
MV_PRIVATE int mvk_open(int flags);
MV_PRIVATE long mvk_ioctl(int fd, unsigned long req, unsigned long arg);
MV_PRIVATE void mvk_dup(int oldfd, int newfd);
MV_PRIVATE void mvk_forget(int fd);
MV_PRIVATE void mvk_forget_range(unsigned lo, unsigned hi);
MV_PRIVATE void mvk_dev_stat(struct stat *sb);

#endif
