/* SPDX-License-Identifier: MIT */
/* The page store: 4 KiB pages in, handles out. Same-filled pages cost one word in the store's own table;
 * other pages are compressed (by the store's policy: one codec, or a fast first pass and a stronger codec
 * where it pays, see codec.h) into a pool object that starts with the store handle, so that eviction can
 * tell the user which page went; pages that do not compress below the threshold are stored raw. Each
 * entry records the format its page was written in, and a load decodes by that. Statistics mirror
 * zram's mm_stat. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include "codec.h"
#include "pool_internal.h"

#define PAGE MV_STORE_PAGE_SIZE
/* The pool stands alone (its own public header), but its page is the library's page. */
_Static_assert(MV_STORE_PAGE_SIZE == MV_PAGE_SIZE, "one page size");
#define PREFIX 4u /* store index in front of every pooled object, for eviction */

enum entry_kind {
	E_FREE = 0,
	E_SAME = 1,
	E_LZ4 = 2, /* LZ4 and LZ4HC */
	E_ZSTD = 3,
	E_RAW = 4,
	E_RAW_SIDE = 5,
	E_PENDING = 6,
	E_DEAD = 7,
	E_WK = 8,
};

/* Kinds whose page is a pool object. */
static inline bool pooled(unsigned k)
{
	return k == E_LZ4 || k == E_ZSTD || k == E_WK || k == E_RAW;
}

static inline unsigned kind_format(unsigned k)
{
	return k == E_LZ4 ? MVZ_FMT_LZ4 : k == E_ZSTD ? MVZ_FMT_ZSTD : k == E_WK ? MVZ_FMT_WK : 0;
}

static inline unsigned format_kind(unsigned fmt)
{
	return fmt == MVZ_FMT_LZ4 ? E_LZ4 : fmt == MVZ_FMT_ZSTD ? E_ZSTD : E_WK;
}

/* 16 bytes a page, like zram's table entry. */
struct entry {
	uint64_t value; /* pool handle, the repeated word, the side copy, or (free) the next free index */
	uint32_t gen;   /* bumped at every reuse: an old handle never names a new page */
	uint16_t clen;
	uint8_t kind;
	uint8_t readers; /* gets in progress: the object may not be freed under them */
};
_Static_assert(sizeof(struct entry) == 16, "entry size");
#define NO_FREE UINT32_MAX

/* Handles are generation << 32 | (index + 1). */
static inline uint64_t mkhandle(uint32_t idx, uint32_t gen)
{
	return ((uint64_t)gen << 32) | ((uint64_t)idx + 1);
}

static inline uint32_t h_idx(uint64_t h)
{
	return (uint32_t)h - 1;
}

static inline uint32_t h_gen(uint64_t h)
{
	return (uint32_t)(h >> 32);
}

static inline void prefix_put(void *obj, uint32_t idx)
{
	memcpy(obj, &idx, 4);
}

static inline uint32_t prefix_get(const void *obj)
{
	uint32_t idx;
	memcpy(&idx, obj, 4);
	return idx;
}

struct mv_store {
	atomic_int refs;
	struct mv_store_config cfg;
	void *dict;
	ZSTD_CDict *cdict;
	ZSTD_DDict *ddict;
	uint64_t dict_bytes; /* the dictionary's copy and both digested forms: memory the store holds */
	mv_pool *pool;
	pthread_mutex_t lock; /* the entry table and statistics */
	struct entry *entries;
	uint32_t nentries, cap;
	size_t entries_bytes; /* mapped for the entry table */
	uint32_t free_head;   /* free entries chain through their value field */
	/* The statistics, changed under the lock and read without it (as the pool's size is): a status
	 * asked for during a reclaim would otherwise wait on the threads that are storing. */
	struct {
		_Atomic uint64_t pages_stored, orig_data_size, compr_data_size, same_pages, huge_pages, pages_compacted,
			evictions;
		_Atomic uint64_t held; /* memory held beside the pool: raw slots, entry table, dictionary */
	} st;
	uint64_t side_pages;
	/* Raw pages (those that do not compress below the threshold) live beside the pool in whole-page
	 * slots of RAW_CHUNK-page mappings, named by their address: a raw page costs the page and its
	 * entry, nothing more. Free slots chain through their first word. */
	uint8_t **raw_chunks;
	uint32_t nraw_chunks, raw_chunks_cap;
	uint32_t raw_chunk_used; /* slots handed out of the last chunk */
	uint64_t raw_touched;    /* slots ever handed out: what the slots hold */
	void *raw_free;
};
#define RAW_CHUNK 64u

/* Adds d (or subtracts) to a statistic; the caller holds the lock, so a plain load and store do. */
#define ST_ADD(s, field, d)                                                                                            \
	atomic_store_explicit(&(s)->st.field,                                                                          \
			      atomic_load_explicit(&(s)->st.field, memory_order_relaxed) + (uint64_t)(d),              \
			      memory_order_relaxed)

static void held_changed_locked(struct mv_store *s)
{
	/* Raw slots ever handed out hold memory (freed ones wait for reuse); those never written hold none. */
	atomic_store_explicit(&s->st.held,
			      s->raw_touched * PAGE + (uint64_t)s->raw_chunks_cap * sizeof(void *) + s->entries_bytes +
				      s->dict_bytes + sizeof(*s),
			      memory_order_relaxed);
}

/* A live entry that owns exactly this pool object (pool handles are unique among live objects). */
static bool owns_locked(struct mv_store *s, uint32_t idx, uint64_t pool_handle)
{
	unsigned k = idx < s->nentries ? s->entries[idx].kind : E_FREE;
	return pooled(k) && s->entries[idx].value == pool_handle && s->entries[idx].readers == 0;
}

/* The live entry named by handle, or NULL. Caller holds the lock. */
static struct entry *live_locked(struct mv_store *s, uint64_t handle)
{
	uint32_t idx = h_idx(handle);
	if ((uint32_t)handle == 0 || idx >= s->nentries)
		return NULL;
	struct entry *e = &s->entries[idx];
	return e->kind != E_FREE && e->kind != E_PENDING && e->kind != E_DEAD && e->gen == h_gen(handle) ? e : NULL;
}

static int drop_locked_entry(struct mv_store *s, uint32_t idx, struct entry *e);
static void release_storage(struct mv_store *s, const struct entry *e);

static int evict_cb(mv_pool *pool, uint64_t pool_handle, void *userdata)
{
	struct mv_store *s = userdata;
	struct entry e;
	unsigned char head[PREFIX];
	uint32_t idx, gen;

	/* Under one hold of the pool lock: nothing keeps this object alive for us (no reader count), and
	 * with a map and an unmap apart, a drop and a put between them gave its handle to a new object in
	 * another segment, whose mapped count the unmap then took down while a get was decoding there:
	 * compaction moved that segment away under the get, which read a fresh mapping's zeros. */
	if (mvz_pool_read_head(pool, pool_handle, head, PREFIX) < 0)
		return -EINVAL;
	idx = prefix_get(head);
	/* A pool object that is not (yet) published by a put, or whose entry was dropped meanwhile. */
	pthread_mutex_lock(&s->lock);
	bool owned = owns_locked(s, idx, pool_handle);
	gen = owned ? s->entries[idx].gen : 0;
	pthread_mutex_unlock(&s->lock);
	if (!owned)
		return -EBUSY;
	if (s->cfg.evict && s->cfg.evict(s, mkhandle(idx, gen), s->cfg.userdata))
		return -EBUSY;
	/* Drop it only if the entry still owns this object: it may have been dropped and reused. And if a
	 * reader started on it meanwhile, it is not evicted: answering "done" would let the pool free
	 * storage that a get is decoding (the get then failed, or read freed memory). */
	pthread_mutex_lock(&s->lock);
	owned = owns_locked(s, idx, pool_handle) && s->entries[idx].gen == gen;
	struct entry *x = idx < s->nentries ? &s->entries[idx] : NULL;
	bool in_use =
		!owned && x && x->value == pool_handle && x->readers > 0 && (pooled(x->kind) || x->kind == E_DEAD);
	if (owned) {
		drop_locked_entry(s, idx, &e);
		ST_ADD(s, evictions, 1);
	}
	pthread_mutex_unlock(&s->lock);
	if (in_use)
		return -EBUSY;
	if (owned)
		mv_pool_free(pool, pool_handle);
	return 0;
}

MV_EXPORT int mv_store_new(const struct mv_store_config *config, mv_store **ret)
{
	struct mv_store *s;
	int r;

	if (!ret)
		return -EINVAL;
	*ret = NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	if (config)
		s->cfg = *config;
	if (!s->cfg.backend)
		s->cfg.backend = MV_POOL_DENSE;
	if (!s->cfg.codec)
		s->cfg.codec = MV_CODEC_LZ4;
	if (!s->cfg.zstd_level)
		s->cfg.zstd_level = 3;
	if (!s->cfg.huge_threshold)
		s->cfg.huge_threshold = 3072;
	r = -EINVAL;
	bool uses_zstd = s->cfg.codec == MV_CODEC_ZSTD || s->cfg.codec == MV_CODEC_LZ4_ZSTD;
	if (s->cfg.codec < MV_CODEC_LZ4 || s->cfg.codec > MV_CODEC_LZ4_LZ4HC || s->cfg.huge_threshold > PAGE ||
	    s->cfg.zstd_level < ZSTD_minCLevel() || s->cfg.zstd_level > ZSTD_maxCLevel() ||
	    (s->cfg.zstd_dict && (!s->cfg.zstd_dict_size || !uses_zstd)))
		goto fail;
	if (s->cfg.zstd_dict) {
		r = -ENOMEM;
		s->dict = malloc(s->cfg.zstd_dict_size);
		if (!s->dict)
			goto fail;
		memcpy(s->dict, s->cfg.zstd_dict, s->cfg.zstd_dict_size);
		s->cfg.zstd_dict = s->dict;
		s->cdict = ZSTD_createCDict(s->dict, s->cfg.zstd_dict_size, s->cfg.zstd_level);
		s->ddict = ZSTD_createDDict(s->dict, s->cfg.zstd_dict_size);
		r = -EINVAL;
		if (!s->cdict || !s->ddict)
			goto fail;
		s->dict_bytes = s->cfg.zstd_dict_size + ZSTD_sizeof_CDict(s->cdict) + ZSTD_sizeof_DDict(s->ddict);
	}
	r = mv_pool_new(s->cfg.backend, evict_cb, s, &s->pool);
	if (r < 0)
		goto fail;
	pthread_mutex_init(&s->lock, NULL);
	atomic_init(&s->refs, 1);
	s->free_head = NO_FREE;
	held_changed_locked(s);
	*ret = s;
	return 0;
fail:
	ZSTD_freeCDict(s->cdict);
	ZSTD_freeDDict(s->ddict);
	free(s->dict);
	free(s);
	return r;
}

MV_EXPORT mv_store *mv_store_ref(mv_store *s)
{
	if (s)
		atomic_fetch_add(&s->refs, 1);
	return s;
}

MV_EXPORT mv_store *mv_store_unref(mv_store *s)
{
	if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
		for (uint32_t i = 0; i < s->nraw_chunks; i++)
			mvz_pool_unmap_pages(s->raw_chunks[i], (size_t)RAW_CHUNK * PAGE);
		free(s->raw_chunks);
		mv_pool_unref(s->pool);
		ZSTD_freeCDict(s->cdict);
		ZSTD_freeDDict(s->ddict);
		free(s->dict);
		mvz_table_free(s->entries, s->entries_bytes);
		pthread_mutex_destroy(&s->lock);
		free(s);
	}
	return NULL;
}

static void entry_release(struct mv_store *s, uint32_t idx)
{
	s->entries[idx].kind = E_FREE;
	s->entries[idx].value = s->free_head;
	s->free_head = idx;
}

static int entry_new(struct mv_store *s, uint32_t *idx)
{
	if (s->free_head != NO_FREE) {
		*idx = s->free_head;
		s->free_head = (uint32_t)s->entries[*idx].value;
		s->entries[*idx].gen++;
		return 0;
	}
	if (s->nentries == s->cap) {
		if (mvz_table_reserve((void **)&s->entries, &s->entries_bytes,
				      ((size_t)s->nentries + 1) * sizeof(struct entry)) < 0)
			return -ENOMEM;
		s->cap = (uint32_t)(s->entries_bytes / sizeof(struct entry));
		held_changed_locked(s);
	}
	*idx = s->nentries++;
	s->entries[*idx] = (struct entry){ .gen = 1 };
	return 0;
}

/* A whole-page slot for a raw page. Caller holds the lock. */
static void *raw_slot_locked(struct mv_store *s)
{
	void *p = s->raw_free;
	if (p) {
		memcpy(&s->raw_free, p, sizeof(void *));
		return p;
	}
	if (!s->nraw_chunks || s->raw_chunk_used == RAW_CHUNK) {
		if (s->nraw_chunks == s->raw_chunks_cap) {
			uint32_t n = s->raw_chunks_cap ? s->raw_chunks_cap * 2 : 16;
			uint8_t **c = realloc(s->raw_chunks, n * sizeof(*c));
			if (!c)
				return NULL;
			s->raw_chunks = c;
			s->raw_chunks_cap = n;
		}
		uint8_t *chunk = mvz_pool_map_pages((size_t)RAW_CHUNK * PAGE);
		if (!chunk)
			return NULL;
		s->raw_chunks[s->nraw_chunks++] = chunk;
		s->raw_chunk_used = 0;
	}
	s->raw_touched++;
	held_changed_locked(s);
	return s->raw_chunks[s->nraw_chunks - 1] + (size_t)PAGE * s->raw_chunk_used++;
}

static void raw_release_locked(struct mv_store *s, void *slot)
{
	memcpy(slot, &s->raw_free, sizeof(void *));
	s->raw_free = slot;
}

static bool same_filled(const void *page, uint64_t *word)
{
	const uint64_t *w = page;
	for (size_t i = 1; i < PAGE / 8; i++)
		if (w[i] != w[0])
			return false;
	*word = w[0];
	return true;
}

/* A second pass runs only on pages the first left above this: below it the most a stronger codec could
 * save is a small share of what the page already costs. */
#define SECOND_PASS_ABOVE 1024
/* LZ4HC's level as a second pass: level 9 saved 2% over 4 on real heaps at a third of the speed. */
#define LZ4HC_LEVEL 4

/* Encodes the page by the store's policy into at most cap bytes of dst. Returns the size and sets *fmt,
 * or -ENOSPC when nothing fits, or -ENOMEM. */
static int compress(struct mv_store *s, const void *page, char *dst, size_t cap, unsigned *fmt)
{
	char second[PAGE + 64];
	int n, m;

	switch (s->cfg.codec) {
	case MV_CODEC_LZ4: *fmt = MVZ_FMT_LZ4; return mvz_lz4_encode(page, dst, cap, 1);
	case MV_CODEC_ZSTD: *fmt = MVZ_FMT_ZSTD; return mvz_zstd_encode(page, dst, cap, s->cfg.zstd_level, s->cdict);
	case MV_CODEC_WK: *fmt = MVZ_FMT_WK; return mvz_wk_encode(page, dst, cap);
	case MV_CODEC_WK_LZ4:
		/* Word patterns first; LZ4 only for what they leave above a quarter page, and only
		 * kept when smaller. */
		*fmt = MVZ_FMT_WK;
		n = mvz_wk_encode(page, dst, cap);
		if (n >= 0 && n <= SECOND_PASS_ABOVE)
			return n;
		m = mvz_lz4_encode(page, second, n >= 0 ? (size_t)n - 1 : cap, 1);
		break;
	case MV_CODEC_LZ4_ZSTD:
		*fmt = MVZ_FMT_LZ4;
		n = mvz_lz4_encode(page, dst, cap, 1);
		if (n >= 0 && n <= SECOND_PASS_ABOVE)
			return n;
		m = mvz_zstd_encode(page, second, n >= 0 ? (size_t)n - 1 : cap, s->cfg.zstd_level, s->cdict);
		if (m >= 0) {
			memcpy(dst, second, (size_t)m);
			*fmt = MVZ_FMT_ZSTD;
			return m;
		}
		return n;
	default: /* MV_CODEC_LZ4_LZ4HC */
		*fmt = MVZ_FMT_LZ4;
		n = mvz_lz4_encode(page, dst, cap, 1);
		if (n >= 0 && n <= SECOND_PASS_ABOVE)
			return n;
		m = mvz_lz4hc_encode(page, second, n >= 0 ? (size_t)n - 1 : cap, LZ4HC_LEVEL);
		break;
	}
	/* The second pass wrote LZ4 (a block LZ4HC or LZ4 made): keep it if it fit below the first. */
	if (m == -ENOMEM && n < 0)
		return m;
	if (m < 0)
		return n;
	memcpy(dst, second, (size_t)m);
	*fmt = MVZ_FMT_LZ4;
	return m;
}

/* Takes a slot for a page being stored: invisible to get, drop and eviction until published. */
static int reserve(struct mv_store *s, uint32_t *idx, uint32_t *gen)
{
	pthread_mutex_lock(&s->lock);
	int r = entry_new(s, idx);
	if (r == 0) {
		s->entries[*idx].kind = E_PENDING;
		*gen = s->entries[*idx].gen;
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

static void unreserve(struct mv_store *s, uint32_t idx)
{
	pthread_mutex_lock(&s->lock);
	entry_release(s, idx);
	pthread_mutex_unlock(&s->lock);
}

/* What a page becomes before it has a slot: same-filled (e->value the word), an encoded object in obj
 * (its prefix left for the slot's index), or raw (E_RAW_SIDE, copied once a slot is taken). */
static int encode(struct mv_store *s, const void *page, char *obj, struct entry *e)
{
	uint64_t word;

	*e = (struct entry){ 0 };
	if (same_filled(page, &word)) {
		e->kind = E_SAME;
		e->value = word;
		return 0;
	}
	unsigned fmt = 0;
	int clen = compress(s, page, obj + PREFIX, s->cfg.huge_threshold, &fmt);
	if (clen == -ENOMEM)
		return clen;
	if (clen < 0) {
		if (s->cfg.flags & MV_STORE_REJECT_INCOMPRESSIBLE)
			return -E2BIG;
		/* Does not compress below the threshold: stored raw beside the pool, in a whole-page slot
		 * (in the pool it would cost the page plus prefix, header and handle). */
		e->kind = E_RAW_SIDE;
		e->clen = (uint16_t)PAGE;
		return 0;
	}
	e->kind = (uint8_t)format_kind(fmt);
	e->clen = (uint16_t)clen;
	return 0;
}

/* Gives an encoded page the storage it names, once its slot idx is reserved. A raw page's slot was
 * taken with the reservation (e->value). */
static int place(struct mv_store *s, const void *page, char *obj, uint32_t idx, struct entry *e)
{
	if (e->kind == E_SAME)
		return 0;
	if (e->kind == E_RAW_SIDE) {
		memcpy((void *)(uintptr_t)e->value, page, PAGE);
		return 0;
	}
	/* The whole pool object, prefix and data, built here and copied in under the pool lock: nobody
	 * (reclaim, compaction) ever sees it half written. */
	prefix_put(obj, idx);
	return mvz_pool_alloc_with(s->pool, PREFIX + (size_t)e->clen, obj, PREFIX + (size_t)e->clen, &e->value);
}

static void publish_locked(struct mv_store *s, uint32_t idx, struct entry *e)
{
	e->gen = s->entries[idx].gen;
	s->entries[idx] = *e;
	ST_ADD(s, pages_stored, 1);
	ST_ADD(s, orig_data_size, PAGE);
	ST_ADD(s, compr_data_size, e->kind == E_SAME ? 0 : e->clen);
	ST_ADD(s, same_pages, e->kind == E_SAME);
	ST_ADD(s, huge_pages, e->kind == E_RAW || e->kind == E_RAW_SIDE);
	s->side_pages += e->kind == E_RAW_SIDE;
}

static void publish(struct mv_store *s, uint32_t idx, struct entry *e)
{
	pthread_mutex_lock(&s->lock);
	publish_locked(s, idx, e);
	pthread_mutex_unlock(&s->lock);
}

MV_EXPORT int mv_store_put(mv_store *s, const void *page, uint64_t *handle)
{
	char obj[PREFIX + PAGE + 64];
	struct entry e;
	uint32_t idx = 0, gen = 0;
	int r;

	if (!s || !page || !handle)
		return -EINVAL;
	r = reserve(s, &idx, &gen);
	if (r < 0)
		return r;
	r = encode(s, page, obj, &e);
	if (r == 0 && e.kind == E_RAW_SIDE) {
		pthread_mutex_lock(&s->lock);
		void *slot = raw_slot_locked(s);
		pthread_mutex_unlock(&s->lock);
		e.value = (uint64_t)(uintptr_t)slot;
		r = slot ? 0 : -ENOMEM;
	}
	if (r == 0)
		r = place(s, page, obj, idx, &e);
	if (r < 0) {
		unreserve(s, idx);
		return r;
	}
	publish(s, idx, &e);
	*handle = mkhandle(idx, gen);
	return 0;
}

/* Pages a batch encodes before it takes the store's lock: the lock is taken twice a batch, not twice
 * a page, so that threads storing side by side do not queue on it. */
#define BATCH 16

struct batch_objs {
	char obj[BATCH][PREFIX + PAGE + 64];
};

/* Each thread's room for a batch, kept: a malloc and free of it for every call made glibc grow and
 * trim the thread's arena, each time an mprotect that takes the process's mmap lock for writing. */
static pthread_key_t objs_key;
static pthread_once_t objs_once = PTHREAD_ONCE_INIT;
static __thread struct batch_objs *tls_objs;

static void objs_init(void)
{
	(void)pthread_key_create(&objs_key, free);
}

static struct batch_objs *thread_objs(void)
{
	if (!tls_objs) {
		pthread_once(&objs_once, objs_init);
		tls_objs = malloc(sizeof(*tls_objs));
		if (tls_objs && pthread_setspecific(objs_key, tls_objs) != 0) {
			free(tls_objs);
			tls_objs = NULL;
		}
	}
	return tls_objs;
}

MV_EXPORT int mv_store_put_many(mv_store *s, const void *pages, size_t n, uint64_t *handles)
{
	struct batch_objs *objs;
	struct entry e[BATCH];
	uint32_t idx[BATCH] = { 0 }, gen[BATCH] = { 0 };
	int res[BATCH], stored = 0;
	bool held[BATCH]; /* a slot is reserved for the page */

	if (!s || (n && (!pages || !handles)) || n > INT_MAX)
		return -EINVAL;
	objs = thread_objs();
	if (!objs)
		return -ENOMEM;
	for (size_t at = 0; at < n; at += BATCH) {
		size_t k = n - at < BATCH ? n - at : BATCH;
		const unsigned char *page = (const unsigned char *)pages + at * PAGE;

		for (size_t i = 0; i < k; i++)
			res[i] = encode(s, page + i * PAGE, objs->obj[i], &e[i]);
		pthread_mutex_lock(&s->lock);
		for (size_t i = 0; i < k; i++) {
			held[i] = false;
			if (res[i] < 0)
				continue;
			void *slot = NULL;
			if (e[i].kind == E_RAW_SIDE && !(slot = raw_slot_locked(s))) {
				res[i] = -ENOMEM;
				continue;
			}
			if ((res[i] = entry_new(s, &idx[i])) < 0) {
				if (slot)
					raw_release_locked(s, slot);
				continue;
			}
			s->entries[idx[i]].kind = E_PENDING;
			gen[i] = s->entries[idx[i]].gen;
			held[i] = true;
			if (slot)
				e[i].value = (uint64_t)(uintptr_t)slot;
		}
		pthread_mutex_unlock(&s->lock);
		for (size_t i = 0; i < k; i++)
			if (res[i] == 0)
				res[i] = place(s, page + i * PAGE, objs->obj[i], idx[i], &e[i]);
		pthread_mutex_lock(&s->lock);
		for (size_t i = 0; i < k; i++) {
			handles[at + i] = 0;
			if (res[i] == 0) {
				publish_locked(s, idx[i], &e[i]);
				handles[at + i] = mkhandle(idx[i], gen[i]);
				stored++;
			} else if (held[i]) {
				entry_release(s, idx[i]); /* the pool had no room for it */
			}
		}
		pthread_mutex_unlock(&s->lock);
	}
	return stored;
}

static int decode_into(struct mv_store *s, const struct entry *e, void *page)
{
	void *obj;

	if (e->kind == E_SAME) {
		uint64_t *w = page;
		for (size_t i = 0; i < PAGE / 8; i++)
			w[i] = e->value;
		return 0;
	}
	if (e->kind == E_RAW_SIDE) {
		memcpy(page, (void *)(uintptr_t)e->value, PAGE);
		return 0;
	}
	if (mv_pool_map(s->pool, e->value, &obj) < 0)
		return -EIO;
	const char *src = (const char *)obj + PREFIX;
	int r = 0;
	if (e->kind == E_RAW)
		memcpy(page, src, PAGE);
	else
		r = mvz_decode(kind_format(e->kind), src, e->clen, page, s->ddict);
	mv_pool_unmap(s->pool, e->value);
	return r;
}

MV_EXPORT int mv_store_get(mv_store *s, uint64_t handle, void *page)
{
	struct entry e;
	int r;

	if (!s || !page)
		return -EINVAL;
	/* A reader count keeps the page's storage from being freed (and reused) while we decode. */
	pthread_mutex_lock(&s->lock);
	struct entry *l = live_locked(s, handle);
	if (!l) {
		pthread_mutex_unlock(&s->lock);
		return -EINVAL;
	}
	if (l->readers == UINT8_MAX) {
		pthread_mutex_unlock(&s->lock);
		return -EAGAIN; /* 255 readers of one page at once */
	}
	e = *l;
	l->readers++;
	pthread_mutex_unlock(&s->lock);

	r = decode_into(s, &e, page);

	uint32_t idx = h_idx(handle);
	bool release = false;
	pthread_mutex_lock(&s->lock);
	struct entry *x = &s->entries[idx];
	if (--x->readers == 0 && x->kind == E_DEAD) {
		/* Dropped while we read: the last reader lets it go. */
		entry_release(s, idx);
		release = true;
	}
	pthread_mutex_unlock(&s->lock);
	if (release)
		release_storage(s, &e);
	return r;
}

/* Removes the page from the store. Returns 1 if the caller must release e's storage now, 0 if a reader
 * still uses it (the last reader releases it). */
static int drop_locked_entry(struct mv_store *s, uint32_t idx, struct entry *e)
{
	int now = s->entries[idx].readers == 0;

	*e = s->entries[idx];
	if (now) {
		entry_release(s, idx);
	} else {
		s->entries[idx].kind = E_DEAD;
	}
	ST_ADD(s, pages_stored, -1);
	ST_ADD(s, orig_data_size, -(int64_t)PAGE);
	ST_ADD(s, compr_data_size, e->kind == E_SAME ? 0 : -(int64_t)e->clen);
	ST_ADD(s, same_pages, -(int64_t)(e->kind == E_SAME));
	ST_ADD(s, huge_pages, -(int64_t)(e->kind == E_RAW || e->kind == E_RAW_SIDE));
	s->side_pages -= e->kind == E_RAW_SIDE;
	return now;
}

static void release_storage(struct mv_store *s, const struct entry *e)
{
	if (e->kind == E_RAW_SIDE) {
		pthread_mutex_lock(&s->lock);
		raw_release_locked(s, (void *)(uintptr_t)e->value);
		pthread_mutex_unlock(&s->lock);
	} else if (e->kind != E_SAME)
		mv_pool_free(s->pool, e->value);
}

MV_EXPORT int mv_store_drop(mv_store *s, uint64_t handle)
{
	struct entry e;

	if (!s)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	if (!live_locked(s, handle)) {
		pthread_mutex_unlock(&s->lock);
		return -EINVAL;
	}
	int now = drop_locked_entry(s, h_idx(handle), &e);
	pthread_mutex_unlock(&s->lock);
	if (now)
		release_storage(s, &e);
	return 0;
}

/* Evicts up to max raw pages (they live beside the pool, so the pool's reclaim never sees them), in
 * entry order. Returns how many went. */
static unsigned evict_raw(struct mv_store *s, unsigned max)
{
	unsigned gone = 0;
	for (uint32_t idx = 0; gone < max; idx++) {
		pthread_mutex_lock(&s->lock);
		if (idx >= s->nentries || !s->side_pages) {
			pthread_mutex_unlock(&s->lock);
			break;
		}
		struct entry *x = &s->entries[idx];
		bool raw = x->kind == E_RAW_SIDE && x->readers == 0;
		uint32_t gen = x->gen;
		uint64_t value = x->value;
		pthread_mutex_unlock(&s->lock);
		if (!raw || (s->cfg.evict && s->cfg.evict(s, mkhandle(idx, gen), s->cfg.userdata)))
			continue;
		struct entry e;
		pthread_mutex_lock(&s->lock);
		x = &s->entries[idx];
		bool still = x->kind == E_RAW_SIDE && x->gen == gen && x->value == value && x->readers == 0;
		if (still) {
			drop_locked_entry(s, idx, &e);
			raw_release_locked(s, (void *)(uintptr_t)e.value);
			ST_ADD(s, evictions, 1);
			gone++;
		}
		pthread_mutex_unlock(&s->lock);
	}
	return gone;
}

MV_EXPORT int mv_store_reclaim(mv_store *s, unsigned retries)
{
	if (!s)
		return -EINVAL;
	int r = mv_pool_reclaim(s->pool, retries);
	if (r < 0 && evict_raw(s, RAW_CHUNK) > 0)
		r = 0;
	return r;
}

MV_EXPORT int mv_store_compact(mv_store *s)
{
	if (!s)
		return -EINVAL;
	int n = mv_pool_compact(s->pool);
	if (n > 0) {
		pthread_mutex_lock(&s->lock);
		ST_ADD(s, pages_compacted, n);
		pthread_mutex_unlock(&s->lock);
	}
	return n;
}

MV_EXPORT int mv_store_stats(mv_store *s, struct mv_store_stats *out)
{
	if (!s || !out)
		return -EINVAL;
	/* No lock: each figure is exact, but while other threads store they may be from moments a few
	 * pages apart. */
	*out = (struct mv_store_stats){
		.orig_data_size = atomic_load_explicit(&s->st.orig_data_size, memory_order_relaxed),
		.compr_data_size = atomic_load_explicit(&s->st.compr_data_size, memory_order_relaxed),
		.mem_used_total = mv_pool_bytes(s->pool) + atomic_load_explicit(&s->st.held, memory_order_relaxed),
		.same_pages = atomic_load_explicit(&s->st.same_pages, memory_order_relaxed),
		.huge_pages = atomic_load_explicit(&s->st.huge_pages, memory_order_relaxed),
		.pages_compacted = atomic_load_explicit(&s->st.pages_compacted, memory_order_relaxed),
		.evictions = atomic_load_explicit(&s->st.evictions, memory_order_relaxed),
		.pages_stored = atomic_load_explicit(&s->st.pages_stored, memory_order_relaxed),
	};
	return 0;
}
