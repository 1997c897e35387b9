/* SPDX-License-Identifier: MIT */
/* Concurrency stress with invariant checks. Workers (processes, then threads) pin, unpin, write and
 * verify their own slice of one shared region while the broker purges as hard as it can: its unpinned
 * budget is zero and a purger keeps asking for everything. Invariants, checked on every page touched:
 *   - a pinned page is never purged (its contents never change under us);
 *   - NOT_PURGED means every page of the range is intact;
 *   - WAS_PURGED means every page is either intact or all zeros, never torn.
 * The run must also have seen both outcomes, or it proved nothing. */
#include "helpers.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "memvisor/memvisor.h"

#define PG MV_PAGE_SIZE
#define WORKERS 4
#define SLICE 48
#define ITERS 6000

struct stats {
	_Atomic uint64_t torn, pinned_lost, not_purged_bad, was_purged, not_purged, ops, errors, restores_seen;
};

static struct stats *S;
static _Atomic int stop_purger;
static uint64_t case_start_ns;

static uint64_t sig(unsigned w, unsigned page, uint64_t gen)
{
	return ((uint64_t)(w + 1) << 56) | ((uint64_t)page << 32) | gen;
}

static void fill(uint64_t *p, uint64_t v)
{
	for (size_t i = 0; i < PG / 8; i++)
		p[i] = v;
}

/* 1 intact, 0 zero, -1 torn */
static int classify(const uint64_t *p, uint64_t v)
{
	size_t same = 0, zero = 0;
	for (size_t i = 0; i < PG / 8; i++) {
		same += p[i] == v;
		zero += p[i] == 0;
	}
	return same == PG / 8 ? 1 : zero == PG / 8 ? 0 : -1;
}

/* Without the tier the proof is a WAS_PURGED; with it, the broker having restored pages for a pin. */
static bool purger_seen(int it)
{
	struct mvw_rep_status st = { 0 };

	if (!getenv("MEMVISOR_TEST_COMPRESS"))
		return atomic_load(&S->was_purged) > 0;
	if (atomic_load(&S->restores_seen))
		return true;
	if (it % 64 == 0 && tb_status(&st) == 0 && st.restores_total > 0)
		atomic_store(&S->restores_seen, 1);
	return atomic_load(&S->restores_seen) > 0;
}

static void work(mv_region *r, uint64_t *base, unsigned w)
{
	bool pinned[SLICE];
	uint64_t gen[SLICE];
	unsigned first = w * SLICE;
	unsigned seed = 12345u + w;

	for (unsigned i = 0; i < SLICE; i++) {
		pinned[i] = true;
		gen[i] = 1;
		fill(base + (size_t)(first + i) * PG / 8, sig(w, first + i, 1));
	}
	/* ITERS operations, and on until the purger has been seen at work (a fast run may finish the
	 * operations before the broker purged anything, which would prove nothing) */
	uint64_t deadline = mvu_now_ns() + 30000000000ull;
	for (int it = 0; it < ITERS || (!purger_seen(it) && mvu_now_ns() < deadline); it++) {
		unsigned a = (unsigned)rand_r(&seed) % SLICE, n = 1 + (unsigned)rand_r(&seed) % (SLICE - a);
		if (rand_r(&seed) % 4 == 0)
			n = 1 + n % 4;
		if (a + n > SLICE)
			n = SLICE - a;
		size_t off = (size_t)(first + a) * PG, len = (size_t)n * PG;

		if (rand_r(&seed) & 1) {
			if (mv_region_unpin(r, off, len) != 0)
				atomic_fetch_add(&S->errors, 1);
			for (unsigned i = a; i < a + n; i++)
				pinned[i] = false;
		} else {
			int pr = mv_region_pin(r, off, len);
			if (pr == MV_WAS_PURGED)
				atomic_fetch_add(&S->was_purged, 1);
			else if (pr == MV_NOT_PURGED)
				atomic_fetch_add(&S->not_purged, 1);
			else
				atomic_fetch_add(&S->errors, 1);
			for (unsigned i = a; i < a + n; i++) {
				uint64_t *p = base + (size_t)(first + i) * PG / 8;
				int c = classify(p, sig(w, first + i, gen[i]));
				if (c < 0)
					atomic_fetch_add(&S->torn, 1);
				else if (pinned[i] && c != 1)
					atomic_fetch_add(&S->pinned_lost, 1);
				else if (pr == MV_NOT_PURGED && c != 1)
					atomic_fetch_add(&S->not_purged_bad, 1);
				pinned[i] = true;
				gen[i]++;
				fill(p, sig(w, first + i, gen[i]));
			}
		}
		/* Spot-check a pinned page: the broker must never have touched it. */
		unsigned k = (unsigned)rand_r(&seed) % SLICE;
		if (pinned[k] && classify(base + (size_t)(first + k) * PG / 8, sig(w, first + k, gen[k])) != 1)
			atomic_fetch_add(&S->pinned_lost, 1);
		atomic_fetch_add(&S->ops, 1);
	}
	mv_region_pin(r, (size_t)first * PG, SLICE * PG);
}

static void *purger(void *arg)
{
	(void)arg;
	/* With the tier, mostly reclaim for the budget (zero here), which keeps compressed copies; now and
	 * then an explicit purge, which drops them. */
	bool tier = getenv("MEMVISOR_TEST_COMPRESS") != NULL;
	for (unsigned i = 0; !atomic_load(&stop_purger); i++) {
		if (tier && i % 8)
			mv_sync();
		else
			mv_purge(MV_PURGE_ALL, NULL);
	}
	return NULL;
}

static int setup(void **state)
{
	static const char *const extra[] = { "--unpinned-budget", "0", "--sweep-ms", "10", NULL };
	(void)state;
	S = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memset(S, 0, sizeof(*S));
	atomic_store(&stop_purger, 0);
	case_start_ns = mvu_now_ns();
	return tb_start(&TB, extra);
}

static int teardown(void **state)
{
	(void)state;
	tb_stop(&TB);
	munmap(S, PG);
	return 0;
}

static void check_invariants(void)
{
	print_message(
		"%.2f s; ops %llu: NOT_PURGED %llu, WAS_PURGED %llu; torn %llu, pinned lost %llu, bad NOT_PURGED %llu, "
		"errors %llu\n",
		(double)(mvu_now_ns() - case_start_ns) / 1e9, (unsigned long long)S->ops,
		(unsigned long long)S->not_purged, (unsigned long long)S->was_purged, (unsigned long long)S->torn,
		(unsigned long long)S->pinned_lost, (unsigned long long)S->not_purged_bad,
		(unsigned long long)S->errors);
	assert_int_equal(S->torn, 0);
	assert_int_equal(S->pinned_lost, 0);
	assert_int_equal(S->not_purged_bad, 0);
	assert_int_equal(S->errors, 0);
	assert_true(S->not_purged > 0);
	if (getenv("MEMVISOR_TEST_COMPRESS")) {
		/* With the compressed tier nothing compressible is lost: the proof of work is restores. */
		struct mvw_rep_status st = { 0 };
		assert_int_equal(tb_status(&st), 0);
		print_message("compressed tier: %llu compressions, %llu restores\n",
			      (unsigned long long)st.compressions_total, (unsigned long long)st.restores_total);
		assert_true(st.restores_total > 0);
	} else {
		assert_true(S->was_purged > 0);
	}
}

static void test_processes(void **state)
{
	mv_region *r;
	uint64_t *base;
	pid_t pids[WORKERS];
	pthread_t pt;

	assert_int_equal(mv_region_new("stress", WORKERS * SLICE * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&base), 0);
	for (unsigned w = 0; w < WORKERS; w++) {
		pids[w] = fork();
		if (pids[w] == 0) {
			work(r, base, w);
			_exit(0);
		}
	}
	assert_int_equal(pthread_create(&pt, NULL, purger, NULL), 0);
	for (unsigned w = 0; w < WORKERS; w++) {
		int st;
		assert_int_equal(waitpid(pids[w], &st, 0), pids[w]);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	atomic_store(&stop_purger, 1);
	pthread_join(pt, NULL);
	check_invariants();
	mv_region_unmap(r, base);
	mv_region_unref(r);
}

struct targ {
	mv_region *r;
	uint64_t *base;
	unsigned w;
};

static void *thread_main(void *p)
{
	struct targ *t = p;
	work(t->r, t->base, t->w);
	return NULL;
}

static void test_threads(void **state)
{
	mv_region *r;
	uint64_t *base;
	pthread_t th[WORKERS], pt;
	struct targ args[WORKERS];

	assert_int_equal(mv_region_new("stress-threads", WORKERS * SLICE * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&base), 0);
	assert_int_equal(pthread_create(&pt, NULL, purger, NULL), 0);
	for (unsigned w = 0; w < WORKERS; w++) {
		args[w] = (struct targ){ r, base, w };
		assert_int_equal(pthread_create(&th[w], NULL, thread_main, &args[w]), 0);
	}
	for (unsigned w = 0; w < WORKERS; w++)
		pthread_join(th[w], NULL);
	atomic_store(&stop_purger, 1);
	pthread_join(pt, NULL);
	check_invariants();
	mv_region_unmap(r, base);
	mv_region_unref(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_processes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
