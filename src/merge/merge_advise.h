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

/* mremap on memory that may hold merged pages: the merged pages in [old, old + old_len) become private
 * anonymous memory with the same bytes, and the range one mapping again where merging split it, so
 * that growing reads zeros and moving what was one mapping works; then real (answering as mremap(2)
 * does) runs while no scan can merge in the range. */
MV_PRIVATE void *mvm_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr,
			    void *(*real)(void *old, size_t old_len, size_t new_len, int flags, void *new_addr));
