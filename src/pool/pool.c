/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "pool_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void *mvz_pool_map_pages(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

void mvz_pool_unmap_pages(void *p, size_t bytes)
{
	munmap(p, bytes);
}

int mvz_table_reserve(void **table, size_t *cap_bytes, size_t need_bytes)
{
	if (need_bytes <= *cap_bytes)
		return 0;
	size_t pg = MV_PAGE_SIZE, n = (need_bytes + need_bytes / 32 + pg - 1) / pg * pg;
	void *t = *table ? mremap(*table, *cap_bytes, n, MREMAP_MAYMOVE)
			 : mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t == MAP_FAILED)
		return -ENOMEM;
	*table = t;
	*cap_bytes = n;
	return 0;
}

void mvz_table_free(void *table, size_t cap_bytes)
{
	if (table)
		munmap(table, cap_bytes);
}

MV_EXPORT int mv_pool_new(enum mv_pool_kind kind, mv_pool_evict_fn evict, void *userdata, mv_pool **ret)
{
	struct mv_pool *p;
	int r;

	if (!ret)
		return -EINVAL;
	*ret = NULL;
	if (kind != MV_POOL_ZBUD && kind != MV_POOL_DENSE)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->ops = kind == MV_POOL_ZBUD ? &mvz_zbud_ops : &mvz_dense_ops;
	atomic_init(&p->refs, 1);
	pthread_mutex_init(&p->lock, NULL);
	p->evict = evict;
	p->userdata = userdata;
	r = p->ops->init(p);
	if (r < 0) {
		pthread_mutex_destroy(&p->lock);
		free(p);
		return r;
	}
	atomic_init(&p->bytes, p->ops->bytes(p));
	*ret = p;
	return 0;
}

MV_EXPORT mv_pool *mv_pool_ref(mv_pool *p)
{
	if (p)
		atomic_fetch_add(&p->refs, 1);
	return p;
}

MV_EXPORT mv_pool *mv_pool_unref(mv_pool *p)
{
	if (p && atomic_fetch_sub(&p->refs, 1) == 1) {
		p->ops->fini(p);
		pthread_mutex_destroy(&p->lock);
		free(p);
	}
	return NULL;
}

#define LOCKED(p, call)                                                                                                \
	({                                                                                                             \
		pthread_mutex_lock(&(p)->lock);                                                                        \
		__typeof__(call) _r = (call);                                                                          \
		pthread_mutex_unlock(&(p)->lock);                                                                      \
		_r;                                                                                                    \
	})

/* As LOCKED, for calls that change what the pool holds. */
#define CHANGING(p, call)                                                                                              \
	({                                                                                                             \
		pthread_mutex_lock(&(p)->lock);                                                                        \
		__typeof__(call) _r = (call);                                                                          \
		atomic_store_explicit(&(p)->bytes, (p)->ops->bytes(p), memory_order_relaxed);                          \
		pthread_mutex_unlock(&(p)->lock);                                                                      \
		_r;                                                                                                    \
	})

MV_EXPORT int mv_pool_alloc(mv_pool *p, size_t size, uint64_t *handle)
{
	if (!p || !handle)
		return -EINVAL;
	if (!size)
		return -EINVAL;
	return CHANGING(p, p->ops->alloc(p, size, handle));
}

MV_EXPORT int mv_pool_free(mv_pool *p, uint64_t handle)
{
	return p ? CHANGING(p, p->ops->free(p, handle)) : -EINVAL;
}

MV_EXPORT int mv_pool_map(mv_pool *p, uint64_t handle, void **ptr)
{
	if (!p || !ptr)
		return -EINVAL;
	return LOCKED(p, p->ops->map(p, handle, ptr));
}

MV_EXPORT int mv_pool_unmap(mv_pool *p, uint64_t handle)
{
	return p ? LOCKED(p, p->ops->unmap(p, handle)) : -EINVAL;
}

MV_EXPORT int mv_pool_reclaim(mv_pool *p, unsigned retries)
{
	if (!p)
		return -EINVAL;
	int r = p->ops->reclaim(p, retries); /* takes the lock itself, around the evict calls */
	(void)CHANGING(p, 0);
	return r;
}

MV_EXPORT int mv_pool_compact(mv_pool *p)
{
	return p ? CHANGING(p, p->ops->compact(p)) : -EINVAL;
}

MV_EXPORT uint64_t mv_pool_pages(mv_pool *p)
{
	return p ? LOCKED(p, p->ops->pages(p)) : 0;
}

MV_EXPORT uint64_t mv_pool_bytes(mv_pool *p)
{
	return p ? atomic_load_explicit(&p->bytes, memory_order_relaxed) : 0;
}

int mvz_pool_alloc_with(mv_pool *p, size_t size, const void *head, size_t headlen, uint64_t *handle)
{
	void *ptr;
	int r;

	if (!p || !handle || !size || headlen > size)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	r = p->ops->alloc(p, size, handle);
	if (r == 0 && p->ops->map(p, *handle, &ptr) == 0) {
		memcpy(ptr, head, headlen);
		p->ops->unmap(p, *handle);
	}
	atomic_store_explicit(&p->bytes, p->ops->bytes(p), memory_order_relaxed);
	pthread_mutex_unlock(&p->lock);
	return r;
}

int mvz_pool_read_head(mv_pool *p, uint64_t handle, void *buf, size_t len)
{
	void *ptr;
	int r;

	if (!p || !buf)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	r = p->ops->map(p, handle, &ptr);
	if (r == 0) {
		memcpy(buf, ptr, len);
		p->ops->unmap(p, handle);
	}
	pthread_mutex_unlock(&p->lock);
	return r;
}
