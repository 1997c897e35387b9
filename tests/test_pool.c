/* SPDX-License-Identifier: MIT */
/* The compressed pool: zbud's behaviours one by one, the dense backend against a reference model, and the
 * page store's round trips for every codec and policy, and the codecs' decoders on corrupt input. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zdict.h>

#include <cmocka.h>

#include "memvisor/pool.h"
#include "pool/codec.h"

#define PG 4096

/* ---- zbud ---- */

struct evict_log {
	uint64_t handles[64];
	int n;
	int fail_after; /* evictions that succeed before failing; -1: never fail */
	bool free_it;
	pthread_barrier_t *barrier;
};

static int log_evict(mv_pool *p, uint64_t h, void *ud)
{
	struct evict_log *l = ud;
	if (l->barrier) {
		pthread_barrier_wait(l->barrier); /* let the other thread free the buddy */
		pthread_barrier_wait(l->barrier);
		l->barrier = NULL;
	}
	if (l->fail_after >= 0 && l->n >= l->fail_after)
		return -EBUSY;
	l->handles[l->n++] = h;
	if (l->free_it)
		assert_int_equal(mv_pool_free(p, h), 0); /* free from inside the callback */
	return 0;
}

static char *page_of(mv_pool *p, uint64_t h)
{
	void *ptr;
	assert_int_equal(mv_pool_map(p, h, &ptr), 0);
	mv_pool_unmap(p, h);
	return (char *)((uintptr_t)ptr & ~(uintptr_t)(PG - 1));
}

static void test_zbud_sizes_and_layout(void **state)
{
	mv_pool *p;
	uint64_t a, b, c;
	void *pa, *pb;

	assert_int_equal(mv_pool_new(MV_POOL_ZBUD, NULL, NULL, &p), 0);
	assert_int_equal(mv_pool_alloc(p, 0, &a), -EINVAL);
	assert_int_equal(mv_pool_alloc(p, PG - 128 + 1, &a), -ENOSPC);
	assert_int_equal(mv_pool_alloc(p, PG - 128, &a), 0); /* 62 chunks: the largest */
	assert_int_equal(mv_pool_free(p, a), 0);
	assert_int_equal(mv_pool_pages(p), 0);
	/* Two buddies share a page: first after the header chunk, last right-justified. */
	assert_int_equal(mv_pool_alloc(p, 1000, &a), 0); /* 16 chunks */
	assert_int_equal(mv_pool_alloc(p, 2000, &b), 0); /* 32 chunks: fits the 47 free */
	assert_int_equal(mv_pool_pages(p), 1);
	assert_int_equal(mv_pool_map(p, a, &pa), 0);
	assert_int_equal(mv_pool_map(p, b, &pb), 0);
	char *base = page_of(p, a);
	assert_ptr_equal(pa, base + 64);
	assert_ptr_equal(pb, base + PG - 32 * 64);
	memset(pa, 0x11, 1000);
	memset(pb, 0x22, 2000);
	assert_int_equal(((unsigned char *)pa)[999], 0x11);
	mv_pool_unmap(p, a);
	mv_pool_unmap(p, b);
	assert_int_equal(mv_pool_alloc(p, 100, &c), 0); /* page full (buddied): a new page */
	assert_int_equal(mv_pool_pages(p), 2);
	/* Freeing one buddy keeps the page; freeing both returns it. */
	assert_int_equal(mv_pool_free(p, a), 0);
	assert_int_equal(mv_pool_pages(p), 2);
	assert_int_equal(mv_pool_free(p, b), 0);
	assert_int_equal(mv_pool_pages(p), 1);
	/* Bad handles. */
	assert_int_equal(mv_pool_free(p, a), -EINVAL);
	assert_int_equal(mv_pool_free(p, 0), -EINVAL);
	assert_int_equal(mv_pool_free(p, 0xdeadbeef), -EINVAL);
	assert_int_equal(mv_pool_map(p, b, &pa), -EINVAL);
	assert_int_equal(mv_pool_reclaim(p, 1), -EINVAL); /* no callback */
	assert_int_equal(mv_pool_free(p, c), 0);
	assert_int_equal(mv_pool_pages(p), 0);
	assert_int_equal(mv_pool_reclaim(p, 1), -EINVAL);
	mv_pool_unref(p);
}

static void test_zbud_first_fit_unbuddied(void **state)
{
	mv_pool *p;
	uint64_t big, small, x;

	assert_int_equal(mv_pool_new(MV_POOL_ZBUD, NULL, NULL, &p), 0);
	assert_int_equal(mv_pool_alloc(p, 40 * 64, &big), 0);   /* page A: 23 chunks free */
	assert_int_equal(mv_pool_alloc(p, 50 * 64, &x), 0);     /* does not fit A: page B, 13 free */
	assert_int_equal(mv_pool_alloc(p, 10 * 64, &small), 0); /* fits B (13 free) before A (23) */
	assert_ptr_equal(page_of(p, small), page_of(p, x));
	uint64_t y;
	assert_int_equal(mv_pool_alloc(p, 20 * 64, &y), 0); /* 20 chunks: only A has room */
	assert_ptr_equal(page_of(p, y), page_of(p, big));
	assert_int_equal(mv_pool_pages(p), 2);
	mv_pool_unref(p);
}

static void test_zbud_reclaim_lru_order(void **state)
{
	struct evict_log log = { .fail_after = -1, .free_it = true };
	mv_pool *p;
	uint64_t a, b, c, a2;

	assert_int_equal(mv_pool_new(MV_POOL_ZBUD, log_evict, &log, &p), 0);
	assert_int_equal(mv_pool_reclaim(p, 1), -EINVAL); /* nothing to evict */
	assert_int_equal(mv_pool_alloc(p, 3000, &a), 0);  /* page A: 16 chunks free */
	assert_int_equal(mv_pool_alloc(p, 3900, &b), 0);  /* page B: 2 free */
	assert_int_equal(mv_pool_alloc(p, 3900, &c), 0);  /* page C: 2 free */
	assert_int_equal(mv_pool_alloc(p, 900, &a2), 0);  /* only A has room: A becomes most recent */
	assert_ptr_equal(page_of(p, a2), page_of(p, a));
	assert_int_equal(mv_pool_reclaim(p, 0), -EINVAL);
	assert_int_equal(mv_pool_reclaim(p, 1), 0); /* least recently allocated: B */
	assert_int_equal(log.n, 1);
	assert_int_equal(log.handles[0], b);
	assert_int_equal(mv_pool_reclaim(p, 1), 0); /* then C */
	assert_int_equal(log.handles[1], c);
	assert_int_equal(mv_pool_reclaim(p, 1), 0); /* then A, both buddies */
	assert_int_equal(log.n, 4);
	assert_int_equal(mv_pool_pages(p), 0);
	mv_pool_unref(p);
}

static void test_zbud_reclaim_failures(void **state)
{
	struct evict_log log = { .fail_after = 0, .free_it = true };
	mv_pool *p;
	uint64_t a, b, c;

	assert_int_equal(mv_pool_new(MV_POOL_ZBUD, log_evict, &log, &p), 0);
	assert_int_equal(mv_pool_alloc(p, 1000, &a), 0);
	assert_int_equal(mv_pool_alloc(p, 1000, &b), 0); /* same page, last buddy */
	assert_int_equal(mv_pool_alloc(p, 3500, &c), 0); /* second page */
	/* Every eviction fails: retries exhausted, nothing freed; each tried page goes back to the LRU
	 * head, so four tries leave the pair page (a, b) at the tail again. */
	assert_int_equal(mv_pool_reclaim(p, 4), -EAGAIN);
	assert_int_equal(mv_pool_pages(p), 2);
	assert_int_equal(log.n, 0);
	/* The first buddy goes, the second refuses: the page stays, with one buddy. */
	log.fail_after = 1;
	assert_int_equal(mv_pool_reclaim(p, 1), -EAGAIN);
	assert_int_equal(log.n, 1);
	assert_int_equal(log.handles[0], a);
	assert_int_equal(mv_pool_pages(p), 2);
	void *ptr;
	assert_int_equal(mv_pool_map(p, a, &ptr), -EINVAL);
	assert_int_equal(mv_pool_map(p, b, &ptr), 0);
	assert_int_equal(mv_pool_map(p, c, &ptr), 0);
	mv_pool_unref(p);
}

struct conc {
	mv_pool *p;
	uint64_t other;
	pthread_barrier_t *barrier;
};

static void *free_other(void *arg)
{
	struct conc *c = arg;
	pthread_barrier_wait(c->barrier);
	/* Reclaim is in the callback for the first buddy: this free only marks. */
	assert_int_equal(mv_pool_free(c->p, c->other), 0);
	pthread_barrier_wait(c->barrier);
	return NULL;
}

static void test_zbud_free_during_reclaim(void **state)
{
	pthread_barrier_t bar;
	struct evict_log log = { .fail_after = -1, .free_it = true, .barrier = &bar };
	mv_pool *p;
	uint64_t a, b;
	pthread_t t;

	pthread_barrier_init(&bar, NULL, 2);
	assert_int_equal(mv_pool_new(MV_POOL_ZBUD, log_evict, &log, &p), 0);
	assert_int_equal(mv_pool_alloc(p, 1000, &a), 0);
	assert_int_equal(mv_pool_alloc(p, 1000, &b), 0);
	struct conc c = { p, b, &bar };
	assert_int_equal(pthread_create(&t, NULL, free_other, &c), 0);
	/* Callback for a waits while the thread frees b; then a is freed: the page goes. */
	assert_int_equal(mv_pool_reclaim(p, 1), 0);
	pthread_join(t, NULL);
	assert_int_equal(log.n, 1);
	assert_int_equal(mv_pool_pages(p), 0);
	mv_pool_unref(p);
	pthread_barrier_destroy(&bar);
}

/* ---- dense, against a model ---- */

#define MAXH 4096
struct model {
	uint64_t handle[MAXH];
	uint32_t size[MAXH];
	uint32_t seed[MAXH];
	bool live[MAXH];
	int evicted;
	mv_pool *pool;
};

static void fill(unsigned char *d, uint32_t n, uint32_t seed)
{
	for (uint32_t i = 0; i < n; i++)
		d[i] = (unsigned char)(seed * 2654435761u + i * 40503u);
}

static void check(struct model *m, int i)
{
	void *ptr;
	unsigned char exp[PG];
	assert_int_equal(mv_pool_map(m->pool, m->handle[i], &ptr), 0);
	fill(exp, m->size[i], m->seed[i]);
	if (memcmp(ptr, exp, m->size[i]) != 0)
		fail_msg("object %d (%u bytes) corrupted", i, m->size[i]);
	assert_int_equal(mv_pool_unmap(m->pool, m->handle[i]), 0);
}

static int model_evict(mv_pool *p, uint64_t h, void *ud)
{
	struct model *m = ud;
	for (int i = 0; i < MAXH; i++)
		if (m->live[i] && m->handle[i] == h) {
			check(m, i); /* contents intact up to the last moment */
			m->live[i] = false;
			m->evicted++;
			return mv_pool_free(p, h);
		}
	fail_msg("evicted a handle the model does not know");
	return -1;
}

static void test_dense_model(void **state)
{
	struct model *m = calloc(1, sizeof(*m));
	assert_int_equal(mv_pool_new(MV_POOL_DENSE, model_evict, m, &m->pool), 0);
	assert_int_equal(mv_pool_alloc(m->pool, 0, &m->handle[0]), -EINVAL);
	assert_int_equal(mv_pool_alloc(m->pool, PG + 65, &m->handle[0]), -ENOSPC);
	srandom(1234);
	for (int step = 0; step < 60000; step++) {
		int i = (int)(random() % MAXH), op = (int)(random() % 100);
		if (op < 55) {
			if (m->live[i])
				continue;
			m->size[i] = random() % 8 ? 1 + (uint32_t)(random() % 2500) : PG;
			m->seed[i] = (uint32_t)random();
			assert_int_equal(mv_pool_alloc(m->pool, m->size[i], &m->handle[i]), 0);
			void *ptr;
			assert_int_equal(mv_pool_map(m->pool, m->handle[i], &ptr), 0);
			fill(ptr, m->size[i], m->seed[i]);
			mv_pool_unmap(m->pool, m->handle[i]);
			m->live[i] = true;
		} else if (op < 85) {
			if (!m->live[i])
				continue;
			check(m, i);
			assert_int_equal(mv_pool_free(m->pool, m->handle[i]), 0);
			assert_int_equal(mv_pool_free(m->pool, m->handle[i]), -EINVAL);
			m->live[i] = false;
		} else if (op < 95) {
			if (m->live[i])
				check(m, i);
		} else if (op < 98) {
			uint64_t before = mv_pool_pages(m->pool);
			int r = mv_pool_compact(m->pool);
			assert_true(r >= 0);
			assert_int_equal(mv_pool_pages(m->pool), before - (uint64_t)r);
		} else {
			uint64_t before = mv_pool_pages(m->pool);
			int r = mv_pool_reclaim(m->pool, 2);
			if (r == 0)
				assert_int_equal(mv_pool_pages(m->pool), before - 64); /* exactly one segment */
			else
				assert_true(r == -EINVAL || r == -EAGAIN);
		}
	}
	for (int i = 0; i < MAXH; i++)
		if (m->live[i])
			check(m, i);
	assert_true(m->evicted > 0);
	mv_pool_unref(m->pool);
	free(m);
}

static void test_dense_reclaim_order_and_compaction(void **state)
{
	struct model *m = calloc(1, sizeof(*m));
	assert_int_equal(mv_pool_new(MV_POOL_DENSE, model_evict, m, &m->pool), 0);
	/* 3 segments' worth of 2000-byte objects, in order. */
	int n = 3 * ((256 * 1024) / 2006); /* 130 objects a segment */
	for (int i = 0; i < n; i++) {
		m->size[i] = 2000;
		m->seed[i] = (uint32_t)i;
		assert_int_equal(mv_pool_alloc(m->pool, 2000, &m->handle[i]), 0);
		void *ptr;
		mv_pool_map(m->pool, m->handle[i], &ptr);
		fill(ptr, 2000, (uint32_t)i);
		mv_pool_unmap(m->pool, m->handle[i]);
		m->live[i] = true;
	}
	uint64_t pages = mv_pool_pages(m->pool);
	assert_int_equal(pages, 3 * 64);
	/* The oldest segment goes first: the first objects stored. */
	assert_int_equal(mv_pool_reclaim(m->pool, 1), 0);
	assert_false(m->live[0]);
	assert_false(m->live[100]);
	assert_true(m->live[n - 1]);
	int first_live = 0;
	while (!m->live[first_live])
		first_live++;
	assert_int_equal(first_live, m->evicted);
	assert_int_equal(mv_pool_pages(m->pool), 2 * 64);
	/* A mapped object keeps its segment from being reclaimed or moved. */
	void *pinned;
	assert_int_equal(mv_pool_map(m->pool, m->handle[first_live], &pinned), 0);
	/* Free 3 of every 4 objects of the older remaining segment, then compact. */
	for (int i = first_live + 1; i < n; i++)
		if (i % 4 && m->live[i] && i < first_live + 130) {
			assert_int_equal(mv_pool_free(m->pool, m->handle[i]), 0);
			m->live[i] = false;
		}
	assert_int_equal(mv_pool_compact(m->pool), 0); /* mapped: untouched */
	mv_pool_unmap(m->pool, m->handle[first_live]);
	assert_int_equal(mv_pool_compact(m->pool), 64);
	for (int i = 0; i < n; i++)
		if (m->live[i])
			check(m, i);
	mv_pool_unref(m->pool);
	free(m);
}

/* ---- the page store ---- */

static void make_pages(unsigned char (*pages)[PG], int n)
{
	srandom(42);
	for (int i = 0; i < n; i++) {
		unsigned char *p = pages[i];
		switch (i % 5) {
		case 0: /* text-like */
			for (int k = 0; k < PG; k++)
				p[k] = "memvisor shares memory between processes "[(k + i) % 41];
			break;
		case 1: /* zero */ memset(p, 0, PG); break;
		case 2: { /* same-filled, not zero */
			uint64_t w = 0xabcdef0123456789ull * (uint64_t)(i + 1);
			for (int k = 0; k < PG / 8; k++)
				memcpy(p + k * 8, &w, 8);
			break;
		}
		case 3: /* incompressible */
			for (int k = 0; k < PG; k++)
				p[k] = (unsigned char)random();
			break;
		default: /* structs with small integers and pointers */
			for (int k = 0; k < PG / 8; k++) {
				uint64_t v = k % 3 ? (uint64_t)(k * 17 + i) : 0x00007f1234560000ull + (uint64_t)k * 64;
				memcpy(p + k * 8, &v, 8);
			}
			break;
		}
	}
}

enum raw_count { RAW_EXACT, RAW_AT_MOST, RAW_AT_LEAST };

static uint64_t round_trip_ex(struct mv_store_config *cfg, enum raw_count raws)
{
	enum { N = 200 };
	static unsigned char pages[N][PG];
	unsigned char out[PG];
	uint64_t h[N];
	mv_store *s;
	struct mv_store_stats st;

	make_pages(pages, N);
	assert_int_equal(mv_store_new(cfg, &s), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(mv_store_put(s, pages[i], &h[i]), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(mv_store_get(s, h[i], out), 0);
		if (memcmp(out, pages[i], PG))
			fail_msg("page %d differs after the round trip", i);
	}
	assert_int_equal(mv_store_stats(s, &st), 0);
	assert_int_equal(st.orig_data_size, (uint64_t)N * PG);
	assert_int_equal(st.same_pages, 2 * N / 5);
	if (raws == RAW_EXACT)
		assert_int_equal(st.huge_pages, N / 5);
	else if (raws == RAW_AT_MOST) /* a dictionary trained on these very pages can compress some "random" ones */
		assert_true(st.huge_pages <= N / 5);
	else /* the word coder finds nothing in text whose period is not a whole number of words */
		assert_true(st.huge_pages >= N / 5);
	uint64_t compressed = st.compr_data_size;
	assert_true(st.compr_data_size < st.orig_data_size / 2);
	assert_true(st.mem_used_total > 0);
	for (int i = 0; i < N; i += 2)
		assert_int_equal(mv_store_drop(s, h[i]), 0);
	assert_int_equal(mv_store_drop(s, h[0]), -EINVAL);
	assert_int_equal(mv_store_get(s, h[0], out), -EINVAL);
	assert_int_equal(mv_store_get(s, 0, out), -EINVAL);
	assert_int_equal(mv_store_get(s, 1u << 30, out), -EINVAL);
	assert_true(mv_store_compact(s) >= 0);
	for (int i = 1; i < N; i += 2) {
		assert_int_equal(mv_store_get(s, h[i], out), 0);
		assert_memory_equal(out, pages[i], PG);
	}
	assert_int_equal(mv_store_stats(s, &st), 0);
	assert_int_equal(st.orig_data_size, (uint64_t)N / 2 * PG);
	mv_store_unref(s);
	return compressed;
}

static uint64_t round_trip(struct mv_store_config *cfg)
{
	return round_trip_ex(cfg, RAW_EXACT);
}

static void test_store_lz4(void **state)
{
	struct mv_store_config c = { .codec = MV_CODEC_LZ4 };
	round_trip(&c);
	c.backend = MV_POOL_ZBUD;
	round_trip(&c);
}

static void test_store_zstd_levels(void **state)
{
	for (int level = 1; level <= 19; level += 9) {
		struct mv_store_config c = { .codec = MV_CODEC_ZSTD, .zstd_level = level };
		round_trip(&c);
		c.backend = MV_POOL_ZBUD;
		round_trip(&c);
	}
}

static void test_store_zstd_dictionary(void **state)
{
	enum { NS = 400 };
	static unsigned char samples[NS][PG];
	size_t sizes[NS];
	static char dict[16384];

	make_pages(samples, NS);
	for (int i = 0; i < NS; i++)
		sizes[i] = PG;
	size_t dlen = ZDICT_trainFromBuffer(dict, sizeof(dict), samples, sizes, NS);
	assert_false(ZDICT_isError(dlen));
	struct mv_store_config c = { .codec = MV_CODEC_ZSTD, .zstd_dict = dict, .zstd_dict_size = dlen };
	round_trip_ex(&c, RAW_AT_MOST);
	c.backend = MV_POOL_ZBUD;
	round_trip_ex(&c, RAW_AT_MOST);
	/* The same dictionary behind LZ4's second pass. */
	c.codec = MV_CODEC_LZ4_ZSTD;
	round_trip_ex(&c, RAW_AT_MOST);
	c.backend = MV_POOL_DENSE;
	round_trip_ex(&c, RAW_AT_MOST);
	/* The memory held counts the dictionary: its copy at least, on top of an empty store's. */
	struct mv_store_config plain = { .codec = MV_CODEC_ZSTD };
	mv_store *with, *without;
	struct mv_store_stats sw, so;
	assert_int_equal(mv_store_new(&c, &with), 0);
	assert_int_equal(mv_store_new(&plain, &without), 0);
	assert_int_equal(mv_store_stats(with, &sw), 0);
	assert_int_equal(mv_store_stats(without, &so), 0);
	assert_true(sw.mem_used_total >= so.mem_used_total + dlen);
	mv_store_unref(with);
	mv_store_unref(without);
}

/* Every policy on both backends and every kind of page; a second pass is kept only where it is smaller,
 * so a policy never stores more than its first pass alone would, and here (text compresses better with
 * zstd and LZ4HC; the struct pages better with LZ4 than with word patterns) strictly less. */
static void test_store_policies(void **state)
{
	for (int b = 0; b < 2; b++) {
		enum mv_pool_kind backend = b ? MV_POOL_ZBUD : MV_POOL_DENSE;
		struct mv_store_config c = { .backend = backend, .codec = MV_CODEC_LZ4 };
		uint64_t lz4 = round_trip(&c);
		c.codec = MV_CODEC_WK;
		uint64_t wk = round_trip_ex(&c, RAW_AT_LEAST);
		c.codec = MV_CODEC_WK_LZ4;
		uint64_t wk_lz4 = round_trip(&c);
		c.codec = MV_CODEC_LZ4_ZSTD;
		uint64_t lz4_zstd = round_trip(&c);
		c.codec = MV_CODEC_LZ4_ZSTD;
		c.zstd_level = 1;
		uint64_t lz4_zstd1 = round_trip(&c);
		c.codec = MV_CODEC_LZ4_LZ4HC;
		c.zstd_level = 0;
		uint64_t lz4_hc = round_trip(&c);
		assert_true(wk_lz4 < wk);
		assert_true(lz4_zstd < lz4);
		assert_true(lz4_zstd1 < lz4);
		assert_true(lz4_hc < lz4);
		assert_true(lz4_zstd < lz4_hc);
	}
}

/* A heap-like page: 64-bit pointers into one region and small integers, some zeros. */
static void heap_page(unsigned char *p, unsigned seed)
{
	for (int k = 0; k < PG / 8; k++) {
		uint64_t v = k % 4 == 0   ? 0x00005610a0000000ull + (uint64_t)((k * 37 + seed) % 4096) * 48
			     : k % 4 == 1 ? (uint64_t)(k + seed) % 300
			     : k % 4 == 2 ? 0
					  : 0x00007ffd12340000ull + (uint64_t)k * 8;
		memcpy(p + k * 8, &v, 8);
	}
}

typedef int (*encode_fn)(const void *page, void *dst, size_t cap);

static int enc_wk(const void *page, void *dst, size_t cap)
{
	return mvz_wk_encode(page, dst, cap);
}
static int enc_lz4(const void *page, void *dst, size_t cap)
{
	return mvz_lz4_encode(page, dst, cap, 1);
}
static int enc_lz4_fast(const void *page, void *dst, size_t cap)
{
	return mvz_lz4_encode(page, dst, cap, 8);
}
static int enc_lz4hc(const void *page, void *dst, size_t cap)
{
	return mvz_lz4hc_encode(page, dst, cap, 9);
}
static int enc_zstd(const void *page, void *dst, size_t cap)
{
	return mvz_zstd_encode(page, dst, cap, 1, NULL);
}

static const struct {
	encode_fn enc;
	unsigned fmt;
	const char *name;
} codecs[] = {
	{ enc_wk, MVZ_FMT_WK, "wk" },
	{ enc_lz4, MVZ_FMT_LZ4, "lz4" },
	{ enc_lz4_fast, MVZ_FMT_LZ4, "lz4 fast" },
	{ enc_lz4hc, MVZ_FMT_LZ4, "lz4hc" },
	{ enc_zstd, MVZ_FMT_ZSTD, "zstd" },
};

/* Each codec alone: every kind of page comes back bit-exact, compressible ones below 3072 bytes,
 * random ones refused under 3072 bytes, and a buffer too small is -ENOSPC, not an overrun. */
static void test_codec_round_trips(void **state)
{
	enum { N = 10 };
	static unsigned char pages[N][PG];
	static unsigned char heap[PG], enc[PG + 64], out[PG];

	make_pages(pages, N);
	heap_page(heap, 3);
	for (size_t c = 0; c < sizeof(codecs) / sizeof(codecs[0]); c++) {
		for (int i = -1; i < N; i++) {
			const unsigned char *p = i < 0 ? heap : pages[i];
			int n = codecs[c].enc(p, enc, PG + 64);
			if (i % 5 == 3) { /* random */
				assert_int_equal(codecs[c].enc(p, enc, 3072), -ENOSPC);
				continue;
			}
			if (i % 5 == 0 && codecs[c].fmt == MVZ_FMT_WK) { /* text: no repeated words */
				assert_int_equal(codecs[c].enc(p, enc, 3072), -ENOSPC);
				continue;
			}
			/* A repeated 64-bit word whose halves share a slot is all misses to the word coder
			 * (the store keeps such pages as their word before any codec runs). */
			if (i % 5 == 2 && codecs[c].fmt == MVZ_FMT_WK && n < 0)
				continue;
			if (n < 0 || n >= 3072)
				fail_msg("%s: page %d encoded to %d", codecs[c].name, i, n);
			memset(out, 0xee, PG);
			assert_int_equal(mvz_decode(codecs[c].fmt, enc, (size_t)n, out, NULL), 0);
			if (memcmp(out, p, PG))
				fail_msg("%s: page %d differs after the round trip", codecs[c].name, i);
			assert_int_equal(codecs[c].enc(p, enc, (size_t)n - 1), -ENOSPC);
			assert_int_equal(codecs[c].enc(p, enc, 8), -ENOSPC);
		}
	}
	/* The word coder's own cases: a zero page is its tags alone, and a page of one word repeated costs
	 * one miss and a slot per other word. */
	memset(heap, 0, PG);
	assert_int_equal(mvz_wk_encode(heap, enc, PG), 256);
	for (int k = 0; k < PG / 4; k++)
		memcpy(heap + 4 * k, &(uint32_t){ 0xdeadbeef }, 4);
	assert_int_equal(mvz_wk_encode(heap, enc, PG), 256 + 4 + 1023 / 2 + 1);
	assert_int_equal(mvz_wk_decode(enc, 256 + 4 + 512, out), 0);
	assert_memory_equal(out, heap, PG);
	/* Partial matches: the same upper 22 bits, low bits counting up. */
	for (int k = 0; k < PG / 4; k++)
		memcpy(heap + 4 * k, &(uint32_t){ 0x12345400u | (uint32_t)(k & 0x3ff) }, 4);
	int n = mvz_wk_encode(heap, enc, PG);
	assert_int_equal(n, 256 + 4 + 512 + (1023 * 10 + 7) / 8);
	assert_int_equal(mvz_wk_decode(enc, (size_t)n, out), 0);
	assert_memory_equal(out, heap, PG);
}

/* Corrupt or truncated stored bytes are an error from every decoder, never a crash (the sanitizer
 * builds check the "never"); an unknown format is an error too. */
static void test_codec_corrupt_input(void **state)
{
	static unsigned char page[PG], enc[PG + 64], bad[PG + 64], out[PG];

	heap_page(page, 11);
	for (size_t c = 0; c < sizeof(codecs) / sizeof(codecs[0]); c++) {
		unsigned fmt = codecs[c].fmt;
		int n = codecs[c].enc(page, enc, PG);
		assert_true(n > 16);
		for (size_t cut = 0; cut < (size_t)n; cut += cut < 16 ? 1 : 37)
			if (mvz_decode(fmt, enc, cut, out, NULL) != -EIO)
				fail_msg("%s: cut to %zu bytes of %d decoded", codecs[c].name, cut, n);
		/* Flipped bits: an error or some page, inside the buffers. */
		unsigned long errors = 0, flips = 0;
		for (int pos = 0; pos < n; pos += 3)
			for (int bit = 0; bit < 8; bit += 3) {
				memcpy(bad, enc, (size_t)n);
				bad[pos] ^= (unsigned char)(1u << bit);
				int r = mvz_decode(fmt, bad, (size_t)n, out, NULL);
				assert_true(r == 0 || r == -EIO);
				errors += r == -EIO;
				flips++;
			}
		assert_true(errors > 0); /* some flips are caught as such */
		/* Garbage of every length up to a page. */
		srandom(5);
		for (size_t len = 1; len <= PG; len += len < 300 ? 1 : 97) {
			for (size_t k = 0; k < len; k++)
				bad[k] = (unsigned char)random();
			int r = mvz_decode(fmt, bad, len, out, NULL);
			assert_true(r == 0 || r == -EIO);
		}
		assert_int_equal(mvz_decode(fmt, NULL, 0, out, NULL), -EIO);
	}
	/* The word coder checks its length against its tags: one byte more or less is an error. */
	int n = mvz_wk_encode(page, enc, PG);
	assert_true(n > 256);
	assert_int_equal(mvz_wk_decode(enc, (size_t)n + 1, out), -EIO);
	assert_int_equal(mvz_wk_decode(enc, (size_t)n - 1, out), -EIO);
	memset(bad, 0xff, 256); /* every word a miss: 4096 more bytes than there are */
	assert_int_equal(mvz_wk_decode(bad, 256, out), -EIO);
	assert_int_equal(mvz_decode(0, enc, (size_t)n, out, NULL), -EIO);
	assert_int_equal(mvz_decode(99, enc, (size_t)n, out, NULL), -EIO);
}

static void test_store_bad_config_and_input(void **state)
{
	mv_store *s;
	struct mv_store_config c = { .codec = 7 };
	char dict[8] = "x";
	unsigned char page[PG] = { 0 };
	uint64_t h;

	assert_int_equal(mv_store_new(&c, &s), -EINVAL);
	c = (struct mv_store_config){ .codec = MV_CODEC_LZ4, .zstd_dict = dict, .zstd_dict_size = 8 };
	assert_int_equal(mv_store_new(&c, &s), -EINVAL);
	/* A dictionary needs a codec that uses zstd (any bytes do as zstd's raw-content dictionary). */
	for (int codec = MV_CODEC_WK; codec <= MV_CODEC_LZ4_LZ4HC; codec++) {
		c = (struct mv_store_config){ .codec = codec, .zstd_dict = dict, .zstd_dict_size = 8 };
		if (codec == MV_CODEC_LZ4_ZSTD) {
			assert_int_equal(mv_store_new(&c, &s), 0);
			mv_store_unref(s);
		} else
			assert_int_equal(mv_store_new(&c, &s), -EINVAL);
		c.zstd_dict = NULL;
		c.zstd_dict_size = 0;
		assert_int_equal(mv_store_new(&c, &s), 0);
		mv_store_unref(s);
	}
	c = (struct mv_store_config){ .codec = MV_CODEC_LZ4_ZSTD, .zstd_dict = dict, .zstd_dict_size = 0 };
	assert_int_equal(mv_store_new(&c, &s), -EINVAL);
	c = (struct mv_store_config){ .codec = MV_CODEC_LZ4_ZSTD, .zstd_level = 1000 };
	assert_int_equal(mv_store_new(&c, &s), -EINVAL);
	c = (struct mv_store_config){ .codec = -1 };
	assert_int_equal(mv_store_new(&c, &s), -EINVAL);
	c = (struct mv_store_config){ .huge_threshold = PG + 1 };
	assert_int_equal(mv_store_new(&c, &s), -EINVAL);
	c = (struct mv_store_config){ .codec = MV_CODEC_ZSTD, .zstd_level = 1000 };
	assert_int_equal(mv_store_new(&c, &s), -EINVAL);
	c = (struct mv_store_config){ .backend = 7 };
	assert_int_equal(mv_store_new(&c, &s), -EINVAL);
	assert_int_equal(mv_store_new(NULL, NULL), -EINVAL);
	assert_int_equal(mv_store_new(NULL, &s), 0);
	assert_int_equal(mv_store_put(s, NULL, &h), -EINVAL);
	assert_int_equal(mv_store_put(s, page, NULL), -EINVAL);
	assert_int_equal(mv_store_get(s, 1, NULL), -EINVAL);
	assert_int_equal(mv_store_drop(NULL, 1), -EINVAL);
	assert_int_equal(mv_store_reclaim(s, 1), -EINVAL); /* nothing stored */
	/* A dropped handle never names the page that reuses its slot. */
	uint64_t h1, h2;
	unsigned char other[PG], out[PG];
	for (int i = 0; i < PG; i++) {
		page[i] = (unsigned char)(i * 7);
		other[i] = (unsigned char)(i * 13 + 1);
	}
	assert_int_equal(mv_store_put(s, page, &h1), 0);
	assert_int_equal(mv_store_drop(s, h1), 0);
	assert_int_equal(mv_store_put(s, other, &h2), 0);
	assert_true(h1 != h2 && (uint32_t)h1 == (uint32_t)h2); /* same slot, new generation */
	assert_int_equal(mv_store_get(s, h1, out), -EINVAL);
	assert_int_equal(mv_store_drop(s, h1), -EINVAL);
	assert_int_equal(mv_store_get(s, h2, out), 0);
	assert_memory_equal(out, other, PG);
	mv_store_unref(s);
	assert_int_equal(mv_pool_new(0, NULL, NULL, NULL), -EINVAL);
}

struct store_evicts {
	uint64_t h[4096];
	int n;
};

static int store_evict(mv_store *s, uint64_t h, void *ud)
{
	struct store_evicts *e = ud;
	e->h[e->n++] = h;
	return 0;
}

static void test_store_eviction(void **state)
{
	static unsigned char pages[300][PG];
	static struct store_evicts ev;
	unsigned char out[PG];
	uint64_t h[300];
	mv_store *s;
	struct mv_store_stats st;

	for (int backend = MV_POOL_ZBUD; backend <= MV_POOL_DENSE; backend++) {
		memset(&ev, 0, sizeof(ev));
		make_pages(pages, 300);
		struct mv_store_config c = { .backend = backend, .evict = store_evict, .userdata = &ev };
		assert_int_equal(mv_store_new(&c, &s), 0);
		for (int i = 0; i < 300; i++)
			assert_int_equal(mv_store_put(s, pages[i], &h[i]), 0);
		assert_int_equal(mv_store_reclaim(s, 4), 0);
		assert_true(ev.n > 0);
		assert_int_equal(mv_store_stats(s, &st), 0);
		assert_int_equal(st.evictions, (uint64_t)ev.n);
		/* Evicted pages are gone; all others come back bit-exact. */
		for (int i = 0; i < 300; i++) {
			bool gone = false;
			for (int k = 0; k < ev.n; k++)
				gone |= ev.h[k] == h[i];
			if (gone) {
				assert_int_equal(mv_store_get(s, h[i], out), -EINVAL);
			} else {
				assert_int_equal(mv_store_get(s, h[i], out), 0);
				assert_memory_equal(out, pages[i], PG);
			}
		}
		/* The least recently stored go first. */
		int oldest_gone = 0;
		for (int k = 0; k < ev.n; k++)
			oldest_gone += ev.h[k] == h[0] || ev.h[k] == h[3];
		assert_true(oldest_gone > 0);
		mv_store_unref(s);
	}
}

/* Threads store, read back and drop while another reclaims: a read returns the right page or says
 * it is gone, never anything else. */
struct stress_arg {
	mv_store *s;
	int id;
	long bad; /* the sum of the four below */
	long mismatch, get_err, drop_err, put_err;
	_Atomic bool *stop;
};

static void *stress_worker(void *arg)
{
	struct stress_arg *a = arg;
	unsigned char page[PG], out[PG];
	uint64_t hs[64] = { 0 };
	uint32_t seeds[64];
	unsigned seed = (unsigned)a->id * 7919u;

	for (int it = 0; it < 4000; it++) {
		int k = rand_r(&seed) % 64;
		if (hs[k]) {
			int r = mv_store_get(a->s, hs[k], out);
			if (r == 0) {
				fill(page, PG / 2, seeds[k]);
				memset(page + PG / 2, 0, PG / 2);
				a->mismatch += memcmp(out, page, PG) != 0;
			} else {
				a->get_err += r != -EINVAL;
			}
			int d = mv_store_drop(a->s, hs[k]);
			a->drop_err += d != 0 && d != -EINVAL;
			hs[k] = 0;
		} else {
			seeds[k] = (uint32_t)rand_r(&seed);
			fill(page, PG / 2, seeds[k]);
			memset(page + PG / 2, 0, PG / 2);
			if (it & 1)
				a->put_err += mv_store_put(a->s, page, &hs[k]) != 0;
			else
				a->put_err += mv_store_put_many(a->s, page, 1, &hs[k]) != 1 || !hs[k];
		}
	}
	a->bad = a->mismatch + a->get_err + a->drop_err + a->put_err;
	return NULL;
}

static int stress_evict(mv_store *s, uint64_t h, void *ud)
{
	return 0;
}

static void *stress_reclaimer(void *arg)
{
	struct stress_arg *a = arg;
	while (!*a->stop) {
		mv_store_reclaim(a->s, 2);
		mv_store_compact(a->s);
	}
	return NULL;
}

/* Incompressible pages are stored raw: each costs its page and its 16-byte entry (zram's cost), no more;
 * same-filled ones cost the entry alone; reclaim can still evict raw pages, and the rest read back. */
static void test_store_raw_and_same_cost(void **state)
{
	enum { N = 640 };
	static unsigned char pages[N][PG];
	static struct store_evicts ev;
	unsigned char out[PG];
	uint64_t h[N];
	struct mv_store_stats st;
	mv_store *s;
	(void)state;

	for (int backend = MV_POOL_ZBUD; backend <= MV_POOL_DENSE; backend++) {
		memset(&ev, 0, sizeof(ev));
		uint64_t x = 88172645463325252ull;
		for (int i = 0; i < N; i++)
			for (int k = 0; k < PG; k += 8) {
				x ^= x << 13, x ^= x >> 7, x ^= x << 17;
				memcpy(&pages[i][k], &x, 8);
			}
		struct mv_store_config c = { .backend = backend, .evict = store_evict, .userdata = &ev };
		assert_int_equal(mv_store_new(&c, &s), 0);
		assert_int_equal(mv_store_stats(s, &st), 0);
		uint64_t empty = st.mem_used_total;
		for (int i = 0; i < N; i++)
			assert_int_equal(mv_store_put(s, pages[i], &h[i]), 0);
		assert_int_equal(mv_store_stats(s, &st), 0);
		assert_int_equal(st.huge_pages, N);
		/* the page, the entry, and at most a page of table slack plus the slot list */
		uint64_t bound = (uint64_t)N * (PG + 16) + PG + 1024;
		if (st.mem_used_total - empty > bound)
			fail_msg("%d raw pages hold %lu bytes, more than %lu", N,
				 (unsigned long)(st.mem_used_total - empty), (unsigned long)bound);
		/* same-filled pages: the entry alone */
		uint64_t before = st.mem_used_total, hs[N];
		memset(out, 0x5a, PG);
		for (int i = 0; i < N; i++)
			assert_int_equal(mv_store_put(s, out, &hs[i]), 0);
		assert_int_equal(mv_store_stats(s, &st), 0);
		assert_true(st.mem_used_total - before <= (uint64_t)N * 16 + PG + (uint64_t)N * 16 / 32);
		for (int i = 0; i < N; i++)
			assert_int_equal(mv_store_drop(s, hs[i]), 0);
		/* reclaim reaches the raw pages */
		assert_int_equal(mv_store_reclaim(s, 4), 0);
		assert_true(ev.n > 0);
		assert_int_equal(mv_store_stats(s, &st), 0);
		assert_int_equal(st.evictions, (uint64_t)ev.n);
		assert_int_equal(st.huge_pages, (uint64_t)(N - ev.n));
		for (int i = 0; i < N; i++) {
			bool gone = false;
			for (int k = 0; k < ev.n; k++)
				gone |= ev.h[k] == h[i];
			if (gone) {
				assert_int_equal(mv_store_get(s, h[i], out), -EINVAL);
			} else {
				assert_int_equal(mv_store_get(s, h[i], out), 0);
				assert_memory_equal(out, pages[i], PG);
				assert_int_equal(mv_store_drop(s, h[i]), 0);
			}
		}
		/* freed slots are reused: storing again holds no more than before */
		assert_int_equal(mv_store_stats(s, &st), 0);
		before = st.mem_used_total;
		for (int i = 0; i < N; i++)
			assert_int_equal(mv_store_put(s, pages[i], &h[i]), 0);
		assert_int_equal(mv_store_stats(s, &st), 0);
		assert_true(st.mem_used_total <= before + PG);
		for (int i = 0; i < N; i++) {
			assert_int_equal(mv_store_get(s, h[i], out), 0);
			assert_memory_equal(out, pages[i], PG);
		}
		mv_store_unref(s);
	}
}

/* A batch stores what the same pages stored one by one would (the same statistics, the same bytes back),
 * with 0 for the pages it refused, across batch boundaries and a short last batch. */
static void test_store_put_many(void **state)
{
	enum { N = 53 };
	static unsigned char pages[N][PG];
	unsigned char out[PG];
	uint64_t h[N], one[N];
	struct mv_store_stats many_st, one_st;
	(void)state;

	make_pages(pages, N);
	for (int backend = MV_POOL_ZBUD; backend <= MV_POOL_DENSE; backend++)
		for (int reject = 0; reject < 2; reject++) {
			struct mv_store_config c = { .backend = backend,
						     .evict = stress_evict,
						     .flags = reject ? MV_STORE_REJECT_INCOMPRESSIBLE : 0 };
			mv_store *many, *single;
			int expect = 0;

			assert_int_equal(mv_store_new(&c, &many), 0);
			assert_int_equal(mv_store_new(&c, &single), 0);
			memset(h, 0xff, sizeof(h));
			for (int i = 0; i < N; i++) {
				int r = mv_store_put(single, pages[i], &one[i]);
				assert_true(r == 0 || (reject && r == -E2BIG && i % 5 == 3));
				if (r < 0)
					one[i] = 0;
				expect += r == 0;
			}
			assert_true(reject ? expect < N : expect == N);
			assert_int_equal(mv_store_put_many(many, pages, N, h), expect);
			for (int i = 0; i < N; i++) {
				assert_int_equal(h[i] != 0, one[i] != 0);
				if (!h[i])
					continue;
				assert_int_equal(mv_store_get(many, h[i], out), 0);
				assert_memory_equal(out, pages[i], PG);
			}
			assert_int_equal(mv_store_stats(many, &many_st), 0);
			assert_int_equal(mv_store_stats(single, &one_st), 0);
			assert_int_equal(many_st.pages_stored, one_st.pages_stored);
			assert_int_equal(many_st.same_pages, one_st.same_pages);
			assert_int_equal(many_st.huge_pages, one_st.huge_pages);
			assert_int_equal(many_st.compr_data_size, one_st.compr_data_size);
			assert_int_equal(many_st.orig_data_size, one_st.orig_data_size);
			/* dropped, they free what they held, as single puts do */
			for (int i = 0; i < N; i++)
				if (h[i])
					assert_int_equal(mv_store_drop(many, h[i]), 0);
			assert_int_equal(mv_store_stats(many, &many_st), 0);
			assert_int_equal(many_st.pages_stored, 0);
			assert_int_equal(mv_store_put_many(many, pages, 0, NULL), 0);
			assert_int_equal(mv_store_put_many(NULL, pages, 1, h), -EINVAL);
			assert_int_equal(mv_store_put_many(many, NULL, 1, h), -EINVAL);
			assert_int_equal(mv_store_put_many(many, pages, 1, NULL), -EINVAL);
			mv_store_unref(many);
			mv_store_unref(single);
		}
}

static void test_store_threads(void **state)
{
	/* Both backends with LZ4, and the dense one with each policy (the pages, half random, take the
	 * second pass): each thread has its own state for each codec, made on first use. */
	static const enum mv_codec codecs[] = { MV_CODEC_LZ4, MV_CODEC_LZ4, MV_CODEC_WK_LZ4, MV_CODEC_LZ4_ZSTD,
						MV_CODEC_LZ4_LZ4HC };
	for (size_t run = 0; run < sizeof(codecs) / sizeof(codecs[0]); run++) {
		int backend = run == 0 ? MV_POOL_ZBUD : MV_POOL_DENSE;
		_Atomic bool stop = false;
		struct mv_store_config c = { .backend = backend, .codec = codecs[run], .evict = stress_evict };
		mv_store *s;
		pthread_t t[4], rt;
		struct stress_arg args[4], ra = { .stop = &stop };

		assert_int_equal(mv_store_new(&c, &s), 0);
		ra.s = s;
		pthread_create(&rt, NULL, stress_reclaimer, &ra);
		for (int i = 0; i < 4; i++) {
			args[i] = (struct stress_arg){ .s = s, .id = i + 1, .stop = &stop };
			pthread_create(&t[i], NULL, stress_worker, &args[i]);
		}
		long mismatch = 0, get_err = 0, drop_err = 0, put_err = 0;
		for (int i = 0; i < 4; i++) {
			pthread_join(t[i], NULL);
			mismatch += args[i].mismatch;
			get_err += args[i].get_err;
			drop_err += args[i].drop_err;
			put_err += args[i].put_err;
		}
		stop = true;
		pthread_join(rt, NULL);
		if (mismatch || get_err || drop_err || put_err)
			print_message("backend %d codec %d: %ld wrong pages, %ld unexpected get errors, %ld drop "
				      "errors, %ld put errors\n",
				      backend, (int)codecs[run], mismatch, get_err, drop_err, put_err);
		assert_int_equal(mismatch, 0);
		assert_int_equal(get_err, 0);
		assert_int_equal(drop_err, 0);
		assert_int_equal(put_err, 0);
		mv_store_unref(s);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_zbud_sizes_and_layout),
		cmocka_unit_test(test_zbud_first_fit_unbuddied),
		cmocka_unit_test(test_zbud_reclaim_lru_order),
		cmocka_unit_test(test_zbud_reclaim_failures),
		cmocka_unit_test(test_zbud_free_during_reclaim),
		cmocka_unit_test(test_dense_model),
		cmocka_unit_test(test_dense_reclaim_order_and_compaction),
		cmocka_unit_test(test_store_lz4),
		cmocka_unit_test(test_store_zstd_levels),
		cmocka_unit_test(test_store_zstd_dictionary),
		cmocka_unit_test(test_store_policies),
		cmocka_unit_test(test_codec_round_trips),
		cmocka_unit_test(test_codec_corrupt_input),
		cmocka_unit_test(test_store_bad_config_and_input),
		cmocka_unit_test(test_store_eviction),
		cmocka_unit_test(test_store_raw_and_same_cost),
		cmocka_unit_test(test_store_put_many),
		cmocka_unit_test(test_store_threads),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
