/* SPDX-License-Identifier: MIT */
/* Named merge partitions: processes of one user merge across each other through the broker's
 * canonical pages; a member killed with SIGKILL has its pages collected; partitions and users never
 * merge with each other. */
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
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"
#include "memvisor/merge.h"
#include "merge/partition_files.h"

#define PG 4096

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

static uint8_t *data(size_t n, uint32_t base)
{
	uint8_t *p = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	for (size_t i = 0; i < n; i++)
		fill(p + i * PG, base + (uint32_t)i);
	return p;
}

/* Pages of [p, p+n) mapped from a partition's file. */
static size_t partition_mapped(const uint8_t *p, size_t n)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	size_t count = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx", &s, &e) != 2 || !strstr(line, "memvisor-partition"))
			continue;
		uintptr_t lo = s > (uintptr_t)p ? s : (uintptr_t)p,
			  hi = e < (uintptr_t)p + n * PG ? e : (uintptr_t)p + n * PG;
		if (hi > lo)
			count += (hi - lo) / PG;
	}
	fclose(f);
	return count;
}

static int setup(void **state)
{
	const char *extra[] = { "--sweep-ms", "50", NULL };
	return tb_start(&TB, extra) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
	tb_stop(&TB);
	return 0;
}

static struct mv_merge_stats stats(mv_merge *m)
{
	struct mv_merge_stats s;
	assert_int_equal(mv_merge_get_stats(m, &s, sizeof(s)), 0);
	return s;
}

static void xwrite(int fd, char c)
{
	assert_int_equal(write(fd, &c, 1), 1);
}

static char xread(int fd)
{
	char c = 0;
	assert_int_equal(read(fd, &c, 1), 1);
	return c;
}

/* The child's side of the cross-process test: same data as the parent, scans when told. */
static int child_member(int in, int out, const char *name, size_t n)
{
	uint8_t *p = data(n, 1000);
	mv_merge *m = NULL;
	char c;
	if (mv_merge_new(name, 0, &m) < 0 || mv_merge_register(m, p, n * PG) < 0)
		return 1;
	if (write(out, "r", 1) != 1)
		return 2;
	while (read(in, &c, 1) == 1) {
		if (c == 's') {
			if (mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) < 0)
				return 3;
		} else if (c == 'w') {
			p[0] ^= 0xff; /* the child's write: a private copy */
		} else if (c == 'c') {
			int bad = 0;
			for (size_t i = 1; i < n; i++)
				bad += !is_fill(p + i * PG, 1000 + (uint32_t)i);
			bad += partition_mapped(p, n) != n; /* the written page is a private copy inside the mapping */
			c = bad ? 'B' : 'G';
		} else if (c == 'q') {
			break;
		}
		if (write(out, &c, 1) != 1)
			return 4;
	}
	mv_merge_unref(m);
	return 0;
}

static void test_two_processes_merge(void **state)
{
	const size_t N = 256;
	int to[2], from[2];
	assert_int_equal(pipe(to), 0);
	assert_int_equal(pipe(from), 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(to[1]), close(from[0]);
		_exit(child_member(to[0], from[1], "shared-heaps", N));
	}
	close(to[0]), close(from[1]);
	assert_int_equal(xread(from[0]), 'r');
	uint8_t *p = data(N, 1000); /* the same bytes the child built */
	mv_merge *m = NULL;
	assert_int_equal(mv_merge_new("shared-heaps", 0, &m), 0);
	assert_int_equal(mv_merge_register(m, p, N * PG), 0);
	/* alone, nothing merges: every page is unique in this process */
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), 0);
	/* the child sees our pages' hints and has its own made canonical... */
	xwrite(to[1], 's');
	assert_int_equal(xread(from[0]), 's');
	/* ...which our next scan finds, compares and maps */
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)N);
	assert_int_equal(partition_mapped(p, N), N);
	for (size_t i = 0; i < N; i++)
		assert_true(is_fill(p + i * PG, 1000 + (uint32_t)i));
	struct mv_merge_stats s = stats(m);
	assert_int_equal(s.pages_shared, N); /* each canonical page is used once here, once in the child */
	assert_int_equal(s.pages_sharing, 0);
	assert_int_equal(s.partition_pages, N);
	/* copy-on-write across processes: the child writes, we still read the original */
	xwrite(to[1], 'w');
	assert_int_equal(xread(from[0]), 'w');
	assert_true(is_fill(p, 1000));
	p[PG] ^= 0xff; /* and ours is not the child's */
	xwrite(to[1], 'c');
	assert_int_equal(xread(from[0]), 'G');
	p[PG] ^= 0xff;
	xwrite(to[1], 'q');
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	mv_merge_unref(m);
	munmap(p, N * PG);
	close(to[1]), close(from[0]);
}

static void test_killed_member_is_collected(void **state)
{
	const size_t N = 64;
	int to[2], from[2];
	assert_int_equal(pipe(to), 0);
	assert_int_equal(pipe(from), 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(to[1]), close(from[0]);
		/* pairs of its own: canonical pages only this member uses */
		uint8_t *q = mmap(NULL, 2 * N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		for (size_t i = 0; i < 2 * N; i++)
			fill(q + i * PG, 5000 + (uint32_t)(i % N));
		mv_merge *c = NULL;
		if (mv_merge_new("collect-me", 0, &c) < 0 || mv_merge_register(c, q, 2 * N * PG) < 0 ||
		    mv_merge_scan(c, 0, 0, MV_MERGE_STABLE) != (int)(2 * N))
			_exit(1);
		xwrite(from[1], 'm');
		pause();
		_exit(0);
	}
	close(to[0]), close(from[1]);
	uint8_t *p = data(8, 1);
	mv_merge *m = NULL;
	assert_int_equal(mv_merge_new("collect-me", 0, &m), 0);
	assert_int_equal(mv_merge_register(m, p, 8 * PG), 0);
	assert_int_equal(xread(from[0]), 'm');
	assert_int_equal(stats(m).partition_pages, N);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	/* two collections a sweep apart: out of the index, then punched */
	struct mv_merge_stats s;
	WAIT_FOR((s = stats(m), s.partition_pages == 0), 10);
	assert_int_equal(s.partition_pages, 0);
	mv_merge_unref(m);
	munmap(p, 8 * PG);
	close(to[1]), close(from[0]);
}

/* A fork child maps the canonical pages its parent merged onto: when the parent leaves and the broker
 * collects, those pages must stay. */
static void test_fork_child_keeps_pages_after_parent_leaves(void **state)
{
	const size_t N = 32;
	uint8_t *p = mmap(NULL, 2 * N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t i = 0; i < 2 * N; i++)
		fill(p + i * PG, 9000 + (uint32_t)(i % N)); /* pairs: canonical pages of this member */
	mv_merge *m = NULL, *stay = NULL;
	/* a second member keeps the partition alive after the first leaves */
	assert_int_equal(mv_merge_new("forked", 0, &stay), 0);
	assert_int_equal(mv_merge_new("forked", 0, &m), 0);
	assert_int_equal(mv_merge_register(m, p, 2 * N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)(2 * N));
	assert_int_equal(stats(stay).partition_pages, N);
	int go[2], done[2];
	assert_int_equal(pipe(go), 0);
	assert_int_equal(pipe(done), 0);
	pid_t pid = fork();
	if (pid == 0) {
		char c;
		if (read(go[0], &c, 1) != 1)
			_exit(2);
		int bad = 0;
		for (size_t i = 0; i < 2 * N; i++)
			bad += !is_fill(p + i * PG, 9000 + (uint32_t)(i % N));
		_exit(bad ? 1 : 0);
	}
	/* the parent drops its merges and leaves; the broker collects twice */
	for (size_t i = 0; i < 2 * N; i++)
		p[i * PG + 1] ^= 1;
	mv_merge_unref(m);
	usleep(300 * 1000); /* several sweeps of 50 ms */
	xwrite(go[1], 'g');
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* pinned for the partition's life, not collected */
	assert_int_equal(stats(stay).partition_pages, N);
	mv_merge_unref(stay);
	munmap(p, 2 * N * PG);
	close(go[0]), close(go[1]), close(done[0]), close(done[1]);
}

/* File offsets of the partition pages [p, p+n) map, read from /proc/self/maps; 0 where not mapped. */
static void partition_offsets(const uint8_t *p, size_t n, uint64_t *off)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	memset(off, 0, n * sizeof(*off));
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long s, e, o;
		if (sscanf(line, "%lx-%lx %*s %lx", &s, &e, &o) != 3 || !strstr(line, "memvisor-partition"))
			continue;
		for (uintptr_t a = s; a < e; a += PG)
			if (a >= (uintptr_t)p && a < (uintptr_t)p + n * PG)
				off[(a - (uintptr_t)p) / PG] = o + (a - s);
	}
	if (f)
		fclose(f);
}

/* The most sites any one canonical page has among offs[0..n). */
static unsigned most_sharers(const uint64_t *offs, size_t n)
{
	unsigned most = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned c = 0;
		for (size_t j = 0; offs[i] && j < n; j++)
			c += offs[j] == offs[i];
		most = c > most ? c : most;
	}
	return most;
}

static void set_sharing(mv_merge *m, uint32_t limit)
{
	struct mv_merge_knobs k;
	assert_int_equal(mv_merge_get_knobs(m, &k), 0);
	k.max_page_sharing = limit;
	assert_int_equal(mv_merge_set_knobs(m, &k), 0);
}

/* max_page_sharing counts the sites of a canonical page in every member, not one member's: with a limit of
 * 2, 64 equal pages in each of two processes make at least 64 canonical copies, each mapped at most twice. */
static void test_sharing_limit_spans_members(void **state)
{
	const size_t N = 64;
	int out[2], go[2];
	assert_int_equal(pipe(out), 0);
	assert_int_equal(pipe(go), 0);
	uint8_t *p = mmap(NULL, N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	for (size_t i = 0; i < N; i++)
		fill(p + i * PG, 4242);
	mv_merge *m = NULL;
	assert_int_equal(mv_merge_new("sharing", 0, &m), 0);
	set_sharing(m, 2);
	assert_int_equal(mv_merge_register(m, p, N * PG), 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* the same pages in another member, with the same limit; it scans after us */
		uint8_t *q = data(N, 0);
		for (size_t i = 0; i < N; i++)
			fill(q + i * PG, 4242);
		mv_merge *c = NULL;
		char x;
		close(out[0]), close(go[1]);
		if (mv_merge_new("sharing", 0, &c) < 0 || mv_merge_register(c, q, N * PG) < 0)
			_exit(1);
		struct mv_merge_knobs k;
		mv_merge_get_knobs(c, &k);
		k.max_page_sharing = 2;
		if (mv_merge_set_knobs(c, &k) < 0 || read(go[0], &x, 1) != 1)
			_exit(2);
		for (int r = 0; r < 3; r++)
			if (mv_merge_scan(c, 0, 0, MV_MERGE_STABLE) < 0)
				_exit(3);
		uint64_t offs[64];
		partition_offsets(q, N, offs);
		for (size_t i = 0; i < N; i++)
			if (!is_fill(q + i * PG, 4242))
				_exit(4);
		if (write(out[1], offs, sizeof(offs)) != (ssize_t)sizeof(offs) || read(go[0], &x, 1) != 1)
			_exit(5);
		mv_merge_unref(c);
		_exit(0);
	}
	close(out[1]), close(go[0]);
	for (int r = 0; r < 3; r++)
		assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) >= 0);
	uint64_t offs[128];
	partition_offsets(p, N, offs);
	print_message("sites of the most shared page: %u here\n", most_sharers(offs, N));
	assert_true(most_sharers(offs, N) <= 2); /* one member's own limit */
	size_t merged = 0;
	for (size_t i = 0; i < N; i++) {
		merged += offs[i] != 0;
		assert_true(is_fill(p + i * PG, 4242));
	}
	assert_int_equal(merged, N); /* in pairs: every page found a twin */
	xwrite(go[1], 'g');
	assert_int_equal(read(out[0], offs + N, N * sizeof(*offs)), (ssize_t)(N * sizeof(*offs)));
	size_t child_merged = 0;
	for (size_t i = N; i < 2 * N; i++)
		child_merged += offs[i] != 0;
	assert_int_equal(child_merged, N); /* it merged too, onto canonical pages of its own */
	print_message("sites of the most shared page: %u in both members\n", most_sharers(offs, 2 * N));
	assert_true(most_sharers(offs, 2 * N) <= 2);
	xwrite(go[1], 'q');
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	mv_merge_unref(m);
	munmap(p, N * PG);
	close(out[0]), close(go[1]);
}

/* Every way a member could write through the partition file it holds: the descriptor itself, a
 * read-write reopen through /proc/self/fd, the same after fchmod. Each must fail. */
static void attack_partition_fd(int fd, off_t off)
{
	char path[64], junk[PG];
	memset(junk, 0x5a, sizeof(junk));
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	for (int round = 0; round < 2; round++) {
		int fds[2] = { fd, open(path, O_RDWR | O_CLOEXEC) };
		for (int i = 0; i < 2; i++) {
			if (fds[i] < 0)
				continue; /* a reopen refused is fine too */
			assert_int_equal(pwrite(fds[i], junk, PG, off), -1);
			assert_int_equal(lseek(fds[i], off, SEEK_SET), off);
			assert_int_equal(write(fds[i], junk, PG), -1);
			void *w = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], off);
			assert_true(w == MAP_FAILED);
			w = mmap(NULL, PG, PROT_READ, MAP_SHARED, fds[i], off);
			if (w != MAP_FAILED) {
				/* a read-only shared mapping may exist; it must not become writable */
				assert_int_equal(mprotect(w, PG, PROT_READ | PROT_WRITE), -1);
				munmap(w, PG);
			}
			assert_int_equal(fallocate(fds[i], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, PG), -1);
			assert_int_equal(ftruncate(fds[i], 0), -1);
		}
		if (fds[1] >= 0)
			close(fds[1]);
		int t = open(path, O_RDWR | O_TRUNC | O_CLOEXEC);
		assert_int_equal(t, -1);
		(void)fchmod(fd, 0666); /* then the same again: the mode is not what guards the pages */
	}
}

/* A member cannot change a canonical page by any means the partition file it holds offers. */
static void test_members_cannot_write_canonical_pages(void **state)
{
	const size_t N = 16;
	uint8_t *p = mmap(NULL, 2 * N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	for (size_t i = 0; i < 2 * N; i++)
		fill(p + i * PG, 7000 + (uint32_t)(i % N));
	mv_merge *m = NULL;
	assert_int_equal(mv_merge_new("sealed", 0, &m), 0);
	assert_int_equal(mv_merge_register(m, p, 2 * N * PG), 0);
	assert_int_equal(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE), (int)(2 * N));
	uint64_t offs[32], after[32];
	partition_offsets(p, 2 * N, offs);
	/* the descriptor the engine holds: /proc/self/fd names it after the broker's memfd */
	int fd = -1;
	char link[256], path[64];
	for (int i = 3; i < 1024 && fd < 0; i++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", i);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		if (n > 0 && (link[n] = 0, strstr(link, "memvisor-partition")) && !strstr(link, "hints"))
			fd = i;
	}
	assert_true(fd >= 0);
	for (size_t i = 0; i < N; i++) {
		assert_true(offs[i] != 0);
		attack_partition_fd(fd, (off_t)offs[i]);
	}
	/* nothing changed: every page reads as written, through its mapping and through the file */
	partition_offsets(p, 2 * N, after);
	assert_memory_equal(offs, after, sizeof(offs));
	uint8_t page[PG];
	for (size_t i = 0; i < 2 * N; i++) {
		assert_true(is_fill(p + i * PG, 7000 + (uint32_t)(i % N)));
		assert_int_equal(pread(fd, page, PG, (off_t)offs[i]), PG);
		assert_true(is_fill(page, 7000 + (uint32_t)(i % N)));
	}
	mv_merge_unref(m);
	munmap(p, 2 * N * PG);
}

static void test_partitions_stay_apart(void **state)
{
	const size_t N = 16;
	uint8_t *a = data(N, 77), *b = data(N, 77), *c = data(N, 77);
	mv_merge *ma = NULL, *mb = NULL, *mc = NULL;
	assert_int_equal(mv_merge_new("left", 0, &ma), 0);
	assert_int_equal(mv_merge_new("right", 0, &mb), 0);
	assert_int_equal(mv_merge_new(NULL, 0, &mc), 0);
	assert_int_equal(mv_merge_register(ma, a, N * PG), 0);
	assert_int_equal(mv_merge_register(mb, b, N * PG), 0);
	assert_int_equal(mv_merge_register(mc, c, N * PG), 0);
	for (int round = 0; round < 3; round++) {
		assert_int_equal(mv_merge_scan(ma, 0, 0, MV_MERGE_STABLE), 0);
		assert_int_equal(mv_merge_scan(mb, 0, 0, MV_MERGE_STABLE), 0);
		assert_int_equal(mv_merge_scan(mc, 0, 0, MV_MERGE_STABLE), 0);
	}
	assert_int_equal(stats(ma).partition_pages, 0);
	assert_int_equal(stats(mb).partition_pages, 0);
	mv_merge_unref(ma);
	mv_merge_unref(mb);
	mv_merge_unref(mc);
	munmap(a, N * PG), munmap(b, N * PG), munmap(c, N * PG);
}

static void test_bad_names_and_no_broker(void **state)
{
	mv_merge *m = NULL;
	assert_int_equal(mv_merge_new("", 0, &m), -EINVAL);
	char longname[80];
	memset(longname, 'x', sizeof(longname) - 1);
	longname[79] = 0;
	assert_int_equal(mv_merge_new(longname, 0, &m), -EINVAL);
	assert_int_equal(mv_merge_new("a/b", 0, &m), -EINVAL); /* the broker refuses it */
	assert_int_equal(mv_merge_new("sp ace", 0, &m), -EINVAL);
	/* a process whose runtime dir has no broker (and may not start one) gets a clear error */
	pid_t pid = fork();
	if (pid == 0) {
		char dir[] = "/tmp/mv-nobroker-XXXXXX";
		if (!mkdtemp(dir))
			_exit(2);
		setenv("MEMVISOR_RUNTIME_DIR", dir, 1);
		int r = mv_merge_new("nobody-home", 0, &m);
		rmdir(dir);
		_exit(r == -ENOTCONN ? 0 : 1);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* Talking to the broker directly: only it can write canonical pages, and it refuses bad member files. */
static void test_broker_guards_the_store(void **state)
{
	int mfd = memfd_create("member", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(mfd >= 0);
	struct mvw_req_merge_join req = { { 0 } };
	strcpy(req.name, "guarded");
	struct mvw_msg rep;
	int fds[2] = { -1, -1 };
	/* too small, then big enough but not sealed against shrinking: the broker could fault on it */
	assert_int_equal(mvc_request(MV_MSG_MERGE_JOIN, &req, sizeof(req), mfd, &rep, fds), -EINVAL);
	assert_int_equal(ftruncate(mfd, (off_t)MV_PART_MEMBER_SIZE), 0);
	assert_int_equal(mvc_request(MV_MSG_MERGE_JOIN, &req, sizeof(req), mfd, &rep, fds), -EINVAL);
	assert_int_equal(fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	assert_int_equal(mvc_request(MV_MSG_MERGE_JOIN, &req, sizeof(req), mfd, &rep, fds), 0);
	assert_true(fds[0] >= 0 && fds[1] >= 0);
	uint64_t member = rep.u.merge_join_rep.member_id;
	/* the partition file is read-only for members: no shared writable mapping, no write */
	void *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], (off_t)MV_PART_STORE_OFF);
	assert_true(w == MAP_FAILED);
	assert_int_equal(errno, EACCES);
	char byte = 1;
	assert_int_equal(pwrite(fds[0], &byte, 1, (off_t)MV_PART_STORE_OFF), -1);
	/* a promotion for a membership that is not ours, or too big */
	struct mvw_req_merge_promote pr = { .member_id = member + 77, .n = 1 };
	assert_int_equal(mvc_request(MV_MSG_MERGE_PROMOTE, &pr, sizeof(pr), -1, &rep, NULL), -ENOENT);
	pr.member_id = member;
	pr.n = MV_PART_STAGE + 1;
	assert_int_equal(mvc_request(MV_MSG_MERGE_PROMOTE, &pr, sizeof(pr), -1, &rep, NULL), -EINVAL);
	pr.n = 0;
	assert_int_equal(mvc_request(MV_MSG_MERGE_PROMOTE, &pr, sizeof(pr), -1, &rep, NULL), -EINVAL); /* no limit */
	pr.max_sharing = 2;
	assert_int_equal(mvc_request(MV_MSG_MERGE_PROMOTE, &pr, sizeof(pr), -1, &rep, NULL), 0);
	struct mvw_req_merge_leave lv = { .member_id = member };
	assert_int_equal(mvc_request(MV_MSG_MERGE_LEAVE, &lv, sizeof(lv), -1, &rep, NULL), 0);
	assert_int_equal(mvc_request(MV_MSG_MERGE_LEAVE, &lv, sizeof(lv), -1, &rep, NULL), -ENOENT);
	close(fds[0]);
	close(fds[1]);
	close(mfd);
}

/* A process of another user cannot even reach this user's broker. */
static void test_other_users_never_merge(void **state)
{
	if (geteuid() != 0)
		skip(); /* needs to become another user */
	pid_t pid = fork();
	if (pid == 0) {
		if (setgid(1001) < 0 || setuid(1001) < 0)
			_exit(99);
		mv_merge *m = NULL;
		int r = mv_merge_new("shared-heaps", 0, &m);
		_exit(r == 0 ? 1 : 0);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 99)
		skip();
	assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_two_processes_merge),
		cmocka_unit_test(test_killed_member_is_collected),
		cmocka_unit_test(test_fork_child_keeps_pages_after_parent_leaves),
		cmocka_unit_test(test_sharing_limit_spans_members),
		cmocka_unit_test(test_members_cannot_write_canonical_pages),
		cmocka_unit_test(test_partitions_stay_apart),
		cmocka_unit_test(test_bad_names_and_no_broker),
		cmocka_unit_test(test_broker_guards_the_store),
		cmocka_unit_test(test_other_users_never_merge),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
