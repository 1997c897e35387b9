/* SPDX-License-Identifier: MIT */
/* The compressed tier: unpinned pages are kept compressed by the broker before they are dropped, and come
 * back intact (NOT_PURGED) when pinned. */
#include "helpers.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "memvisor/broker.h"
#include "memvisor/memvisor.h"
#include "regions/ctl.h"
#include "regions/region.h"

#define PG MV_PAGE_SIZE

static int start_tier(void **state)
{
	(void)state;
	setenv("MEMVISOR_TEST_COMPRESS", "1", 1);
	return tb_start(&TB, NULL);
}

/* The tier with upkeep too rare to clean up behind the client: whatever is stale must be caught on the way. */
static int start_tier_no_sweep(void **state)
{
	static const char *const extra[] = { "--sweep-ms", "3600000", NULL };
	(void)state;
	setenv("MEMVISOR_TEST_COMPRESS", "1", 1);
	return tb_start(&TB, extra);
}

/* Compressible, and different on every page. */
static void fill_text(unsigned char *p, size_t pages, unsigned seed)
{
	for (size_t i = 0; i < pages * PG; i++)
		p[i] = (unsigned char)"the cache of decoded things "[(i / 3 + seed + i / PG) % 28];
}

static bool same_text(const unsigned char *p, size_t first, size_t pages, unsigned seed)
{
	for (size_t i = first * PG; i < (first + pages) * PG; i++)
		if (p[i] != (unsigned char)"the cache of decoded things "[(i / 3 + seed + i / PG) % 28])
			return false;
	return true;
}

/* Compresses about 2:1: each region's pages fill many store segments. */
static unsigned char semi(size_t i, unsigned seed)
{
	uint32_t x = (uint32_t)(i * 2654435761u) ^ (seed * 40503u);
	/* 32 random bytes after every 64 of text: LZ4 keeps the text, not the noise. */
	return (i / 32) % 3 == 2 ? (unsigned char)(x >> 13) : (unsigned char)("the cache of decoded things "[i % 28]);
}

static void fill_semi(unsigned char *p, size_t pages, unsigned seed)
{
	for (size_t i = 0; i < pages * PG; i++)
		p[i] = semi(i, seed);
}

static bool same_semi(const unsigned char *p, size_t pages, unsigned seed)
{
	for (size_t i = 0; i < pages * PG; i++)
		if (p[i] != semi(i, seed))
			return false;
	return true;
}

static uint64_t resident(mv_region *r)
{
	struct stat st;
	fstat(mv_region_fd(r), &st);
	return (uint64_t)st.st_blocks * 512;
}

static unsigned count_state(mv_region *r, unsigned state)
{
	unsigned n = 0;
	for (uint64_t p = 0; p < r->view.npages; p++)
		n += MV_PG_STATE(atomic_load(&r->view.pages[p])) == state;
	return n;
}

/* Reclaim that keeps the second chance: the unpinned budget, enforced now (as under pressure). */
static void reclaim(void)
{
	assert_int_equal(mv_broker_set(MV_BROKER_UNPINNED_BUDGET, 0), 0);
	assert_int_equal(mv_sync(), 0);
	assert_int_equal(mv_broker_set(MV_BROKER_UNPINNED_BUDGET, MV_BROKER_NO_LIMIT), 0);
}

static void test_compressed_pages_come_back(void **state)
{
	mv_region *r;
	unsigned char *m;
	struct mvw_rep_status s = { 0 };

	assert_int_equal(mv_region_new("tier", 64 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	fill_text(m, 64, 1);
	assert_int_equal(mv_region_unpin(r, 0, 48 * PG), 0);
	uint64_t before = resident(r);
	reclaim();
	/* The memory really left the region; the data is in the broker's store. */
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 48);
	assert_true(resident(r) <= before - 48 * PG);
	assert_int_equal(tb_status(&s), 0);
	assert_int_equal(s.pages_compressed, 48);
	assert_true(s.compressed_bytes < 48 * PG / 4);
	assert_int_equal(mv_region_pin_status(r, 0, PG), MV_IS_UNPINNED);
	/* Pinning brings them back bit-exact, and nothing was lost. */
	assert_int_equal(mv_region_pin(r, 0, 16 * PG), MV_NOT_PURGED);
	assert_true(same_text(m, 0, 16, 1));
	assert_int_equal(mv_region_pin(r, 16 * PG, 0), MV_NOT_PURGED);
	assert_true(same_text(m, 0, 64, 1));
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 0);
	assert_int_equal(tb_status(&s), 0);
	assert_int_equal(s.pages_compressed, 0);
	assert_int_equal(s.restores_total, 48);
	mv_region_unmap(r, m);
	mv_region_unref(r);
}

/* An explicit purge is a request for memory now: unpinned pages are dropped, not kept compressed, and
 * what the tier was keeping goes too. The next pin answers WAS_PURGED and the pages read as zeros. */
static void test_explicit_purge_really_purges(void **state)
{
	mv_region *r;
	unsigned char *m;
	uint64_t purged = 0;
	struct mvw_rep_status s = { 0 };

	assert_int_equal(mv_region_new("explicit", 16 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	fill_text(m, 16, 8);
	/* pages 0-3 kept compressed by an earlier reclaim, 4-11 unpinned and resident, 12-15 pinned */
	assert_int_equal(mv_region_unpin(r, 0, 4 * PG), 0);
	reclaim();
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 4);
	assert_int_equal(mv_region_unpin(r, 4 * PG, 8 * PG), 0);
	assert_int_equal(mv_purge(MV_PURGE_ALL, &purged), 0);
	assert_int_equal(purged, 12 * PG);
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 0);
	assert_int_equal(count_state(r, MV_PG_PURGED), 12);
	assert_int_equal(tb_status(&s), 0);
	assert_int_equal(s.pages_compressed, 0);
	assert_int_equal(mv_region_pin(r, 0, 4 * PG), MV_WAS_PURGED);
	assert_int_equal(mv_region_pin(r, 4 * PG, 8 * PG), MV_WAS_PURGED);
	for (size_t i = 0; i < 12 * PG; i++)
		if (m[i])
			fail_msg("purged byte %zu is %u", i, m[i]);
	assert_true(same_text(m, 12, 4, 8)); /* pinned all along */
	/* A purge of some bytes drops what it takes as well. */
	fill_text(m, 16, 9);
	assert_int_equal(mv_region_unpin(r, 0, 4 * PG), 0);
	assert_int_equal(mv_purge(4 * PG, &purged), 0);
	assert_int_equal(purged, 4 * PG);
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 0);
	assert_int_equal(mv_region_pin(r, 0, 4 * PG), MV_WAS_PURGED);
	assert_int_equal(m[0], 0);
	mv_region_unmap(r, m);
	mv_region_unref(r);
}

static void test_incompressible_pages_are_dropped(void **state)
{
	mv_region *r;
	unsigned char *m;

	assert_int_equal(mv_region_new("noise", 16 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	srandom(3);
	for (size_t i = 0; i < 16 * PG; i++)
		m[i] = (unsigned char)random();
	fill_text(m, 8, 2); /* first half compressible */
	assert_int_equal(mv_region_unpin(r, 0, 0), 0);
	reclaim();
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 8);
	assert_int_equal(count_state(r, MV_PG_PURGED), 8);
	assert_int_equal(mv_region_pin(r, 0, 8 * PG), MV_NOT_PURGED);
	assert_true(same_text(m, 0, 8, 2));
	assert_int_equal(mv_region_pin(r, 8 * PG, 0), MV_WAS_PURGED);
	for (size_t i = 8 * PG; i < 16 * PG; i++)
		if (m[i])
			fail_msg("dropped page byte %zu is %u", i, m[i]);
	mv_region_unmap(r, m);
	mv_region_unref(r);
}

static void test_opt_out_drops_at_once(void **state)
{
	mv_region *r;
	unsigned char *m;

	assert_int_equal(mv_region_new("opted-out", 8 * PG, &r), 0);
	assert_int_equal(mv_region_set_compression(r, 0), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	fill_text(m, 8, 3);
	assert_int_equal(mv_region_unpin(r, 0, 0), 0);
	reclaim();
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 0);
	assert_int_equal(mv_region_pin(r, 0, 0), MV_WAS_PURGED);
	assert_int_equal(m[0], 0);
	mv_region_unmap(r, m);
	mv_region_unref(r);
}

/* The store's budget evicts the least recently stored pages first; evicted pages are truly purged. */
static void test_store_budget_evicts_oldest(void **state)
{
	enum { N = 2048 }; /* 8 MiB each: several store segments */
	mv_region *old, *young;
	unsigned char *mo, *my;
	struct mvw_rep_status s = { 0 };

	assert_int_equal(mv_region_new("old", N * PG, &old), 0);
	assert_int_equal(mv_region_new("young", N * PG, &young), 0);
	assert_int_equal(mv_region_map(old, PROT_READ | PROT_WRITE, (void **)&mo), 0);
	assert_int_equal(mv_region_map(young, PROT_READ | PROT_WRITE, (void **)&my), 0);
	fill_semi(mo, N, 4);
	fill_semi(my, N, 5);
	assert_int_equal(mv_region_unpin(old, 0, 0), 0);
	reclaim();
	assert_int_equal(mv_region_unpin(young, 0, 0), 0);
	reclaim();
	assert_int_equal(tb_status(&s), 0);
	assert_int_equal(s.pages_compressed, 2 * N);
	/* Room for a bit more than half of it: what goes must be the older region's. */
	struct mvw_req_config cfg = { .key = MV_CONFIG_COMPRESSED_BUDGET, .value = s.compressed_mem_used / 10 * 6 };
	assert_int_equal(mvc_request(MV_MSG_CONFIG, &cfg, sizeof(cfg), -1, NULL, NULL), 0);
	assert_int_equal(tb_status(&s), 0);
	assert_true(s.compressed_mem_used <= cfg.value);
	assert_true(s.evictions_total > 0);
	/* The older region went first: its first pages are gone, the younger one is whole. */
	assert_true(count_state(old, MV_PG_PURGED) > N / 2);
	assert_int_equal(count_state(young, MV_PG_PURGED), 0);
	assert_int_equal(mv_region_pin(young, 0, 0), MV_NOT_PURGED);
	assert_true(same_semi(my, N, 5));
	assert_int_equal(mv_region_pin(old, 0, PG), MV_WAS_PURGED);
	assert_int_equal(mo[0], 0);
	mv_region_unmap(old, mo);
	mv_region_unmap(young, my);
	mv_region_unref(old);
	mv_region_unref(young);
}

/* Compressed data lives in the broker: if it dies, those pages are lost (purged), pinned ones are not. */
static void test_broker_death_loses_only_unpinned(void **state)
{
	mv_region *r;
	unsigned char *m;
	char dir[128];

	snprintf(dir, sizeof(dir), "%s", TB.dir);
	assert_int_equal(mv_region_new("mortal", 16 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	fill_text(m, 16, 6);
	assert_int_equal(mv_region_unpin(r, 0, 8 * PG), 0);
	reclaim();
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 8);
	tb_kill(&TB, SIGKILL);
	assert_int_equal(mv_region_pin(r, 0, 4 * PG), MV_WAS_PURGED); /* no broker: gone */
	assert_int_equal(m[0], 0);
	assert_true(same_text(m, 8, 8, 6)); /* pinned all along: intact */
	/* A new broker knows none of it either. */
	assert_int_equal(tb_start_in(&TB, dir, NULL), 0);
	assert_int_equal(mv_sync(), 0);
	assert_int_equal(mv_region_pin(r, 4 * PG, 4 * PG), MV_WAS_PURGED);
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 0);
	assert_true(same_text(m, 8, 8, 6));
	mv_region_unmap(r, m);
	mv_region_unref(r);
}

/* A holder killed while its pin is restoring pages leaves the region consistent for everyone else. */
static void test_holder_killed_mid_restore(void **state)
{
	mv_region *r;
	unsigned char *m;

	assert_int_equal(mv_region_new("restless", 256 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	fill_text(m, 256, 7);
	for (int round = 0; round < 20; round++) {
		assert_int_equal(mv_region_unpin(r, 0, 0), 0);
		reclaim();
		pid_t pid = fork();
		if (pid == 0) {
			mv_region_pin(r, 0, 0);
			_exit(0);
		}
		usleep((useconds_t)(round * 150));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		/* Whatever the child managed, a pin now completes and the data is all there. */
		int pr = mv_region_pin(r, 0, 0);
		assert_int_equal(pr, MV_NOT_PURGED);
		if (!same_text(m, 0, 256, 7))
			fail_msg("round %d: data differs after an interrupted restore", round);
		assert_int_equal(count_state(r, MV_PG_PINNED), 256);
	}
	mv_region_unmap(r, m);
	mv_region_unref(r);
}

/* A page leaves the compressed state on the client's side (an unpin joins it to a purged range), is
 * pinned, rewritten with incompressible data and unpinned; the broker reclaims it again before any
 * sweep. The next pin must never answer NOT_PURGED with the previous generation's bytes, and the tier
 * must not count the page twice. */
static void test_no_stale_compressed_copy(void **state)
{
	mv_region *r;
	unsigned char *m, want[PG];
	struct mvw_rep_status st;

	assert_int_equal(mv_region_new("stale", 3 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	memset(m, 'A', PG);                 /* page 0: compressible */
	for (size_t i = 0; i < 2 * PG; i++) /* pages 1-2: incompressible */
		m[PG + i] = (unsigned char)(random() >> 7);
	assert_int_equal(mv_region_unpin(r, 0, 2 * PG), 0);
	reclaim();
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 1); /* page 0 kept, page 1 dropped */
	/* an unpin overlapping the purged page 1 carries its mark: page 0 becomes purged on our side */
	assert_int_equal(mv_region_unpin(r, PG, 2 * PG), 0);
	assert_int_equal(mv_region_pin(r, 0, PG), MV_WAS_PURGED);
	for (size_t i = 0; i < PG; i++)
		want[i] = (unsigned char)(random() >> 7);
	memcpy(m, want, PG);
	assert_int_equal(mv_region_unpin(r, 0, PG), 0);
	reclaim();
	int p = mv_region_pin(r, 0, PG);
	if (p == MV_NOT_PURGED)
		assert_memory_equal(m, want, PG); /* was the 'A' page */
	else
		assert_int_equal(p, MV_WAS_PURGED);
	assert_int_equal(tb_status(&st), 0);
	assert_int_equal(st.pages_compressed, (uint64_t)count_state(r, MV_PG_COMPRESSED));
	mv_region_unmap(r, m);
	mv_region_unref(r);
	/* nothing left behind once the region is gone */
	assert_true(WAIT_FOR(tb_status(&st) == 0 && st.regions == 0 && st.pages_compressed == 0, 10));
}

/* Which page, of which generation: 15 characters and the NUL. */
static void page_tag(char tag[16], size_t pg, unsigned gen)
{
	snprintf(tag, 16, "%08u:%06u", (unsigned)(pg % 100000000u), gen % 1000000u);
}

/* A page of its own on every page, compressible: its tag over and over. */
static void fill_numbered(unsigned char *p, size_t first, size_t pages, unsigned gen)
{
	char tag[16];
	for (size_t pg = first; pg < first + pages; pg++) {
		page_tag(tag, pg, gen);
		for (size_t i = 0; i < PG; i += 16)
			memcpy(p + pg * PG + i, tag, 16);
	}
}

/* 1 intact, 0 zeros, -1 anything else (torn, or another page's data). */
static int page_is(const unsigned char *p, size_t pg, unsigned gen)
{
	char want[16];
	bool zero = true, same = true;
	page_tag(want, pg, gen);
	for (size_t i = 0; i < PG; i++) {
		unsigned char c = p[pg * PG + i];
		zero &= c == 0;
		same &= c == (unsigned char)want[i % 16];
	}
	return same ? 1 : zero ? 0 : -1;
}

/* Pins that land while the broker's threads are compressing a large reclaim (a job at a time, from the
 * oldest run) get their pages back intact or purged, never torn, never another page's data; what
 * NOT_PURGED reports is intact everywhere. Pinned in the order opposite to the reclaim's, so that
 * some pins meet pages still unpinned, some pages being compressed, some compressed already. */
static void test_pins_during_threaded_reclaim(void **state)
{
	enum { PAGES = 4096, CHUNK = 64, ROUNDS = 3 };
	mv_region *r;
	unsigned char *m;
	unsigned kept = 0, purged = 0;

	assert_int_equal(mv_region_new("busy-tier", (size_t)PAGES * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	for (unsigned round = 0; round < ROUNDS; round++) {
		fill_numbered(m, 0, PAGES, round);
		for (size_t c = 0; c < PAGES; c += CHUNK)
			assert_int_equal(mv_region_unpin(r, c * PG, CHUNK * PG), 0);
		/* The budget starts the reclaim; it runs while we pin. */
		assert_int_equal(mv_broker_set(MV_BROKER_UNPINNED_BUDGET, 0), 0);
		for (size_t c = PAGES; c > 0; c -= CHUNK) {
			int pr = mv_region_pin(r, (c - CHUNK) * PG, CHUNK * PG);
			assert_true(pr == MV_NOT_PURGED || pr == MV_WAS_PURGED);
			for (size_t pg = c - CHUNK; pg < c; pg++) {
				int k = page_is(m, pg, round);
				if (k < 0 || (pr == MV_NOT_PURGED && k != 1))
					fail_msg("round %u: page %zu is %s after a pin that said %s", round, pg,
						 k < 0 ? "torn" : "zeros",
						 pr == MV_NOT_PURGED ? "NOT_PURGED" : "WAS_PURGED");
				kept += k == 1;
				purged += k == 0;
			}
		}
		assert_int_equal(mv_sync(), 0);
		assert_int_equal(mv_broker_set(MV_BROKER_UNPINNED_BUDGET, MV_BROKER_NO_LIMIT), 0);
		assert_int_equal(count_state(r, MV_PG_PINNED), PAGES);
	}
	/* Compressible pages come back (a pin whose restore outlives the library's bound gets zeros). */
	assert_true(kept > 0);
	assert_int_equal(kept + purged, ROUNDS * PAGES);
	mv_region_unmap(r, m);
	mv_region_unref(r);
}

/* The only holder of a region is killed (SIGKILL) while the broker's threads compress its pages: the
 * broker goes on answering, lets the region go once its jobs are back, and keeps nothing of it. */
static void test_holder_killed_mid_reclaim(void **state)
{
	enum { PAGES = 8192 };
	struct mvw_rep_status st;

	for (int round = 0; round < 4; round++) {
		int ready[2];
		char c;
		assert_int_equal(pipe(ready), 0);
		pid_t pid = fork();
		if (pid == 0) {
			mv_region *r;
			unsigned char *m;
			if (mv_region_new("doomed", (size_t)PAGES * PG, &r) < 0 ||
			    mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m) < 0)
				_exit(1);
			fill_numbered(m, 0, PAGES, (unsigned)round);
			for (size_t off = 0; off < PAGES; off += 256)
				mv_region_unpin(r, off * PG, 256 * PG);
			if (mv_sync() < 0 || write(ready[1], "r", 1) != 1)
				_exit(1);
			pause();
			_exit(0);
		}
		close(ready[1]);
		assert_int_equal(read(ready[0], &c, 1), 1);
		close(ready[0]);
		assert_int_equal(mv_broker_set(MV_BROKER_UNPINNED_BUDGET, 0), 0);
		usleep((useconds_t)(round * 2000));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		/* The broker answers, finishes, and lets go of everything the dead process had. */
		assert_int_equal(mv_sync(), 0);
		assert_true(WAIT_FOR(tb_status(&st) == 0 && st.regions == 0 && st.pages_compressed == 0, 10));
		assert_int_equal(mv_broker_set(MV_BROKER_UNPINNED_BUDGET, MV_BROKER_NO_LIMIT), 0);
	}
	/* and still works for the living */
	mv_region *r;
	unsigned char *m;
	assert_int_equal(mv_region_new("after", 64 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	fill_numbered(m, 0, 64, 99);
	assert_int_equal(mv_region_unpin(r, 0, 64 * PG), 0);
	reclaim();
	assert_int_equal(count_state(r, MV_PG_COMPRESSED), 64);
	assert_int_equal(mv_region_pin(r, 0, 64 * PG), MV_NOT_PURGED);
	for (size_t pg = 0; pg < 64; pg++)
		assert_int_equal(page_is(m, pg, 99), 1);
	mv_region_unmap(r, m);
	mv_region_unref(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_compressed_pages_come_back, start_tier, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_incompressible_pages_are_dropped, start_tier, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_opt_out_drops_at_once, start_tier, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_store_budget_evicts_oldest, start_tier, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_explicit_purge_really_purges, start_tier, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_broker_death_loses_only_unpinned, start_tier, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_holder_killed_mid_restore, start_tier, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_no_stale_compressed_copy, start_tier_no_sweep, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_pins_during_threaded_reclaim, start_tier, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_holder_killed_mid_reclaim, start_tier, tb_fixture_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
