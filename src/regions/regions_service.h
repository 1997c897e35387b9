/* SPDX-License-Identifier: MIT */
/* The regions facility's broker service (see broker/core.h). Internal to memvisord. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "common/util.h"

struct mvb_regions_config {
	uint64_t unpinned_budget;   /* bytes; UINT64_MAX: none */
	uint64_t min_available;     /* bytes; 0: no watermark */
	uint64_t compressed_budget; /* bytes the compressed tier may hold */
	bool psi;                   /* use PSI memory-pressure triggers */
	bool compress;              /* keep reclaimed pages compressed before dropping them */
};

MV_HIDDEN int mvb_regions_service_init(const struct mvb_regions_config *cfg);
