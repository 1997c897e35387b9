/* SPDX-License-Identifier: MIT */
/* bench_merge: memvisor's same-page merging against the kernel's KSM on identical memory, same run.
 *
 * Workloads: private anonymous memory of 256 MiB and 1 GiB with 10/50/90% duplicate pages (duplicates
 * come as copies of earlier 64-page blocks, the way duplicated buffers and heaps look) and 1% zero
 * pages; and a realistic one: the resident heap pages of four python3 processes that built the same
 * data, copied into this process.
 *
 * For each workload: memvisor's synchronous scan (MV_MERGE_STABLE, one pass), its synchronous scan
 * without the stable flag (two passes, like KSM's checksum-then-merge), and its scanner thread at
 * pages_to_scan=10000, sleep 0. When run as root: the kernel's KSM (MADV_MERGEABLE) at its default
 * settings (once per size: on the 50% workload, for at most a minute) and at pages_to_scan=10000,
 * sleep_millisecs=0, with every sysfs setting restored after.
 * Metrics: time until savings stop growing, pages saved, CPU seconds (ours: this process; kernel: ksmd),
 * and Pss before/after. Ratios are kernel-fastest / memvisor (time, CPU) and memvisor / kernel (savings).
 * Also: the first write to a merged page vs to an unmerged one. Last, the python3 heaps again, one per
 * process in four processes: memvisor merges them across processes through a named partition
 * (synchronous scans in turn; CPU counts the members and the broker), the kernel through MADV_MERGEABLE.
 *
 * Usage: bench_merge [--json] [--quick] [--size MIB --dup PCT | --heaps]
 *   --quick: 64 MiB, kernel default settings skipped; --size/--dup: that one synthetic workload only;
 *   --heaps: the interpreter heaps only (one process, then four)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "memvisor/merge.h"
#include "procmem.h"

#define PG 4096
#define BLOCK 64
#define DEFAULT_CAP_S 60.0 /* the kernel at its default settings: at most this long (see main) */

static bool json, quick;
static long only_mib = -1, only_dup = -1; /* --size/--dup: one synthetic workload */
static bool only_heaps;                   /* --heaps: the interpreter heaps only */

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_self(void)
{
	struct timespec t;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint64_t pss_kib(void)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	uint64_t v = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "Pss: %lu kB", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

/* ---- workloads ---- */

struct workload {
	char name[64];
	size_t pages;
	uint8_t *image;        /* the bytes, copied into fresh memory for each contender */
	uint64_t expect_saved; /* duplicate + zero pages, for the synthetic ones */
};

static void fill_page(uint8_t *p, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
	for (size_t i = 0; i < PG; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
}

static void synthetic(struct workload *w, size_t mib, unsigned dup_pct)
{
	w->pages = mib * 256;
	snprintf(w->name, sizeof(w->name), "%zu MiB, %u%% dup", mib, dup_pct);
	w->image = malloc(w->pages * PG);
	size_t blocks = w->pages / BLOCK;
	size_t *src = malloc(blocks * sizeof(*src));
	uint64_t rng = 12345 + dup_pct;
	size_t sources = 0, saved = 0;
	for (size_t b = 0; b < blocks; b++) {
		uint8_t *blk = w->image + b * BLOCK * PG;
		rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
		unsigned roll = (unsigned)(rng % 1000);
		if (roll < 10) {
			memset(blk, 0, BLOCK * PG); /* 1% zero pages */
			saved += BLOCK;
		} else if (sources && roll < 10 + dup_pct * 10) {
			/* a copy of an earlier unique block */
			memcpy(blk, w->image + src[(rng >> 20) % sources] * BLOCK * PG, BLOCK * PG);
			saved += BLOCK;
		} else {
			for (size_t i = 0; i < BLOCK; i++)
				fill_page(blk + i * PG, b * BLOCK + i + 1);
			src[sources++] = b;
		}
	}
	free(src);
	w->expect_saved = saved;
}

static const char py_heap[] =
	"import sys,json,random\n"
	"random.seed(1)\n"
	"d={('k%d'%i):{'id':i,'name':'user%d'%i,'tags':['t%d'%(i%97),'x'],'score':i*0.5} for i in range(150000)}\n"
	"s=json.dumps(list(d.values())[:20000])\n"
	"print('ready',flush=True)\n"
	"sys.stdin.read()\n";

static bool interpreter_heaps(struct workload *w)
{
	const int procs = 4;
	size_t max = 65536; /* 256 MiB at most */
	w->image = malloc(max * PG);
	w->pages = 0;
	for (int i = 0; i < procs; i++) {
		int in[2], outp[2];
		if (pipe(in) < 0 || pipe(outp) < 0)
			return false;
		pid_t pid = fork();
		if (pid == 0) {
			dup2(in[0], 0);
			dup2(outp[1], 1);
			close(in[1]);
			close(outp[0]);
			execlp("python3", "python3", "-c", py_heap, (char *)NULL);
			_exit(127);
		}
		close(in[0]);
		close(outp[1]);
		char buf[16] = "";
		ssize_t r = read(outp[0], buf, sizeof(buf) - 1);
		if (r > 0 && !strncmp(buf, "ready", 5))
			w->pages += dump_process(pid, w->image + w->pages * PG, (max - w->pages) / (size_t)(procs - i));
		close(in[1]);
		close(outp[0]);
		waitpid(pid, NULL, 0);
	}
	snprintf(w->name, sizeof(w->name), "4 python3 heaps (%zu MiB)", w->pages / 256);
	w->expect_saved = 0;
	return w->pages > 0;
}

static uint8_t *materialise(const struct workload *w)
{
	uint8_t *p = mmap(NULL, w->pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	madvise(p, w->pages * PG, MADV_NOHUGEPAGE); /* both contenders work on 4 KiB pages */
	memcpy(p, w->image, w->pages * PG);
	return p;
}

/* ---- results ---- */

struct result {
	bool ran;
	bool converged;
	double seconds, cpu;
	uint64_t saved;
	int64_t pss_delta_kib;
	bool timed;        /* seconds, cpu and saved were measured (not on the first-write-only row) */
	bool pss_measured; /* the processes rows measure no Pss */
	double first_write_ns;
};

/* ---- memvisor ---- */

static double first_write(uint8_t *p, size_t pages, size_t n)
{
	if (n > pages)
		n = pages;
	double t = now_s();
	for (size_t i = 0; i < n; i++)
		((volatile uint8_t *)p)[i * PG + 7] ^= 1;
	double dt = now_s() - t;
	for (size_t i = 0; i < n; i++)
		((volatile uint8_t *)p)[i * PG + 7] ^= 1;
	return dt * 1e9 / (double)n;
}

enum mode { SYNC_STABLE, SYNC_TWO_LOOKS, THREAD };

static uint64_t saved_bytes(mv_merge *m)
{
	struct mv_merge_stats s;
	mv_merge_get_stats(m, &s, sizeof(s));
	return s.pages_sharing + s.zero_pages;
}

static struct result run_memvisor(const struct workload *w, enum mode mode)
{
	struct result r = { 0 };
	uint8_t *p = materialise(w);
	mv_merge *m = NULL;
	if (!p || mv_merge_new(NULL, 0, &m) < 0 || mv_merge_register(m, p, w->pages * PG) < 0) {
		if (m)
			mv_merge_unref(m);
		if (p)
			munmap(p, w->pages * PG);
		return r;
	}
	uint64_t pss0 = pss_kib();
	double c0 = cpu_self(), t0 = now_s();
	if (mode == SYNC_STABLE) {
		mv_merge_scan(m, 0, 0, MV_MERGE_STABLE);
		r.converged = true;
	} else if (mode == SYNC_TWO_LOOKS) {
		mv_merge_scan(m, 0, 0, 0);
		mv_merge_scan(m, 0, 0, 0);
		r.converged = true;
	} else {
		struct mv_merge_knobs k;
		mv_merge_get_knobs(m, &k);
		k.pages_to_scan = 10000;
		k.sleep_usecs = 0;
		k.run = 1;
		mv_merge_set_knobs(m, &k);
		uint64_t last = 0;
		double last_change = now_s(), cpu_at_change = cpu_self();
		while (now_s() - t0 < 120) {
			usleep(20000);
			uint64_t s = saved_bytes(m);
			if (s != last) {
				last = s;
				last_change = now_s();
				cpu_at_change = cpu_self();
			} else if (s && now_s() - last_change > 0.5) {
				r.converged = true;
				break;
			}
		}
		k.run = 0;
		mv_merge_set_knobs(m, &k);
		/* until savings stopped growing, not the quiet period that proves it (20 ms resolution) */
		r.seconds = last_change - t0;
		r.cpu = cpu_at_change - c0;
	}
	if (mode != THREAD) {
		r.seconds = now_s() - t0;
		r.cpu = cpu_self() - c0;
	}
	r.saved = saved_bytes(m);
	r.pss_delta_kib = (int64_t)pss_kib() - (int64_t)pss0;
	r.pss_measured = true;
	r.timed = true;
	if (mode == SYNC_STABLE)
		r.first_write_ns = first_write(p, w->pages, 4096);
	r.ran = true;
	/* the bytes must still be the workload's */
	if (memcmp(p, w->image, w->pages * PG)) {
		fprintf(stderr, "bench_merge: memvisor changed the data of %s\n", w->name);
		exit(1);
	}
	mv_merge_unref(m);
	munmap(p, w->pages * PG);
	return r;
}

/* ---- the kernel's KSM ---- */

static const char *const ksm_knobs[] = {
	"run", "pages_to_scan", "sleep_millisecs", "use_zero_pages", "max_page_sharing", "merge_across_nodes"
};
#define NKNOBS (sizeof(ksm_knobs) / sizeof(ksm_knobs[0]))
static char saved_knobs[NKNOBS][32];
static bool knobs_saved;

static int ksm_read(const char *name, char *buf, size_t len)
{
	char path[128];
	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	char *nl = strchr(buf, '\n');
	if (nl)
		*nl = 0;
	return 0;
}

static uint64_t ksm_get(const char *name)
{
	char b[32];
	return ksm_read(name, b, sizeof(b)) == 0 ? strtoull(b, NULL, 10) : 0;
}

static int ksm_set(const char *name, const char *val)
{
	char path[128];
	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, val, strlen(val));
	int e = n < 0 ? -errno : 0;
	close(fd);
	return e;
}

static void ksm_restore(void)
{
	if (!knobs_saved)
		return;
	ksm_set("run", "2"); /* unmerge whatever is left before settings go back */
	for (size_t i = 1; i < NKNOBS; i++)
		ksm_set(ksm_knobs[i], saved_knobs[i]);
	ksm_set("run", saved_knobs[0]);
	knobs_saved = false;
}

static void on_signal(int sig)
{
	ksm_restore();
	signal(sig, SIG_DFL);
	raise(sig);
}

static bool ksm_available(void)
{
	if (geteuid() != 0 || access("/sys/kernel/mm/ksm/run", W_OK) != 0)
		return false;
	/* two runs at once would each save the other's settings as the ones to restore */
	int lk = open("/run/lock/memvisor-bench-merge.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lk < 0 || flock(lk, LOCK_EX | LOCK_NB) < 0) {
		fprintf(stderr, "bench_merge: another bench_merge drives KSM; kernel KSM skipped\n");
		return false;
	}
	for (size_t i = 0; i < NKNOBS; i++)
		if (ksm_read(ksm_knobs[i], saved_knobs[i], sizeof(saved_knobs[i])) < 0)
			return false;
	knobs_saved = true;
	atexit(ksm_restore);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	return true;
}

static pid_t ksmd_pid(void)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t found = 0;
	while (d && (e = readdir(d))) {
		char path[300], comm[32] = "";
		snprintf(path, sizeof(path), "/proc/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strcmp(comm, "ksmd\n"))
			found = (pid_t)atoi(e->d_name);
		fclose(f);
		if (found)
			break;
	}
	if (d)
		closedir(d);
	return found;
}

static double task_cpu(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	unsigned long ut = 0, st = 0;
	if (p)
		sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st);
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void ksm_prepare(bool fastest)
{
	ksm_set("run", "2");
	ksm_set("use_zero_pages", "0");
	ksm_set("max_page_sharing", "256");
	ksm_set("pages_to_scan", fastest ? "10000" : "100");
	ksm_set("sleep_millisecs", fastest ? "0" : "20");
}

/* Runs ksmd on what is MADV_MERGEABLE until two full scans add nothing (or cap_s): seconds, ksmd's CPU
 * and pages saved, all up to the last time savings grew. */
static void ksm_until_converged(struct result *r, double cap_s, unsigned poll_us)
{
	pid_t ksmd = ksmd_pid();
	double c0 = task_cpu(ksmd), t0 = now_s(), last_change = t0, cpu_at_change = c0;
	uint64_t last = 0, scans_at_change = ksm_get("full_scans");
	ksm_set("run", "1");
	while (now_s() - t0 < cap_s) {
		usleep(poll_us);
		uint64_t s = ksm_get("pages_sharing") + ksm_get("ksm_zero_pages");
		uint64_t scans = ksm_get("full_scans");
		if (s != last) {
			last = s;
			last_change = now_s();
			cpu_at_change = task_cpu(ksmd);
			scans_at_change = scans;
		} else if (s && scans >= scans_at_change + 2) {
			r->converged = true;
			break;
		}
	}
	ksm_set("run", "0");
	r->seconds = last_change - t0;
	r->cpu = cpu_at_change - c0;
	if (!last) { /* nothing merged before the cap: the row says how long that was */
		r->seconds = now_s() - t0;
		r->cpu = task_cpu(ksmd) - c0;
	}
	r->saved = last;
}

static struct result run_kernel(const struct workload *w, bool fastest, double cap_s)
{
	struct result r = { 0 };
	uint8_t *p = materialise(w);
	if (!p)
		return r;
	ksm_prepare(fastest);
	uint64_t pss0 = pss_kib();
	if (madvise(p, w->pages * PG, MADV_MERGEABLE) < 0) {
		munmap(p, w->pages * PG);
		return r;
	}
	ksm_until_converged(&r, cap_s, fastest ? 2000 : 20000);
	r.pss_delta_kib = (int64_t)pss_kib() - (int64_t)pss0;
	r.pss_measured = true;
	r.timed = true;
	r.first_write_ns = first_write(p, w->pages, 4096);
	r.ran = true;
	ksm_set("run", "2");
	munmap(p, w->pages * PG);
	return r;
}

/* ---- several processes, each holding one of the heaps ---- */

#define PROCS 4

struct member_report {
	uint64_t sites; /* pages of this process mapped to canonical pages */
	uint64_t zero;
	uint64_t partition; /* canonical pages of the partition */
	double cpu;
};

/* A member process: its slice of the image, in a partition or under MADV_MERGEABLE; scans when told. */
static void member_main(const struct workload *w, size_t lo, size_t n, bool kernel, const char *part, int in, int out)
{
	uint8_t *p = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		_exit(1);
	madvise(p, n * PG, MADV_NOHUGEPAGE);
	memcpy(p, w->image + lo * PG, n * PG);
	mv_merge *m = NULL;
	int e = kernel ? (madvise(p, n * PG, MADV_MERGEABLE) < 0 ? -errno : 0) : mv_merge_new(part, 0, &m);
	if (e == 0 && !kernel)
		e = mv_merge_register(m, p, n * PG);
	if (e < 0) {
		fprintf(stderr, "bench_merge: member: %s\n", strerror(-e));
		_exit(2);
	}
	char c = 'r';
	if (write(out, &c, 1) != 1)
		_exit(3);
	while (read(in, &c, 1) == 1 && c != 'q') {
		struct member_report rep = { 0 };
		if (!kernel && c == 's') {
			if (mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) < 0)
				_exit(4);
			struct mv_merge_stats s;
			mv_merge_get_stats(m, &s, sizeof(s));
			rep.sites = s.pages_shared + s.pages_sharing;
			rep.zero = s.zero_pages;
			rep.partition = s.partition_pages;
		}
		rep.cpu = cpu_self();
		if (write(out, &rep, sizeof(rep)) != sizeof(rep))
			_exit(5);
	}
	if (memcmp(p, w->image + lo * PG, n * PG))
		_exit(6); /* the bytes must still be the heap's */
	if (m)
		mv_merge_unref(m);
	_exit(0);
}

static pid_t broker_pid(void)
{
	/* the auto-started broker of this user: its pid is in STATUS, but the CLI's helpers are not here;
	 * the lock file's owner is found through /proc instead */
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t found = 0;
	while (d && (e = readdir(d))) {
		char path[300], comm[32] = "";
		snprintf(path, sizeof(path), "/proc/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strcmp(comm, "memvisord\n") && (pid_t)atoi(e->d_name) > found)
			found = (pid_t)atoi(e->d_name);
		fclose(f);
	}
	if (d)
		closedir(d);
	return found;
}

/* memvisor (a named partition, synchronous scans in turn until savings stop growing) or the kernel
 * (MADV_MERGEABLE, KSM at its fastest) over PROCS processes holding one heap each. */
static struct result run_processes(const struct workload *w, bool kernel)
{
	struct result r = { 0 };
	int to[PROCS][2], from[PROCS][2];
	pid_t pids[PROCS];
	size_t per = w->pages / PROCS;
	char part[64];
	snprintf(part, sizeof(part), "bench-merge-%d", (int)getpid());
	if (kernel)
		ksm_prepare(true);
	for (int i = 0; i < PROCS; i++) {
		if (pipe(to[i]) < 0 || pipe(from[i]) < 0)
			return r;
		pids[i] = fork();
		if (pids[i] == 0) {
			close(to[i][1]);
			close(from[i][0]);
			member_main(w, (size_t)i * per, per, kernel, part, to[i][0], from[i][1]);
		}
		close(to[i][0]);
		close(from[i][1]);
		char c;
		if (read(from[i][0], &c, 1) != 1) {
			fprintf(stderr, "bench_merge: member process %d did not start\n", (int)pids[i]);
			goto out;
		}
	}
	struct member_report rep[PROCS];
	double cpu0[PROCS];
	for (int i = 0; i < PROCS; i++) {
		/* 'c': report the CPU used so far (building the heap), scan nothing */
		if (write(to[i][1], "c", 1) != 1 || read(from[i][0], &rep[i], sizeof(rep[i])) != sizeof(rep[i]))
			goto out;
		cpu0[i] = rep[i].cpu;
	}
	if (kernel) {
		ksm_until_converged(&r, 120, 2000);
		ksm_set("run", "2");
		r.timed = true;
	} else {
		pid_t broker = broker_pid();
		double b0 = task_cpu(broker), t0 = now_s();
		uint64_t last = 0;
		for (int round = 0; round < 6; round++) {
			uint64_t sites = 0, zero = 0, canon = 0;
			for (int i = 0; i < PROCS; i++) {
				if (write(to[i][1], "s", 1) != 1 ||
				    read(from[i][0], &rep[i], sizeof(rep[i])) != sizeof(rep[i]))
					goto out;
				sites += rep[i].sites;
				zero += rep[i].zero;
				canon = rep[i].partition;
			}
			uint64_t saved = sites + zero - canon;
			if (round && saved == last) {
				r.converged = true;
				break;
			}
			last = saved;
			r.seconds = now_s() - t0;
		}
		r.saved = last;
		r.timed = true;
		r.cpu = task_cpu(broker) - b0;
		for (int i = 0; i < PROCS; i++)
			r.cpu += rep[i].cpu - cpu0[i];
		/* the last round, which found nothing new, is not part of the time */
	}
	r.ran = true;
out:
	for (int i = 0; i < PROCS; i++) {
		if (write(to[i][1], "q", 1) != 1)
			kill(pids[i], SIGKILL);
		int st;
		waitpid(pids[i], &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			fprintf(stderr, "bench_merge: member process %d failed (%d)\n", (int)pids[i],
				WIFEXITED(st) ? WEXITSTATUS(st) : -1);
			r.ran = false;
		}
		close(to[i][1]);
		close(from[i][0]);
	}
	return r;
}

/* ---- report ---- */

static void row(const char *wl, const char *who, const struct result *r, const struct result *base, bool first_json)
{
	if (!r->ran)
		return;
	/* no ratio against a kernel run that did not finish merging */
	bool b = base && base->ran && base->converged && base->saved;
	double tr = b && r->seconds > 0 ? base->seconds / r->seconds : 0;
	double cr = b && r->cpu > 0 ? base->cpu / r->cpu : 0;
	double sr = b ? (double)r->saved / (double)base->saved : 0;
	char pss[24] = "null", fwj[24] = "null";
	if (r->pss_measured)
		snprintf(pss, sizeof(pss), "%ld", (long)r->pss_delta_kib);
	if (r->first_write_ns > 0)
		snprintf(fwj, sizeof(fwj), "%.0f", r->first_write_ns);
	if (json) {
		if (r->timed)
			printf("%s    {\"workload\": \"%s\", \"contender\": \"%s\", \"seconds\": %.4f, \"converged\": "
			       "%s, "
			       "\"cpu_seconds\": %.4f, \"pages_saved\": %lu, \"pss_delta_kib\": %s, "
			       "\"first_write_ns\": %s, "
			       "\"speedup_vs_kernel_fastest\": %.2f, \"cpu_ratio_kernel_over_ours\": %.2f, "
			       "\"savings_vs_kernel\": %.4f}",
			       first_json ? "" : ",\n", wl, who, r->seconds, r->converged ? "true" : "false", r->cpu,
			       (unsigned long)r->saved, pss, fwj, tr, cr, sr);
		else
			printf("%s    {\"workload\": \"%s\", \"contender\": \"%s\", \"first_write_ns\": %s}",
			       first_json ? "" : ",\n", wl, who, fwj);
		return;
	}
	char t[16] = "-", c[16] = "-", s[16] = "-", fw[16] = "-", ps[16] = "-";
	if (tr > 0)
		snprintf(t, sizeof(t), "%.2fx", tr);
	if (cr > 0)
		snprintf(c, sizeof(c), "%.2fx", cr);
	if (sr > 0)
		snprintf(s, sizeof(s), "%.4f", sr);
	if (r->first_write_ns > 0)
		snprintf(fw, sizeof(fw), "%.0f", r->first_write_ns);
	if (r->pss_measured)
		snprintf(ps, sizeof(ps), "%.1f", (double)r->pss_delta_kib / 1024.0);
	if (!r->timed) {
		printf("  %-30s %-26s %9s %7s %10s %9s %8s %7s %7s %8s\n", wl, who, "-", "-", "-", ps, t, c, s, fw);
		return;
	}
	printf("  %-30s %-26s %8.3f%s %7.3f %10lu %9s %8s %7s %7s %8s\n", wl, who, r->seconds, r->converged ? " " : "*",
	       r->cpu, (unsigned long)r->saved, ps, t, c, s, fw);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--quick"))
			quick = true;
		else if (!strcmp(argv[i], "--size") && i + 1 < argc)
			only_mib = atol(argv[++i]);
		else if (!strcmp(argv[i], "--dup") && i + 1 < argc)
			only_dup = atol(argv[++i]);
		else if (!strcmp(argv[i], "--heaps"))
			only_heaps = true;
		else {
			fprintf(stderr, "usage: bench_merge [--json] [--quick] [--size MIB --dup PCT | --heaps]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN); /* a member process that died is reported, not fatal */
	mv_merge *probe = NULL;
	int pr = mv_merge_new(NULL, 0, &probe);
	if (pr < 0) {
		fprintf(stderr, "bench_merge: memvisor merging is unavailable here: %s\n", strerror(-pr));
		return 1;
	}
	mv_merge_unref(probe);
	double run_t0 = now_s();
	bool kernel = ksm_available();
	size_t sizes[2] = { 256, 1024 };
	int nsizes = quick ? 1 : 2;
	if (quick)
		sizes[0] = 64;
	unsigned dups[3] = { 10, 50, 90 };

	if (json)
		printf("{\n  \"benchmark\": \"bench_merge\",\n  \"kernel_ksm\": %s,\n  \"rows\": [\n",
		       kernel ? "true" : "false");
	else {
		printf("bench_merge: memvisor same-page merging vs the kernel's KSM on identical memory%s\n",
		       kernel ? "" : " (kernel KSM skipped: needs root)");
		printf("  baseline for ratios: kernel KSM at pages_to_scan=10000 sleep_millisecs=0, same run\n");
		printf("  speedup = kernel time / ours; cpu = kernel CPU / ours; savings = ours / kernel's;"
		       " * = still growing at the cap\n");
		printf("  kernel default settings: once per size (50%% workload), at most %.0f s (a GiB needs"
		       " ~130 s: its row is a bound)\n\n",
		       DEFAULT_CAP_S);
		printf("  %-30s %-26s %9s %7s %10s %9s %8s %7s %7s %8s\n", "workload", "contender", "seconds", "cpu s",
		       "saved pg", "Pss MiB", "speedup", "cpu", "savings", "1st wr ns");
	}
	bool first = true;
	int nwl = nsizes * 3 + 1;
	if (only_mib > 0 && only_dup >= 0 && only_dup <= 98) {
		sizes[0] = (size_t)only_mib;
		dups[0] = (unsigned)only_dup;
		nsizes = 1;
		nwl = 1;
	}
	if (only_heaps) {
		nsizes = 0;
		nwl = 1;
	}
	for (int wi = 0; wi < nwl; wi++) {
		struct workload w = { 0 };
		if (wi < nsizes * 3)
			synthetic(&w, sizes[wi / 3], dups[wi % 3]);
		else if (!interpreter_heaps(&w)) {
			if (!json)
				printf("  (no python3: the interpreter-heap workload is skipped)\n");
			free(w.image);
			break;
		}
		struct result kf = { 0 }, kd = { 0 };
		if (kernel) {
			kf = run_kernel(&w, true, 120);
			/* Default settings scan 5000 pages/s and need two full scans (give them three): ~50 s a
			 * 256 MiB workload, ~170 s a GiB. Their time follows from the scan rate, not from the
			 * duplicates, so they run once per size, on the 50% workload (or the one --size/--dup
			 * workload), and for at most DEFAULT_CAP_S seconds (a GiB: one full scan and a bit),
			 * which keeps a full run under 5 minutes. */
			bool once_per_size = wi < nsizes * 3 && (nwl == 1 || dups[wi % 3] == 50);
			double cap = (double)w.pages / 5000.0 * 3 + 10;
			if (!quick && once_per_size)
				kd = run_kernel(&w, false, cap < DEFAULT_CAP_S ? cap : DEFAULT_CAP_S);
		}
		struct result un = { .ran = true, .converged = true };
		uint8_t *plain = materialise(&w);
		if (plain) {
			un.first_write_ns = first_write(plain, w.pages, 4096);
			munmap(plain, w.pages * PG);
		}
		struct result ms = run_memvisor(&w, SYNC_STABLE);
		struct result m2 = run_memvisor(&w, SYNC_TWO_LOOKS);
		struct result mt = run_memvisor(&w, THREAD);
		row(w.name, "kernel KSM fastest", &kf, NULL, first), first = first && !kf.ran;
		row(w.name, "kernel KSM default", &kd, &kf, first), first = first && !kd.ran;
		row(w.name, "memvisor sync (stable)", &ms, &kf, first), first = false;
		row(w.name, "memvisor sync (2 looks)", &m2, &kf, first);
		row(w.name, "memvisor thread 10000/0", &mt, &kf, first);
		row(w.name, "unmerged (1st write only)", &un, NULL, first);
		if (wi == nsizes * 3) {
			/* the same heaps in four processes: merging across them */
			char name[64];
			snprintf(name, sizeof(name), "%d processes, 1 heap each", PROCS);
			struct result pk = kernel ? run_processes(&w, true) : (struct result){ 0 };
			struct result pm = run_processes(&w, false);
			if (!pm.ran && !json)
				printf("  (memvisor across processes needs the broker: none reachable, and "
				       "MEMVISOR_AUTOSTART=0?)\n");
			row(name, "kernel KSM fastest", &pk, NULL, first);
			row(name, "memvisor partition, sync", &pm, &pk, first);
		}
		if (!json && w.expect_saved)
			printf("  %-30s %-26s %20lu\n", "", "(duplicate+zero pages)", (unsigned long)w.expect_saved);
		free(w.image);
	}
	if (json)
		printf("\n  ],\n  \"total_seconds\": %.1f\n}\n", now_s() - run_t0);
	else
		printf("\n  whole run: %.1f s\n", now_s() - run_t0);
	return 0;
}
