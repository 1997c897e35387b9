/* SPDX-License-Identifier: MIT */
/* Merged memory keeps the semantics of the anonymous memory it was: madvise (DONTNEED and FREE read
 * zeros, WIPEONFORK, DONTFORK and DONTDUMP hold, REMOVE fails as on anonymous memory) through
 * mv_merge_advise, checked from outside the engine (/proc/self/maps, pagemap, smaps, fork children),
 * with the statistics compared to that reading; and a stress of threads that mremap, mprotect,
 * madvise, unmap and write their own memory while a scanner keeps merging it. */
#define _GNU_SOURCE
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "memvisor/merge.h"

#define PG 4096
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define PM_FILE (1ull << 61)

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

static bool is_zero(const uint8_t *page)
{
	for (size_t i = 0; i < PG; i++)
		if (page[i])
			return false;
	return true;
}

static uint64_t pagemap(const void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	uint64_t v = 0;
	assert_int_equal(pread(fd, &v, 8, (off_t)((uintptr_t)addr / PG) * 8), 8);
	close(fd);
	return v;
}

/* The /proc/self/maps line of addr: its permissions, and whether it maps the merge store. */
static bool maps_line(const void *addr, char *perms, bool *store)
{
	FILE *f = fopen("/proc/self/maps", "re");
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

/* Is the page a merged site: a store mapping whose page is the file's (or not faulted yet)? */
static bool is_merged(const uint8_t *page)
{
	bool store = false;
	if (!maps_line(page, NULL, &store) || !store)
		return false;
	uint64_t pm = pagemap(page);
	return (pm & PM_PRESENT) ? (pm & PM_FILE) != 0 : !(pm & PM_SWAPPED);
}

static size_t count_merged(const uint8_t *base, size_t pages)
{
	size_t n = 0;
	for (size_t i = 0; i < pages; i++)
		n += is_merged(base + i * PG);
	return n;
}

/* The VmFlags line of the smaps entry covering addr has flag (two letters). */
static bool vmflag(const void *addr, const char *flag)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	assert_non_null(f);
	char line[1024];
	bool in = false, has = false;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (uintptr_t)addr >= s && (uintptr_t)addr < e;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			char want[4] = { ' ', flag[0], flag[1], 0 };
			has = strstr(line + 7, want) != NULL;
			break;
		}
	}
	fclose(f);
	return has;
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

/* pages_shared + pages_sharing: the merged sites the context counts. */
static uint64_t sites(mv_merge *m)
{
	struct mv_merge_stats s;
	assert_int_equal(mv_merge_get_stats(m, &s, sizeof(s)), 0);
	return s.pages_shared + s.pages_sharing;
}

/* N pages, content i % 8: four sites of each of eight contents, all merged. */
#define N 32
static uint8_t *merged_area(mv_merge *m)
{
	uint8_t *a = map_anon(N);
	for (size_t i = 0; i < N; i++)
		fill(a + i * PG, (uint32_t)(i % 8));
	assert_int_equal(mv_merge_register(m, a, N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), N);
	for (size_t i = 0; i < N; i++)
		(void)*(volatile uint8_t *)(a + i * PG); /* faulted: pagemap shows the file's page */
	assert_int_equal(count_merged(a, N), N);
	assert_int_equal(sites(m), N);
	return a;
}

/* Pages outside [lo, hi) are still merged and hold their bytes. */
static void others_intact(const uint8_t *a, size_t lo, size_t hi)
{
	for (size_t i = 0; i < N; i++) {
		if (i >= lo && i < hi)
			continue;
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 8)));
		assert_true(is_merged(a + i * PG));
	}
}

/* ---- mremap ---- */

/* Growing merged memory reads zeros, and moving what merging split into several mappings works. */
static void test_remap(void **state)
{
	(void)state;
	mv_merge *m = ctx_new();
	uint8_t *a = merged_area(m);
	void *r;
	/* shrink a merged run, grow it back in place: the new page is zeros, not the store's next page */
	assert_int_equal(mv_merge_remap(a + 4 * PG, 2 * PG, PG, 0, NULL, &r), 0);
	assert_ptr_equal(r, a + 4 * PG);
	assert_int_equal(mv_merge_remap(a + 4 * PG, PG, 2 * PG, 0, NULL, &r), 0);
	assert_true(is_fill(a + 4 * PG, 4));
	assert_true(is_zero(a + 5 * PG));
	/* move 16 pages that were one mapping before they merged */
	uint8_t *to = mmap(NULL, 16 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(to != MAP_FAILED);
	assert_int_equal(mv_merge_remap(a + 8 * PG, 16 * PG, 16 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, to, &r), 0);
	assert_ptr_equal(r, to);
	for (size_t i = 0; i < 16; i++)
		assert_true(is_fill(to + i * PG, (uint32_t)((8 + i) % 8)));
	/* and the moved memory is plain anonymous memory that grows with zeros */
	assert_int_equal(count_merged(to, 16), 0);
	assert_int_equal(mv_merge_remap(a, 4 * PG, 4 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, a + 8 * PG, &r), 0);
	for (size_t i = 0; i < 4; i++)
		assert_true(is_fill(a + (8 + i) * PG, (uint32_t)i));
	assert_int_equal(mv_merge_remap(NULL, PG, PG, 0, NULL, NULL), -EINVAL);
	mv_merge_unref(m);
	munmap(to, 16 * PG);
	munmap(a + 4 * PG, 28 * PG);
}

/* ---- DONTNEED, FREE ---- */

static void test_dontneed_reads_zeros(void **state)
{
	mv_merge *m = ctx_new();
	uint8_t *a = merged_area(m);
	/* across runs of consecutive canonical pages and into the middle of one */
	assert_int_equal(mv_merge_advise(a + 4 * PG, 8 * PG, MADV_DONTNEED), 0);
	char perms[5];
	for (size_t i = 4; i < 12; i++) {
		assert_true(is_zero(a + i * PG));
		assert_false(is_merged(a + i * PG));
		assert_true(maps_line(a + i * PG, perms, NULL));
		assert_string_equal(perms, "rw-p");
	}
	others_intact(a, 4, 12);
	assert_int_equal(sites(m), N - 8);
	assert_int_equal(count_merged(a, N), N - 8);

	/* the protection stays: read-only, and PROT_NONE (made accessible afterwards to look) */
	assert_int_equal(mprotect(a + 16 * PG, 2 * PG, PROT_READ), 0);
	assert_int_equal(mprotect(a + 18 * PG, 2 * PG, PROT_NONE), 0);
	assert_int_equal(mv_merge_advise(a + 16 * PG, 4 * PG, MADV_DONTNEED), 0);
	assert_true(maps_line(a + 16 * PG, perms, NULL));
	assert_string_equal(perms, "r--p");
	assert_true(maps_line(a + 18 * PG, perms, NULL));
	assert_string_equal(perms, "---p");
	assert_true(is_zero(a + 16 * PG) && is_zero(a + 17 * PG));
	assert_int_equal(mprotect(a + 16 * PG, 4 * PG, PROT_READ | PROT_WRITE), 0);
	for (size_t i = 16; i < 20; i++)
		assert_true(is_zero(a + i * PG));
	assert_int_equal(sites(m), N - 12);
	assert_int_equal(count_merged(a, N), N - 12);

	/* the zeroed pages are still registered: written again, they merge again */
	fill(a + 4 * PG, 4);
	assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) >= 1); /* the zeroed pages may count as zero pages */
	(void)*(volatile uint8_t *)(a + 4 * PG);
	assert_true(is_merged(a + 4 * PG) && is_fill(a + 4 * PG, 4));
	assert_int_equal(sites(m), N - 11);
	assert_int_equal(count_merged(a, N), N - 11);

	/* mlocked merged memory refuses DONTNEED as locked anonymous memory does, and keeps its bytes;
	 * DONTNEED_LOCKED zeros it and it stays locked (sanitizers make mlock a no-op: then nothing to see) */
	size_t gone = 11;
	if (mlock(a + 24 * PG, 2 * PG) == 0 && vmflag(a + 24 * PG, "lo")) {
		assert_int_equal(mv_merge_advise(a + 24 * PG, 2 * PG, MADV_DONTNEED), -EINVAL);
		assert_true(is_fill(a + 24 * PG, 0) && is_fill(a + 25 * PG, 1));
		assert_int_equal(mv_merge_advise(a + 24 * PG, PG, MADV_DONTNEED_LOCKED), 0);
		assert_true(is_zero(a + 24 * PG) && is_fill(a + 25 * PG, 1));
		assert_true(vmflag(a + 24 * PG, "lo"));
		assert_int_equal(munlock(a + 24 * PG, 2 * PG), 0);
		gone += 2; /* mlock populates a writable private mapping by writing: copy-on-write unmerged both */
	}
	assert_int_equal(sites(m), N - gone);
	assert_int_equal(count_merged(a, N), N - gone);
	mv_merge_unref(m);
	munmap(a, N * PG);
}

static void test_madv_free(void **state)
{
	mv_merge *m = ctx_new();
	uint8_t *a = merged_area(m);
	assert_int_equal(mv_merge_advise(a, 4 * PG, MADV_FREE), 0);
	for (size_t i = 0; i < 4; i++) /* freed memory reads its old bytes or zeros, page by page */
		assert_true(is_zero(a + i * PG) || is_fill(a + i * PG, (uint32_t)(i % 8)));
	fill(a + 2 * PG, 77); /* a write after MADV_FREE keeps the page */
	assert_true(is_fill(a + 2 * PG, 77));
	others_intact(a, 0, 4);
	assert_int_equal(sites(m), count_merged(a, N));
	assert_int_equal(sites(m), N - 4);
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* MADV_REMOVE is for shared mappings: on private anonymous memory it fails with EINVAL, and so it must
 * on merged memory (a private file mapping would answer EACCES), without losing a byte. */
static void test_remove_refused(void **state)
{
	mv_merge *m = ctx_new();
	uint8_t *a = merged_area(m);
	uint8_t *plain = map_anon(1);
	plain[0] = 1;
	assert_int_equal(madvise(plain, PG, MADV_REMOVE), -1);
	int anon_errno = errno;
	assert_int_equal(mv_merge_advise(a, 2 * PG, MADV_REMOVE), -anon_errno);
	assert_true(is_fill(a, 0) && is_fill(a + PG, 1));
	others_intact(a, 0, 2);
	assert_int_equal(sites(m), count_merged(a, N));
	mv_merge_unref(m);
	munmap(a, N * PG);
	munmap(plain, PG);
}

/* ---- WIPEONFORK, DONTFORK, DONTDUMP ---- */

static int child_status(pid_t pid)
{
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return st;
}

static void test_wipeonfork(void **state)
{
	mv_merge *m = ctx_new();
	uint8_t *a = merged_area(m);
	assert_int_equal(mv_merge_advise(a, 8 * PG, MADV_WIPEONFORK), 0);
	assert_true(vmflag(a, "wf"));
	for (size_t i = 0; i < 8; i++)
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 8)));
	others_intact(a, 0, 8);
	assert_int_equal(sites(m), N - 8);
	assert_int_equal(count_merged(a, N), N - 8);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (size_t i = 0; i < 8; i++)
			if (!is_zero(a + i * PG))
				_exit(1);
		for (size_t i = 8; i < N; i++)
			if (!is_fill(a + i * PG, (uint32_t)(i % 8)))
				_exit(2);
		_exit(0);
	}
	int st = child_status(pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	for (size_t i = 0; i < 8; i++) /* the parent keeps its bytes */
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 8)));
	/* the flag survives the context letting go of the memory */
	assert_int_equal(mv_merge_unregister(m, a, N * PG), 0);
	assert_true(vmflag(a, "wf"));
	mv_merge_unref(m);
	munmap(a, N * PG);
}

static void test_dontfork(void **state)
{
	mv_merge *m = ctx_new();
	uint8_t *a = merged_area(m);
	assert_int_equal(mv_merge_advise(a + 8 * PG, 4 * PG, MADV_DONTFORK), 0);
	assert_true(vmflag(a + 8 * PG, "dc"));
	others_intact(a, 8, 12);
	assert_int_equal(sites(m), N - 4);
	assert_int_equal(count_merged(a, N), N - 4);
	/* the flag stays when the context gives the memory back */
	assert_int_equal(mv_merge_unregister(m, a, N * PG), 0);
	assert_true(vmflag(a + 8 * PG, "dc"));
	for (size_t i = 0; i < N; i++)
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 8)));
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		signal(SIGSEGV, SIG_DFL);
		if (!is_fill(a + 7 * PG, 7))
			_exit(1);
		(void)*(volatile uint8_t *)(a + 8 * PG); /* not in the child: faults */
		_exit(0);
	}
	int st = child_status(pid);
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGSEGV);
	mv_merge_unref(m);
	munmap(a, N * PG);
}

static void test_dontdump(void **state)
{
	mv_merge *m = ctx_new();
	uint8_t *a = merged_area(m);
	assert_int_equal(mv_merge_advise(a + 12 * PG, 4 * PG, MADV_DONTDUMP), 0);
	assert_true(vmflag(a + 12 * PG, "dd"));
	assert_false(vmflag(a + 11 * PG, "dd"));
	for (size_t i = 12; i < 16; i++)
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 8)));
	others_intact(a, 12, 16);
	assert_int_equal(sites(m), N - 4);
	assert_int_equal(count_merged(a, N), N - 4);
	assert_int_equal(mv_merge_unregister(m, a, N * PG), 0);
	assert_true(vmflag(a + 12 * PG, "dd"));
	assert_int_equal(sites(m), 0);
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* Advice that only hints at access patterns leaves merged pages merged. */
static void test_hints_keep_merges(void **state)
{
	mv_merge *m = ctx_new();
	uint8_t *a = merged_area(m);
	static const int hints[] = { MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_COLD };
	for (size_t i = 0; i < sizeof(hints) / sizeof(hints[0]); i++)
		assert_int_equal(mv_merge_advise(a, N * PG, hints[i]), 0);
	others_intact(a, 0, 0);
	assert_int_equal(sites(m), N);
	/* and the kernel's own answers pass through, with nothing unmerged */
	assert_int_equal(mv_merge_advise(a + 1, PG, MADV_DONTNEED), -EINVAL);
	assert_int_equal(mv_merge_advise(a, PG, 12345), -EINVAL);
	assert_int_equal(mv_merge_advise(a, 0, MADV_DONTNEED), 0);
	others_intact(a, 0, 0);
	mv_merge_unref(m);
	munmap(a, N * PG);
}

/* The engine's short-lived mappings (here the copy that unmerging a page makes) never land in a hole
 * another thread left by unmapping its memory: that thread's MAP_FIXED mmap would replace the
 * engine's mapping, and the engine would then write the merged bytes into the new memory or move it
 * away. A one-page hole made over and over is where mmap would put a one-page copy. */
struct holer {
	uint8_t *page;
	atomic_bool stop;
	unsigned rounds;
	char failure[128];
};

static void *hole_maker(void *arg)
{
	struct holer *h = arg;
	unsigned char vec;
	while (!atomic_load(&h->stop) && !h->failure[0]) {
		if (munmap(h->page, PG) != 0 || mmap(h->page, PG, PROT_READ | PROT_WRITE,
						     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != h->page)
			snprintf(h->failure, sizeof(h->failure), "munmap/mmap failed: %d", errno);
		else if (!is_zero(h->page))
			snprintf(h->failure, sizeof(h->failure), "round %u: fresh memory holds other bytes", h->rounds);
		fill(h->page, 77);
		if (!h->failure[0] && (mincore(h->page, PG, &vec) != 0 || !is_fill(h->page, 77)))
			snprintf(h->failure, sizeof(h->failure), "round %u: the page went or changed", h->rounds);
		h->rounds++;
	}
	return NULL;
}

static void test_engine_maps_nothing_in_holes(void **state)
{
	mv_merge *m = ctx_new();
	uint8_t *a = merged_area(m);
	struct holer h = { .page = map_anon(1) };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, hole_maker, &h), 0);
	size_t unmerged = 0;
	for (int round = 0; round < 300 && !h.failure[0]; round++) {
		for (size_t i = 0; i < N; i++) {
			/* DODUMP copies a merged page into private memory (a temporary mapping moved in place) */
			assert_int_equal(mv_merge_advise(a + i * PG, PG, MADV_DODUMP), 0);
			if (!is_fill(a + i * PG, (uint32_t)(i % 8)))
				fail_msg("round %d: page %zu lost its bytes", round, i);
			unmerged++;
		}
		assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) > 0);
	}
	atomic_store(&h.stop, true);
	assert_int_equal(pthread_join(t, NULL), 0);
	print_message("%zu pages unmerged while another thread unmapped and mapped a page %u times\n", unmerged,
		      h.rounds);
	if (h.failure[0])
		fail_msg("%s", h.failure);
	assert_true(h.rounds > 0);
	for (size_t i = 0; i < N; i++)
		assert_true(is_fill(a + i * PG, (uint32_t)(i % 8)));
	mv_merge_unref(m);
	munmap(a, N * PG);
	munmap(h.page, PG);
}

/* ---- stress ---- */

/* Each thread owns a region of REG pages, all registered: a window of W pages it works in, the rest a
 * landing zone for moves. It keeps a shadow of every page (content seed, or ZERO) and checks it. */
#define REG 96
#define W 48
#define ZERO UINT32_MAX
#define SEEDS 6

struct worker {
	mv_merge *m;
	uint8_t *base;
	uint32_t shadow[REG];
	unsigned seed;
	uint64_t checks, ops[9];
	uint64_t merged_seen;     /* merged sites of the region at each re-registration */
	uint64_t dontneed_merged; /* pages MADV_DONTNEED found mapped from the store */
	int pagemap_fd;
	char failure[256];
};

/* The workers unmap pages and shrink mappings, then map or grow into the hole they made. In a process
 * with other threads (a sanitizer's runtime among them) an mmap elsewhere may take such a hole between
 * the two steps: mremap's grow then fails, and a MAP_FIXED refill would replace the other mapping. The
 * kernel hands out the highest free gap first, so regions placed far below the usual mmap area leave
 * holes nobody else is given. 0x5670'0000'0000 lies above where the kernel puts a PIE program and its
 * heap, and is ordinary application memory for ASan and TSan too. */
static uint8_t *map_apart(size_t pages)
{
	static uintptr_t next = sizeof(void *) == 8 ? (uintptr_t)0x567000000000ull : 0;
	while (next) {
		void *want = (void *)next;
		next += (uintptr_t)1 << 32;
		void *p = mmap(want, pages * PG, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (p == want)
			return p;
		if (p != MAP_FAILED)
			munmap(p, pages * PG); /* a kernel that ignores the flag took it as a hint */
		if (next >= (uintptr_t)0x568000000000ull)
			break;
	}
	return map_anon(pages);
}

static atomic_bool stop_stress;
/* mremap goes through mv_merge_remap and munmap through mv_merge_unmap, as a program under the preload
 * does through its own mremap and munmap. munmap+mmap of registered memory races the scanner's batches:
 * new memory mapped while a batch holds the old one write-protected must never be taken for the old
 * (DESIGN.md, "Nothing the kernel or a device writes is merged away"). MV_STRESS_UNMAP=0 leaves it out. */
static bool stress_unmap;

static void *remap(void *old, size_t old_len, size_t new_len, int flags, void *to)
{
	void *r;
	int e = mv_merge_remap(old, old_len, new_len, flags, to, &r);
	if (e < 0) {
		errno = -e;
		return MAP_FAILED;
	}
	return r;
}

static unsigned rnd(struct worker *w, unsigned n)
{
	w->seed = w->seed * 1103515245u + 12345u;
	return (w->seed >> 8) % n;
}

static bool check_page(struct worker *w, size_t p, const char *after)
{
	const uint8_t *pg = w->base + p * PG;
	bool ok = w->shadow[p] == ZERO ? is_zero(pg) : is_fill(pg, w->shadow[p]);
	w->checks++;
	if (!ok && !w->failure[0])
		snprintf(w->failure, sizeof(w->failure), "page %zu of %p: want %s%u, after %s, merged %d", p,
			 (void *)w->base, w->shadow[p] == ZERO ? "zero" : "seed ",
			 w->shadow[p] == ZERO ? 0 : w->shadow[p], after, is_merged(pg));
	return ok;
}

static bool check_span(struct worker *w, size_t p, size_t n, const char *after)
{
	for (size_t i = p; i < p + n; i++)
		if (!check_page(w, i, after))
			return false;
	return true;
}

static void *stress_worker(void *arg)
{
	struct worker *w = arg;
	while (!atomic_load(&stop_stress) && !w->failure[0]) {
		/* per 100: writes 30, DONTNEED 15, DONTDUMP 15, mprotect 15, munmap 5, re-registration 2, mremap
		 * 18 */
		static const uint8_t op_of[100] = { [30 ... 44] = 2, [45 ... 59] = 3, [60 ... 74] = 4, [75 ... 79] = 5,
						    [80 ... 81] = 8, [82 ... 90] = 6, [91 ... 99] = 7 };
		unsigned op = op_of[rnd(w, 100)];
		if (op == 5 && !stress_unmap)
			op = 0;
		size_t p = rnd(w, W), n = 1 + rnd(w, 8);
		if (p + n > W)
			n = W - p;
		uint8_t *at = w->base + p * PG;
		w->ops[op]++;
		switch (op) {
		case 0: /* writes: duplicates of other pages, so that the scanner keeps merging */
		case 1:
			for (size_t i = p; i < p + n; i++) {
				if (!check_page(w, i, "before a write"))
					return NULL;
				w->shadow[i] = rnd(w, SEEDS);
				fill(w->base + i * PG, w->shadow[i]);
			}
			break;
		case 2: { /* DONTNEED reads zeros */
			uint64_t pm[8];
			if (pread(w->pagemap_fd, pm, n * 8, (off_t)((uintptr_t)at / PG) * 8) == (ssize_t)(n * 8))
				for (size_t i = 0; i < n; i++)
					w->dontneed_merged += (pm[i] & PM_PRESENT) && (pm[i] & PM_FILE);
			if (mv_merge_advise(at, n * PG, MADV_DONTNEED) != 0) {
				snprintf(w->failure, sizeof(w->failure), "MADV_DONTNEED failed");
				return NULL;
			}
			for (size_t i = p; i < p + n; i++)
				w->shadow[i] = ZERO;
			check_span(w, p, n, "MADV_DONTNEED");
			break;
		}
		case 3: /* DONTDUMP and back: bytes unchanged */
			if (mv_merge_advise(at, n * PG, rnd(w, 2) ? MADV_DONTDUMP : MADV_DODUMP) != 0) {
				snprintf(w->failure, sizeof(w->failure), "MADV_DONTDUMP/DODUMP failed");
				return NULL;
			}
			check_span(w, p, n, "MADV_DONTDUMP");
			break;
		case 4: /* PROT_NONE or read-only, and back */
			if (mprotect(at, n * PG, rnd(w, 2) ? PROT_NONE : PROT_READ) != 0) {
				snprintf(w->failure, sizeof(w->failure), "mprotect failed");
				return NULL;
			}
			sched_yield();
			if (mprotect(at, n * PG, PROT_READ | PROT_WRITE) != 0) {
				snprintf(w->failure, sizeof(w->failure), "mprotect back failed");
				return NULL;
			}
			check_span(w, p, n, "mprotect");
			break;
		case 5: /* munmap and a fresh mapping (a plain munmap would race the merges' mmap: merge.h) */
			if (mv_merge_unmap(at, n * PG) != 0 ||
			    mmap(at, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
				    at) {
				snprintf(w->failure, sizeof(w->failure), "munmap/mmap failed");
				return NULL;
			}
			for (size_t i = p; i < p + n; i++)
				w->shadow[i] = ZERO;
			check_span(w, p, n, "munmap+mmap");
			break;
		case 6: { /* move into the landing zone and back */
			/* as on anonymous memory, a range of mixed DONTDUMP and not is several mappings, which
			 * mremap refuses (EFAULT): make it one kind first */
			if (mv_merge_advise(at, n * PG, MADV_DODUMP) != 0) {
				snprintf(w->failure, sizeof(w->failure), "MADV_DODUMP failed");
				return NULL;
			}
			uint8_t *to = w->base + (W + rnd(w, REG - W - 8)) * PG;
			size_t t = (size_t)(to - w->base) / PG;
			if (remap(at, n * PG, n * PG, MREMAP_MAYMOVE | MREMAP_FIXED, to) != to) {
				snprintf(w->failure, sizeof(w->failure), "mremap move failed: %d", errno);
				return NULL;
			}
			for (size_t i = 0; i < n; i++)
				w->shadow[t + i] = w->shadow[p + i];
			if (!check_span(w, t, n, "mremap move"))
				return NULL;
			if (remap(to, n * PG, n * PG, MREMAP_MAYMOVE | MREMAP_FIXED, at) != at) {
				snprintf(w->failure, sizeof(w->failure), "mremap move back failed: %d", errno);
				return NULL;
			}
			/* the landing zone is a hole now: anonymous memory again */
			if (mmap(to, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
			    to) {
				snprintf(w->failure, sizeof(w->failure), "mmap of the landing zone failed");
				return NULL;
			}
			for (size_t i = 0; i < n; i++)
				w->shadow[t + i] = ZERO;
			check_span(w, p, n, "mremap move back");
			break;
		}
		case 8: { /* the context lets go of the region, which is partly mapped anew, and takes it again */
			struct mv_merge_stats s;
			if (mv_merge_range_stats(w->m, w->base, &s, sizeof(s)) != 0 ||
			    mv_merge_unregister(w->m, w->base, REG * PG) != 0) {
				snprintf(w->failure, sizeof(w->failure), "unregister failed");
				return NULL;
			}
			w->merged_seen += s.pages_shared + s.pages_sharing;
			if (!check_span(w, 0, REG, "unregister"))
				return NULL;
			if (munmap(at, n * PG) != 0 || mmap(at, n * PG, PROT_READ | PROT_WRITE,
							    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != at) {
				snprintf(w->failure, sizeof(w->failure), "munmap/mmap failed");
				return NULL;
			}
			for (size_t i = p; i < p + n; i++)
				w->shadow[i] = ZERO;
			if (mv_merge_register(w->m, w->base, REG * PG) != 0) {
				snprintf(w->failure, sizeof(w->failure), "register again failed");
				return NULL;
			}
			break;
		}
		case 7: { /* shrink, then grow back in place */
			if (n < 2 || mv_merge_advise(at, n * PG, MADV_DODUMP) != 0)
				break;
			size_t keep = 1 + rnd(w, (unsigned)n - 1);
			if (remap(at, n * PG, keep * PG, 0, NULL) != at) {
				snprintf(w->failure, sizeof(w->failure), "mremap shrink failed: %d", errno);
				return NULL;
			}
			if (!check_span(w, p, keep, "mremap shrink"))
				return NULL;
			/* Growing anonymous memory adds zeros. */
			if (remap(at, keep * PG, n * PG, 0, NULL) != at) {
				snprintf(w->failure, sizeof(w->failure), "mremap grow failed: %d", errno);
				return NULL;
			}
			for (size_t i = p + keep; i < p + n; i++)
				w->shadow[i] = ZERO;
			check_span(w, p, n, "mremap shrink+grow");
			break;
		}
		}
	}
	return NULL;
}

static void test_stress(void **state)
{
	const char *env = getenv("MV_STRESS_SECONDS");
	double seconds = env ? atof(env) : 3.0;
	stress_unmap = !getenv("MV_STRESS_UNMAP") || atoi(getenv("MV_STRESS_UNMAP"));
	enum { THREADS = 3 };
	mv_merge *m = ctx_new();
	static struct worker w[THREADS];
	for (int t = 0; t < THREADS; t++) {
		memset(&w[t], 0, sizeof(w[t]));
		w[t].m = m;
		w[t].seed = 0x1234u + (unsigned)t * 7919u;
		w[t].base = map_apart(REG);
		w[t].pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		assert_true(w[t].pagemap_fd >= 0);
		for (size_t i = 0; i < REG; i++) {
			w[t].shadow[i] = i < W ? (uint32_t)(i % SEEDS) : ZERO;
			if (i < W)
				fill(w[t].base + i * PG, w[t].shadow[i]);
		}
		assert_int_equal(mv_merge_register(m, w[t].base, REG * PG), 0);
	}
	assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) > 0);
	struct mv_merge_knobs k;
	assert_int_equal(mv_merge_get_knobs(m, &k), 0);
	k.run = 1;
	k.sleep_usecs = 200;
	k.pages_to_scan = 64;
	k.scan_flags = MV_MERGE_STABLE;
	assert_int_equal(mv_merge_set_knobs(m, &k), 0);
	atomic_store(&stop_stress, false);
	pthread_t th[THREADS];
	for (int t = 0; t < THREADS; t++)
		assert_int_equal(pthread_create(&th[t], NULL, stress_worker, &w[t]), 0);
	struct timespec ts = { (time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9) };
	nanosleep(&ts, NULL);
	atomic_store(&stop_stress, true);
	for (int t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
	struct mv_merge_stats s;
	assert_int_equal(mv_merge_get_stats(m, &s, sizeof(s)), 0);
	k.run = 0;
	assert_int_equal(mv_merge_set_knobs(m, &k), 0);
	uint64_t checks = 0, ops[9] = { 0 }, merged_seen = 0, dontneed_merged = 0;
	bool failed = false;
	for (int t = 0; t < THREADS; t++) {
		checks += w[t].checks;
		merged_seen += w[t].merged_seen;
		dontneed_merged += w[t].dontneed_merged;
		close(w[t].pagemap_fd);
		for (int o = 0; o < 9; o++)
			ops[o] += w[t].ops[o];
		if (w[t].failure[0]) {
			print_message("thread %d: %s\n", t, w[t].failure);
			failed = true;
		}
	}
	print_message(
		"stress: %llu page checks; writes %llu, dontneed %llu (on %llu merged pages), dontdump %llu, "
		"mprotect %llu, munmap+mmap while registered %llu, re-registrations with munmap+mmap %llu (%llu "
		"merged sites let go), mremap move %llu, mremap shrink+grow %llu; scanned %llu, full scans %llu\n",
		(unsigned long long)checks, (unsigned long long)(ops[0] + ops[1]), (unsigned long long)ops[2],
		(unsigned long long)dontneed_merged, (unsigned long long)ops[3], (unsigned long long)ops[4],
		(unsigned long long)ops[5], (unsigned long long)ops[8], (unsigned long long)merged_seen,
		(unsigned long long)ops[6], (unsigned long long)ops[7], (unsigned long long)s.pages_scanned,
		(unsigned long long)s.full_scans);
	assert_true(merged_seen > 0 && dontneed_merged > 0); /* the scanner did merge while the threads worked */
	assert_false(failed);
	/* Quiet now: every page is what its thread last made it, and the counts match maps and pagemap. */
	for (int t = 0; t < THREADS; t++) {
		assert_true(check_span(&w[t], 0, REG, "the end"));
		assert_true(s.pages_scanned > 0);
	}
	uint64_t counted = 0;
	for (int t = 0; t < THREADS; t++)
		counted += count_merged(w[t].base, REG);
	assert_int_equal(sites(m), counted);
	for (int t = 0; t < THREADS; t++) {
		assert_int_equal(mv_merge_unregister(m, w[t].base, REG * PG), 0);
		assert_true(check_span(&w[t], 0, REG, "unregister"));
		munmap(w[t].base, REG * PG);
	}
	mv_merge_unref(m);
}

int main(void)
{
	/* contexts publish their statistics under the runtime directory: a private one */
	char dir[] = "/tmp/mv-semantics-XXXXXX";
	if (!mkdtemp(dir))
		return 1;
	setenv("MEMVISOR_RUNTIME_DIR", dir, 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dontneed_reads_zeros),
		cmocka_unit_test(test_madv_free),
		cmocka_unit_test(test_remove_refused),
		cmocka_unit_test(test_wipeonfork),
		cmocka_unit_test(test_dontfork),
		cmocka_unit_test(test_dontdump),
		cmocka_unit_test(test_hints_keep_merges),
		cmocka_unit_test(test_engine_maps_nothing_in_holes),
		cmocka_unit_test(test_remap),
		cmocka_unit_test(test_stress),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	char sub[sizeof(dir) + 8];
	snprintf(sub, sizeof(sub), "%s/merge", dir);
	rmdir(sub);
	rmdir(dir);
	return r;
}
