/* SPDX-License-Identifier: MIT */
/* The dense backend: objects are appended byte-packed (no size classes, no rounding) into 256 KiB segments
 * the pool maps itself, each behind a 6-byte header (handle index, size), and reached through a handle
 * table (8 bytes per object) so that compaction can move them. Segments are kept in creation order:
 * reclaim evicts the live objects of the oldest segment through the callback and then frees exactly that
 * segment (64 pages), which makes it deterministic like zbud's while packing far denser. Objects may
 * straddle page boundaries inside a segment: it is one contiguous mapping. A segment with mapped objects
 * is neither moved nor reclaimed until they are unmapped.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pool_internal.h"

#define SEG_SIZE (256u << 10)
#define OBJ_HDR 6u
#define MAX_OBJ (MV_PAGE_SIZE + 64) /* a raw page and a small prefix */
#define DEAD 0xffffffffu

struct seg {
	uint8_t *mem;
	uint32_t used;       /* bytes appended, headers included */
	uint32_t touched;    /* the most ever appended: pages past it were never written, so hold nothing */
	uint32_t live_bytes; /* of live objects, headers included */
	uint32_t live_objs;
	uint32_t mapped;
	uint32_t index;
	bool under_reclaim;
	struct list lru; /* front: newest */
};

struct dense {
	struct seg **segs;
	uint32_t segs_len, segs_cap;
	uint32_t *free_segs;
	uint32_t nfree_segs;
	uint64_t live_segs;
	uint64_t touched_pages; /* of the live segments: what they hold */
	struct seg *head;       /* where new objects go */
	struct list lru;
	uint64_t *handles; /* live: (segment index + 1) << 32 | offset; free: next free index + 1, or 0 */
	uint32_t handles_len, handles_cap;
	size_t handles_bytes; /* mapped for the handle table */
	uint32_t free_handle; /* head of the free chain, or NO_HANDLE */
};

#define NO_HANDLE UINT32_MAX
#define LIVE(e) ((e) >> 32)

static inline void hdr_put(uint8_t *at, uint32_t hidx, uint16_t size)
{
	memcpy(at, &hidx, 4);
	memcpy(at + 4, &size, 2);
}

static inline void hdr_get(const uint8_t *at, uint32_t *hidx, uint16_t *size)
{
	memcpy(hidx, at, 4);
	memcpy(size, at + 4, 2);
}

static int grow(void **arr, uint32_t *cap, size_t elem, void **arr2, size_t elem2)
{
	uint32_t n = *cap ? *cap + *cap / 4 + 1 : 256; /* slack counts as memory held */
	void *a = realloc(*arr, n * elem), *b;

	if (!a)
		return -ENOMEM;
	*arr = a;
	b = realloc(*arr2, n * elem2);
	if (!b)
		return -ENOMEM;
	*arr2 = b;
	*cap = n;
	return 0;
}

static int dn_init(struct mv_pool *p)
{
	struct dense *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->free_handle = NO_HANDLE;
	list_init(&d->lru);
	p->impl = d;
	return 0;
}

static void dn_fini(struct mv_pool *p)
{
	struct dense *d = p->impl;

	for (uint32_t i = 0; i < d->segs_len; i++)
		if (d->segs[i]) {
			mvz_pool_unmap_pages(d->segs[i]->mem, SEG_SIZE);
			free(d->segs[i]);
		}
	free(d->segs);
	free(d->free_segs);
	mvz_table_free(d->handles, d->handles_bytes);
	free(d);
}

static struct seg *seg_new(struct dense *d)
{
	uint32_t idx;
	struct seg *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->mem = mvz_pool_map_pages(SEG_SIZE);
	if (!s->mem) {
		free(s);
		return NULL;
	}
	if (d->nfree_segs) {
		idx = d->free_segs[--d->nfree_segs];
	} else {
		if (d->segs_len == d->segs_cap && grow((void **)&d->segs, &d->segs_cap, sizeof(*d->segs),
						       (void **)&d->free_segs, sizeof(*d->free_segs)) < 0) {
			mvz_pool_unmap_pages(s->mem, SEG_SIZE);
			free(s);
			return NULL;
		}
		idx = d->segs_len++;
	}
	s->index = idx;
	d->segs[idx] = s;
	list_init(&s->lru);
	list_add(&s->lru, &d->lru);
	d->live_segs++;
	return s;
}

static void seg_free(struct dense *d, struct seg *s)
{
	if (d->head == s)
		d->head = NULL;
	list_del(&s->lru);
	d->segs[s->index] = NULL;
	d->free_segs[d->nfree_segs++] = s->index;
	d->live_segs--;
	d->touched_pages -= (s->touched + MV_PAGE_SIZE - 1) / MV_PAGE_SIZE;
	mvz_pool_unmap_pages(s->mem, SEG_SIZE);
	free(s);
}

/* s->used grew: account the pages it wrote for the first time. */
static inline void seg_touch(struct dense *d, struct seg *s)
{
	if (s->used <= s->touched)
		return;
	d->touched_pages +=
		(s->used + MV_PAGE_SIZE - 1) / MV_PAGE_SIZE - (s->touched + MV_PAGE_SIZE - 1) / MV_PAGE_SIZE;
	s->touched = s->used;
}

/* Room for need bytes at the head, opening a new segment if the current one is full. */
static struct seg *head_for(struct dense *d, uint32_t need)
{
	if (d->head && d->head->used + need <= SEG_SIZE)
		return d->head;
	d->head = seg_new(d);
	return d->head;
}

static void handle_release(struct dense *d, uint32_t idx)
{
	d->handles[idx] = d->free_handle == NO_HANDLE ? 0 : (uint64_t)d->free_handle + 1;
	d->free_handle = idx;
}

static int handle_new(struct dense *d, uint32_t *idx)
{
	if (d->free_handle != NO_HANDLE) {
		*idx = d->free_handle;
		uint64_t next = d->handles[*idx];
		d->free_handle = next ? (uint32_t)(next - 1) : NO_HANDLE;
		return 0;
	}
	if (d->handles_len == d->handles_cap) {
		if (mvz_table_reserve((void **)&d->handles, &d->handles_bytes,
				      ((size_t)d->handles_len + 1) * sizeof(uint64_t)) < 0)
			return -ENOMEM;
		d->handles_cap = (uint32_t)(d->handles_bytes / sizeof(uint64_t));
	}
	if (d->handles_len == NO_HANDLE - 1)
		return -ENOSPC;
	*idx = d->handles_len++;
	return 0;
}

/* The segment and offset of a live handle. */
static struct seg *lookup(struct dense *d, uint64_t handle, uint32_t *hidx, uint32_t *off)
{
	if (handle == 0 || handle > d->handles_len)
		return NULL;
	*hidx = (uint32_t)(handle - 1);
	uint64_t e = d->handles[*hidx];
	if (!LIVE(e))
		return NULL;
	*off = (uint32_t)e;
	return d->segs[(e >> 32) - 1];
}

static int dn_alloc(struct mv_pool *p, size_t size, uint64_t *handle)
{
	struct dense *d = p->impl;
	uint32_t need = OBJ_HDR + (uint32_t)size, hidx;
	struct seg *s;

	if (size > MAX_OBJ)
		return -ENOSPC;
	if (handle_new(d, &hidx) < 0)
		return -ENOMEM;
	s = head_for(d, need);
	if (!s) {
		handle_release(d, hidx);
		return -ENOMEM;
	}
	hdr_put(s->mem + s->used, hidx, (uint16_t)size);
	d->handles[hidx] = ((uint64_t)(s->index + 1) << 32) | s->used;
	s->used += need;
	seg_touch(d, s);
	s->live_bytes += need;
	s->live_objs++;
	*handle = (uint64_t)hidx + 1;
	return 0;
}

static void maybe_release(struct dense *d, struct seg *s)
{
	if (s->live_objs || s->under_reclaim || s->mapped)
		return;
	if (s == d->head)
		s->used = 0; /* reuse the head in place */
	else
		seg_free(d, s);
}

static int dn_free(struct mv_pool *p, uint64_t handle)
{
	struct dense *d = p->impl;
	uint32_t hidx, off;
	uint16_t size;
	struct seg *s = lookup(d, handle, &hidx, &off);

	if (!s)
		return -EINVAL;
	hdr_get(s->mem + off, &hidx, &size);
	hdr_put(s->mem + off, DEAD, size);
	handle_release(d, (uint32_t)(handle - 1));
	s->live_bytes -= OBJ_HDR + size;
	s->live_objs--;
	maybe_release(d, s);
	return 0;
}

static int dn_map(struct mv_pool *p, uint64_t handle, void **ptr)
{
	uint32_t hidx, off;
	struct seg *s = lookup(p->impl, handle, &hidx, &off);

	if (!s)
		return -EINVAL;
	s->mapped++;
	*ptr = s->mem + off + OBJ_HDR;
	return 0;
}

static int dn_unmap(struct mv_pool *p, uint64_t handle)
{
	uint32_t hidx, off;
	struct seg *s = lookup(p->impl, handle, &hidx, &off);

	if (!s || !s->mapped)
		return -EINVAL;
	s->mapped--;
	maybe_release(p->impl, s);
	return 0;
}

static int dn_reclaim(struct mv_pool *p, unsigned retries)
{
	struct dense *d = p->impl;

	pthread_mutex_lock(&p->lock);
	if (!p->evict || list_empty(&d->lru) || retries == 0) {
		pthread_mutex_unlock(&p->lock);
		return -EINVAL;
	}
	for (unsigned i = 0; i < retries; i++) {
		struct seg *s = list_entry(d->lru.prev, struct seg, lru);
		uint64_t *victims;
		uint32_t n = 0;

		list_del(&s->lru);
		list_add(&s->lru, &d->lru); /* whatever happens, it is no longer the oldest */
		if (s->mapped)
			continue;
		victims = malloc((s->live_objs ? s->live_objs : 1) * sizeof(*victims));
		if (!victims)
			break;
		for (uint32_t off = 0; off < s->used;) {
			uint32_t hidx;
			uint16_t size;
			hdr_get(s->mem + off, &hidx, &size);
			if (hidx != DEAD)
				victims[n++] = (uint64_t)hidx + 1;
			off += OBJ_HDR + size;
		}
		if (d->head == s)
			d->head = NULL; /* nothing new goes into a segment being emptied */
		s->under_reclaim = true;
		pthread_mutex_unlock(&p->lock);
		for (uint32_t k = 0; k < n; k++)
			if (p->evict(p, victims[k], p->userdata))
				break;
		free(victims);
		pthread_mutex_lock(&p->lock);
		s->under_reclaim = false;
		if (s->live_objs == 0 && !s->mapped) {
			seg_free(d, s);
			pthread_mutex_unlock(&p->lock);
			return 0;
		}
	}
	pthread_mutex_unlock(&p->lock);
	return -EAGAIN;
}

/* Moves the live objects of segments at most half full to the head and frees those segments. */
static int dn_compact(struct mv_pool *p)
{
	struct dense *d = p->impl;
	int freed = 0;
	struct list *it = d->lru.prev;

	while (it != &d->lru) {
		struct seg *s = list_entry(it, struct seg, lru);
		it = it->prev;
		if (s == d->head || s->under_reclaim || s->mapped || s->live_bytes > SEG_SIZE / 2)
			continue;
		for (uint32_t off = 0; off < s->used;) {
			uint32_t hidx;
			uint16_t size;
			hdr_get(s->mem + off, &hidx, &size);
			uint32_t need = OBJ_HDR + size;
			if (hidx != DEAD) {
				struct seg *h = head_for(d, need);
				if (!h)
					return freed; /* out of memory: stop, nothing lost */
				memcpy(h->mem + h->used, s->mem + off, need);
				d->handles[hidx] = ((uint64_t)(h->index + 1) << 32) | h->used;
				h->used += need;
				seg_touch(d, h);
				h->live_bytes += need;
				h->live_objs++;
				hdr_put(s->mem + off, DEAD, size);
				s->live_bytes -= need;
				s->live_objs--;
			}
			off += need;
		}
		seg_free(d, s);
		freed += SEG_SIZE / MV_PAGE_SIZE;
	}
	return freed;
}

static uint64_t dn_pages(struct mv_pool *p)
{
	return ((struct dense *)p->impl)->live_segs * (SEG_SIZE / MV_PAGE_SIZE);
}

static uint64_t dn_bytes(struct mv_pool *p)
{
	struct dense *d = p->impl;
	/* A segment's pages past the most it ever held were never written: the kernel gives them no memory. */
	return d->touched_pages * MV_PAGE_SIZE + d->live_segs * sizeof(struct seg) +
	       (uint64_t)d->segs_cap * (sizeof(void *) + 4) + d->handles_bytes + sizeof(*d);
}

const struct pool_ops mvz_dense_ops = {
	.init = dn_init,
	.fini = dn_fini,
	.alloc = dn_alloc,
	.free = dn_free,
	.map = dn_map,
	.unmap = dn_unmap,
	.compact = dn_compact,
	.pages = dn_pages,
	.bytes = dn_bytes,
	.reclaim = dn_reclaim,
};
