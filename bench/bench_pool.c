/* SPDX-License-Identifier: MIT */
/* bench_pool: the compressed pool on a corpus of real memory, against the kernel's zram in the same run.
 *
 * Corpus: resident anonymous pages read out of live python3, perl and node processes this benchmark starts
 * (each builds a real heap), plus synthetic mixes (zero-heavy, incompressible). For each backend x codec
 * policy: density (bytes stored / bytes held, metadata included), store and load MiB/s with 1 thread and
 * 2 threads. Side by side, when run as root with zram available: a zram device with lz4 is fed the same
 * corpus (O_DIRECT), and its mm_stat and throughput are measured. Ratios are ours / zram lz4's, every
 * row against the same zram runs. Throughputs are medians of five rounds, each round zram and then
 * every row, so that both sides are sampled across the same stretch of time. The "/dict" rows use a zstd
 * dictionary trained (ZDICT) on every 8th page of the same corpus; its memory is in the density.
 *
 * Usage: bench_pool [--json] [--quick]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zdict.h>

#include "memvisor/pool.h"
#include "procmem.h"

#define PG 4096

static bool json, quick;

struct corpus {
	const char *name;
	unsigned char *pages;
	size_t n;
};

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---- real memory ---- */

static const char *const workloads[][4] = {
	{ "python3", "python3", "-c",
	  "import sys,json,random\n"
	  "random.seed(1)\n"
	  "d={('k%d'%i):{'id':i,'name':'user%d'%i,'tags':['t%d'%(i%97),'x'],'score':random.random()} for i in "
	  "range(180000)}\n"
	  "s=json.dumps(list(d.values())[:20000])\n"
	  "print('ready',flush=True)\n"
	  "sys.stdin.read()\n" },
	{ "perl", "perl", "-e",
	  "my %h; for my $i (1..250000) { $h{\"key$i\"} = { id => $i, name => \"user$i\", v => [$i, $i*2, \"s$i\"] }; "
	  "}\n"
	  "$| = 1; print \"ready\\n\"; my $x = <STDIN>;\n" },
	{ "node", "node", "-e",
	  "const a=[]; for (let i=0;i<250000;i++) "
	  "a.push({id:i,name:'user'+i,tags:['t'+(i%97),'x'],score:Math.sin(i)});\n"
	  "const m=new Map(a.map(o=>[o.name,o])); console.log('ready');\n"
	  "process.stdin.resume(); process.stdin.on('end',()=>process.exit(0));\n" },
};

static size_t real_memory(unsigned char *out, size_t max, char *who, size_t wholen)
{
	size_t total = 0, per = max / 3;
	who[0] = '\0';
	for (size_t w = 0; w < 3; w++) {
		int in[2], outp[2];
		if (pipe(in) < 0 || pipe(outp) < 0)
			continue;
		pid_t pid = fork();
		if (pid == 0) {
			dup2(in[0], 0);
			dup2(outp[1], 1);
			close(in[1]);
			close(outp[0]);
			execlp(workloads[w][1], workloads[w][1], workloads[w][2], workloads[w][3], (char *)NULL);
			_exit(127);
		}
		close(in[0]);
		close(outp[1]);
		char buf[16] = "";
		ssize_t r = read(outp[0], buf, sizeof(buf) - 1);
		size_t got = 0;
		if (r > 0 && strncmp(buf, "ready", 5) == 0)
			got = dump_process(pid, out + total * PG, per);
		close(in[1]); /* lets it exit */
		close(outp[0]);
		waitpid(pid, NULL, 0);
		total += got;
		size_t l = strlen(who);
		snprintf(who + l, wholen - l, "%s%s %zu pages", l ? ", " : "", workloads[w][0], got);
	}
	return total;
}

static void synthetic(struct corpus *c, const char *kind, size_t n)
{
	c->name = kind;
	c->n = n;
	c->pages = malloc(n * PG);
	srandom(7);
	for (size_t i = 0; i < n; i++) {
		unsigned char *p = c->pages + i * PG;
		if (!strcmp(kind, "incompressible")) {
			for (int k = 0; k < PG; k++)
				p[k] = (unsigned char)random();
		} else if (i % 5) { /* zero-heavy: four in five pages zero, the rest sparse text */
			memset(p, 0, PG);
		} else {
			memset(p, 0, PG);
			for (int k = 0; k < PG; k += 7)
				p[k] = (unsigned char)('a' + (k + i) % 26);
		}
	}
}

/* ---- ours ---- */

struct run {
	mv_store *s;
	struct corpus *c;
	uint64_t *h;
	size_t lo, hi;
	unsigned char *scratch;
	int err;
	double cpu; /* seconds of this thread's CPU time (user and system) for its part */
};

/* CPU time, not wall time: on a machine shared with other jobs, time spent waiting for a core is no
 * one's cost. zram compresses in the writing thread (and decompresses in the reading one), so its
 * thread's CPU time holds zram's work as ours holds ours. */
static double thread_cpu_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *store_part(void *arg)
{
	struct run *r = arg;
	double t0 = thread_cpu_s();
	for (size_t i = r->lo; i < r->hi; i++)
		r->err |= mv_store_put(r->s, r->c->pages + i * PG, &r->h[i]) != 0;
	r->cpu = thread_cpu_s() - t0;
	return NULL;
}

static void *load_part(void *arg)
{
	struct run *r = arg;
	double t0 = thread_cpu_s();
	for (size_t i = r->lo; i < r->hi; i++) {
		r->err |= mv_store_get(r->s, r->h[i], r->scratch) != 0;
		if (memcmp(r->scratch, r->c->pages + i * PG, PG)) /* in the time, as for zram */
			r->err = 1;
	}
	r->cpu = thread_cpu_s() - t0;
	return NULL;
}

struct result {
	double density, store_1, load_1, store_2, load_2;
	double store_c, load_c; /* one thread, MiB per CPU second */
	bool ok;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Rounds of zram and every row: a median of five rides out a neighbour's burst on a shared machine,
 * which a median of three did not (a row's load speed halved in one run). */
#define ROUNDS 5

static double median(double v[ROUNDS])
{
	qsort(v, ROUNDS, sizeof(v[0]), cmp_double);
	return v[ROUNDS / 2];
}

/* Stores and loads the corpus with nthreads threads; returns MiB/s, and MiB per CPU second of the
 * threads. */
static void timed(struct corpus *c, struct mv_store_config *cfg, int nthreads, double *store_mibs, double *load_mibs,
		  double *store_cpu, double *load_cpu, double *density, bool *ok)
{
	mv_store *s;
	uint64_t *h = calloc(c->n, sizeof(*h));
	pthread_t t[2];
	struct run runs[2];

	/* A run that cannot start reports nothing measured, not stack garbage. */
	*store_mibs = *load_mibs = *store_cpu = *load_cpu = 0;
	if (density)
		*density = 0;
	if (!h || mv_store_new(cfg, &s) < 0) {
		*ok = false;
		free(h);
		return;
	}
	for (int k = 0; k < nthreads; k++)
		runs[k] = (struct run){ s,
					c,
					h,
					c->n * (size_t)k / (size_t)nthreads,
					c->n * (size_t)(k + 1) / (size_t)nthreads,
					malloc(PG),
					0,
					0 };
	double t0 = now_s();
	for (int k = 0; k < nthreads; k++)
		pthread_create(&t[k], NULL, store_part, &runs[k]);
	for (int k = 0; k < nthreads; k++)
		pthread_join(t[k], NULL);
	double ts = now_s() - t0, cs = 0, cl = 0;
	for (int k = 0; k < nthreads; k++)
		cs += runs[k].cpu;
	struct mv_store_stats st;
	mv_store_stats(s, &st);
	if (density)
		*density = (double)st.orig_data_size / (double)st.mem_used_total;
	t0 = now_s();
	for (int k = 0; k < nthreads; k++)
		pthread_create(&t[k], NULL, load_part, &runs[k]);
	for (int k = 0; k < nthreads; k++)
		pthread_join(t[k], NULL);
	double tl = now_s() - t0;
	for (int k = 0; k < nthreads; k++)
		cl += runs[k].cpu;
	double mib = (double)c->n * PG / (1 << 20);
	*store_mibs = mib / ts;
	*load_mibs = mib / tl;
	*store_cpu = cs > 0 ? mib / cs : 0;
	*load_cpu = cl > 0 ? mib / cl : 0;
	for (int k = 0; k < nthreads; k++) {
		*ok &= runs[k].err == 0;
		free(runs[k].scratch);
	}
	mv_store_unref(s);
	free(h);
}

/* One run with 1 thread and one with 2; density is deterministic. */
static struct result ours(struct corpus *c, enum mv_pool_kind backend, enum mv_codec codec, const void *dict,
			  size_t dict_size)
{
	struct result r = { .ok = true };
	struct mv_store_config cfg = {
		.backend = backend, .codec = codec, .zstd_dict = dict, .zstd_dict_size = dict_size
	};
	double d2, c2s, c2l;

	timed(c, &cfg, 1, &r.store_1, &r.load_1, &r.store_c, &r.load_c, &r.density, &r.ok);
	timed(c, &cfg, 2, &r.store_2, &r.load_2, &c2s, &c2l, &d2, &r.ok);
	return r;
}

/* The median of the rounds, field by field. */
static struct result median_result(struct result v[ROUNDS])
{
	struct result r = v[0];
	double a[ROUNDS];
#define MED(f)                                                                                                         \
	do {                                                                                                           \
		for (int i = 0; i < ROUNDS; i++)                                                                       \
			a[i] = v[i].f;                                                                                 \
		r.f = median(a);                                                                                       \
	} while (0)
	MED(store_1);
	MED(load_1);
	MED(store_2);
	MED(load_2);
	MED(store_c);
	MED(load_c);
#undef MED
	for (int i = 0; i < ROUNDS; i++)
		r.ok &= v[i].ok;
	return r;
}

/* A dictionary trained on every 8th page of the corpus, as a deployment would train one on a sample of
 * the memory it expects. Returns its size, 0 with *why set when zstd cannot train one (too few samples,
 * or samples too alike: the synthetic corpora). */
#define DICT_CAP (32 * 1024)

static size_t train_dict(const struct corpus *c, void *dict, double *secs, char *why, size_t whylen)
{
	size_t n = c->n / 8;
	unsigned char *samples = malloc(n * PG + 1);
	size_t *sizes = malloc((n + 1) * sizeof(*sizes));
	size_t got = 0;
	*secs = 0;
	if (!samples || !sizes) {
		snprintf(why, whylen, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		memcpy(samples + i * PG, c->pages + i * 8 * PG, PG);
		sizes[i] = PG;
	}
	double t0 = now_s();
	size_t r = ZDICT_trainFromBuffer(dict, DICT_CAP, samples, sizes, (unsigned)n);
	*secs = now_s() - t0;
	if (ZDICT_isError(r))
		snprintf(why, whylen, "%s", ZDICT_getErrorName(r));
	else
		got = r;
out:
	free(samples);
	free(sizes);
	return got;
}

/* What a store holds for the dictionary (its copy and zstd's digested forms): an empty store with it
 * against one without. */
static uint64_t dict_held(const void *dict, size_t size)
{
	struct mv_store_config a = { .backend = MV_POOL_DENSE, .codec = MV_CODEC_ZSTD }, b = a;
	b.zstd_dict = dict;
	b.zstd_dict_size = size;
	mv_store *sa = NULL, *sb = NULL;
	struct mv_store_stats xa, xb;
	uint64_t held = 0;
	if (mv_store_new(&a, &sa) == 0 && mv_store_new(&b, &sb) == 0 && mv_store_stats(sa, &xa) == 0 &&
	    mv_store_stats(sb, &xb) == 0)
		held = xb.mem_used_total - xa.mem_used_total;
	mv_store_unref(sa);
	mv_store_unref(sb);
	return held;
}

/* ---- zram ---- */

static int write_str(const char *path, const char *v)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, v, strlen(v));
	int e = n < 0 ? -errno : 0;
	close(fd);
	return e;
}

static int read_str(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

static bool zram(struct corpus *c, const char *algo, struct result *r, char *why, size_t whylen)
{
	char buf[256], path[128], dev[32];
	int id = -1;

	*r = (struct result){ .ok = true };
	if (geteuid() != 0) {
		snprintf(why, whylen, "not root");
		return false;
	}
	if (read_str("/sys/class/zram-control/hot_add", buf, sizeof(buf)) < 0) {
		snprintf(why, whylen, "no zram-control");
		return false;
	}
	id = atoi(buf);
	snprintf(path, sizeof(path), "/sys/block/zram%d/comp_algorithm", id);
	if (write_str(path, algo) < 0) {
		snprintf(why, whylen, "zram has no %s", algo);
		goto out;
	}
	snprintf(path, sizeof(path), "/sys/block/zram%d/disksize", id);
	snprintf(buf, sizeof(buf), "%zu", (c->n + 256) * PG);
	if (write_str(path, buf) < 0) {
		snprintf(why, whylen, "cannot size zram%d", id);
		goto out;
	}
	snprintf(dev, sizeof(dev), "/dev/zram%d", id);
	int fd = open(dev, O_RDWR | O_DIRECT | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, whylen, "cannot open %s", dev);
		goto out;
	}
	void *io;
	if (posix_memalign(&io, PG, PG)) {
		close(fd);
		goto out;
	}
	double t0 = now_s(), c0 = thread_cpu_s();
	for (size_t i = 0; i < c->n; i++) {
		memcpy(io, c->pages + i * PG, PG);
		if (pwrite(fd, io, PG, (off_t)(i * PG)) != PG)
			r->ok = false;
	}
	double ts = now_s() - t0, cs = thread_cpu_s() - c0;
	snprintf(path, sizeof(path), "/sys/block/zram%d/mm_stat", id);
	unsigned long long orig = 0, compr = 0, used = 0;
	if (read_str(path, buf, sizeof(buf)) == 0)
		sscanf(buf, "%llu %llu %llu", &orig, &compr, &used);
	t0 = now_s();
	c0 = thread_cpu_s();
	for (size_t i = 0; i < c->n; i++) {
		if (pread(fd, io, PG, (off_t)(i * PG)) != PG || memcmp(io, c->pages + i * PG, PG))
			r->ok = false;
	}
	double tl = now_s() - t0, cl = thread_cpu_s() - c0;
	free(io);
	close(fd);
	double mib = (double)c->n * PG / (1 << 20);
	/* mm_stat leaves out zram's own table (16 bytes a page at least); ours includes our table. */
	r->density = used ? (double)orig / ((double)used + 16.0 * (double)c->n) : 0;
	r->store_1 = mib / ts;
	r->load_1 = mib / tl;
	r->store_c = cs > 0 ? mib / cs : 0;
	r->load_c = cl > 0 ? mib / cl : 0;
	snprintf(path, sizeof(path), "/sys/block/zram%d/reset", id);
	write_str(path, "1");
	snprintf(buf, sizeof(buf), "%d", id);
	write_str("/sys/class/zram-control/hot_remove", buf);
	return true;
out:
	snprintf(path, sizeof(path), "/sys/block/zram%d/reset", id);
	write_str(path, "1");
	snprintf(buf, sizeof(buf), "%d", id);
	write_str("/sys/class/zram-control/hot_remove", buf);
	return false;
}

static void report(const char *corpus, const char *what, const char *codec, struct result *r, struct result *z,
		   bool have_z)
{
	if (json) {
		printf("{\"corpus\":\"%s\",\"store\":\"%s\",\"codec\":\"%s\",\"density\":%.4f,\"store_mibs_1t\":%.1f,"
		       "\"load_mibs_1t\":%.1f,\"store_mibs_2t\":%.1f,\"load_mibs_2t\":%.1f,\"store_mib_per_cpu_s\":%."
		       "1f,"
		       "\"load_mib_per_cpu_s\":%.1f,\"verified\":%s",
		       corpus, what, codec, r->density, r->store_1, r->load_1, r->store_2, r->load_2, r->store_c,
		       r->load_c, r->ok ? "true" : "false");
		if (have_z && z)
			printf(",\"zram_density\":%.4f,\"zram_store_mibs\":%.1f,\"zram_load_mibs\":%.1f,\"density_"
			       "ratio\":%.3f,"
			       "\"store_ratio\":%.3f,\"load_ratio\":%.3f,\"store_cpu_ratio\":%.3f,\"load_cpu_ratio\":%."
			       "3f",
			       z->density, z->store_1, z->load_1, r->density / z->density, r->store_1 / z->store_1,
			       r->load_1 / z->load_1, r->store_c / z->store_c, r->load_c / z->load_c);
		printf("}\n");
		return;
	}
	printf("%-15s %-6s %-13s %8.3f %9.0f %9.0f %9.0f %9.0f %9.0f %9.0f  %-8s", corpus, what, codec, r->density,
	       r->store_1, r->load_1, r->store_2, r->load_2, r->store_c, r->load_c, r->ok ? "ok" : "MISMATCH");
	if (have_z && z)
		printf(" %6.3fx %6.2fx %6.2fx %6.2fx %6.2fx", r->density / z->density, r->store_1 / z->store_1,
		       r->load_1 / z->load_1, r->store_c / z->store_c, r->load_c / z->load_c);
	printf("\n");
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--quick"))
			quick = true;
		else {
			fprintf(stderr, "usage: bench_pool [--json] [--quick]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	size_t max = quick ? 6000 : 24000;
	struct corpus corpora[3];
	char who[256];
	corpora[0].name = "real-memory";
	corpora[0].pages = malloc(max * PG);
	corpora[0].n = real_memory(corpora[0].pages, max, who, sizeof(who));
	synthetic(&corpora[1], "zero-heavy", max / 4);
	synthetic(&corpora[2], "incompressible", max / 8);
	int first = 0;
	if (corpora[0].n < 1000) {
		/* Said plainly, not hidden: without the interpreters there is no real-memory corpus. */
		fprintf(stderr,
			"bench_pool: no real-memory corpus (%zu pages: %s); is python3, perl or node missing?\n",
			corpora[0].n, who[0] ? who : "none started");
		first = 1;
	}
	if (!json) {
		if (!first)
			printf("corpus real-memory: %zu resident anonymous pages (%s)\n", corpora[0].n, who);
		printf("density = bytes stored / bytes held incl. metadata (zram: mm_stat mem_used_total + its 16-byte "
		       "per-page table);\nMiB/s of uncompressed data (st/cpu, ld/cpu: MiB per CPU second of the one "
		       "thread, "
		       "zram's in-kernel work included), medians of 5 rounds;\nratios vs zram lz4 (same corpus and "
		       "run; "
		       "this kernel's zram offers lzo, lzo-rle, lz4)\n");
		printf("%-15s %-6s %-13s %8s %9s %9s %9s %9s %9s %9s  %-8s %7s %7s %7s %7s %7s\n", "corpus", "store",
		       "codec", "density", "store/1t", "load/1t", "store/2t", "load/2t", "st/cpu", "ld/cpu", "verified",
		       "dens", "store", "load", "st/cpu", "ld/cpu");
	}
	static const struct {
		enum mv_pool_kind backend;
		enum mv_codec codec;
		const char *store, *name;
		bool dict;
	} rows[] = {
		{ MV_POOL_ZBUD, MV_CODEC_LZ4, "zbud", "lz4", false },
		{ MV_POOL_DENSE, MV_CODEC_LZ4, "dense", "lz4", false },
		{ MV_POOL_ZBUD, MV_CODEC_ZSTD, "zbud", "zstd", false },
		{ MV_POOL_DENSE, MV_CODEC_ZSTD, "dense", "zstd", false },
		{ MV_POOL_DENSE, MV_CODEC_WK, "dense", "wk", false },
		{ MV_POOL_DENSE, MV_CODEC_WK_LZ4, "dense", "wk+lz4", false },
		{ MV_POOL_DENSE, MV_CODEC_LZ4_ZSTD, "dense", "lz4+zstd", false },
		{ MV_POOL_DENSE, MV_CODEC_LZ4_LZ4HC, "dense", "lz4+lz4hc", false },
		{ MV_POOL_DENSE, MV_CODEC_ZSTD, "dense", "zstd/dict", true },
		{ MV_POOL_DENSE, MV_CODEC_LZ4_ZSTD, "dense", "lz4+zstd/dict", true },
	};
	enum { NROWS = sizeof(rows) / sizeof(rows[0]) };
	bool all_ok = true;
	for (int c = first; c < 3; c++) {
		struct result z = { 0 }, zr[ROUNDS], res[NROWS][ROUNDS];
		char why[64] = "", dict_why[64] = "";
		bool have_z = true;
		static unsigned char dict[DICT_CAP];
		double dict_s;
		size_t dict_size = train_dict(&corpora[c], dict, &dict_s, dict_why, sizeof(dict_why));
		if (!json && dict_size)
			printf("(%s: a %zu-byte zstd dictionary trained in %.0f ms on %zu pages, every 8th; a store "
			       "holds %.0f KiB for it)\n",
			       corpora[c].name, dict_size, dict_s * 1e3, corpora[c].n / 8,
			       (double)dict_held(dict, dict_size) / 1024);
		else if (!json)
			printf("(%s: no dictionary rows: zstd could not train one: %s)\n", corpora[c].name, dict_why);
		/* Three rounds of zram and then every row, so that zram and ours are sampled across the same
		 * stretch of time on a shared machine; medians of the rounds. This kernel's zram has no zstd:
		 * every row is put against zram with lz4. */
		for (int round = 0; round < ROUNDS; round++) {
			have_z = have_z && zram(&corpora[c], "lz4", &zr[round], why, sizeof(why));
			for (size_t k = 0; k < NROWS; k++) {
				if (rows[k].dict && !dict_size)
					continue;
				res[k][round] = ours(&corpora[c], rows[k].backend, rows[k].codec,
						     rows[k].dict ? dict : NULL, rows[k].dict ? dict_size : 0);
			}
		}
		if (have_z)
			z = median_result(zr);
		if (have_z && !json)
			printf("%-15s %-6s %-13s %8.3f %9.0f %9.0f %9s %9s %9.0f %9.0f  %s\n", corpora[c].name, "zram",
			       "lz4", z.density, z.store_1, z.load_1, "-", "-", z.store_c, z.load_c,
			       z.ok ? "ok" : "MISMATCH");
		else if (!have_z && !json && c == first)
			printf("(zram side by side skipped: %s)\n", why);
		all_ok &= !have_z || z.ok;
		for (size_t k = 0; k < NROWS; k++) {
			if (rows[k].dict && !dict_size)
				continue;
			struct result r = median_result(res[k]);
			report(corpora[c].name, rows[k].store, rows[k].name, &r, &z, have_z);
			all_ok &= r.ok;
		}
	}
	if (!all_ok)
		fprintf(stderr, "bench_pool: some pages did not come back bit-exact\n");
	for (int c = 0; c < 3; c++) /* so that a sanitizer build's leak check has nothing to say */
		free(corpora[c].pages);
	return all_ok ? 0 : 1;
}
