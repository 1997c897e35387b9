/* SPDX-License-Identifier: MIT */
/* The hash merging keys pages by: XXH3 (64 bits) of a page's bytes. Internal. */
#ifndef MV_MERGE_PAGE_HASH_H
#define MV_MERGE_PAGE_HASH_H

#include <stdint.h>

#include "common/util.h"

/* Only picks candidates: bytes are always compared before anything merges. Every process and the
 * broker must get the same value for the same bytes (partitions compare hashes across them), and they
 * do: XXH3 is defined by its output, whichever code path computes it. */
MV_HIDDEN uint64_t mvm_page_hash(const void *page);

#endif
