/* SPDX-License-Identifier: MIT */
/* memvisor compressed page pool: a handle-based allocator for compressed pages (zbud semantics and a
 * denser backend, both with LRU reclaim through an evict callback) and a page store on top of it
 * (LZ4, zstd, a word-pattern coder, or a policy choosing per page; same-filled pages as one word,
 * incompressible pages raw). Standalone: no broker needed.
 * Thread-safe. Functions return 0 (or a value) or a negative errno.
 */
#ifndef MEMVISOR_POOL_H
#define MEMVISOR_POOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the pool ---- */

typedef struct mv_pool mv_pool;

enum mv_pool_kind {
	MV_POOL_ZBUD = 1,  /* two objects per page, 64-byte chunks, deterministic reclaim (Linux zbud) */
	MV_POOL_DENSE = 2, /* byte-packed segments, compaction, reclaim frees whole segments oldest first */
};

/* Called by mv_pool_reclaim() for each live object of the page being reclaimed, without the pool lock
 * held. To let the page go, it must write the object back somewhere (or drop it) and mv_pool_free() the
 * handle, then return 0; a nonzero return keeps the object. */
typedef int (*mv_pool_evict_fn)(mv_pool *pool, uint64_t handle, void *userdata);

int mv_pool_new(enum mv_pool_kind kind, mv_pool_evict_fn evict, void *userdata, mv_pool **ret);
mv_pool *mv_pool_ref(mv_pool *pool);
mv_pool *mv_pool_unref(mv_pool *pool); /* always NULL; frees every object and page with the last ref */

/* size 0: -EINVAL; larger than the backend can hold (zbud: 4096 - 128, dense: 4096 + 64): -ENOSPC. */
int mv_pool_alloc(mv_pool *pool, size_t size, uint64_t *handle);
/* -EINVAL for a handle that is not live in this pool. */
int mv_pool_free(mv_pool *pool, uint64_t handle);
/* A pointer to the object's bytes, valid until mv_pool_unmap(); the object does not move meanwhile. */
int mv_pool_map(mv_pool *pool, uint64_t handle, void **ptr);
int mv_pool_unmap(mv_pool *pool, uint64_t handle);
/* Evicts the least recently used pool page (zbud) or segment (dense) through the evict callback:
 * 0 when one was freed, -EINVAL with nothing to evict or no callback, -EAGAIN after retries attempts. */
int mv_pool_reclaim(mv_pool *pool, unsigned retries);
/* Moves objects out of sparse pages and frees them; returns the number of pages freed. */
int mv_pool_compact(mv_pool *pool);
/* Pages the pool holds, and all bytes it holds including its metadata. */
uint64_t mv_pool_pages(mv_pool *pool);
uint64_t mv_pool_bytes(mv_pool *pool);

/* ---- the page store ---- */

typedef struct mv_store mv_store;

/* How a store encodes its pages: one codec, or a policy that runs a fast first pass and a stronger codec
 * only on the pages the first left above a quarter page (keeping the smaller). Each page records the
 * codec that wrote it. */
enum mv_codec {
	MV_CODEC_LZ4 = 1,
	MV_CODEC_ZSTD = 2,      /* zstd_level, zstd_dict */
	MV_CODEC_WK = 3,        /* word patterns (zeros, repeats of 16 recent 32-bit words, small deltas) */
	MV_CODEC_WK_LZ4 = 4,    /* word patterns first, then LZ4 */
	MV_CODEC_LZ4_ZSTD = 5,  /* LZ4 first, then zstd (zstd_level, zstd_dict) */
	MV_CODEC_LZ4_LZ4HC = 6, /* LZ4 first, then LZ4HC: loads stay at LZ4's speed */
};

struct mv_store_config {
	enum mv_pool_kind backend; /* 0: MV_POOL_DENSE */
	enum mv_codec codec;       /* 0: MV_CODEC_LZ4 */
	int zstd_level;            /* 0: 3 */
	const void *zstd_dict;     /* optional trained dictionary (ZDICT format), copied; codecs with zstd */
	size_t zstd_dict_size;
	size_t huge_threshold; /* compressed sizes above this are stored raw; 0: 3072 */
	unsigned flags;
	/* Called when reclaim evicts a page: the store drops it right after; return nonzero to keep it. */
	int (*evict)(mv_store *store, uint64_t handle, void *userdata);
	void *userdata;
};

/* mv_store_config.flags: refuse pages that would be stored raw (mv_store_put returns -E2BIG). */
#define MV_STORE_REJECT_INCOMPRESSIBLE 0x1u

/* Mirrors zram's mm_stat. */
struct mv_store_stats {
	uint64_t orig_data_size;  /* bytes of pages stored */
	uint64_t compr_data_size; /* bytes after compression (raw pages count 4096, same-filled 0) */
	uint64_t mem_used_total;  /* bytes the store and its pool hold, metadata and dictionary included */
	uint64_t same_pages;
	uint64_t huge_pages;
	uint64_t pages_compacted;
	uint64_t evictions;
	uint64_t pages_stored;
};

#define MV_STORE_PAGE_SIZE 4096

int mv_store_new(const struct mv_store_config *config, mv_store **ret); /* config may be NULL */
mv_store *mv_store_ref(mv_store *store);
mv_store *mv_store_unref(mv_store *store);
/* Stores one 4 KiB page; *handle is nonzero. */
int mv_store_put(mv_store *store, const void *page, uint64_t *handle);
/* Stores n contiguous pages: handles[i] is the page's handle, or 0 where it was not stored (refused as
 * incompressible, or no memory). Returns how many were stored. Cheaper than n puts when threads store
 * side by side: the store's lock is taken per batch of pages. */
int mv_store_put_many(mv_store *store, const void *pages, size_t n, uint64_t *handles);
/* Restores the page bit-exact into a 4 KiB buffer. */
int mv_store_get(mv_store *store, uint64_t handle, void *page);
int mv_store_drop(mv_store *store, uint64_t handle);
/* Evicts the least recently stored pool page's pages through config->evict (see mv_pool_reclaim). */
int mv_store_reclaim(mv_store *store, unsigned retries);
int mv_store_compact(mv_store *store);
int mv_store_stats(mv_store *store, struct mv_store_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
