/* SPDX-License-Identifier: MIT */
/* The broker's ashmem areas: regions kept for holders of an area's file that have not swapped to the
 * region yet (areas.c). Internal. */
#pragma once

#include "registry.h"

struct mvb_stats;

MV_HIDDEN int mvb_areas_init(struct mvb_registry *reg);
MV_HIDDEN void mvb_areas_fini(void);
MV_HIDDEN void mvb_areas_stats(struct mvb_stats *st);
