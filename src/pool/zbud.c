/* SPDX-License-Identifier: MIT */
/* zbud: two compressed objects ("buddies") per pool page, the first left-justified after the header chunk,
 * the last right-justified at the end. 64-byte chunks, one header chunk, 63 unbuddied lists indexed by
 * free chunks, a buddied list, and an LRU of pool pages by most recent allocation. Reclaim takes the
 * least recently used page and evicts its buddies through the callback; a free during reclaim only
 * marks, and reclaim frees the page once both buddies are gone.
 *
 * Mapping from Linux's mm/zbud.c: zbud_create_pool -> mv_pool_new(MV_POOL_ZBUD), zbud_destroy_pool ->
 * mv_pool_unref, zbud_alloc -> mv_pool_alloc, zbud_free -> mv_pool_free, zbud_reclaim_page ->
 * mv_pool_reclaim, zbud_map/zbud_unmap -> mv_pool_map/mv_pool_unmap, zbud_get_pool_size -> mv_pool_pages.
 * Handles are page-table indices rather than raw addresses, so a bad handle is an error, not corruption.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pool_internal.h"

#define CHUNK_SHIFT 6
#define CHUNK (1u << CHUNK_SHIFT)
#define HDR_SIZE CHUNK
#define NCHUNKS ((MV_PAGE_SIZE - HDR_SIZE) >> CHUNK_SHIFT) /* 63 */
#define MAX_ALLOC (MV_PAGE_SIZE - HDR_SIZE - CHUNK)

enum bud { FIRST = 0, LAST = 1 };

/* Lives in the first chunk of its pool page, as in the kernel. */
struct zhdr {
	struct list buddy;
	struct list lru;
	uint32_t first_chunks, last_chunks;
	uint32_t index;
	bool under_reclaim;
};
_Static_assert(sizeof(struct zhdr) <= HDR_SIZE, "header fits its chunk");

struct zbud {
	struct list unbuddied[NCHUNKS];
	struct list buddied, lru;
	uint64_t pages_nr;
	struct zhdr **table; /* index -> page */
	uint32_t table_len, table_cap;
	uint32_t *free_idx;
	uint32_t nfree, free_cap;
};

static unsigned size_to_chunks(size_t size)
{
	return (unsigned)((size + CHUNK - 1) >> CHUNK_SHIFT);
}

static unsigned free_chunks(const struct zhdr *z)
{
	return NCHUNKS - z->first_chunks - z->last_chunks;
}

static uint64_t encode(const struct zhdr *z, enum bud b)
{
	return ((uint64_t)(z->index + 1) << 1) | b;
}

/* The page and buddy of a live handle, or NULL. */
static struct zhdr *decode(struct zbud *zb, uint64_t h, enum bud *b)
{
	uint64_t idx = (h >> 1);

	if (idx == 0 || idx > zb->table_len)
		return NULL;
	struct zhdr *z = zb->table[idx - 1];
	*b = (enum bud)(h & 1);
	if (!z || (*b == FIRST ? z->first_chunks : z->last_chunks) == 0)
		return NULL;
	return z;
}

static int zb_init(struct mv_pool *p)
{
	struct zbud *zb = calloc(1, sizeof(*zb));

	if (!zb)
		return -ENOMEM;
	for (unsigned i = 0; i < NCHUNKS; i++)
		list_init(&zb->unbuddied[i]);
	list_init(&zb->buddied);
	list_init(&zb->lru);
	p->impl = zb;
	return 0;
}

static void free_page(struct zbud *zb, struct zhdr *z)
{
	zb->table[z->index] = NULL;
	if (zb->nfree < zb->free_cap)
		zb->free_idx[zb->nfree++] = z->index;
	zb->pages_nr--;
	mvz_pool_unmap_pages(z, MV_PAGE_SIZE);
}

static void zb_fini(struct mv_pool *p)
{
	struct zbud *zb = p->impl;

	for (uint32_t i = 0; i < zb->table_len; i++)
		if (zb->table[i])
			mvz_pool_unmap_pages(zb->table[i], MV_PAGE_SIZE);
	free(zb->table);
	free(zb->free_idx);
	free(zb);
}

static struct zhdr *new_page(struct zbud *zb)
{
	uint32_t idx;

	if (zb->nfree) {
		idx = zb->free_idx[--zb->nfree];
	} else {
		if (zb->table_len == zb->table_cap) {
			uint32_t cap = zb->table_cap ? zb->table_cap * 2 : 64;
			struct zhdr **t = realloc(zb->table, cap * sizeof(*t));
			uint32_t *f = realloc(zb->free_idx, cap * sizeof(*f));
			if (t)
				zb->table = t;
			if (f)
				zb->free_idx = f;
			if (!t || !f)
				return NULL;
			zb->table_cap = cap;
			zb->free_cap = cap;
		}
		idx = zb->table_len++;
	}
	struct zhdr *z = mvz_pool_map_pages(MV_PAGE_SIZE);
	if (!z) {
		zb->free_idx[zb->nfree++] = idx;
		return NULL;
	}
	memset(z, 0, sizeof(*z));
	list_init(&z->buddy);
	list_init(&z->lru);
	z->index = idx;
	zb->table[idx] = z;
	zb->pages_nr++;
	return z;
}

static void file_page(struct zbud *zb, struct zhdr *z)
{
	if (z->first_chunks == 0 || z->last_chunks == 0)
		list_add(&z->buddy, &zb->unbuddied[free_chunks(z)]);
	else
		list_add(&z->buddy, &zb->buddied);
}

static int zb_alloc(struct mv_pool *p, size_t size, uint64_t *handle)
{
	struct zbud *zb = p->impl;
	struct zhdr *z = NULL;
	unsigned chunks;
	enum bud b = FIRST;

	if (size > MAX_ALLOC)
		return -ENOSPC;
	chunks = size_to_chunks(size);
	/* First fit among pages with a single buddy and room enough. */
	for (unsigned i = chunks; i < NCHUNKS; i++) {
		if (!list_empty(&zb->unbuddied[i])) {
			z = list_entry(zb->unbuddied[i].next, struct zhdr, buddy);
			list_del(&z->buddy);
			b = z->first_chunks == 0 ? FIRST : LAST;
			break;
		}
	}
	if (!z) {
		z = new_page(zb);
		if (!z)
			return -ENOMEM;
	}
	if (b == FIRST)
		z->first_chunks = chunks;
	else
		z->last_chunks = chunks;
	file_page(zb, z);
	/* Most recently allocated first. */
	list_del(&z->lru);
	list_add(&z->lru, &zb->lru);
	*handle = encode(z, b);
	return 0;
}

static int zb_free(struct mv_pool *p, uint64_t handle)
{
	struct zbud *zb = p->impl;
	enum bud b;
	struct zhdr *z = decode(zb, handle, &b);

	if (!z)
		return -EINVAL;
	if (b == FIRST)
		z->first_chunks = 0;
	else
		z->last_chunks = 0;
	if (z->under_reclaim)
		return 0; /* reclaim decides the page's fate */
	list_del(&z->buddy);
	if (z->first_chunks == 0 && z->last_chunks == 0) {
		list_del(&z->lru);
		free_page(zb, z);
	} else {
		file_page(zb, z);
	}
	return 0;
}

static int zb_map(struct mv_pool *p, uint64_t handle, void **ptr)
{
	struct zbud *zb = p->impl;
	enum bud b;
	struct zhdr *z = decode(zb, handle, &b);

	if (!z)
		return -EINVAL;
	*ptr = (char *)z + (b == FIRST ? HDR_SIZE : MV_PAGE_SIZE - (z->last_chunks << CHUNK_SHIFT));
	return 0;
}

static int zb_unmap(struct mv_pool *p, uint64_t handle)
{
	enum bud b;
	return decode(p->impl, handle, &b) ? 0 : -EINVAL;
}

static int zb_reclaim(struct mv_pool *p, unsigned retries)
{
	struct zbud *zb = p->impl;

	pthread_mutex_lock(&p->lock);
	if (!p->evict || list_empty(&zb->lru) || retries == 0) {
		pthread_mutex_unlock(&p->lock);
		return -EINVAL;
	}
	for (unsigned i = 0; i < retries; i++) {
		struct zhdr *z = list_entry(zb->lru.prev, struct zhdr, lru);
		uint64_t first = 0, last = 0;
		int r = 0;

		list_del(&z->lru);
		list_del(&z->buddy);
		z->under_reclaim = true;
		if (z->first_chunks)
			first = encode(z, FIRST);
		if (z->last_chunks)
			last = encode(z, LAST);
		pthread_mutex_unlock(&p->lock);
		/* The callback frees the handles it could write back; a failure keeps the page. A buddy
		 * freed by someone else meanwhile is not offered (the kernel would, with a stale handle). */
		if (first)
			r = p->evict(p, first, p->userdata);
		if (!r && last) {
			pthread_mutex_lock(&p->lock);
			bool still = z->last_chunks != 0;
			pthread_mutex_unlock(&p->lock);
			if (still)
				p->evict(p, last, p->userdata);
		}
		pthread_mutex_lock(&p->lock);
		z->under_reclaim = false;
		if (z->first_chunks == 0 && z->last_chunks == 0) {
			free_page(zb, z);
			pthread_mutex_unlock(&p->lock);
			return 0;
		}
		file_page(zb, z);
		list_add(&z->lru, &zb->lru);
	}
	pthread_mutex_unlock(&p->lock);
	return -EAGAIN;
}

static int zb_compact(struct mv_pool *p)
{
	(void)p;
	return 0; /* objects never move in zbud */
}

static uint64_t zb_pages(struct mv_pool *p)
{
	return ((struct zbud *)p->impl)->pages_nr;
}

static uint64_t zb_bytes(struct mv_pool *p)
{
	struct zbud *zb = p->impl;
	return zb->pages_nr * MV_PAGE_SIZE + zb->table_cap * (sizeof(*zb->table) + sizeof(*zb->free_idx)) + sizeof(*zb);
}

const struct pool_ops mvz_zbud_ops = {
	.init = zb_init,
	.fini = zb_fini,
	.alloc = zb_alloc,
	.free = zb_free,
	.map = zb_map,
	.unmap = zb_unmap,
	.compact = zb_compact,
	.pages = zb_pages,
	.bytes = zb_bytes,
	.reclaim = zb_reclaim,
};
