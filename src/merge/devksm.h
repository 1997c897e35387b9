/* SPDX-License-Identifier: MIT */
/* The seed's /dev/ksm, emulated: the fd table the preload library and the mv_ksm_* functions share. */
#ifndef MV_MERGE_DEVKSM_H
#define MV_MERGE_DEVKSM_H

#include <stdbool.h>
#include <sys/stat.h>

#include "common/util.h"

#include "common/vdev.h"

#define MVK_PASS MV_VDEV_PASS

MV_HIDDEN bool mvk_path_is_ksm(const char *path);
MV_HIDDEN bool mvk_tracked(int fd);
MV_HIDDEN int mvk_open(int flags);
MV_HIDDEN long mvk_ioctl(int fd, unsigned long req, unsigned long arg);
MV_HIDDEN void mvk_dup(int oldfd, int newfd);
MV_HIDDEN void mvk_forget(int fd);
MV_HIDDEN void mvk_forget_range(unsigned lo, unsigned hi);
MV_HIDDEN void mvk_dev_stat(struct stat *sb);

#endif
