/* SPDX-License-Identifier: MIT */
/* XXH3 of a page, built with -mavx2 (CMakeLists.txt): called only where the CPU has AVX2. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "memvisor/memvisor.h"
#include "merge/page_hash.h"

MV_HIDDEN uint64_t mvm_page_hash_avx2(const void *page);

uint64_t mvm_page_hash_avx2(const void *page)
{
	return XXH3_64bits(page, MV_PAGE_SIZE);
}
