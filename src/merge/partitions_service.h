/* SPDX-License-Identifier: MIT */
/* The merge partitions' broker service (see broker/core.h). Internal to memvisord. */
#pragma once

#include "common/util.h"

MV_HIDDEN int mvb_partitions_service_init(void);
