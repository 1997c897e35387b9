/* SPDX-License-Identifier: MIT */
/* Same-page merging: merge then read, copy-on-write both ways, writers racing the scanner, fork,
 * unregister, the application unmapping and reprotecting registered memory, zero pages, partitions,
 * the mapping budget, and statistics checked against what /proc/self/pagemap and maps say. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "memvisor/ksm.h"
#include "memvisor/merge.h"

#define PG 4096
#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define PM_FILE (1ull << 61)
#define PM_EXCLUSIVE (1ull << 56)

static uint8_t *map_anon(size_t pages)
{
	void *p = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	return p;
}

static void fill(uint8_t *page, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 12345;
	for (size_t i = 0; i < PG; i += 4) {
		x = x * 1103515245u + 12345;
		memcpy(page + i, &x, 4);
	}
}

static bool is_fill(const uint8_t *page, uint32_t seed)
{
	uint8_t ref[PG];
	fill(ref, seed);
	return memcmp(ref, page, PG) == 0;
}

static uint64_t pagemap(const void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	assert_true(fd >= 0);
	uint64_t v = 0;
	assert_int_equal(pread(fd, &v, 8, (off_t)((uintptr_t)addr / PG) * 8), 8);
	close(fd);
	return v;
}

/* What /proc/self/maps says of addr: is it a mapping of the merge store, and its permissions. */
static bool maps_line(const void *addr, char *perms, bool *store)
{
	FILE *f = fopen("/proc/self/maps", "r");
	assert_non_null(f);
	char line[512];
	bool found = false;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		char p[5];
		if (sscanf(line, "%lx-%lx %4s", &s, &e, p) != 3)
			continue;
		if ((uintptr_t)addr >= s && (uintptr_t)addr < e) {
			if (perms)
				memcpy(perms, p, 5);
			if (store)
				*store = strstr(line, "memvisor-merge") != NULL;
			found = true;
			break;
		}
	}
	fclose(f);
	return found;
}

/* Independent count of merged sites in [base, base + pages): the page is a store mapping and is
 * either not yet faulted or is the file's page (not a private copy). */
static size_t count_sites(uint8_t *base, size_t pages)
{
	size_t n = 0;
	for (size_t i = 0; i < pages; i++) {
		bool store = false;
		if (!maps_line(base + i * PG, NULL, &store) || !store)
			continue;
		uint64_t pm = pagemap(base + i * PG);
		if (!(pm & PM_PRESENT) ? !(pm & PM_SWAPPED) : (pm & PM_FILE) != 0)
			n++;
	}
	return n;
}

static mv_merge *ctx_new(void)
{
	mv_merge *m = NULL;
	int r = mv_merge_new(NULL, 0, &m);
	if (r == -ENOSYS || r == -EPERM)
		skip();
	assert_int_equal(r, 0);
	return m;
}

static struct mv_merge_stats stats(mv_merge *m)
{
	struct mv_merge_stats s;
	assert_int_equal(mv_merge_get_stats(m, &s, sizeof(s)), 0);
	return s;
}

/* ---- merge then read ---- */

static void test_merge_and_read(void **state)
{
	const size_t N = 256 + 16;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < 256; i++)
		fill(a + i * PG, (uint32_t)(i % 64)); /* 64 contents, 4 copies each */
	for (size_t i = 256; i < N; i++)
		a[i * PG] = 0; /* touched: real zero-filled pages */
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	int merged = mv_merge_scan(m, 0, 0, MV_MERGE_STABLE);
	assert_int_equal(merged, 256 + 16);
	struct mv_merge_stats s = stats(m);
	assert_int_equal(s.pages_shared, 64);
	assert_int_equal(s.pages_sharing, 192);
	assert_int_equal(s.zero_pages, 16);
	assert_int_equal(s.full_scans, 1);
	assert_int_equal(s.pages_scanned, N);
	assert_true(s.general_profit > 0);
	for (size_t i = 0; i < 256; i++)
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 64)));
	for (size_t i = 256; i < N; i++) {
		for (size_t b = 0; b < PG; b++)
			assert_int_equal(a[i * PG + b], 0);
		/* read back from the kernel's zero page: present, not exclusive, not a file page */
		uint64_t pm = pagemap(a + i * PG);
		assert_true(pm & PM_PRESENT);
		assert_false(pm & (PM_EXCLUSIVE | PM_FILE));
	}
	assert_int_equal(count_sites(a, N), 256);
	/* The second pass finds nothing new and keeps the counts. */
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), 0);
	s = stats(m);
	assert_int_equal(s.pages_shared, 64);
	assert_int_equal(s.pages_sharing, 192);
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* Without MV_MERGE_STABLE a page merges only after two looks found it unchanged. */
static void test_second_look(void **state)
{
	const size_t N = 64;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, (uint32_t)(i % 8));
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, 0), 0);
	struct mv_merge_stats s = stats(m);
	assert_int_equal(s.pages_volatile, N);
	assert_int_equal(s.pages_shared, 0);
	/* a page that keeps changing stays volatile */
	fill(a, 1000);
	assert_int_equal(mv_merge_scan(m, 0, 0, 0), N - 1);
	s = stats(m);
	assert_int_equal(s.pages_volatile, 1);
	assert_int_equal(s.pages_shared, 8);
	assert_int_equal(s.pages_sharing, N - 1 - 8); /* page 0 changed: content 0 has one copy fewer */
	assert_true(is_fill(a, 1000));
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* ---- copy-on-write isolation ---- */

static void test_cow_isolation(void **state)
{
	const size_t N = 8;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, 7);
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	struct mv_merge_stats s = stats(m);
	assert_int_equal(s.pages_shared, 1);
	assert_int_equal(s.pages_sharing, N - 1);
	/* first and last sharer write; nobody else sees it */
	a[0] ^= 0xff;
	a[(N - 1) * PG + 100] = 42;
	for (size_t i = 1; i < N - 1; i++)
		assert_true(is_fill(a + i * PG, 7));
	assert_false(is_fill(a, 7));
	assert_int_equal(a[(N - 1) * PG + 100], 42);
	uint64_t pm = pagemap(a);
	assert_true(pm & PM_PRESENT);
	assert_false(pm & PM_FILE);
	s = stats(m);
	assert_int_equal(s.pages_shared, 1);
	assert_int_equal(s.pages_sharing, N - 3);
	assert_int_equal(count_sites(a, N), N - 2);
	/* Writing back the original bytes does not merge the page again: a private copy inside a merged
	 * mapping cannot be moved out, so a pin on it could not be seen. */
	a[0] ^= 0xff;
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), 0);
	s = stats(m);
	assert_int_equal(s.pages_sharing, N - 3);
	/* once every sharer wrote, the canonical page is freed */
	for (size_t i = 0; i < N; i++)
		a[i * PG + 5] = (uint8_t)i;
	s = stats(m);
	assert_int_equal(s.pages_shared, 0);
	assert_int_equal(s.pages_sharing, 0);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(a[i * PG + 5], (uint8_t)i);
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* ---- writers racing merges ---- */

#define RACE_PAGES 512
#define RACE_THREADS 3

struct race {
	uint8_t *a;
	atomic_int stop;
	uint32_t shadow[RACE_PAGES];
	atomic_long lost;
};

static struct race race;

static void *race_writer(void *arg)
{
	int id = (int)(intptr_t)arg;
	uint32_t x = (uint32_t)id * 7919u + 1;
	while (!atomic_load(&race.stop)) {
		x = x * 1103515245u + 12345;
		size_t page = (x >> 8) % (RACE_PAGES / RACE_THREADS) * RACE_THREADS + (size_t)id;
		/* few distinct values: many pages stay identical and keep getting merged */
		uint32_t v = race.shadow[page] + 1;
		if (v > 3)
			v = 0;
		volatile uint32_t *w = (volatile uint32_t *)(race.a + page * PG + 2048);
		/* only this thread writes this page: anything but its own last value is a lost write */
		if (*w != race.shadow[page])
			atomic_fetch_add(&race.lost, 1);
		*w = v;
		race.shadow[page] = v;
	}
	return NULL;
}

/* A written merged page stays private (its pins could not be checked), so each round starts from
 * fresh memory: the scans merge pages the writers keep writing. */
static void test_writers_race_merges(void **state)
{
	for (int round = 0; round < 6; round++) {
		race.a = map_anon(RACE_PAGES);
		memset(race.shadow, 0, sizeof(race.shadow));
		for (size_t i = 0; i < RACE_PAGES; i++)
			memset(race.a + i * PG, 0x5a, PG), memset(race.a + i * PG + 2048, 0, 4);
		atomic_store(&race.stop, 0);
		atomic_store(&race.lost, 0);
		mv_merge *m = ctx_new();
		assert_int_equal(mv_merge_register(m, race.a, RACE_PAGES * PG), 0);
		pthread_t t[RACE_THREADS];
		for (int i = 0; i < RACE_THREADS; i++)
			pthread_create(&t[i], NULL, race_writer, (void *)(intptr_t)i);
		long merged = 0;
		for (int scan = 0; scan < 50; scan++) {
			int r = mv_merge_scan(m, 0, 0, MV_MERGE_STABLE);
			assert_true(r >= 0);
			merged += r;
		}
		atomic_store(&race.stop, 1);
		for (int i = 0; i < RACE_THREADS; i++)
			pthread_join(t[i], NULL);
		assert_int_equal(atomic_load(&race.lost), 0);
		/* every page holds exactly the last value its writer stored, and the rest is untouched */
		for (size_t i = 0; i < RACE_PAGES; i++) {
			uint32_t v;
			memcpy(&v, race.a + i * PG + 2048, 4);
			if (v != race.shadow[i])
				fail_msg("round %d page %zu: %u, its writer last wrote %u", round, i, v,
					 race.shadow[i]);
			for (size_t b = 0; b < PG; b++)
				if ((b < 2048 || b >= 2052) && race.a[i * PG + b] != 0x5a)
					fail_msg("round %d page %zu byte %zu changed", round, i, b);
		}
		assert_true(merged > RACE_PAGES / 4); /* the scans did merge while writes were going on */
		/* and the statistics still agree with the page tables */
		assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) >= 0, 1);
		struct mv_merge_stats s = stats(m);
		assert_int_equal(s.pages_shared + s.pages_sharing, count_sites(race.a, RACE_PAGES));
		mv_merge_unref(m);
		munmap(race.a, RACE_PAGES * PG);
	}
}

/* The scanner thread merges on its own with the seed's knobs, and stops when told. */
static void test_scanner_thread(void **state)
{
	const size_t N = 1024;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, (uint32_t)(i % 16));
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	struct mv_merge_knobs k;
	assert_int_equal(mv_merge_get_knobs(m, &k), 0);
	assert_int_equal(k.sleep_usecs, 20000);
	assert_int_equal(k.pages_to_scan, 100);
	assert_int_equal(k.max_page_sharing, 256);
	assert_int_equal(k.run, 0);
	k.sleep_usecs = 1000;
	k.pages_to_scan = 200;
	k.run = 1;
	assert_int_equal(mv_merge_set_knobs(m, &k), 0);
	struct mv_merge_knobs back;
	assert_int_equal(mv_merge_get_knobs(m, &back), 0);
	assert_int_equal(back.run, 1);
	assert_int_equal(back.pages_to_scan, 200);
	struct mv_merge_stats s;
	for (int i = 0; i < 2000; i++) {
		s = stats(m);
		if (s.pages_sharing == N - 16)
			break;
		usleep(5000);
	}
	assert_int_equal(s.pages_shared, 16);
	assert_int_equal(s.pages_sharing, N - 16);
	assert_true(s.full_scans >= 2); /* no stable flag: it needed a second look */
	k.run = 0;
	assert_int_equal(mv_merge_set_knobs(m, &k), 0);
	uint64_t scanned = stats(m).pages_scanned;
	usleep(20000);
	assert_int_equal(stats(m).pages_scanned, scanned);
	for (size_t i = 0; i < N; i++)
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 16)));
	k.run = 2;
	assert_int_equal(mv_merge_set_knobs(m, &k), -EINVAL);
	k.run = 1;
	k.pages_to_scan = 0;
	assert_int_equal(mv_merge_set_knobs(m, &k), -EINVAL);
	k.pages_to_scan = 10;
	k.max_page_sharing = 1;
	assert_int_equal(mv_merge_set_knobs(m, &k), -EINVAL);
	mv_merge_unref(m); /* with the thread stopped */
	munmap(a, N * PG);
}

/* ---- fork ---- */

static void test_fork_after_merge(void **state)
{
	const size_t N = 32;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, (uint32_t)(i % 4));
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	int toc[2], toparent[2];
	assert_int_equal(pipe(toc), 0);
	assert_int_equal(pipe(toparent), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int bad = 0;
		for (size_t i = 0; i < N; i++)
			bad += !is_fill(a + i * PG, (uint32_t)(i % 4));
		a[0] = 0x11; /* the child's write */
		/* the child's context is void: no registrations, clear errors */
		bad += mv_merge_scan(m, 0, 0, 0) != -ECHILD;
		bad += mv_merge_register(m, a, PG) != -ECHILD;
		char c = 1;
		bad += write(toparent[1], &c, 1) != 1;
		bad += read(toc[0], &c, 1) != 1; /* the parent wrote meanwhile */
		bad += a[0] != 0x11;
		bad += !is_fill(a + 1 * PG, 1);
		for (size_t i = 2; i < N; i++)
			bad += !is_fill(a + i * PG, (uint32_t)(i % 4));
		mv_merge_unref(m);
		_exit(bad);
	}
	char c;
	assert_int_equal(read(toparent[0], &c, 1), 1);
	assert_true(is_fill(a, 0)); /* the child's write is not ours */
	a[1 * PG] = 0x22;           /* ours is not the child's */
	/* the parent keeps merging and unmerging: canonical pages the child maps must survive it */
	for (size_t i = 2; i < N; i++)
		a[i * PG + 9] ^= 1;
	stats(m);
	assert_int_equal(write(toc[1], &c, 1), 1);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	mv_merge_unref(m);
	munmap(a, N * PG);
	close(toc[0]), close(toc[1]), close(toparent[0]), close(toparent[1]);
}

/* ---- unregister ---- */

static void test_unregister_restores_private(void **state)
{
	const size_t N = 64;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, (uint32_t)(i % 2));
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	a[3 * PG] ^= 1; /* one private copy inside the merged mapping */
	assert_int_equal(mv_merge_unregister(m, a, N * PG - PG), -ENOENT);
	assert_int_equal(mv_merge_unregister(m, a, N * PG), 0);
	for (size_t i = 0; i < N; i++) {
		bool store = true;
		char perms[5];
		assert_true(maps_line(a + i * PG, perms, &store));
		assert_false(store);
		assert_string_equal(perms, "rw-p");
		uint64_t pm = pagemap(a + i * PG);
		assert_true(pm & PM_PRESENT);
		assert_false(pm & PM_FILE);
		if (i == 3) {
			a[i * PG] ^= 1;
		}
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 2)));
	}
	struct mv_merge_stats s = stats(m);
	assert_int_equal(s.pages_shared, 0);
	assert_int_equal(s.pages_sharing, 0);
	assert_int_equal(s.ranges, 0);
	/* the range can be registered again and merges again */
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	mv_merge_unref(m); /* unref unregisters too */
	for (size_t i = 0; i < N; i++) {
		bool store = true;
		assert_true(maps_line(a + i * PG, NULL, &store));
		assert_false(store);
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 2)));
	}
	munmap(a, N * PG);
}

/* Merged memory that is PROT_NONE when it is unregistered (or its context unref'd) keeps its bytes and
 * its protection, written pages included: the restore used to fail to read it, and the canonical pages
 * were punched under it, so it read as zeros afterwards. */
static void test_unregister_prot_none(void **state)
{
	const size_t N = 32;
	for (int via_unref = 0; via_unref < 2; via_unref++) {
		uint8_t *a = map_anon(N);
		for (size_t i = 0; i < N; i++)
			fill(a + i * PG, (uint32_t)(i % 2));
		mv_merge *m = ctx_new();
		assert_int_equal(mv_merge_register(m, a, N * PG), 0);
		assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
		a[5 * PG] ^= 0x5a; /* a private copy inside the merged mapping */
		assert_int_equal(mprotect(a, N * PG, PROT_NONE), 0);
		if (via_unref)
			mv_merge_unref(m);
		else
			assert_int_equal(mv_merge_unregister(m, a, N * PG), 0);
		for (size_t i = 0; i < N; i++) {
			char perms[5];
			bool store = true;
			assert_true(maps_line(a + i * PG, perms, &store));
			assert_false(store);
			assert_string_equal(perms, "---p"); /* still what the application made it */
		}
		assert_int_equal(mprotect(a, N * PG, PROT_READ | PROT_WRITE), 0);
		a[5 * PG] ^= 0x5a;
		for (size_t i = 0; i < N; i++)
			assert_true(is_fill(a + i * PG, (uint32_t)(i % 2)));
		if (!via_unref)
			mv_merge_unref(m);
		munmap(a, N * PG);
	}
}

/* A fork child can register memory it inherited merged (its parent's context is not its own) and
 * merge it again; the parent's merged pages are untouched. */
static void test_fork_child_registers_inherited(void **state)
{
	const size_t N = 32;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, (uint32_t)(i % 2));
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	a[7 * PG] ^= 1; /* partly merged: one private copy */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		mv_merge *c;
		if (mv_merge_new(NULL, 0, &c) < 0)
			_exit(1);
		if (mv_merge_register(c, a, N * PG) != 0)
			_exit(2); /* was EACCES */
		for (size_t i = 0; i < N; i++) {
			bool store = true;
			if (!maps_line(a + i * PG, NULL, &store) || store)
				_exit(3); /* private again, before merging anew */
		}
		a[7 * PG] ^= 1;
		if (mv_merge_scan(c, 0, 0, MV_MERGE_STABLE) != (int)N)
			_exit(4);
		for (size_t i = 0; i < N; i++)
			if (!is_fill(a + i * PG, (uint32_t)(i % 2)))
				_exit(5);
		a[3 * PG] ^= 0xff; /* the child's write stays the child's */
		mv_merge_unref(c);
		_exit(0);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	a[7 * PG] ^= 1;
	for (size_t i = 0; i < N; i++)
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 2)));
	assert_int_equal(count_sites(a, N), N - 1); /* the parent's merges are as they were */
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* Memory another live context of this process merged is not taken from it: a second context's register
 * of it is refused (only what a fork child inherited, or a context let go of, is taken back). */
static void test_two_contexts_one_range(void **state)
{
	const size_t N = 16;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, (uint32_t)(i % 2));
	mv_merge *m1 = ctx_new(), *m2 = ctx_new();
	assert_int_equal(mv_merge_register(m1, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m1, 0, 0, MV_MERGE_STABLE), (int)N);
	assert_int_equal(mv_merge_register(m2, a, N * PG), -EACCES);
	assert_int_equal(count_sites(a, N), N); /* still m1's */
	struct mv_merge_stats s = stats(m1);
	assert_int_equal(s.pages_sharing, N - 2);
	mv_merge_unref(m2);
	mv_merge_unref(m1);
	for (size_t i = 0; i < N; i++)
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 2)));
	munmap(a, N * PG);
}

/* ---- the application changes its own mappings ---- */

static void test_app_munmap_mprotect(void **state)
{
	const size_t N = 64;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, 3);
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	/* unmap a quarter, reprotect another quarter read-only, remap fresh memory in the hole */
	assert_int_equal(munmap(a + 16 * PG, 16 * PG), 0);
	assert_int_equal(mprotect(a + 32 * PG, 16 * PG, PROT_READ), 0);
	struct mv_merge_stats s = stats(m);
	assert_int_equal(s.pages_shared + s.pages_sharing, N - 16);
	uint8_t *hole = mmap(a + 16 * PG, 16 * PG, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	assert_ptr_equal(hole, a + 16 * PG);
	for (size_t i = 0; i < 16; i++)
		fill(hole + i * PG, 3);
	/* the read-only quarter's private copies must not come back writable */
	assert_int_equal(mprotect(a + 48 * PG, 16 * PG, PROT_READ | PROT_WRITE), 0);
	for (size_t i = 48; i < N; i++)
		((volatile uint8_t *)a)[i * PG] ^= 1,
			((volatile uint8_t *)a)[i * PG] ^= 1; /* private copies, same bytes */
	/* written merged pages stay private; the new memory is not registered: nothing merges */
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), 0);
	for (size_t i = 0; i < 16; i++) {
		bool store = true;
		assert_true(maps_line(hole + i * PG, NULL, &store));
		assert_false(store); /* the application's new memory is not ours to merge */
		assert_true(is_fill(hole + i * PG, 3));
	}
	char perms[5];
	assert_true(maps_line(a + 40 * PG, perms, NULL));
	assert_string_equal(perms, "r--p");
	for (size_t i = 0; i < N; i++)
		assert_true(is_fill(a + i * PG, 3));
	s = stats(m);
	assert_int_equal(s.pages_shared + s.pages_sharing, count_sites(a, 16) + count_sites(a + 32 * PG, 32));
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* Merged memory the application moves with mremap keeps its bytes, also after the copy it was merged
 * with is unregistered and the context is gone: a canonical page is freed only when nothing maps it. */
static void test_mremap_moves_merged(void **state)
{
	const size_t N = 16;
	uint8_t *a = map_anon(N), *b = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, 100 + (uint32_t)i), fill(b + i * PG, 100 + (uint32_t)i);
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_register(m, b, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)(2 * N));
	/* move the first half of a's merged run away, untouched, and shrink b's run in place */
	uint8_t *dst = mmap(NULL, N * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(dst != MAP_FAILED);
	assert_ptr_equal(mremap(a, N / 2 * PG, N / 2 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, dst), dst);
	assert_ptr_equal(mremap(b, N * PG, N / 2 * PG, 0), b);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), 0);
	assert_int_equal(mv_merge_unregister(m, b, N * PG), 0);
	assert_int_equal(mv_merge_unregister(m, a, N * PG), 0);
	for (int pass = 0; pass < 3; pass++)
		assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) >= 0);
	mv_merge_unref(m);
	for (size_t i = 0; i < N / 2; i++) {
		assert_true(is_fill(dst + i * PG, 100 + (uint32_t)i));
		assert_true(is_fill(b + i * PG, 100 + (uint32_t)i));
	}
	for (size_t i = N / 2; i < N; i++)
		assert_true(is_fill(a + i * PG, 100 + (uint32_t)i));
	munmap(dst, N * PG);
	munmap(a + N / 2 * PG, N / 2 * PG);
	munmap(b, N / 2 * PG);
}

/* ---- mapping flags ---- */

/* The VmFlags of the mapping at addr, from /proc/self/smaps ("" if none). */
static void vmflags_of(const void *addr, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	assert_non_null(f);
	char line[1024];
	bool in = false;
	out[0] = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s0, e0;
		if (sscanf(line, "%lx-%lx ", &s0, &e0) == 2 && strchr(line, ' ') && line[0] != ' ')
			in = (uintptr_t)addr >= s0 && (uintptr_t)addr < e0;
		else if (in && !strncmp(line, "VmFlags:", 8)) {
			snprintf(out, len, "%s", line + 8);
			break;
		}
	}
	fclose(f);
}

static bool has_flag(const void *addr, const char *flag)
{
	char fl[1024], want[8];
	vmflags_of(addr, fl, sizeof(fl));
	snprintf(want, sizeof(want), " %s", flag);
	return strstr(fl, want) != NULL;
}

static uint64_t vmlck_kb(void)
{
	FILE *f = fopen("/proc/self/status", "re");
	assert_non_null(f);
	char line[256];
	unsigned long kb = 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %lu kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* DONTFORK and DONTDUMP memory merges and keeps its flags, also after unregistering; mlocked and
 * WIPEONFORK memory is never merged, so it keeps its lock and a fork child still gets zeros. */
static void test_mapping_flags_kept(void **state)
{
	const size_t N = 32;
	uint8_t *dc = map_anon(N), *dd = map_anon(N), *lo = map_anon(N), *wf = map_anon(N);
	uint8_t *all[] = { dc, dd, lo, wf };
	for (int k = 0; k < 4; k++)
		for (size_t i = 0; i < N; i++)
			fill(all[k] + i * PG, 7);
	assert_int_equal(madvise(dc, N * PG, MADV_DONTFORK), 0);
	assert_int_equal(madvise(dd, N * PG, MADV_DONTDUMP), 0);
	assert_int_equal(madvise(wf, N * PG, MADV_WIPEONFORK), 0);
	uint64_t lck0 = vmlck_kb();
	/* RLIMIT_MEMLOCK may forbid it to an ordinary user, and ASan makes mlock do nothing */
	bool locked = mlock(lo, N * PG) == 0 && has_flag(lo, "lo");
	uint64_t lck1 = vmlck_kb();
	mv_merge *m = ctx_new();
	for (int k = 0; k < 4; k++)
		assert_int_equal(mv_merge_register(m, all[k], N * PG), 0);
	for (int pass = 0; pass < 2; pass++)
		assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) >= 0);
	assert_int_equal(count_sites(dc, N), N);
	assert_int_equal(count_sites(dd, N), N);
	assert_int_equal(count_sites(wf, N), 0);
	if (locked)
		assert_int_equal(count_sites(lo, N), 0);
	assert_int_equal(vmlck_kb(), lck1);
	for (size_t i = 0; i < N; i++) {
		assert_true(has_flag(dc + i * PG, "dc"));
		assert_true(has_flag(dd + i * PG, "dd"));
		assert_true(has_flag(wf + i * PG, "wf"));
	}
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (size_t i = 0; i < N; i++)
			if (wf[i * PG] != 0)
				_exit(2); /* the parent's bytes must not reach the child */
		signal(SIGSEGV, SIG_DFL);
		(void)*(volatile uint8_t *)dc; /* not in the child at all */
		_exit(3);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
	/* after unregistering: private again, flags still there */
	mv_merge_unref(m);
	for (size_t i = 0; i < N; i++) {
		assert_true(has_flag(dc + i * PG, "dc"));
		assert_true(has_flag(dd + i * PG, "dd"));
		assert_true(is_fill(dc + i * PG, 7));
		assert_true(is_fill(dd + i * PG, 7));
		assert_true(is_fill(wf + i * PG, 7));
		assert_true(is_fill(lo + i * PG, 7));
	}
	assert_int_equal(count_sites(dc, N), 0);
	if (locked)
		munlock(lo, N * PG);
	assert_int_equal(vmlck_kb(), lck0);
	for (int k = 0; k < 4; k++)
		munmap(all[k], N * PG);
}

/* ---- zero pages ---- */

static void test_zero_pages(void **state)
{
	const size_t N = 32;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		memset(a + i * PG, i < 24 ? 0 : 0x33, PG);
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	struct mv_merge_stats s = stats(m);
	assert_int_equal(s.zero_pages, 24);
	assert_int_equal(s.pages_shared, 1); /* zero pages never use the store */
	assert_int_equal(s.pages_sharing, 7);
	for (size_t i = 0; i < 24; i++)
		assert_false(pagemap(a + i * PG) & PM_PRESENT); /* not even faulted back yet */
	for (size_t i = 0; i < 24; i++)
		assert_int_equal(a[i * PG + 17], 0);
	a[5 * PG] = 1;
	s = stats(m);
	assert_int_equal(s.zero_pages, 23);
	/* untouched pages are not counted: they are the zero page already */
	uint8_t *b = map_anon(16);
	assert_int_equal(mv_merge_register(m, b, 16 * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), 0);
	assert_int_equal(stats(m).zero_pages, 23);
	mv_merge_unref(m);
	munmap(a, N * PG);
	munmap(b, 16 * PG);
}

/* ---- partitions, sharing limit, many regions ---- */

static void test_partitions_never_merge(void **state)
{
	uint8_t *a = map_anon(4), *b = map_anon(4);
	for (size_t i = 0; i < 4; i++)
		fill(a + i * PG, (uint32_t)i), fill(b + i * PG, (uint32_t)i);
	mv_merge *m1 = ctx_new(), *m2 = ctx_new();
	assert_int_equal(mv_merge_register(m1, a, 4 * PG), 0);
	assert_int_equal(mv_merge_register(m2, b, 4 * PG), 0);
	/* the same range in two partitions is refused by the kernel's one-userfaultfd-per-range rule */
	assert_int_equal(mv_merge_register(m2, a, 4 * PG), -EBUSY);
	assert_int_equal(mv_merge_scan(m1, 0, 0, MV_MERGE_STABLE), 0);
	assert_int_equal(mv_merge_scan(m2, 0, 0, MV_MERGE_STABLE), 0);
	assert_int_equal(stats(m1).pages_shared, 0);
	assert_int_equal(stats(m2).pages_shared, 0);
	assert_int_equal(stats(m1).pages_unshared, 0); /* the pass ended: the table of unique pages is reset */
	mv_merge_unref(m1);
	mv_merge_unref(m2);
	munmap(a, 4 * PG);
	munmap(b, 4 * PG);
}

static void test_max_page_sharing(void **state)
{
	const size_t N = 600;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, 99);
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	struct mv_merge_stats s = stats(m);
	assert_int_equal(s.pages_shared, 3); /* 256 + 256 + 88 */
	assert_int_equal(s.pages_sharing, N - 3);
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* The kernel selftest's "merge across many regions": separate mappings registered one by one. */
static void test_many_ranges(void **state)
{
	enum { R = 100 };
	uint8_t *r[R];
	mv_merge *m = ctx_new();
	for (int i = 0; i < R; i++) {
		r[i] = map_anon(2);
		fill(r[i], 5);
		fill(r[i] + PG, (uint32_t)i + 1000);
		assert_int_equal(mv_merge_register(m, r[i], 2 * PG), 0);
	}
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), R);
	struct mv_merge_stats s = stats(m);
	assert_int_equal(s.pages_shared, 1);
	assert_int_equal(s.pages_sharing, R - 1);
	assert_int_equal(s.ranges, R);
	struct mv_merge_stats rs;
	assert_int_equal(mv_merge_range_stats(m, r[7], &rs, sizeof(rs)), 0);
	assert_int_equal(rs.pages_shared, 1);
	assert_int_equal(rs.pages_sharing, 0);
	assert_int_equal(rs.pages_registered, 2);
	assert_int_equal(mv_merge_range_stats(m, r[7] + PG, &rs, sizeof(rs)), -ENOENT);
	for (int i = 0; i < R; i++) {
		assert_true(is_fill(r[i], 5));
		assert_true(is_fill(r[i] + PG, (uint32_t)i + 1000));
	}
	mv_merge_unref(m);
	for (int i = 0; i < R; i++)
		munmap(r[i], 2 * PG);
}

/* ---- mapping budget ---- */

static uint64_t maps_now(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	uint64_t n = 0;
	int c;
	while ((c = fgetc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

static void test_map_budget(void **state)
{
	/* pairs of identical pages separated by unique ones: every merge needs mappings of its own */
	const size_t N = 3000;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, i % 3 == 2 ? (uint32_t)(i + 100000) : (uint32_t)(i / 3));
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	struct mv_merge_stats s = stats(m);
	struct mv_merge_knobs k;
	mv_merge_get_knobs(m, &k);
	/* leave room for about 200 more mappings */
	k.map_reserve = (uint32_t)(s.map_limit - maps_now() - 200);
	assert_int_equal(mv_merge_set_knobs(m, &k), 0);
	int merged = mv_merge_scan(m, 0, 0, MV_MERGE_STABLE);
	assert_true(merged > 0);
	s = stats(m);
	assert_int_equal(s.map_budget_reached, 1);
	assert_true(s.pages_skipped_budget > 0);
	/* our mappings stopped at the budget; the slack is for the test's own (and a sanitizer's) mappings
	 * made since the merger last counted */
	assert_true(maps_now() <= s.map_limit - k.map_reserve + 64);
	assert_int_equal(s.pages_shared + s.pages_sharing, count_sites(a, N));
	for (size_t i = 0; i < N; i++)
		assert_true(is_fill(a + i * PG, i % 3 == 2 ? (uint32_t)(i + 100000) : (uint32_t)(i / 3)));
	/* the application's own mmap still works */
	void *p = mmap(NULL, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	munmap(p, PG);
	k.map_reserve = (uint32_t)s.map_limit;
	assert_int_equal(mv_merge_set_knobs(m, &k), -EINVAL);
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
	mv_merge *m = NULL;
	assert_int_equal(mv_merge_new(NULL, 1, &m), -EINVAL);
	assert_int_equal(mv_merge_new(NULL, 0, NULL), -EINVAL);
	m = ctx_new();
	uint8_t *a = map_anon(8);
	assert_int_equal(mv_merge_register(m, a + 1, PG), -EINVAL);
	assert_int_equal(mv_merge_register(m, a, 0), -EINVAL);
	assert_int_equal(mv_merge_register(m, a, 100), -EINVAL);
	assert_int_equal(mv_merge_register(NULL, a, PG), -EINVAL);
	munmap(a + 4 * PG, PG);
	assert_int_equal(mv_merge_register(m, a, 8 * PG), -ENOMEM);
	void *sh = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_int_equal(mv_merge_register(m, sh, PG), -EACCES);
	void *ro = mmap(NULL, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_int_equal(mv_merge_register(m, ro, PG), -EACCES);
	int fd = open("/proc/self/exe", O_RDONLY);
	void *file = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_int_equal(mv_merge_register(m, file, PG), -EACCES);
	assert_int_equal(mv_merge_register(m, a, 4 * PG), 0);
	assert_int_equal(mv_merge_register(m, a + PG, PG), -EEXIST);
	assert_int_equal(mv_merge_unregister(m, a + PG, PG), -ENOENT);
	assert_int_equal(mv_merge_scan(m, 0, 0, 0x80), -EINVAL);
	assert_int_equal(mv_merge_scan(NULL, 0, 0, 0), -EINVAL);
	struct mv_merge_stats s;
	assert_int_equal(mv_merge_get_stats(m, &s, 0), -EINVAL);
	assert_int_equal(mv_merge_get_stats(m, &s, sizeof(s) + 8), -EINVAL);
	assert_int_equal(mv_merge_get_stats(m, &s, 16), 0); /* an older, shorter struct */
	assert_int_equal(mv_merge_set_knobs(m, NULL), -EINVAL);
	mv_merge_unref(m);
	munmap(sh, PG);
	munmap(ro, PG);
	munmap(file, PG);
	close(fd);
	munmap(a, 4 * PG);
	munmap(a + 5 * PG, 3 * PG);
}

/* ---- the seed's operations as functions (no preload library) ---- */

static void test_ksm_functions(void **state)
{
	const size_t N = 16;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, (uint32_t)(i % 2));
	int fd = mv_ksm_open(O_CLOEXEC);
	if (fd == -ENOSYS || fd == -EPERM)
		skip();
	assert_true(fd >= 0);
	assert_int_equal(mv_ksm_get_api_version(fd), KSM_API_VERSION);
	int sma = mv_ksm_create_shared_memory_area(fd), scan = mv_ksm_create_scan(fd);
	assert_true(sma >= 0 && scan >= 0);
	struct ksm_memory_region reg = { .npages = N, .addr = (uintptr_t)a };
	assert_int_equal(mv_ksm_register_memory_region(sma, &reg), 0);
	struct ksm_user_scan us = { .pages_to_scan = N, .max_pages_to_merge = N, .flags = ksm_control_flags_run };
	assert_int_equal(mv_ksm_scan(scan, &us), 0);
	assert_int_equal(count_sites(a, N), N);
	/* the wrong kind of fd, an fd that is not ours, missing structs */
	assert_int_equal(mv_ksm_scan(sma, &us), -EINVAL);
	assert_int_equal(mv_ksm_register_memory_region(scan, &reg), -EINVAL);
	assert_int_equal(mv_ksm_get_api_version(0), -EBADF);
	assert_int_equal(mv_ksm_scan(scan, NULL), -EFAULT);
	struct ksm_kthread_info info = { 0 };
	assert_int_equal(mv_ksm_get_info_kthread(fd, &info), 0);
	assert_int_equal(mv_ksm_close(sma), 0); /* closing the area removes its regions */
	assert_int_equal(count_sites(a, N), 0);
	for (size_t i = 0; i < N; i++)
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 2)));
	assert_int_equal(mv_ksm_scan(scan, &us), -EAGAIN);
	assert_int_equal(mv_ksm_close(sma), -EBADF);
	assert_int_equal(mv_ksm_close(scan), 0);
	assert_int_equal(mv_ksm_close(fd), 0);
	munmap(a, N * PG);
}

/* ---- memvisor merge ---- */

static char *run_cli(void)
{
	const char *cli = getenv("MEMVISOR_CLI");
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "%s merge --json", cli);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	static char out[65536];
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = 0;
	assert_int_equal(pclose(p), 0);
	return out;
}

static void test_cli_shows_contexts(void **state)
{
	if (!getenv("MEMVISOR_CLI"))
		skip();
	char dir[] = "/tmp/mv-merge-cli-XXXXXX";
	assert_non_null(mkdtemp(dir));
	setenv("MEMVISOR_RUNTIME_DIR", dir, 1);
	const size_t N = 64;
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, (uint32_t)(i % 4));
	mv_merge *m = ctx_new();
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	/* a second process merges too, and is killed without cleaning up */
	int go[2];
	assert_int_equal(pipe(go), 0);
	pid_t child = fork();
	if (child == 0) {
		mv_merge *c = NULL;
		uint8_t *b = map_anon(8);
		for (size_t i = 0; i < 8; i++)
			fill(b + i * PG, 1);
		if (mv_merge_new(NULL, 0, &c) < 0 || mv_merge_register(c, b, 8 * PG) < 0 ||
		    mv_merge_scan(c, 0, 0, MV_MERGE_STABLE) != 8)
			_exit(1);
		char x = 1;
		if (write(go[1], &x, 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	char x;
	assert_int_equal(read(go[0], &x, 1), 1);
	char *out = run_cli();
	char want[64];
	snprintf(want, sizeof(want), "{\"pid\":%d,", (int)getpid());
	char *mine = strstr(out, want);
	assert_non_null(mine);
	assert_non_null(strstr(mine, "\"pages_shared\":4,\"pages_sharing\":60,"));
	snprintf(want, sizeof(want), "{\"pid\":%d,", (int)child);
	char *theirs = strstr(out, want);
	assert_non_null(theirs);
	assert_non_null(strstr(theirs, "\"pages_shared\":1,\"pages_sharing\":7,"));
	assert_non_null(strstr(out, "\"totals\":{\"pages_shared\":5,\"pages_sharing\":67,"));
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	out = run_cli();
	assert_null(strstr(out, want)); /* the dead process's board is gone */
	char path[300];
	snprintf(path, sizeof(path), "%s/merge", dir);
	int files = 0;
	DIR *d = opendir(path);
	struct dirent *e;
	while (d && (e = readdir(d)))
		files += e->d_name[0] != '.';
	closedir(d);
	assert_int_equal(files, 1);
	mv_merge_unref(m);
	out = run_cli();
	assert_non_null(strstr(out, "\"contexts\":[]"));
	munmap(a, N * PG);
	close(go[0]);
	close(go[1]);
	rmdir(path);
	rmdir(dir);
	unsetenv("MEMVISOR_RUNTIME_DIR");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_merge_and_read),
		cmocka_unit_test(test_second_look),
		cmocka_unit_test(test_cow_isolation),
		cmocka_unit_test(test_writers_race_merges),
		cmocka_unit_test(test_scanner_thread),
		cmocka_unit_test(test_fork_after_merge),
		cmocka_unit_test(test_unregister_restores_private),
		cmocka_unit_test(test_unregister_prot_none),
		cmocka_unit_test(test_fork_child_registers_inherited),
		cmocka_unit_test(test_two_contexts_one_range),
		cmocka_unit_test(test_app_munmap_mprotect),
		cmocka_unit_test(test_mremap_moves_merged),
		cmocka_unit_test(test_mapping_flags_kept),
		cmocka_unit_test(test_zero_pages),
		cmocka_unit_test(test_partitions_never_merge),
		cmocka_unit_test(test_max_page_sharing),
		cmocka_unit_test(test_many_ranges),
		cmocka_unit_test(test_map_budget),
		cmocka_unit_test(test_bad_input),
		cmocka_unit_test(test_ksm_functions),
		cmocka_unit_test(test_cli_shows_contexts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
