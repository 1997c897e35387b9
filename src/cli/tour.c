/* SPDX-License-Identifier: MIT */
/* memvisor tour: several processes share a purgeable cache; cold data is unpinned; the broker is put
 * under a memory budget; the processes re-pin and we count what survived, check every byte, and time
 * it all. Every number printed is measured in this run. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "android/uapi.h"
#include "cli.h"
#include "memvisor/broker.h"
#include "memvisor/memvisor.h"
#include "memvisor/merge.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/ioctl.h>

#define CHUNK (4u << 20)
#define NCHUNKS 64u
#define HOT 16u /* chunks 0..15 stay pinned: in use */
#define NWORKERS 3u
#define BUDGET (96ull << 20)

/* Cache content that costs something to produce: rendered 64-byte JSON records, different per chunk. */
static void record(char *out, uint64_t id, uint64_t x)
{
	static const char tmpl[65] = "{\"id\":00000000,\"user\":\"u000000\",\"score\":00000,\"ok\":true}       \n";
	memcpy(out, tmpl, 64);
	for (int i = 0; i < 8; i++, id /= 10)
		out[13 - i] = (char)('0' + id % 10);
	uint64_t u = x % 1000000, sc = (x >> 20) % 100000;
	for (int i = 0; i < 6; i++, u /= 10)
		out[29 - i] = (char)('0' + u % 10);
	for (int i = 0; i < 5; i++, sc /= 10)
		out[44 - i] = (char)('0' + sc % 10);
}

static void produce(uint64_t *p, unsigned chunk)
{
	uint64_t x = 0x9e3779b97f4a7c15ull * (chunk + 1);
	char *c = (char *)p;

	for (size_t i = 0; i < CHUNK / 64; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		record(c + i * 64, (uint64_t)chunk * (CHUNK / 64) + i, x);
	}
}

/* 1 intact, 0 all zeros, -1 anything else. */
static int check(const uint64_t *p, unsigned chunk)
{
	static __thread uint64_t *want;
	const uint64_t *w = p;
	bool zero = true;

	if (!want)
		want = malloc(CHUNK);
	produce(want, chunk);
	if (memcmp(p, want, CHUNK) == 0)
		return 1;
	for (size_t i = 0; i < CHUNK / 8 && zero; i++)
		zero = w[i] == 0;
	return zero ? 0 : -1;
}

struct worker_report {
	unsigned not_purged, was_purged, bad;
	double repin_ms, recompute_ms;
	double pin_unpin_ns;
};

#define send_fd cli_send_fd
#define recv_fd cli_recv_fd

/* Worker w re-pins its share of the cold chunks and checks every byte. */
static void worker(int ctl_sock, int fd, unsigned w)
{
	struct worker_report rep = { 0 };
	mv_region *r;
	uint64_t *base;
	char go;

	if (fd < 0)
		fd = recv_fd(ctl_sock);
	if (fd < 0 || mv_region_from_fd(fd, &r) < 0 || mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&base) < 0)
		_exit(3);
	/* Hot data is read all along. */
	for (unsigned c = w; c < HOT; c += NWORKERS)
		if (check(base + (size_t)c * CHUNK / 8, c) != 1)
			rep.bad++;
	if (write(ctl_sock, "R", 1) != 1 || read(ctl_sock, &go, 1) != 1)
		_exit(4);

	double recompute = 0, pin_ms = 0;
	for (unsigned c = HOT + w; c < NCHUNKS; c += NWORKERS) {
		uint64_t t0 = cli_now_ns();
		int pr = mv_region_pin(r, (size_t)c * CHUNK, CHUNK);
		pin_ms += (double)(cli_now_ns() - t0) / 1e6;
		int ck = check(base + (size_t)c * CHUNK / 8, c);
		if (pr == MV_NOT_PURGED) {
			rep.not_purged++;
			rep.bad += ck != 1;
		} else if (pr == MV_WAS_PURGED) {
			uint64_t t1 = cli_now_ns();
			rep.was_purged++;
			produce(base + (size_t)c * CHUNK / 8, c); /* the work the cache saved elsewhere */
			recompute += (double)(cli_now_ns() - t1) / 1e6;
		} else {
			rep.bad++;
		}
	}
	rep.repin_ms = pin_ms;
	rep.recompute_ms = recompute;

	/* Pin/unpin latency on a page this worker owns. */
	size_t page = (size_t)(HOT + w) * CHUNK;
	enum { N = 200000 };
	uint64_t t0 = cli_now_ns();
	for (int i = 0; i < N; i++) {
		mv_region_unpin(r, page, MV_PAGE_SIZE);
		mv_region_pin(r, page, MV_PAGE_SIZE);
	}
	rep.pin_unpin_ns = (double)(cli_now_ns() - t0) / N;
	if (write(ctl_sock, &rep, sizeof(rep)) != sizeof(rep))
		_exit(5);
	mv_region_unmap(r, base);
	mv_region_unref(r);
	_exit(0);
}

/* Bytes of the region's data that hold memory: purged pages are holes in it. */
static uint64_t resident(int fd, uint64_t data_bytes)
{
	uint64_t total = 0;
	off_t pos = 0;

	while ((uint64_t)pos < data_bytes) {
		off_t d = lseek(fd, pos, SEEK_DATA), h;
		if (d < 0 || (uint64_t)d >= data_bytes || (h = lseek(fd, d, SEEK_HOLE)) < 0)
			break;
		if ((uint64_t)h > data_bytes)
			h = (off_t)data_bytes;
		total += (uint64_t)(h - d);
		pos = h;
	}
	return total;
}

static int set_budget(uint64_t bytes)
{
	return mv_broker_set(MV_BROKER_UNPINNED_BUDGET, bytes);
}

/* ---- an unmodified ashmem program, run under the preload library ---- */

#define ASH_SIZE (16u << 20)
#define ASH_MIB (1u << 20)

struct ashmem_report {
	int unpin_ok, pin_old, pin_new, old_zero, new_intact, hot_intact;
	char name[ASHMEM_NAME_LEN];
	long size;
};

static int ash_pin(int fd, unsigned long cmd, uint32_t off, uint32_t len)
{
	struct ashmem_pin p = { off, len };
	return ioctl(fd, cmd, &p);
}

/* What an Android app does with ashmem, through plain libc calls only: this process has
 * libmemvisor-preload.so in LD_PRELOAD and otherwise knows nothing of memvisor. */
int cli_tour_ashmem_client(int sock)
{
	struct ashmem_report rep = { 0 };
	char c;
	int fd = open("/dev/ashmem", O_RDWR | O_CLOEXEC);
	unsigned char *m;

	if (fd < 0 || ioctl(fd, ASHMEM_SET_NAME, "bitmap-cache") < 0 || ioctl(fd, ASHMEM_SET_SIZE, ASH_SIZE) < 0)
		return 2;
	m = mmap(NULL, ASH_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return 3;
	/* Decoded bitmaps: close to noise, so the compressed tier lets them go. */
	for (size_t i = 0; i < ASH_SIZE; i++)
		m[i] = (unsigned char)((i * 2654435761u) >> 13 ^ (i >> 7));
	/* Decoded bitmaps nobody is looking at: unpin them, older ones first. */
	rep.unpin_ok = ash_pin(fd, ASHMEM_UNPIN, 4 * ASH_MIB, 6 * ASH_MIB) == 0 &&
		       ash_pin(fd, ASHMEM_UNPIN, 10 * ASH_MIB, 6 * ASH_MIB) == 0;
	if (write(sock, "U", 1) != 1 || read(sock, &c, 1) != 1) /* the tour applies pressure */
		return 4;
	rep.pin_old = ash_pin(fd, ASHMEM_PIN, 4 * ASH_MIB, 6 * ASH_MIB);
	rep.pin_new = ash_pin(fd, ASHMEM_PIN, 10 * ASH_MIB, 6 * ASH_MIB);
	rep.old_zero = m[4 * ASH_MIB] == 0 && m[10 * ASH_MIB - 1] == 0;
#define ASH_BYTE(i) ((unsigned char)(((size_t)(i)*2654435761u) >> 13 ^ ((size_t)(i) >> 7)))
	rep.new_intact = m[10 * ASH_MIB] == ASH_BYTE(10 * ASH_MIB) && m[ASH_SIZE - 1] == ASH_BYTE(ASH_SIZE - 1);
	rep.hot_intact = m[1] == ASH_BYTE(1) && m[4 * ASH_MIB - 1] == ASH_BYTE(4 * ASH_MIB - 1);
	ioctl(fd, ASHMEM_GET_NAME, rep.name);
	rep.size = ioctl(fd, ASHMEM_GET_SIZE, 0);
	return write(sock, &rep, sizeof(rep)) == sizeof(rep) ? 0 : 5;
}

static int find_preload(char *out, size_t len)
{
	static const char *const rel[] = { "/../lib/libmemvisor-preload.so", "/../lib64/libmemvisor-preload.so",
					   "/../lib/x86_64-linux-gnu/libmemvisor-preload.so" };
	return cli_find_beside_exe(rel, CLI_ARRAY_SIZE(rel), "", out, len);
}

static int tour_ashmem(FILE *out, uint64_t old_budget)
{
	char preload[PATH_MAX], self[PATH_MAX], fdarg[16];
	struct ashmem_report rep;
	int sv[2], st;
	ssize_t n;

	if (find_preload(preload, sizeof(preload)) < 0) {
		fprintf(out, "6. (ashmem client skipped: libmemvisor-preload.so not found next to this binary)\n");
		return 0;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return -1;
	self[n] = '\0';
	snprintf(fdarg, sizeof(fdarg), "%d", sv[1]);
	pid_t pid = fork();
	if (pid == 0) {
		close(sv[0]);
		setenv("LD_PRELOAD", preload, 1);
		execl(self, "memvisor", "tour-ashmem-client", fdarg, (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	char c;
	if (read(sv[0], &c, 1) != 1)
		goto fail;
	fprintf(out,
		"6. an unmodified ashmem program (pid %d, LD_PRELOAD=libmemvisor-preload.so) opened /dev/ashmem,\n"
		"   named and sized a 16 MiB region with ioctls, mapped it, unpinned 4-10 MiB, then 10-16 MiB\n",
		pid);
	/* Pressure again: a 6 MiB budget leaves room for the newer range only. */
	int e = set_budget(6u << 20);
	if (e == 0)
		e = mv_sync();
	set_budget(old_budget);
	if (e < 0 || write(sv[0], "G", 1) != 1 || read(sv[0], &rep, sizeof(rep)) != sizeof(rep))
		goto fail;
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		goto fail;
	close(sv[0]);
	fprintf(out,
		"   under a 6 MiB budget the broker purged the older range: ASHMEM_PIN says %s for 4-10 MiB (%s)\n"
		"   and %s for 10-16 MiB (%s); the pinned 0-4 MiB is %s. GET_NAME '%s', GET_SIZE %ld\n",
		rep.pin_old == ASHMEM_WAS_PURGED ? "WAS_PURGED" : "NOT_PURGED", rep.old_zero ? "zeros" : "data",
		rep.pin_new == ASHMEM_NOT_PURGED ? "NOT_PURGED" : "WAS_PURGED", rep.new_intact ? "intact" : "lost",
		rep.hot_intact ? "intact" : "DAMAGED", rep.name, rep.size);
	return rep.unpin_ok && rep.pin_old == ASHMEM_WAS_PURGED && rep.pin_new == ASHMEM_NOT_PURGED && rep.old_zero &&
			       rep.new_intact && rep.hot_intact
		       ? 0
		       : -1;
fail:
	close(sv[0]);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	fprintf(stderr, "memvisor tour: the ashmem client failed\n");
	return -1;
}

/* Same-page merging: four "workers" in this process build the same lookup table, each in its own
 * private memory, as interpreters building identical heaps do. One synchronous scan merges them. */
static int tour_merge(FILE *out)
{
	enum { WORKERS = 4, TABLE_PAGES = 2048, ZERO_PAGES = 256 };
	const size_t per = (size_t)(TABLE_PAGES + ZERO_PAGES) * MV_PAGE_SIZE, total = per * WORKERS;
	uint8_t *mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return -1;
	for (unsigned w = 0; w < WORKERS; w++) {
		uint64_t *t = (uint64_t *)(mem + w * per);
		for (size_t i = 0; i < (size_t)TABLE_PAGES * MV_PAGE_SIZE / 8; i++)
			t[i] = (i * 0x9E3779B97F4A7C15ull) ^ (i >> 3); /* the same table in every worker */
		memset(mem + w * per + (size_t)TABLE_PAGES * MV_PAGE_SIZE, 0, (size_t)ZERO_PAGES * MV_PAGE_SIZE);
	}
	mv_merge *m = NULL;
	int e = mv_merge_new(NULL, 0, &m);
	if (e < 0) {
		fprintf(out,
			"7. (merging skipped: this kernel gives the process no userfaultfd write protection: %s)\n",
			strerror(-e));
		munmap(mem, total);
		return 0;
	}
	int ret = -1;
	if ((e = mv_merge_register(m, mem, total)) < 0)
		goto done;
	uint64_t t0 = cli_now_ns();
	int merged = mv_merge_scan(m, 0, 0, MV_MERGE_STABLE);
	double ms = (double)(cli_now_ns() - t0) / 1e6;
	struct mv_merge_stats s;
	if (merged < 0 || mv_merge_get_stats(m, &s, sizeof(s)) < 0)
		goto done;
	char b1[32], b2[32];
	cli_human_bytes(b1, sizeof(b1), total);
	cli_human_bytes(b2, sizeof(b2), (s.pages_sharing + s.zero_pages) * MV_PAGE_SIZE);
	fprintf(out,
		"7. merging: %u workers in pid %d built the same %u-page table in private memory (%s in all);\n"
		"   one synchronous scan merged %d pages in %.1f ms: %lu canonical pages shared by %lu more sites,\n"
		"   %lu zero pages back to the kernel's zero page: %s saved (see 'memvisor merge')\n",
		WORKERS, getpid(), TABLE_PAGES, b1, merged, ms, (unsigned long)s.pages_shared,
		(unsigned long)s.pages_sharing, (unsigned long)s.zero_pages, b2);
	/* worker 2 writes: it gets a private copy, nobody else sees the write */
	uint64_t *w2 = (uint64_t *)(mem + 2 * per);
	w2[5] = 42;
	bool others_intact = true;
	for (unsigned w = 0; w < WORKERS; w++)
		if (w != 2)
			others_intact &= ((uint64_t *)(mem + w * per))[5] == ((5 * 0x9E3779B97F4A7C15ull) ^ (5 >> 3));
	struct mv_merge_stats s2;
	mv_merge_get_stats(m, &s2, sizeof(s2));
	fprintf(out,
		"   worker 2 wrote to a merged page: it got a private copy (sharing %lu -> %lu), the other\n"
		"   workers still read the original: %s\n",
		(unsigned long)s.pages_sharing, (unsigned long)s2.pages_sharing, others_intact ? "yes" : "NO");
	ret = others_intact && w2[5] == 42 && s2.pages_sharing == s.pages_sharing - 1 &&
			      s.pages_shared == TABLE_PAGES && s.zero_pages == (uint64_t)WORKERS * ZERO_PAGES
		      ? 0
		      : -1;
done:
	if (ret < 0)
		fprintf(stderr, "memvisor tour: merging failed%s%s\n", e < 0 ? ": " : "", e < 0 ? strerror(-e) : "");
	mv_merge_unref(m);
	munmap(mem, total);
	return ret;
}

/* Merging across processes: two processes build the same table and join one named partition. */
static int tour_partition(FILE *out)
{
	enum { PAGES = 1024 };
	const size_t len = (size_t)PAGES * MV_PAGE_SIZE;
	char name[64];
	snprintf(name, sizeof(name), "tour-%d", getpid());
	int to[2], from[2];
	if (pipe(to) < 0 || pipe(from) < 0)
		return -1;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		_exit(1);
	for (size_t i = 0; i < len / 8; i++)
		((uint64_t *)mem)[i] = (i * 0xD1B54A32D192ED03ull) ^ (i >> 5); /* the same bytes in both */
	mv_merge *m = NULL;
	int e = mv_merge_new(name, 0, &m);
	if (e == 0)
		e = mv_merge_register(m, mem, len);
	char c;
	if (pid == 0) {
		close(to[1]);
		close(from[0]);
		int merged = -1;
		if (e == 0 && read(to[0], &c, 1) == 1)
			merged = mv_merge_scan(m, 0, 0, MV_MERGE_STABLE);
		if (write(from[1], &merged, sizeof(merged)) != sizeof(merged) || read(to[0], &c, 1) != 1)
			_exit(1);
		for (size_t i = 0; i < len / 8; i++)
			if (((uint64_t *)mem)[i] != ((i * 0xD1B54A32D192ED03ull) ^ (i >> 5)))
				_exit(2);
		mv_merge_unref(m);
		_exit(0);
	}
	close(to[0]);
	close(from[1]);
	int ret = -1, first = -1, second = -1, theirs = -1, st;
	if (e < 0) {
		fprintf(out, "8. (merging across processes skipped: %s)\n", strerror(-e));
		ret = 0;
		goto done;
	}
	first = mv_merge_scan(m, 0, 0, MV_MERGE_STABLE);
	if (write(to[1], "s", 1) != 1 || read(from[0], &theirs, sizeof(theirs)) != sizeof(theirs))
		goto done;
	second = mv_merge_scan(m, 0, 0, MV_MERGE_STABLE);
	struct mv_merge_stats s;
	mv_merge_get_stats(m, &s, sizeof(s));
	char b[32];
	cli_human_bytes(b, sizeof(b), (uint64_t)PAGES * MV_PAGE_SIZE);
	fprintf(out,
		"8. across processes: pid %d and pid %d each built the same %u-page table and joined partition\n"
		"   '%s': %d merged in this one's first scan (its pages were only hinted), %d in the other's\n"
		"   (made canonical by the broker), %d in this one's second scan: the %u pages are held once\n"
		"   by the broker for both (%lu canonical pages in the partition), %s saved\n",
		getpid(), pid, PAGES, name, first, theirs, second, PAGES, (unsigned long)s.partition_pages, b);
	ret = first == 0 && theirs == PAGES && second == PAGES && s.partition_pages == PAGES ? 0 : -1;
done:
	if (write(to[1], "q", 1) != 1)
		kill(pid, SIGKILL);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		ret = -1;
	if (ret < 0)
		fprintf(stderr, "memvisor tour: merging across processes failed\n");
	if (m)
		mv_merge_unref(m);
	munmap(mem, len);
	close(to[1]);
	close(from[0]);
	return ret;
}

int cli_tour(int argc, char **argv, bool json)
{
	mv_broker_status *st = NULL;
	struct worker_report reps[NWORKERS];
	int socks[NWORKERS][2];
	pid_t pids[NWORKERS];
	mv_region *r = NULL;
	uint64_t *base;
	bool started;
	int e, ret = 1;
	char b1[32], b2[32];
	FILE *out = json ? stderr : stdout;

	if (argc) {
		fprintf(stderr, "usage: memvisor tour [--json]\n");
		return 2;
	}
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	started = mv_broker_connected() == 0;
	unsetenv("MEMVISOR_AUTOSTART");
	e = mv_broker_status_new(&st);
	if (e < 0) {
		fprintf(stderr, "memvisor tour: cannot reach or start a broker: %s\n", strerror(-e));
		return 1;
	}
	uint64_t old_budget = mv_broker_status_value(st, "regions.unpinned_budget", MV_BROKER_NO_LIMIT);
	fprintf(out, "== memvisor tour\nbroker pid %llu (%s)\n",
		(unsigned long long)mv_broker_status_value(st, "broker.pid", 0),
		started ? "started for this tour" : "already running, reused");
	st = mv_broker_status_free(st);

	e = mv_region_new("tour-cache", (size_t)NCHUNKS * CHUNK, &r);
	if (e < 0 || (e = mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&base)) < 0) {
		fprintf(stderr, "memvisor tour: region: %s\n", strerror(-e));
		goto out;
	}
	uint64_t t0 = cli_now_ns();
	for (unsigned c = 0; c < NCHUNKS; c++)
		produce(base + (size_t)c * CHUNK / 8, c);
	double produce_ms = (double)(cli_now_ns() - t0) / 1e6;
	cli_human_bytes(b1, sizeof(b1), (uint64_t)NCHUNKS * CHUNK);
	fprintf(out, "1. producer %d filled region 'tour-cache': %s in %u chunks, %.0f ms of work\n", getpid(), b1,
		NCHUNKS, produce_ms);

	/* Workers: the first two inherit the fd over fork, the third receives it over a socket. */
	for (unsigned w = 0; w < NWORKERS; w++) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, socks[w]) < 0)
			goto out;
		pids[w] = fork();
		if (pids[w] < 0)
			goto out;
		if (pids[w] == 0) {
			close(socks[w][0]);
			worker(socks[w][1], w < 2 ? mv_region_fd(r) : -1, w);
		}
		close(socks[w][1]);
		if (w == 2 && send_fd(socks[w][0], mv_region_fd(r)) < 0)
			goto out;
	}
	for (unsigned w = 0; w < NWORKERS; w++) {
		char rd;
		if (read(socks[w][0], &rd, 1) != 1)
			goto out;
	}
	fprintf(out, "2. workers %d, %d (fork) and %d (fd over a socket) mapped it and verified the hot chunks\n",
		pids[0], pids[1], pids[2]);

	/* Cold chunks unpinned oldest first: 16 is the least recently unpinned. */
	for (unsigned c = HOT; c < NCHUNKS; c++)
		mv_region_unpin(r, (size_t)c * CHUNK, CHUNK);
	uint64_t res_before = resident(mv_region_fd(r), (uint64_t)NCHUNKS * CHUNK);
	cli_human_bytes(b1, sizeof(b1), (uint64_t)(NCHUNKS - HOT) * CHUNK);
	cli_human_bytes(b2, sizeof(b2), res_before);
	fprintf(out, "3. unpinned the %u cold chunks (%s); region resident: %s\n", NCHUNKS - HOT, b1, b2);

	/* Pressure: cap unpinned memory; the broker purges least recently unpinned ranges. */
	t0 = cli_now_ns();
	e = set_budget(BUDGET);
	if (e == 0)
		e = mv_sync();
	double purge_ms = (double)(cli_now_ns() - t0) / 1e6;
	set_budget(old_budget);
	if (e < 0) {
		fprintf(stderr, "memvisor tour: applying the budget failed: %s\n", strerror(-e));
		goto out;
	}
	uint64_t res_after = resident(mv_region_fd(r), (uint64_t)NCHUNKS * CHUNK);
	cli_human_bytes(b1, sizeof(b1), BUDGET);
	cli_human_bytes(b2, sizeof(b2), res_before - res_after);
	fprintf(out, "4. pressure: unpinned budget set to %s; broker purged %s (%.1f ms end to end, %.2f GiB/s)\n", b1,
		b2, purge_ms, purge_ms > 0 ? (double)(res_before - res_after) / (1 << 30) / (purge_ms / 1e3) : 0.0);

	for (unsigned w = 0; w < NWORKERS; w++)
		if (write(socks[w][0], "G", 1) != 1)
			goto out;
	unsigned np = 0, wp = 0, bad = 0;
	double repin = 0, recompute = 0, lat = 0;
	for (unsigned w = 0; w < NWORKERS; w++) {
		int status;
		if (read(socks[w][0], &reps[w], sizeof(reps[w])) != sizeof(reps[w]) ||
		    waitpid(pids[w], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
			fprintf(stderr, "memvisor tour: worker %d failed\n", pids[w]);
			goto out;
		}
		np += reps[w].not_purged;
		wp += reps[w].was_purged;
		bad += reps[w].bad;
		repin += reps[w].repin_ms;
		recompute += reps[w].recompute_ms;
		lat += reps[w].pin_unpin_ns / NWORKERS;
	}
	fprintf(out,
		"5. workers re-pinned the cold chunks: %u survived (NOT_PURGED, every byte checked), %u were "
		"purged (WAS_PURGED, read as zeros) and recomputed\n",
		np, wp);
	fprintf(out,
		"   the pin calls took %.3f ms in all (restores included); recomputing the purged ones %.0f ms;\n"
		"   the cache saved about %.0f ms of producing\n",
		repin, recompute, produce_ms / NCHUNKS * np);
	fprintf(out, "   pin+unpin of one page: %.0f ns, no syscall and no broker round trip\n", lat);
	fprintf(out, "   data errors: %u\n", bad);
	if (mv_broker_status_new(&st) == 0 && mv_broker_status_value(st, "tier.enabled", 0)) {
		cli_human_bytes(b1, sizeof(b1), mv_broker_status_value(st, "tier.restores", 0) * MV_PAGE_SIZE);
		fprintf(out,
			"   the compressed tier kept what pressure took: %llu pages compressed, %s restored on pin\n",
			(unsigned long long)mv_broker_status_value(st, "tier.compressions", 0), b1);
		/* The same pressure without the tier, for comparison: this region opts out. */
		mv_region_set_compression(r, 0);
		for (unsigned c = HOT; c < NCHUNKS; c++)
			mv_region_unpin(r, (size_t)c * CHUNK, CHUNK);
		e = set_budget(BUDGET);
		if (e == 0)
			e = mv_sync();
		set_budget(old_budget);
		unsigned lost = 0, kept = 0;
		for (unsigned c = HOT; c < NCHUNKS && e == 0; c++) {
			int pr = mv_region_pin(r, (size_t)c * CHUNK, CHUNK);
			lost += pr == MV_WAS_PURGED;
			kept += pr == MV_NOT_PURGED;
			if (pr == MV_WAS_PURGED)
				produce(base + (size_t)c * CHUNK / 8, c);
		}
		fprintf(out,
			"   same pressure with the tier off for this region: %u chunks kept, %u dropped and "
			"recomputed\n",
			kept, lost);
		mv_region_set_compression(r, 1);
	}
	if (json)
		printf("{\"broker_started\":%s,\"region_bytes\":%llu,\"unpinned_bytes\":%llu,\"budget_bytes\":%llu,"
		       "\"purged_bytes\":%llu,\"purge_ms\":%.3f,\"survived_chunks\":%u,\"purged_chunks\":%u,"
		       "\"data_errors\":%u,\"repin_ms\":%.3f,\"recompute_ms\":%.3f,\"pin_unpin_ns\":%.1f}\n",
		       started ? "true" : "false", (unsigned long long)NCHUNKS * CHUNK,
		       (unsigned long long)(NCHUNKS - HOT) * CHUNK, (unsigned long long)BUDGET,
		       (unsigned long long)(res_before - res_after), purge_ms, np, wp, bad, repin, recompute, lat);
	ret = bad ? 1 : 0;
	if (np + wp != NCHUNKS - HOT)
		ret = 1;
	if (tour_ashmem(out, old_budget) < 0)
		ret = 1;
	if (tour_merge(out) < 0)
		ret = 1;
	if (tour_partition(out) < 0)
		ret = 1;
	if (cli_tour_vchan(out) < 0)
		ret = 1;
	if (cli_tour_vchan_proxy(out) < 0)
		ret = 1;
out:
	mv_broker_status_free(st);
	if (r) {
		mv_region_unpin(r, 0, 0);
		mv_region_unref(r);
	}
	return ret;
}
