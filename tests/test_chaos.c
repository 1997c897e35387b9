/* SPDX-License-Identifier: MIT */
/* Chaos: clients that pin, unpin, write and verify one shared region (compressible and incompressible
 * pages, each checked against its generation) are killed with SIGKILL at random moments and replaced,
 * a purger asks for everything, the broker is stopped with SIGSTOP for short spells and once killed
 * with SIGKILL and started again. Invariants:
 *   - no client ever sees a torn page, a pinned page changed, or NOT_PURGED with other bytes than it
 *     last wrote;
 *   - afterwards the broker holds no region and no compressed page, and its descriptors and resident
 *     memory are back near what they were after warm-up.
 * MEMVISOR_CHAOS_SECONDS sets the length (default 6). */
#include "helpers.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "memvisor/broker.h"
#include "memvisor/memvisor.h"

#define PG MV_PAGE_SIZE
#define WORKERS 4
#define SLICE 32

struct shared {
	_Atomic uint64_t torn, pinned_lost, not_purged_bad, errors, ops, was_purged, not_purged, kills;
};
static struct shared *S;

/* Page contents for (worker incarnation, page, generation): odd pages compress, even ones do not. */
static void make_page(uint64_t *p, uint64_t sig, unsigned page)
{
	if (page & 1) {
		for (size_t i = 0; i < PG / 8; i++)
			p[i] = sig;
		return;
	}
	uint64_t x = sig * 0x9e3779b97f4a7c15ull | 1;
	for (size_t i = 0; i < PG / 8; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		p[i] = x;
	}
}

/* 1 intact, 0 zero, -1 anything else */
static int classify(const uint64_t *p, uint64_t sig, unsigned page)
{
	uint64_t want[PG / 8];
	make_page(want, sig, page);
	if (!memcmp(p, want, PG))
		return 1;
	for (size_t i = 0; i < PG / 8; i++)
		if (p[i])
			return -1;
	return 0;
}

static uint64_t sig_of(unsigned incarnation, unsigned page, uint64_t gen)
{
	return ((uint64_t)(incarnation + 1) << 48) | ((uint64_t)page << 32) | gen;
}

/* A worker's life: its slice starts from whatever a killed predecessor left, pinned and rewritten. */
static _Noreturn void worker(mv_region *r, uint64_t *base, unsigned w, unsigned incarnation)
{
	bool pinned[SLICE];
	uint64_t gen[SLICE];
	unsigned first = w * SLICE, seed = 777u * incarnation + w;
	(void)mv_region_pin(r, (size_t)first * PG, SLICE * PG);
	for (unsigned i = 0; i < SLICE; i++) {
		pinned[i] = true;
		gen[i] = 1;
		make_page(base + (size_t)(first + i) * PG / 8, sig_of(incarnation, first + i, 1), first + i);
	}
	for (;;) {
		unsigned a = (unsigned)rand_r(&seed) % SLICE, n = 1 + (unsigned)rand_r(&seed) % 4;
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
				int c = classify(p, sig_of(incarnation, first + i, gen[i]), first + i);
				if (c < 0)
					atomic_fetch_add(&S->torn, 1);
				else if (pinned[i] && c != 1)
					atomic_fetch_add(&S->pinned_lost, 1);
				else if (pr == MV_NOT_PURGED && c != 1)
					atomic_fetch_add(&S->not_purged_bad, 1);
				pinned[i] = true;
				gen[i]++;
				make_page(p, sig_of(incarnation, first + i, gen[i]), first + i);
			}
		}
		atomic_fetch_add(&S->ops, 1);
	}
}

static _Atomic int stop_purger;

static void *purger(void *arg)
{
	(void)arg;
	/* Mostly reclaim for the budget (zero), which keeps compressed copies; now and then an explicit purge,
	 * which drops them. */
	for (unsigned i = 0; !atomic_load(&stop_purger); i++) {
		if (i % 8)
			(void)mv_sync();
		else
			(void)mv_purge(MV_PURGE_ALL, NULL);
		usleep(500);
	}
	return NULL;
}

static bool sanitized(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
	return true;
#else
	return false;
#endif
#else
	return false;
#endif
}

static uint64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static uint64_t broker_value(const char *name)
{
	mv_broker_status *st;
	uint64_t v = UINT64_MAX;
	if (mv_broker_status_new(&st) == 0) {
		v = mv_broker_status_value(st, name, UINT64_MAX);
		mv_broker_status_free(st);
	}
	return v;
}

static pid_t spawn(mv_region *r, uint64_t *base, unsigned w, unsigned incarnation)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		worker(r, base, w, incarnation);
	return pid;
}

static const char *const broker_opts[] = { "--unpinned-budget", "0", "--sweep-ms", "10", NULL };

static void test_chaos(void **state)
{
	(void)state;
	const char *env = getenv("MEMVISOR_CHAOS_SECONDS");
	uint64_t run_ms = (env ? (uint64_t)atoi(env) : 6) * 1000;
	mv_region *r;
	uint64_t *base;
	assert_int_equal(mv_region_new("chaos", WORKERS * SLICE * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&base), 0);

	/* warm-up: one round of the same work with nothing killed, for the baseline */
	pid_t pids[WORKERS];
	unsigned incarnation = 0;
	for (unsigned w = 0; w < WORKERS; w++)
		pids[w] = spawn(r, base, w, incarnation++);
	usleep(300000);
	for (unsigned w = 0; w < WORKERS; w++)
		kill(pids[w], SIGKILL), waitpid(pids[w], NULL, 0);
	assert_int_equal(mv_region_pin(r, 0, WORKERS * SLICE * PG) >= 0, 1);
	assert_true(WAIT_FOR(broker_value("tier.pages") == 0, 10));
	uint64_t fds0 = broker_value("broker.fds"), rss0 = broker_value("broker.rss_bytes");
	assert_true(fds0 != UINT64_MAX && rss0 != UINT64_MAX && fds0 > 0 && rss0 > 0);

	pthread_t pt;
	atomic_store(&stop_purger, 0);
	assert_int_equal(pthread_create(&pt, NULL, purger, NULL), 0);
	for (unsigned w = 0; w < WORKERS; w++)
		pids[w] = spawn(r, base, w, incarnation++);
	unsigned seed = 4242, stops = 0, broker_kills = 0;
	uint64_t t0 = now_ms(), next_stop = t0 + 700;
	bool restarted = false;
	while (now_ms() - t0 < run_ms) {
		usleep(10000 + (unsigned)rand_r(&seed) % 120000);
		unsigned w = (unsigned)rand_r(&seed) % WORKERS;
		kill(pids[w], SIGKILL);
		waitpid(pids[w], NULL, 0);
		atomic_fetch_add(&S->kills, 1);
		pids[w] = spawn(r, base, w, incarnation++);
		if (now_ms() >= next_stop) {
			/* the broker stalls for a moment, with work in flight */
			kill(TB.pid, SIGSTOP);
			usleep(50000 + (unsigned)rand_r(&seed) % 150000);
			kill(TB.pid, SIGCONT);
			stops++;
			next_stop = now_ms() + 700;
		}
		if (!restarted && now_ms() - t0 > run_ms / 2) {
			/* and dies once: a new broker takes over the same runtime directory */
			tb_kill(&TB, SIGKILL);
			broker_kills++;
			usleep(100000);
			char dir[sizeof(TB.dir)];
			snprintf(dir, sizeof(dir), "%s", TB.dir);
			assert_int_equal(tb_start_in(&TB, dir, broker_opts), 0);
			restarted = true;
		}
	}
	for (unsigned w = 0; w < WORKERS; w++)
		kill(pids[w], SIGKILL), waitpid(pids[w], NULL, 0);
	atomic_store(&stop_purger, 1);
	pthread_join(pt, NULL);
	print_message("chaos: %.1f s, %llu client kills, %u broker stops, %u broker kill; ops %llu: NOT_PURGED %llu, "
		      "WAS_PURGED %llu; torn %llu, pinned lost %llu, bad NOT_PURGED %llu, errors %llu\n",
		      (double)(now_ms() - t0) / 1000, (unsigned long long)S->kills, stops, broker_kills,
		      (unsigned long long)S->ops, (unsigned long long)S->not_purged, (unsigned long long)S->was_purged,
		      (unsigned long long)S->torn, (unsigned long long)S->pinned_lost,
		      (unsigned long long)S->not_purged_bad, (unsigned long long)S->errors);
	assert_int_equal(S->torn, 0);
	assert_int_equal(S->pinned_lost, 0);
	assert_int_equal(S->not_purged_bad, 0);
	assert_true(S->ops > 1000);
	assert_true(S->not_purged > 0);

	/* The region still works, and once it is gone the broker holds nothing of it. The baseline was
	 * taken from the first broker; the second one started with the same clients, so the same bounds
	 * hold. */
	assert_int_equal(mv_region_pin(r, 0, WORKERS * SLICE * PG) >= 0, 1);
	mv_region_unmap(r, base);
	mv_region_unref(r);
	assert_true(WAIT_FOR(broker_value("regions.count") == 0 && broker_value("tier.pages") == 0, 10));
	uint64_t fds1 = broker_value("broker.fds"), rss1 = broker_value("broker.rss_bytes");
	print_message("broker: %llu fds, %.1f MiB resident after warm-up; %llu fds, %.1f MiB after the chaos\n",
		      (unsigned long long)fds0, rss0 / 1048576.0, (unsigned long long)fds1, rss1 / 1048576.0);
	assert_true(fds1 <= fds0);
	/* a sanitizer's allocator keeps freed memory in quarantine: resident memory says nothing there */
	if (!sanitized())
		assert_true(rss1 <= rss0 + rss0 / 2 + (4u << 20));
}

static int setup(void **state)
{
	(void)state;
	S = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (S == MAP_FAILED)
		return -1;
	memset(S, 0, sizeof(*S));
	setenv("MEMVISOR_TEST_COMPRESS", "1", 1); /* the compressed tier is where stale data could hide */
	return tb_start(&TB, broker_opts);
}

static int teardown(void **state)
{
	(void)state;
	tb_stop(&TB);
	munmap(S, PG);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_chaos, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
