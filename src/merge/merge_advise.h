/* SPDX-License-Identifier: MIT */
/* madvise on memory that may hold merged pages, for mv_merge_advise and for the preload library's
 * madvise (through MEMVISOR_PRIVATE). Internal. */
#pragma once

#include <stddef.h>

#include "common/util.h"

/* Turns the merged pages of every live context in [addr, addr + len) into private anonymous memory
 * where the advice needs it (zeros for MADV_DONTNEED, MADV_DONTNEED_LOCKED and MADV_FREE, a copy for
 * the advice that changes the mapping), then calls real (which answers as madvise(2) does: -1 and errno on
 * failure) while no scan can merge in the range. Returns real's result, or -errno. */
MV_PRIVATE int mvm_madvise(void *addr, size_t len, int advice, int (*real)(void *addr, size_t len, int advice));
