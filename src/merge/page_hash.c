/* SPDX-License-Identifier: MIT */
/* mvm_page_hash: libxxhash's XXH3, or the same function built for AVX2 where the CPU has it. Debian's
 * libxxhash takes its SSE2 path (no dispatch), which hashes a page in about 0.4-0.5 us here; the AVX2
 * path in about 0.16 us, and a scan hashes every page it reads. */
#include <stdatomic.h>
#include <xxhash.h>

#include "memvisor/memvisor.h"
#include "merge/page_hash.h"

#ifdef MV_PAGE_HASH_AVX2
MV_HIDDEN uint64_t mvm_page_hash_avx2(const void *page);
#endif

static uint64_t page_hash_generic(const void *page)
{
	return XXH3_64bits(page, MV_PAGE_SIZE);
}

typedef uint64_t (*page_hash_fn)(const void *);
static _Atomic(page_hash_fn) page_hash_impl;

uint64_t mvm_page_hash(const void *page)
{
	page_hash_fn f = atomic_load_explicit(&page_hash_impl, memory_order_relaxed);
	if (!f) {
		f = page_hash_generic;
#ifdef MV_PAGE_HASH_AVX2
		__builtin_cpu_init();
		if (__builtin_cpu_supports("avx2"))
			f = mvm_page_hash_avx2;
#endif
		atomic_store_explicit(&page_hash_impl, f, memory_order_relaxed);
	}
	return f(page);
}
