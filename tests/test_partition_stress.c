/* SPDX-License-Identifier: MIT */
/* Named partitions under churn: members join, merge, leave and are killed with SIGKILL while two
 * long-lived members keep merging and check every byte of their memory after each scan. A canonical
 * page freed or reused while a member maps it (or is about to) shows up as a page whose bytes changed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"
#include "memvisor/merge.h"

#define PG 4096
#define SHARED 192u /* contents every member has */
#define UNIQUE 64u  /* contents one churner has twice: canonical pages that die with it */
#define SECONDS 6

static void fill(uint8_t *page, uint32_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 7;
	for (size_t i = 0; i < PG; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		memcpy(page + i, &x, 8);
	}
}

static bool is_fill(const uint8_t *page, uint32_t seed)
{
	uint8_t ref[PG];
	fill(ref, seed);
	return !memcmp(ref, page, PG);
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Marks the pages of [p, p+n) that are mapped from a partition's file. */
static void partition_pages(const uint8_t *p, size_t n, bool *mapped)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	memset(mapped, 0, n);
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx", &s, &e) != 2 || !strstr(line, "memvisor-partition"))
			continue;
		for (uintptr_t a = s; a < e; a += PG)
			if (a >= (uintptr_t)p && a < (uintptr_t)p + n * PG)
				mapped[(a - (uintptr_t)p) / PG] = true;
	}
	if (f)
		fclose(f);
}

struct tally {
	uint64_t verified; /* checks of merged pages' bytes */
	uint64_t wrong;    /* pages (merged or not) whose bytes were once not the ones written */
};

/* Checks every page; counts the merged ones. A page found wrong is counted once: it stays wrong. */
static void check(const uint8_t *p, size_t n, const uint32_t *seeds, bool *mapped, bool *bad, struct tally *t)
{
	partition_pages(p, n, mapped);
	for (size_t i = 0; i < n; i++) {
		if (!bad[i] && !is_fill(p + i * PG, seeds[i])) {
			bad[i] = true;
			t->wrong++;
		}
		t->verified += mapped[i];
	}
}

/* A long-lived member: merges, checks, and rewrites (with the same bytes) a rotating eighth of its
 * pages so that their merges break and are made again, until its pipe says stop. */
static int verifier(int in, int out)
{
	const size_t n = SHARED + 16;
	uint8_t *p = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t seeds[SHARED + 16];
	bool mapped[SHARED + 16], bad[SHARED + 16] = { false };
	for (size_t i = 0; i < n; i++) {
		seeds[i] = i < SHARED ? 100 + (uint32_t)i : 100 + (uint32_t)(i % 16); /* 16 twins of its own */
		fill(p + i * PG, seeds[i]);
	}
	mv_merge *m = NULL;
	if (p == MAP_FAILED || mv_merge_new("churn", 0, &m) < 0 || mv_merge_register(m, p, n * PG) < 0)
		return 1;
	fcntl(in, F_SETFL, O_NONBLOCK);
	struct tally t = { 0, 0 };
	char c;
	for (unsigned round = 0; read(in, &c, 1) != 1; round++) {
		if (mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) < 0)
			return 2;
		check(p, n, seeds, mapped, bad, &t);
		for (size_t i = round % 8; i < n; i += 8)
			__atomic_store_n(&p[i * PG + 5], p[i * PG + 5], __ATOMIC_RELAXED);
	}
	/* the churn is over: after a last scan every page must still be right */
	if (mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) < 0)
		return 3;
	check(p, n, seeds, mapped, bad, &t);
	mv_merge_unref(m);
	return write(out, &t, sizeof(t)) == sizeof(t) ? 0 : 4;
}

/* A short-lived member: the shared contents, and twins of contents nobody else has. */
static void churner(unsigned k)
{
	const size_t n = SHARED + 2 * UNIQUE;
	uint8_t *p = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t seeds[SHARED + 2 * UNIQUE];
	bool mapped[SHARED + 2 * UNIQUE], bad[SHARED + 2 * UNIQUE] = { false };
	for (size_t i = 0; i < n; i++) {
		seeds[i] = i < SHARED ? 100 + (uint32_t)i : 1000000 + k * UNIQUE + (uint32_t)((i - SHARED) % UNIQUE);
		fill(p + i * PG, seeds[i]);
	}
	mv_merge *m = NULL;
	if (p == MAP_FAILED || mv_merge_new("churn", 0, &m) < 0 || mv_merge_register(m, p, n * PG) < 0)
		_exit(100);
	struct tally t = { 0, 0 };
	for (int i = 0; i < 3; i++) {
		if (mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) < 0)
			_exit(101);
		check(p, n, seeds, mapped, bad, &t);
	}
	mv_merge_unref(m);
	_exit(t.wrong > 99 ? 99 : (int)t.wrong);
}

static void test_churn_keeps_merged_bytes(void **state)
{
	int to[2][2], from[2][2];
	pid_t v[2];
	for (int i = 0; i < 2; i++) {
		assert_int_equal(pipe(to[i]), 0);
		assert_int_equal(pipe(from[i]), 0);
		v[i] = fork();
		assert_true(v[i] >= 0);
		if (v[i] == 0) {
			close(to[i][1]), close(from[i][0]);
			_exit(verifier(to[i][0], from[i][1]));
		}
		close(to[i][0]), close(from[i][1]);
	}
	srand(7);
	unsigned spawned = 0, killed = 0, churner_wrong = 0;
	pid_t live[3] = { 0, 0, 0 };
	double end = now() + SECONDS;
	while (now() < end) {
		for (int j = 0; j < 3; j++) {
			int st;
			if (live[j] && waitpid(live[j], &st, WNOHANG) == live[j]) {
				if (WIFEXITED(st)) {
					assert_true(WEXITSTATUS(st) < 100); /* it joined and merged */
					churner_wrong += WEXITSTATUS(st);
				}
				live[j] = 0;
			}
			if (!live[j]) {
				pid_t c = fork();
				assert_true(c >= 0);
				if (c == 0)
					churner(spawned);
				live[j] = c;
				spawned++;
			}
		}
		usleep((useconds_t)(rand() % 20000));
		int j = rand() % 3;
		if (live[j] && rand() % 2) {
			kill(live[j], SIGKILL);
			waitpid(live[j], NULL, 0);
			live[j] = 0;
			killed++;
		}
	}
	for (int j = 0; j < 3; j++)
		if (live[j]) {
			int st;
			assert_int_equal(waitpid(live[j], &st, 0), live[j]);
			if (WIFEXITED(st))
				churner_wrong += WEXITSTATUS(st);
		}
	struct tally t[2];
	for (int i = 0; i < 2; i++) {
		assert_int_equal(write(to[i][1], "q", 1), 1);
		assert_int_equal(read(from[i][0], &t[i], sizeof(t[i])), (ssize_t)sizeof(t[i]));
		int st;
		assert_int_equal(waitpid(v[i], &st, 0), v[i]);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 0);
		close(to[i][1]), close(from[i][0]);
	}
	print_message("churners %u (%u killed); verified merged pages %llu + %llu, wrong %llu + %llu, churners' "
		      "wrong %u\n",
		      spawned, killed, (unsigned long long)t[0].verified, (unsigned long long)t[1].verified,
		      (unsigned long long)t[0].wrong, (unsigned long long)t[1].wrong, churner_wrong);
	assert_true(killed > 0 && spawned > killed);
	assert_true(t[0].verified > 0 && t[1].verified > 0); /* merging happened under churn */
	assert_int_equal(t[0].wrong + t[1].wrong, 0);
	assert_int_equal(churner_wrong, 0);
}

static int setup(void **state)
{
	const char *extra[] = { "--sweep-ms", "10", NULL };
	return tb_start(&TB, extra) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
	tb_stop(&TB);
	return 0;
}

int main(void)
{
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_churn_keeps_merged_bytes),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
