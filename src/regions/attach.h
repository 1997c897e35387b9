/* SPDX-License-Identifier: MIT */
/* Regions and the broker (attach.c). Internal. */
#pragma once

#include <stdint.h>

#include "common/util.h"

struct mv_region;

/* The process holds r now / no longer: the broker is told, now and after every reconnect. */
MV_HIDDEN void mvr_attach_add(struct mv_region *r);
MV_HIDDEN void mvr_attach_remove(struct mv_region *r);
/* After an unpin or pin changed the number of resident unpinned pages by delta. Never blocks: what it
 * has to tell the broker is sent without waiting, and dropped if the broker is not keeping up. */
MV_HIDDEN void mvr_unpinned_changed(struct mv_region *r, int64_t delta);
/* A new descriptor of the control file of the data file (dev, ino) if this process holds that region
 * already, else -ENOENT. */
MV_HIDDEN int mvr_attach_find_ctl(uint64_t dev, uint64_t ino);
/* The control file of the data file data_fd, from the broker: -EINVAL if the broker knows no such
 * region, -ENOTCONN if there is no broker to ask. Not checked. */
MV_HIDDEN int mvr_attach_fetch_ctl(int data_fd);
/* Asks the broker to put compressed pages [pg0, pg1] of region r back (pin's slow path). */
MV_HIDDEN int mvr_restore(void *region, uint64_t pg0, uint64_t pg1);
/* The region made at the first mmap of an ashmem area (its file area_fd), for the area's other holders:
 * the broker keeps it until the area's file is gone. Sent one way; 0 once sent. */
MV_HIDDEN int mvr_area_bind(int area_fd, const struct mv_region *r);
/* The data and control files of the region bound to the area area_fd (not checked: the caller does),
 * waiting within the ordinary bound for a binding on its way. -ENOENT if none is, -ENOTCONN without a
 * broker. */
MV_HIDDEN int mvr_area_fetch(int area_fd, int *data_fd, int *ctl_fd);
