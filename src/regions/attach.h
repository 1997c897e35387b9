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
/* Asks the broker to put compressed pages [pg0, pg1] of region r back (pin's slow path). */
MV_HIDDEN int mvr_restore(void *region, uint64_t pg0, uint64_t pg1);
