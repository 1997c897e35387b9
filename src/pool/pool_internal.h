/* SPDX-License-Identifier: MIT */
/* Pool internals shared by the backends. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/util.h"
#include "memvisor/pool.h"

struct list {
	struct list *prev, *next;
};

static inline void list_init(struct list *l)
{
	l->prev = l->next = l;
}
static inline bool list_empty(const struct list *l)
{
	return l->next == l;
}
static inline void list_del(struct list *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
	e->prev = e->next = e;
}
static inline void list_add(struct list *e, struct list *head) /* at the front */
{
	e->next = head->next;
	e->prev = head;
	head->next->prev = e;
	head->next = e;
}
#define list_entry(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

struct mv_pool;

struct pool_ops {
	int (*init)(struct mv_pool *p);
	void (*fini)(struct mv_pool *p);
	/* Called with the pool lock held. */
	int (*alloc)(struct mv_pool *p, size_t size, uint64_t *handle);
	int (*free)(struct mv_pool *p, uint64_t handle);
	int (*map)(struct mv_pool *p, uint64_t handle, void **ptr);
	int (*unmap)(struct mv_pool *p, uint64_t handle);
	int (*compact)(struct mv_pool *p);
	uint64_t (*pages)(struct mv_pool *p);
	uint64_t (*bytes)(struct mv_pool *p);
	/* Called without the lock: takes and drops it around the evict callbacks. */
	int (*reclaim)(struct mv_pool *p, unsigned retries);
};

struct mv_pool {
	const struct pool_ops *ops;
	atomic_int refs;
	pthread_mutex_t lock;
	/* ops->bytes as of the last change, read without the lock: a reader of the size (a status, a
	 * budget check) would otherwise queue behind threads that take the lock for every object. */
	_Atomic uint64_t bytes;
	mv_pool_evict_fn evict;
	void *userdata;
	void *impl;
};

MV_HIDDEN extern const struct pool_ops mvz_zbud_ops;
MV_HIDDEN extern const struct pool_ops mvz_dense_ops;

/* Memory the pool maps itself and gives back to the kernel. */
MV_HIDDEN void *mvz_pool_map_pages(size_t bytes);
MV_HIDDEN void mvz_pool_unmap_pages(void *p, size_t bytes);

/* A table the pool maps itself (mmap, grown with mremap, so growth copies nothing and the slack is under
 * a page plus 1/32): *cap_bytes is what it holds. Grows it to at least need_bytes; may move it. */
MV_HIDDEN int mvz_table_reserve(void **table, size_t *cap_bytes, size_t need_bytes);
MV_HIDDEN void mvz_table_free(void *table, size_t cap_bytes);

/* Allocates and writes the first headlen bytes under the pool lock, so that a reclaim running at the same
 * time can only ever see the object with its header in place. */
MV_HIDDEN int mvz_pool_alloc_with(mv_pool *p, size_t size, const void *head, size_t headlen, uint64_t *handle);

/* Copies the first len bytes of a live object, under the pool lock throughout (a map and an unmap taken
 * apart may name two different objects if the handle is freed and reused in between). */
MV_HIDDEN int mvz_pool_read_head(mv_pool *p, uint64_t handle, void *buf, size_t len);
