/* SPDX-License-Identifier: MIT */
/* bench_regions: speed and memory of purgeable regions, each against a baseline measured in the same run.
 *
 *   pin+unpin, one page, uncontended      vs  one trivial syscall (getppid)
 *   pin+unpin throughput, 2 processes     vs  the same loop in 1 process
 *   purge 1 GiB through the broker        vs  fallocate(PUNCH_HOLE) of 1 GiB done directly
 *   broker memory per region              vs  the 256 B target
 *   100k live regions                     (creation cost, broker heap, control-block memory)
 *
 * Usage: bench_regions [--json] [--quick] [--tier]. Starts its own broker in a temporary runtime directory.
 * --tier runs only the compressed tier's rows (a cache under pressure, the loop during a large reclaim).
 */
#include "tbroker.h"

#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "memvisor/broker.h"
#include "memvisor/memvisor.h"
#include "regions/ctl.h"

#define PG MV_PAGE_SIZE

static bool json, quick, tier_only;
static struct tbroker B;

struct result {
	const char *name, *unit, *baseline_name;
	double value, baseline, target; /* target: ratio bound, 0 if none */
	bool lower_is_better;
	double abs_target; /* bound on value itself (issue's absolute targets), 0 if none */
};

static struct result results[32];
static int nresults;

static void record(struct result r)
{
	results[nresults++] = r;
}

static double now_s(void)
{
	return (double)mvu_now_ns() / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Median of several timed batches: ns per operation. */
#define MEDIAN_NS(iters, body)                                                                                         \
	({                                                                                                             \
		double _s[9];                                                                                          \
		for (int _k = 0; _k < 9; _k++) {                                                                       \
			uint64_t _t0 = mvu_now_ns();                                                                   \
			for (long _i = 0; _i < (iters); _i++) {                                                        \
				body;                                                                                  \
			}                                                                                              \
			_s[_k] = (double)(mvu_now_ns() - _t0) / (double)(iters);                                       \
		}                                                                                                      \
		qsort(_s, 9, sizeof(double), cmp_double);                                                              \
		_s[4];                                                                                                 \
	})

static void bench_ashmem(double native_pin, double getppid_ns);

static void bench_pin_latency(void)
{
	mv_region *r;
	long n = quick ? 200000 : 2000000;

	if (mv_region_new("bench-pin", 64 * PG, &r) < 0)
		exit(1);
	double sys = MEDIAN_NS(n, syscall(SYS_getppid));
	double pin = MEDIAN_NS(n, {
		mv_region_unpin(r, 5 * PG, PG);
		mv_region_pin(r, 5 * PG, PG);
	});
	record((struct result){ "pin+unpin 1 page", "ns/op", "getppid()", pin, sys, 0.5, true, 0 });
	mv_region_unref(r);
	bench_ashmem(pin, sys);
}

static void bench_pin_two_processes(void)
{
	mv_region *r;
	long n = quick ? 200000 : 1000000;
	_Atomic uint64_t *shared = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (mv_region_new("bench-pin2", 64 * PG, &r) < 0)
		exit(1);
	/* Baseline: one process alone. */
	uint64_t t0 = mvu_now_ns();
	for (long i = 0; i < n; i++) {
		mv_region_unpin(r, 3 * PG, PG);
		mv_region_pin(r, 3 * PG, PG);
	}
	double one = (double)n / ((double)(mvu_now_ns() - t0) / 1e9);

	/* Two processes, different pages of the same region (they share its lock and header). */
	atomic_store(&shared[0], 0);
	pid_t kids[2];
	for (int k = 0; k < 2; k++) {
		kids[k] = fork();
		if (kids[k] == 0) {
			atomic_fetch_add(&shared[0], 1);
			while (atomic_load(&shared[0]) < 2)
				;
			for (long i = 0; i < n; i++) {
				mv_region_unpin(r, (size_t)(10 + k) * PG, PG);
				mv_region_pin(r, (size_t)(10 + k) * PG, PG);
			}
			_exit(0);
		}
	}
	t0 = mvu_now_ns();
	for (int k = 0; k < 2; k++)
		waitpid(kids[k], NULL, 0);
	double two = 2.0 * (double)n / ((double)(mvu_now_ns() - t0) / 1e9);
	record((struct result){ "pin+unpin, 2 processes, 1 region", "ops/s", "1 process", two, one, 0, false, 0 });
	munmap(shared, PG);
	mv_region_unref(r);
}

static void touch(unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i += PG)
		p[i] = (unsigned char)(i >> 12);
}

static double raw_punch_once(size_t len)
{
	int fd = memfd_create("bench-raw", MFD_CLOEXEC);
	unsigned char *p;

	if (fd < 0 || ftruncate(fd, (off_t)len) < 0)
		exit(1);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		exit(1);
	touch(p, len);
	double t = now_s();
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)len) < 0)
		exit(1);
	t = now_s() - t;
	munmap(p, len);
	close(fd);
	return t;
}

static double purge_once(size_t len, double *shmem_drop)
{
	mv_region *r;
	unsigned char *p;
	uint64_t purged = 0;

	if (mv_region_new("bench-purge", len, &r) < 0 || mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&p) < 0)
		exit(1);
	mv_region_set_compression(r, 0); /* the drop itself, against the kernel's punch */
	touch(p, len);
	/* Unpinned in 4 MiB ranges, as a cache would. */
	for (size_t off = 0; off < len; off += 4 << 20)
		mv_region_unpin(r, off, 4 << 20);
	int64_t shmem0 = mvu_meminfo("Shmem");
	double t = now_s();
	if (mv_purge(MV_PURGE_ALL, &purged) < 0 || purged != len) {
		fprintf(stderr, "bench_regions: purge returned %llu of %zu bytes\n", (unsigned long long)purged, len);
		exit(1);
	}
	t = now_s() - t;
	*shmem_drop = (double)(shmem0 - mvu_meminfo("Shmem"));
	mv_region_unmap(r, p);
	mv_region_unref(r);
	return t;
}

/* Kernel page freeing varies by tens of percent between runs: medians of alternating repetitions. */
static void bench_purge(void)
{
	size_t len = quick ? (256ul << 20) : (1ul << 30);
	double raw[3], mv[3], drop[3];

	for (int i = 0; i < 3; i++) {
		raw[i] = raw_punch_once(len);
		mv[i] = purge_once(len, &drop[i]);
	}
	qsort(raw, 3, sizeof(double), cmp_double);
	qsort(mv, 3, sizeof(double), cmp_double);
	qsort(drop, 3, sizeof(double), cmp_double);
	double gib = (double)len / (1u << 30);
	record((struct result){ "purge: time to free", "ms", "fallocate punch, direct", mv[1] * 1e3, raw[1] * 1e3, 0,
				true, quick ? 0 : 50 });
	record((struct result){ "purge: reclaim rate", "GiB/s", "fallocate punch, direct", gib / mv[1], gib / raw[1], 0,
				false, 4 });
	record((struct result){ "purge: Shmem dropped", "MiB", "bytes unpinned", drop[1] / (1 << 20),
				(double)len / (1 << 20), 0, false, 0 });
}

/* Children each create and keep a share of the regions: one process may not hold 100k descriptors. */
/* One of the broker's named counters, now. */
static int counter(const char *name, uint64_t *v)
{
	mv_broker_status *s;
	int r = mv_broker_status_new(&s);

	if (r < 0)
		return r;
	r = mv_broker_status_get(s, name, v);
	mv_broker_status_free(s);
	return r;
}

/* The region count once it stops moving (three equal readings 50 ms apart, for at most 5 s). */
static int settled_count(uint64_t *v)
{
	uint64_t last = UINT64_MAX;
	int same = 0, r = 0;
	for (int i = 0; i < 100 && same < 3; i++) {
		if ((r = counter("regions.count", v)) < 0)
			return r;
		same = *v == last ? same + 1 : 0;
		last = *v;
		usleep(50000);
	}
	return 0;
}

static void bench_many_regions(void)
{
	long total = quick ? 20000 : 100000;
	int per = 9000, nkids = (int)((total + per - 1) / per);
	uint64_t regions0, regions1, heap0, heap1;
	int ready[2], go[2];
	pid_t kids[16];

	/* Regions of the sections before may still be on their way out: start from a count that holds. */
	if (settled_count(&regions0) < 0 || counter("broker.heap_bytes", &heap0) < 0 || pipe(ready) < 0 || pipe(go) < 0)
		exit(1);
	double t0 = now_s();
	for (int k = 0; k < nkids; k++) {
		long mine = k == nkids - 1 ? total - (long)per * k : per;
		kids[k] = fork();
		if (kids[k] == 0) {
			struct rlimit rl;
			getrlimit(RLIMIT_NOFILE, &rl);
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
			mv_region **v = calloc((size_t)mine, sizeof(*v));
			for (long i = 0; i < mine; i++) {
				char name[32];
				snprintf(name, sizeof(name), "many-%d-%ld", k, i);
				if (mv_region_new(name, PG, &v[i]) < 0)
					_exit(2);
			}
			char c = 'R';
			if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
				_exit(3);
			for (long i = 0; i < mine; i++)
				mv_region_unref(v[i]);
			_exit(0);
		}
	}
	for (int k = 0; k < nkids; k++) {
		char c;
		if (read(ready[0], &c, 1) != 1) {
			fprintf(stderr, "bench_regions: a region-holding child failed\n");
			exit(1);
		}
	}
	double create = now_s() - t0;
	/* An attach the broker has not read yet is not counted yet: give it a moment. */
	for (int i = 0; i < 200 && counter("regions.count", &regions1) == 0 && (long)(regions1 - regions0) != total;
	     i++)
		usleep(10000);
	if (counter("regions.count", &regions1) < 0 || counter("broker.heap_bytes", &heap1) < 0 ||
	    (long)(regions1 - regions0) != total) {
		fprintf(stderr, "bench_regions: broker sees %llu regions, expected %ld\n",
			(unsigned long long)(regions1 - regions0), total);
		exit(1);
	}
	double per_region = (double)(heap1 - heap0) / (double)total;
	record((struct result){ "broker heap per live region", "B", "-", per_region, 0, 0, true, 256 });
	record((struct result){ "create+register a region", "us", "-", create / (double)total * 1e6, 0, 0, true, 0 });
	record((struct result){ "shared control block per region", "KiB", "data (1 page)",
				(double)mvr_ctl_length(1) / 1024, (double)PG / 1024, 0, true, 0 });
	char c = 'G';
	for (int k = 0; k < nkids; k++)
		if (write(go[1], &c, 1) != 1)
			exit(1);
	for (int k = 0; k < nkids; k++)
		waitpid(kids[k], NULL, 0);
	WAIT_FOR(counter("regions.count", &regions1) == 0 && regions1 == regions0, 60);
	record((struct result){ "live regions reached", "regions", "-", (double)total, 0, 0, false, 0 });
}

static bool met_abs(const struct result *r)
{
	return r->lower_is_better ? r->value <= r->abs_target : r->value >= r->abs_target;
}

/* ---- the compressed tier: a cache under pressure, with and without it ---- */

static double broker_cpu_ms(void)
{
	char path[64], buf[1024];
	unsigned long ut = 0, stt = 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)B.pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	if (fgets(buf, sizeof(buf), f)) {
		char *p = strrchr(buf, ')');
		if (p)
			sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stt);
	}
	fclose(f);
	return (double)(ut + stt) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

/* Rendered records: a cache of the kind that compresses (about 3:1 with LZ4). */
static void cache_fill(unsigned char *p, size_t len)
{
	uint64_t x = 88172645463325252ull;
	for (size_t i = 0; i + 64 <= len; i += 64) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		int n = snprintf((char *)p + i, 65, "{\"id\":%08zu,\"user\":\"u%06llu\",\"score\":%05llu,\"ok\":true}",
				 i / 64, (unsigned long long)(x % 1000000), (unsigned long long)((x >> 20) % 100000));
		memset(p + i + n, ' ', (size_t)(64 - n));
		p[i + 63] = '\n';
	}
}

struct tier_result {
	double hit_rate, held_mib, reclaim_cpu_ms, restore_cpu_ms, pin_us_per_page, produce_us_per_page;
};

static struct tier_result cache_under_pressure(bool tier)
{
	size_t len = quick ? (32ul << 20) : (128ul << 20), chunk = 1 << 20;
	struct tier_result res = { 0 };
	mv_region *r;
	unsigned char *m;

	if (mv_region_new("bench-cache", len, &r) < 0 || mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m) < 0)
		exit(1);
	mv_region_set_compression(r, tier);
	uint64_t tp = mvu_now_ns();
	cache_fill(m, len);
	res.produce_us_per_page = (double)(mvu_now_ns() - tp) / 1000.0 / (double)(len / MV_PAGE_SIZE);
	for (size_t off = 0; off < len; off += chunk)
		mv_region_unpin(r, off, chunk);
	/* Pressure: no unpinned memory may stay resident. */
	double cpu0 = broker_cpu_ms();
	if (mv_broker_set(MV_BROKER_UNPINNED_BUDGET, 0) < 0 || mv_sync() < 0)
		exit(1);
	res.reclaim_cpu_ms = broker_cpu_ms() - cpu0;
	mv_broker_set(MV_BROKER_UNPINNED_BUDGET, MV_BROKER_NO_LIMIT);
	struct stat st;
	uint64_t tier_held = 0;
	fstat(mv_region_fd(r), &st);
	counter("tier.bytes_held", &tier_held);
	uint64_t region_held = (uint64_t)st.st_blocks * 512; /* the data file only: the control file is apart */
	res.held_mib = (double)(region_held + tier_held) / (1 << 20);
	/* The cache comes back into use: how much of it is still there, and what a pin costs. */
	size_t hits = 0, n = len / chunk;
	cpu0 = broker_cpu_ms();
	uint64_t t0 = mvu_now_ns();
	for (size_t off = 0; off < len; off += chunk)
		hits += mv_region_pin(r, off, chunk) == MV_NOT_PURGED;
	double pin_ns = (double)(mvu_now_ns() - t0);
	res.restore_cpu_ms = broker_cpu_ms() - cpu0;
	res.hit_rate = (double)hits / (double)n;
	res.pin_us_per_page = pin_ns / 1000.0 / (double)(len / MV_PAGE_SIZE);
	/* Whatever came back must be the data. */
	unsigned char *want = malloc(len);
	cache_fill(want, len);
	for (size_t off = 0; off < len; off += chunk)
		if (m[off + 5] != 0 && memcmp(m + off, want + off, chunk) != 0) {
			fprintf(stderr, "bench_regions: a restored chunk differs\n");
			exit(1);
		}
	free(want);
	mv_region_unmap(r, m);
	mv_region_unref(r);
	return res;
}

/* ---- the broker's loop while the tier compresses a large reclaim ---- */

/* A separate process (its own connection) asks for the broker's status in a loop until a byte arrives on
 * stop: the longest wait and the median, in ms, go back through out. */
static void status_probe(int ready, int stop, int out)
{
	static double lat[1 << 16];
	size_t n = 0;
	char c = 'r';
	mv_broker_status *st;
	if (mv_broker_status_new(&st) < 0) /* connected before the clock starts */
		_exit(1);
	mv_broker_status_free(st);
	if (write(ready, &c, 1) != 1)
		_exit(1);
	fcntl(stop, F_SETFL, O_NONBLOCK);
	while (read(stop, &c, 1) != 1) {
		uint64_t t = mvu_now_ns();
		if (mv_broker_status_new(&st) < 0)
			_exit(1);
		mv_broker_status_free(st);
		lat[n++ % (1 << 16)] = (double)(mvu_now_ns() - t) / 1e6;
		usleep(200);
	}
	size_t k = n < (1 << 16) ? n : (1 << 16);
	double res[2] = { 0, 0 };
	for (size_t i = 0; i < k; i++)
		res[0] = lat[i] > res[0] ? lat[i] : res[0];
	qsort(lat, k, sizeof(double), cmp_double);
	res[1] = k ? lat[k / 2] : 0;
	if (write(out, res, sizeof(res)) != sizeof(res))
		_exit(1);
	_exit(0);
}

struct probe {
	pid_t pid;
	int stop, out;
};

static struct probe probe_start(void)
{
	int r[2], s[2], o[2];
	char c;
	if (pipe(r) < 0 || pipe(s) < 0 || pipe(o) < 0)
		exit(1);
	pid_t pid = fork();
	if (pid == 0)
		status_probe(r[1], s[0], o[1]);
	close(r[1]);
	close(s[0]);
	close(o[1]);
	if (read(r[0], &c, 1) != 1)
		exit(1);
	close(r[0]);
	return (struct probe){ pid, s[1], o[0] };
}

/* The longest and the median wait for a status answer since probe_start, in ms (while the loop is busy
 * the probe's one request waits all along, so the longest wait is the figure). */
static void probe_stop(struct probe p, double res[2])
{
	res[0] = res[1] = -1;
	if (write(p.stop, "q", 1) != 1 || read(p.out, res, 2 * sizeof(double)) != 2 * sizeof(double))
		fprintf(stderr, "bench_regions: the status probe died\n");
	close(p.stop);
	close(p.out);
	waitpid(p.pid, NULL, 0);
}

/* Reclaims a fresh len-byte compressible cache into the tier (an unpinned budget of 0, then mv_sync):
 * the wall time, the broker's CPU time, and whether the tier kept it. With a probe, the probe's waits. */
static bool reclaim_cache(size_t len, bool probe, double *t, double *cpu_s, double waits[2])
{
	size_t chunk = 1 << 20;
	mv_region *r;
	unsigned char *m;
	struct probe p;

	if (mv_region_new("bench-big-cache", len, &r) < 0 || mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m) < 0)
		exit(1);
	mv_region_set_compression(r, 1);
	cache_fill(m, len);
	for (size_t off = 0; off < len; off += chunk)
		mv_region_unpin(r, off, chunk);
	if (probe)
		p = probe_start();
	double cpu0 = broker_cpu_ms(), t0 = now_s();
	if (mv_broker_set(MV_BROKER_UNPINNED_BUDGET, 0) < 0 || mv_sync() < 0)
		exit(1);
	*t = now_s() - t0;
	*cpu_s = (broker_cpu_ms() - cpu0) / 1000.0;
	if (probe)
		probe_stop(p, waits);
	mv_broker_set(MV_BROKER_UNPINNED_BUDGET, MV_BROKER_NO_LIMIT);
	uint64_t stored = 0;
	counter("tier.pages", &stored);
	bool kept = stored >= len / MV_PAGE_SIZE / 2; /* else the store's budget is below the cache's */
	if (!kept)
		fprintf(stderr, "bench_regions: the reclaim kept only %llu of %zu pages compressed: no rate\n",
			(unsigned long long)stored, len / MV_PAGE_SIZE);
	mv_region_unmap(r, m);
	mv_region_unref(r);
	/* The region is gone once the broker has seen its last close: the next one starts from an empty tier. */
	for (int i = 0; i < 500 && counter("tier.pages", &stored) == 0 && stored; i++)
		usleep(10000);
	return kept;
}

static void bench_status_during_reclaim(void)
{
	size_t len = quick ? (128ul << 20) : (1ul << 30);
	double idle[2], busy[2], t, cpu_s, t2, cpu_s2;

	struct probe p = probe_start();
	usleep(300000);
	probe_stop(p, idle);
	reclaim_cache(len, true, &t, &cpu_s, busy);
	record((struct result){ quick ? "status wait during a 128 MiB reclaim, max"
				      : "status wait during a 1 GiB reclaim, max",
				"ms", "idle broker, max", busy[0], idle[0], 0, true, 5 });
	/* The rate without the probe: answering a status every 200 us costs the broker CPU of its own. */
	if (reclaim_cache(len, false, &t2, &cpu_s2, NULL)) {
		double gib = (double)len / (1u << 30);
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		record((struct result){ "tier reclaim rate (compressible cache)", "GiB/s", "-", gib / t2, 0, 0, false,
					1 });
		/* What the rate would be with every core to itself: the machine is shared, the CPU is not. */
		record((struct result){ "tier reclaim rate per broker CPU-second", "GiB/s", "-", gib / cpu_s2, 0, 0,
					false, 0 });
		record((struct result){ "tier reclaim rate, all cores at that cost", "GiB/s", "-",
					gib / cpu_s2 * (double)(ncpu > 0 ? ncpu : 1), 0, 0, false, 0 });
	}
}

static void bench_tier(void)
{
	struct tier_result plain = cache_under_pressure(false), tier = cache_under_pressure(true);
	record((struct result){ "cache hit rate after pressure", "fraction", "plain purge", tier.hit_rate,
				plain.hit_rate > 0 ? plain.hit_rate : 0, 0, false, 0 });
	record((struct result){ "cache memory held after pressure", "MiB", "plain purge", tier.held_mib, plain.held_mib,
				0, true, 0 });
	record((struct result){ "broker CPU to reclaim the cache", "ms", "plain purge", tier.reclaim_cpu_ms,
				plain.reclaim_cpu_ms, 0, true, 0 });
	record((struct result){ "broker CPU to restore on pin", "ms", "plain purge", tier.restore_cpu_ms,
				plain.restore_cpu_ms, 0, true, 0 });
	record((struct result){ "pin restoring a page", "us", "recomputing the page", tier.pin_us_per_page,
				tier.produce_us_per_page, 0, true, 0 });
}

/* ---- ashmem through the preload library, measured in child processes with and without it ---- */

struct ashmem_child_result {
	double ioctl_pin_unpin, open_close, ioctl_other, mmap_munmap, create_cycle;
};

/* A program's whole life of one small area: what libcutils does to make one, then its end. With the
 * preload it is an ashmem area; without, the memfd a kernel-less program would use instead. */
static int create_cycle_once(bool ashmem)
{
	int fd = ashmem ? open("/dev/ashmem", O_RDWR | O_CLOEXEC) : memfd_create("bench-cycle", MFD_CLOEXEC);
	if (fd < 0)
		return -1;
	if (ashmem ? ioctl(fd, 0x41007701 /* SET_NAME */, "bench-cycle") < 0 ||
			     ioctl(fd, 0x40087703 /* SET_SIZE */, 16 * PG) < 0
		   : ftruncate(fd, 16 * PG) < 0) {
		close(fd);
		return -1;
	}
	void *m = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		close(fd);
		return -1;
	}
	*(volatile char *)m = 1;
	munmap(m, 16 * PG);
	return close(fd);
}

/* Runs in a child started with or without LD_PRELOAD; plain libc calls only, like any program. */
static int ashmem_child(int out)
{
	struct ashmem_child_result res = { 0 };
	long n = quick ? 100000 : 500000;
	int p[2], mfd = memfd_create("bench-other", MFD_CLOEXEC);

	if (pipe(p) < 0 || mfd < 0 || ftruncate(mfd, PG) < 0)
		return 1;
	int fd = open("/dev/ashmem", O_RDWR);
	if (fd >= 0) {
		struct {
			uint32_t off, len;
		} pin = { 5 * PG, PG };
		if (ioctl(fd, 0x40087703 /* SET_SIZE */, 64 * PG) < 0 ||
		    mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED)
			return 2;
		res.ioctl_pin_unpin = MEDIAN_NS(n, {
			ioctl(fd, 0x40087708 /* UNPIN */, &pin);
			ioctl(fd, 0x40087707 /* PIN */, &pin);
		});
	}
	bool ashmem = fd >= 0;
	if (create_cycle_once(ashmem) < 0)
		return 4;
	res.create_cycle = MEDIAN_NS(n / 1000, create_cycle_once(ashmem));
	res.open_close = MEDIAN_NS(n / 5, close(open("/dev/null", O_RDONLY)));
	int avail;
	res.ioctl_other = MEDIAN_NS(n, ioctl(p[0], FIONREAD, &avail));
	res.mmap_munmap = MEDIAN_NS(n / 5, munmap(mmap(NULL, PG, PROT_READ, MAP_SHARED, mfd, 0), PG));
	return write(out, &res, sizeof(res)) == sizeof(res) ? 0 : 3;
}

static int run_ashmem_child(const char *preload, struct ashmem_child_result *res)
{
	char self[4096], fdarg[16];
	int p[2], st;
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n <= 0 || pipe(p) < 0)
		return -1;
	self[n] = '\0';
	snprintf(fdarg, sizeof(fdarg), "%d", p[1]);
	pid_t pid = fork();
	if (pid == 0) {
		close(p[0]);
		if (preload)
			setenv("LD_PRELOAD", preload, 1);
		else
			unsetenv("LD_PRELOAD");
		execl(self, "bench_regions", "--ashmem-child", fdarg, quick ? "--quick" : NULL, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	n = read(p[0], res, sizeof(*res));
	close(p[0]);
	waitpid(pid, &st, 0);
	return n == (ssize_t)sizeof(*res) && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void bench_ashmem(double native_pin, double getppid_ns)
{
	char self[4096], preload[4200];
	struct ashmem_child_result with, without;
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n <= 0)
		return;
	self[n] = '\0';
	*strrchr(self, '/') = '\0';
	snprintf(preload, sizeof(preload), "%s/../lib/libmemvisor-preload.so", self);
	if (access(preload, R_OK) < 0 || run_ashmem_child(preload, &with) < 0 || run_ashmem_child(NULL, &without) < 0) {
		fprintf(stderr, "bench_regions: skipping the ashmem rows (no %s, or its child failed)\n", preload);
		return;
	}
	record((struct result){ "ashmem ioctl pin+unpin (preload)", "ns/op", "getppid()", with.ioctl_pin_unpin,
				getppid_ns, 0, true, 0 });
	record((struct result){ "ashmem ioctl pin+unpin (preload)", "ns/op", "native mv_region pin+unpin",
				with.ioctl_pin_unpin, native_pin, 0, true, 0 });
	record((struct result){ "ashmem open+name+size+mmap+close (preload)", "ns/op",
				"memfd_create+ftruncate+mmap+close", with.create_cycle, without.create_cycle, 0, true,
				0 });
	record((struct result){ "other fds: open+close (preload)", "ns/op", "same, no preload", with.open_close,
				without.open_close, 0, true, 0 });
	record((struct result){ "other fds: ioctl FIONREAD (preload)", "ns/op", "same, no preload", with.ioctl_other,
				without.ioctl_other, 0, true, 0 });
	record((struct result){ "other fds: mmap+munmap (preload)", "ns/op", "same, no preload", with.mmap_munmap,
				without.mmap_munmap, 0, true, 0 });
}

static void print_results(void)
{
	if (json) {
		for (int i = 0; i < nresults; i++) {
			struct result *r = &results[i];
			printf("{\"benchmark\":\"%s\",\"unit\":\"%s\",\"value\":%.3f", r->name, r->unit, r->value);
			if (r->baseline > 0 && r->baseline * 1000 >= r->value)
				printf(",\"baseline\":\"%s\",\"baseline_value\":%.3f,\"ratio\":%.3f", r->baseline_name,
				       r->baseline, r->value / r->baseline);
			else if (r->baseline > 0)
				printf(",\"baseline\":\"%s\",\"baseline_value\":%.6f", r->baseline_name, r->baseline);
			if (r->target > 0)
				printf(",\"target_ratio\":%.2f,\"target_met\":%s", r->target,
				       (r->lower_is_better ? r->value / r->baseline <= r->target
							   : r->value / r->baseline >= r->target)
					       ? "true"
					       : "false");
			if (r->abs_target > 0)
				printf(",\"target\":\"%s %g\",\"target_met\":%s",
				       r->lower_is_better ? "<=" : ">=", r->abs_target, met_abs(r) ? "true" : "false");
			printf("}\n");
		}
		return;
	}
	printf("%-36s %12s %-8s %-26s %12s %8s  %s\n", "benchmark", "value", "unit", "baseline (same run)", "baseline",
	       "ratio", "target");
	for (int i = 0; i < nresults; i++) {
		struct result *r = &results[i];
		char ratio[16] = "-", target[32] = "";
		if (r->baseline > 0 && r->baseline * 1000 >= r->value)
			snprintf(ratio, sizeof(ratio), "%.3f", r->value / r->baseline);
		if (r->target > 0)
			snprintf(target, sizeof(target), "%s %.2f: %s", r->lower_is_better ? "<=" : ">=", r->target,
				 (r->lower_is_better ? r->value / r->baseline <= r->target
						     : r->value / r->baseline >= r->target)
					 ? "met"
					 : "NOT met");
		if (r->abs_target > 0)
			snprintf(target, sizeof(target), "%s %g %s: %s",
				 r->lower_is_better ? "<=" : ">=", r->abs_target, r->unit,
				 met_abs(r) ? "met" : "NOT met");
		printf("%-36s %12.2f %-8s %-26s %12.2f %8s  %s\n", r->name, r->value, r->unit, r->baseline_name,
		       r->baseline, ratio, target);
	}
}

int main(int argc, char **argv)
{
	char self[4096], broker[4200];
	ssize_t n;

	/* The counts checked below need every registration to reach the broker: on a loaded machine a
	 * busy broker may take longer than a program's 50 ms bound (the region then works unregistered). */
	setenv("MEMVISOR_TIMEOUT_MS", "2000", 0);
	if (argc >= 3 && !strcmp(argv[1], "--ashmem-child")) {
		quick = argc >= 4 && !strcmp(argv[3], "--quick");
		return ashmem_child(atoi(argv[2]));
	}
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--quick"))
			quick = true;
		else if (!strcmp(argv[i], "--tier"))
			tier_only = true;
		else {
			fprintf(stderr, "usage: bench_regions [--json] [--quick] [--tier]\n");
			return 2;
		}
	}
	if (!getenv("MEMVISOR_BROKER") && (n = readlink("/proc/self/exe", self, sizeof(self) - 1)) > 0) {
		self[n] = '\0';
		*strrchr(self, '/') = '\0';
		snprintf(broker, sizeof(broker), "%s/memvisord", self);
		setenv("MEMVISOR_BROKER", broker, 1);
	}
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	setenv("MEMVISOR_TEST_COMPRESS", "1", 1); /* the broker's default: the compressed tier on */
	static const char *const extra[] = { "--min-available", "0", NULL };
	if (tb_start(&B, extra) < 0) {
		fprintf(stderr, "bench_regions: cannot start memvisord (set MEMVISOR_BROKER)\n");
		return 1;
	}
	if (!tier_only) {
		bench_pin_latency();
		bench_pin_two_processes();
		bench_purge();
	}
	bench_tier();
	bench_status_during_reclaim();
	if (!tier_only)
		bench_many_regions();
	tb_stop(&B);
	print_results();
	return 0;
}
