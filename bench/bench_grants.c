/* SPDX-License-Identifier: MIT */
/* bench_grants: Xen's sharing model on memvisor against what two Linux processes would use instead, all
 * measured in the same run:
 *   - vchan throughput (Debian's libxenvchan on our grant and event channel libraries) for 1-64 KiB
 *     writes, against a Unix socketpair and a pipe;
 *   - 64-byte ping-pong latency, vchan against a socketpair;
 *   - event channel notify -> wake round trip against a raw eventfd ping-pong;
 *   - grant share + map + unmap (+ unshare) of 1 and 64 pages, against sharing a fresh memfd with another
 *     process by SCM_RIGHTS (create, send, map, unmap, answer): the least a process pair can do. The
 *     grants go through table pools (no broker round trip after a pool's first use): mapped in this
 *     process, or by a peer domain sent each ref over a pipe (the memfd baseline's shape: one exchange
 *     with the peer per cycle); and, for comparison, with unmap notifications, which are the broker's.
 * Latencies are medians of individually timed operations; throughputs are totals over time.
 * Peers that must be domains are fresh executions of this program (a process that loads the Xen
 * libraries is a domain from the start). It starts a broker if none runs ($MEMVISOR_RUNTIME_DIR).
 * Usage: bench_grants [--quick] [--json]
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libxenvchan.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>

#include "common/util.h"
#include "memvisor/broker.h"

static bool quick, json;

struct result {
	const char *name, *unit, *baseline_name, *target;
	double value, baseline;
	bool lower_is_better;
	int met; /* -1: no target */
};
static struct result results[40];
static int nresults;

static void add(const char *name, double value, const char *unit, const char *baseline_name, double baseline,
		bool lower_is_better, const char *target, int met)
{
	results[nresults++] =
		(struct result){ name, unit, baseline_name, target, value, baseline, lower_is_better, met };
}

static double now_s(void)
{
	return (double)mvu_now_ns() / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "bench_grants: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Round trips are timed one by one and the median reported: on a virtualised machine a few
 * descheduled ones would otherwise decide the mean. */
static double median_us(double *t, long n)
{
	qsort(t, (size_t)n, sizeof(*t), cmp_double);
	double m = t[n / 2] * 1e6;
	free(t);
	return m;
}

static double *samples(long n)
{
	double *t = malloc((size_t)n * sizeof(*t));
	if (!t)
		die("malloc");
	return t;
}

static int own_domid(void)
{
	struct xs_handle *xs = xs_open(0);
	if (!xs)
		die("xs_open (is XENSTORED_PATH the broker's xenstore?)");
	unsigned len;
	char *v = xs_read(xs, XBT_NULL, "domid", &len);
	int d = v ? atoi(v) : -1;
	free(v);
	xs_close(xs);
	return d;
}

/* ---- peers ---- */

struct peer {
	pid_t pid;
	FILE *to, *from;
};

static void peer_start(struct peer *p, const char *role)
{
	int to[2], from[2];
	if (pipe2(to, O_CLOEXEC) < 0 || pipe2(from, O_CLOEXEC) < 0)
		die("pipe");
	p->pid = fork();
	if (p->pid == 0) {
		dup2(to[0], 0);
		dup2(from[1], 1);
		execl("/proc/self/exe", "bench_grants", role, quick ? "--quick" : "--full", (char *)NULL);
		_exit(127);
	}
	close(to[0]);
	close(from[1]);
	p->to = fdopen(to[1], "w");
	p->from = fdopen(from[0], "r");
	setvbuf(p->to, NULL, _IOLBF, 0);
}

static long peer_int(struct peer *p)
{
	char line[64];
	if (!fgets(line, sizeof(line), p->from))
		die("peer gone");
	return atol(line);
}

static void peer_end(struct peer *p)
{
	fclose(p->to);
	fclose(p->from);
	waitpid(p->pid, NULL, 0);
}

/* ---- vchan ---- */

#define RING (1024 * 1024)
#define PERIOD 65536 /* the stream's bytes repeat with this period; every write size divides it */

static uint8_t pattern_at(uint64_t pos)
{
	uint64_t i = pos % PERIOD;
	return (uint8_t)((i * 2654435761u) >> 11);
}

static const uint8_t *pattern_buf(void)
{
	static uint8_t buf[2 * PERIOD];
	if (!buf[1])
		for (uint64_t i = 0; i < sizeof(buf); i++)
			buf[i] = pattern_at(i);
	return buf;
}

/* The reader's check on every read: its first and last byte are where the stream says. */
static bool read_ok(const uint8_t *b, size_t n, uint64_t pos)
{
	return n == 0 || (b[0] == pattern_at(pos) && b[n - 1] == pattern_at(pos + n - 1));
}

/* The client side: reads and discards NBYTES per round, then answers one byte; or echoes pings. */
static int vchan_client(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("%d\n", own_domid());
	char line[256];
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	int srv = atoi(line);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	line[strcspn(line, "\n")] = '\0';
	struct libxenvchan *v = libxenvchan_client_init(NULL, srv, line);
	if (!v)
		die("client_init");
	v->blocking = 1;
	static char buf[RING];
	for (;;) {
		long long bytes;
		char mode;
		if (libxenvchan_recv(v, &mode, 1) != 1)
			break;
		if (libxenvchan_recv(v, &bytes, sizeof(bytes)) != sizeof(bytes))
			break;
		if (mode == 'T') { /* throughput: swallow, then answer */
			for (long long got = 0; got < bytes;) {
				int n = libxenvchan_read(v, buf, (size_t)(bytes - got < RING ? bytes - got : RING));
				if (n <= 0 || !read_ok((uint8_t *)buf, (size_t)n, (uint64_t)got))
					return 1;
				got += n;
			}
			if (libxenvchan_write(v, "k", 1) != 1)
				return 1;
		} else if (mode == 'P') { /* ping-pong of 64 bytes, bytes times */
			for (long long i = 0; i < bytes; i++) {
				if (libxenvchan_recv(v, buf, 64) != 64 || libxenvchan_write(v, buf, 64) != 64)
					return 1;
			}
		} else {
			break;
		}
	}
	libxenvchan_close(v);
	return 0;
}

static struct libxenvchan *vchan_pair(struct peer *p)
{
	peer_start(p, "--vchan-client");
	int cli = (int)peer_int(p), me = own_domid();
	if (cli <= 0 || me <= 0)
		die("domids");
	char path[128];
	snprintf(path, sizeof(path), "/local/domain/%d/data/vchan/%d/bench", me, cli);
	struct libxenvchan *v = libxenvchan_server_init(NULL, cli, path, RING, RING);
	if (!v)
		die("server_init");
	v->blocking = 1;
	fprintf(p->to, "%d\n%s\n", me, path);
	return v;
}

static double vchan_throughput(struct libxenvchan *v, size_t chunk, long long total)
{
	const uint8_t *buf = pattern_buf();
	char mode = 'T';
	double t0 = now_s();
	if (libxenvchan_write(v, &mode, 1) != 1 || libxenvchan_write(v, &total, sizeof(total)) != sizeof(total))
		die("vchan write");
	for (long long sent = 0; sent < total;) {
		size_t n = (size_t)(total - sent < (long long)chunk ? total - sent : (long long)chunk);
		int w = libxenvchan_write(v, buf + sent % PERIOD, n);
		if (w <= 0)
			die("vchan write");
		sent += w;
	}
	char k;
	if (libxenvchan_recv(v, &k, 1) != 1)
		die("vchan: the reader is gone (bad data?)");
	return (double)total / (now_s() - t0) / (1 << 20);
}

static double vchan_pingpong(struct libxenvchan *v, long long n)
{
	char buf[64] = { 0 }, mode = 'P';
	if (libxenvchan_write(v, &mode, 1) != 1 || libxenvchan_write(v, &n, sizeof(n)) != sizeof(n))
		die("vchan write");
	double *t = samples(n);
	for (long long i = 0; i < n; i++) {
		double t0 = now_s();
		if (libxenvchan_write(v, buf, 64) != 64 || libxenvchan_recv(v, buf, 64) != 64)
			die("vchan ping");
		t[i] = now_s() - t0;
	}
	return median_us(t, n);
}

/* ---- Linux baselines: a forked reader on a socketpair or a pipe ---- */

static double stream_throughput(bool use_pipe, size_t chunk, long long total)
{
	int a[2], back[2];
	if (use_pipe ? pipe(a) < 0 : socketpair(AF_UNIX, SOCK_STREAM, 0, a) < 0)
		die("socketpair");
	if (pipe(back) < 0)
		die("pipe");
	pid_t pid = fork();
	if (pid == 0) {
		static uint8_t buf[1 << 16];
		int rd = use_pipe ? a[0] : a[1];
		for (long long got = 0; got < total;) {
			ssize_t n = read(rd, buf, sizeof(buf));
			if (n <= 0 || !read_ok(buf, (size_t)n, (uint64_t)got))
				_exit(1);
			got += n;
		}
		_exit(write(back[1], "k", 1) == 1 ? 0 : 1);
	}
	const uint8_t *buf = pattern_buf();
	int wr = use_pipe ? a[1] : a[0];
	double t0 = now_s();
	for (long long sent = 0; sent < total;) {
		ssize_t w = write(wr, buf + sent % PERIOD,
				  (size_t)(total - sent < (long long)chunk ? total - sent : (long long)chunk));
		if (w <= 0)
			die("write");
		sent += w;
	}
	char k;
	if (read(back[0], &k, 1) != 1)
		die("the reader is gone (bad data?)");
	double mibs = (double)total / (now_s() - t0) / (1 << 20);
	waitpid(pid, NULL, 0);
	close(a[0]), close(a[1]), close(back[0]), close(back[1]);
	return mibs;
}

static double socket_pingpong(long long n)
{
	int s[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) < 0)
		die("socketpair");
	pid_t pid = fork();
	char buf[64] = { 0 };
	if (pid == 0) {
		for (long long i = 0; i < n; i++)
			if (recv(s[1], buf, 64, MSG_WAITALL) != 64 || write(s[1], buf, 64) != 64)
				_exit(1);
		_exit(0);
	}
	double *t = samples(n);
	for (long long i = 0; i < n; i++) {
		double t0 = now_s();
		if (write(s[0], buf, 64) != 64 || recv(s[0], buf, 64, MSG_WAITALL) != 64)
			die("ping");
		t[i] = now_s() - t0;
	}
	double us = median_us(t, n);
	waitpid(pid, NULL, 0);
	close(s[0]), close(s[1]);
	return us;
}

/* ---- event channels ---- */

static int wait_port(xenevtchn_handle *h)
{
	int port = xenevtchn_pending(h);
	if (port < 0 || xenevtchn_unmask(h, (evtchn_port_t)port) < 0)
		return -1;
	return port;
}

static int evtchn_peer(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	xenevtchn_handle *h = xenevtchn_open(NULL, 0);
	printf("%d\n", own_domid());
	char line[64];
	if (!h || !fgets(line, sizeof(line), stdin))
		return 1;
	int dom = atoi(line);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	int port = xenevtchn_bind_interdomain(h, (uint32_t)dom, (evtchn_port_t)atoi(line));
	if (port <= 0 || !fgets(line, sizeof(line), stdin))
		return 1;
	long n = atol(line);
	printf("go\n");
	for (long i = 0; i < n; i++)
		if (wait_port(h) != port || xenevtchn_notify(h, (evtchn_port_t)port) < 0)
			return 1;
	xenevtchn_close(h);
	return 0;
}

static double evtchn_roundtrip(long n)
{
	struct peer p;
	peer_start(&p, "--evtchn-peer");
	int peer = (int)peer_int(&p);
	xenevtchn_handle *h = xenevtchn_open(NULL, 0);
	int port = h ? xenevtchn_bind_unbound_port(h, (uint32_t)peer) : -1;
	if (port <= 0)
		die("bind_unbound_port");
	fprintf(p.to, "%d\n%d\n%ld\n", own_domid(), port, n);
	peer_int(&p); /* "go": bound */
	double *t = samples(n);
	for (long i = 0; i < n; i++) {
		double t0 = now_s();
		if (xenevtchn_notify(h, (evtchn_port_t)port) < 0 || wait_port(h) != port)
			die("evtchn ping");
		t[i] = now_s() - t0;
	}
	double us = median_us(t, n);
	peer_end(&p);
	xenevtchn_close(h);
	return us;
}

static double eventfd_roundtrip(long n)
{
	int a = eventfd(0, 0), b = eventfd(0, 0);
	uint64_t v = 1;
	pid_t pid = fork();
	if (pid == 0) {
		for (long i = 0; i < n; i++)
			if (read(a, &v, 8) != 8 || write(b, &v, 8) != 8)
				_exit(1);
		_exit(0);
	}
	double *t = samples(n);
	for (long i = 0; i < n; i++) {
		double t0 = now_s();
		if (write(a, &v, 8) != 8 || read(b, &v, 8) != 8)
			die("eventfd ping");
		t[i] = now_s() - t0;
	}
	double us = median_us(t, n);
	waitpid(pid, NULL, 0);
	close(a), close(b);
	return us;
}

/* ---- grants ---- */

static double grant_cycle(int pages, long n, double *unshare_us)
{
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	int me = own_domid();
	uint32_t refs[64];
	double *tc = samples(n), *tu = samples(n);
	for (long i = 0; i < n; i++) {
		double t0 = now_s();
		uint8_t *a = xengntshr_share_pages(gs, (uint32_t)me, pages, refs, 1);
		if (!a)
			die("share_pages");
		uint8_t *m = xengnttab_map_domain_grant_refs(gt, (uint32_t)pages, (uint32_t)me, refs,
							     PROT_READ | PROT_WRITE);
		if (!m)
			die("map");
		m[0] = 1; /* touch through the mapping: the page is really there */
		if (xengnttab_unmap(gt, m, (uint32_t)pages) < 0)
			die("unmap");
		double t1 = now_s();
		if (a[0] != 1)
			die("grant data");
		if (xengntshr_unshare(gs, a, (uint32_t)pages) < 0)
			die("unshare");
		tc[i] = t1 - t0;
		tu[i] = now_s() - t1;
	}
	*unshare_us = median_us(tu, n);
	xengnttab_close(gt);
	xengntshr_close(gs);
	return median_us(tc, n);
}

/* The mapper is another domain: it maps each run of refs it is sent, touches the first page, unmaps
 * them and answers. */
static int grant_peer(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	printf("%d\n", own_domid());
	char line[64];
	if (!gt || !fgets(line, sizeof(line), stdin))
		return 1;
	uint32_t dom = (uint32_t)atoi(line);
	printf("go\n");  /* from now on the pipes carry raw words, unbuffered */
	uint32_t msg[2]; /* first ref, pages */
	while (read(0, msg, sizeof(msg)) == sizeof(msg)) {
		uint32_t refs[64];
		if (msg[1] == 0 || msg[1] > 64)
			return 1;
		for (uint32_t i = 0; i < msg[1]; i++)
			refs[i] = msg[0] + i;
		uint8_t *m = xengnttab_map_domain_grant_refs(gt, msg[1], dom, refs, PROT_READ | PROT_WRITE);
		if (!m)
			return 1;
		m[0] = 1;
		if (xengnttab_unmap(gt, m, msg[1]) < 0 || write(1, "k", 1) != 1)
			return 1;
	}
	xengnttab_close(gt);
	return 0;
}

/* Share here, the peer maps, touches, unmaps and answers; then unshare (timed apart). */
static double grant_peer_cycle(int pages, long n, double *unshare_us)
{
	struct peer p;
	peer_start(&p, "--grant-peer");
	int peer = (int)peer_int(&p);
	fprintf(p.to, "%d\n", own_domid());
	peer_int(&p); /* "go" */
	int to = fileno(p.to), from = fileno(p.from);
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	uint32_t refs[64];
	double *tc = samples(n), *tu = samples(n);
	for (long i = 0; i < n; i++) {
		double t0 = now_s();
		uint8_t *a = xengntshr_share_pages(gs, (uint32_t)peer, pages, refs, 1);
		if (!a)
			die("share_pages");
		uint32_t msg[2] = { refs[0], (uint32_t)pages };
		char k;
		if (write(to, msg, sizeof(msg)) != sizeof(msg) || read(from, &k, 1) != 1)
			die("grant peer gone");
		double t1 = now_s();
		if (a[0] != 1)
			die("grant data");
		a[0] = 0;
		if (xengntshr_unshare(gs, a, (uint32_t)pages) < 0)
			die("unshare");
		tc[i] = t1 - t0;
		tu[i] = now_s() - t1;
	}
	*unshare_us = median_us(tu, n);
	xengntshr_close(gs);
	peer_end(&p);
	return median_us(tc, n);
}

/* With unmap notifications (a byte cleared on each side), which the broker fires: the round-trip path. */
static double grant_notify_cycle(long n)
{
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	int me = own_domid();
	double *t = samples(n);
	for (long i = 0; i < n; i++) {
		uint32_t ref;
		double t0 = now_s();
		uint8_t *a = xengntshr_share_page_notify(gs, (uint32_t)me, &ref, 1, 0, (evtchn_port_t)-1);
		if (!a)
			die("share_page_notify");
		a[0] = a[1] = 1;
		uint8_t *m = xengnttab_map_grant_ref_notify(gt, (uint32_t)me, ref, PROT_READ | PROT_WRITE, 1,
							    (evtchn_port_t)-1);
		if (!m)
			die("map_grant_ref_notify");
		if (xengnttab_unmap(gt, m, 1) < 0)
			die("unmap");
		t[i] = now_s() - t0;
		if (a[1] != 0)
			die("unmap notification");
		if (xengntshr_unshare(gs, a, 1) < 0)
			die("unshare");
	}
	xengnttab_close(gt);
	xengntshr_close(gs);
	return median_us(t, n);
}

/* The floor without memvisor: a fresh memfd sent to another process, which maps it, touches it, unmaps
 * it and answers. */
static double memfd_cycle(int pages, long n)
{
	int s[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, s) < 0)
		die("socketpair");
	size_t len = (size_t)pages * 4096;
	pid_t pid = fork();
	if (pid == 0) {
		for (long i = 0; i < n; i++) {
			int fd = -1;
			unsigned nfd = 1;
			char c;
			if (mvu_recv_fds(s[1], &c, 1, &fd, &nfd, 0) != 1 || fd < 0)
				_exit(1);
			uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			if (m == MAP_FAILED)
				_exit(1);
			m[0] = 1;
			munmap(m, len);
			close(fd);
			if (write(s[1], "k", 1) != 1)
				_exit(1);
		}
		_exit(0);
	}
	double *t = samples(n);
	for (long i = 0; i < n; i++) {
		double t0 = now_s();
		int fd = memfd_create("bench", MFD_CLOEXEC);
		if (fd < 0 || ftruncate(fd, (off_t)len) < 0)
			die("memfd");
		uint8_t *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		char c = 'f';
		if (a == MAP_FAILED || mvu_send_fds(s[0], &c, 1, &fd, 1, 0) != 1 || read(s[0], &c, 1) != 1)
			die("memfd share");
		close(fd);
		if (a[0] != 1)
			die("memfd data");
		munmap(a, len);
		t[i] = now_s() - t0;
	}
	double us = median_us(t, n);
	waitpid(pid, NULL, 0);
	close(s[0]), close(s[1]);
	return us;
}

static double broker_roundtrip(long n)
{
	double *t = samples(n);
	for (long i = 0; i < n; i++) {
		double t0 = now_s();
		if (mv_broker_domain_self() < 0)
			die("broker");
		t[i] = now_s() - t0;
	}
	return median_us(t, n);
}

static void print_results(void)
{
	if (json) {
		for (int i = 0; i < nresults; i++) {
			struct result *r = &results[i];
			printf("{\"benchmark\":\"%s\",\"value\":%.3f,\"unit\":\"%s\",\"baseline\":\"%s\",\"baseline_"
			       "value\":%.3f,"
			       "\"ratio\":%.3f,\"target\":\"%s\",\"met\":%s}\n",
			       r->name, r->value, r->unit, r->baseline_name, r->baseline,
			       r->baseline > 0 ? r->value / r->baseline : 0, r->target ? r->target : "",
			       r->met < 0 ? "null"
			       : r->met   ? "true"
					  : "false");
		}
		return;
	}
	printf("%-34s %10s %-6s %-30s %10s %7s  %s\n", "benchmark", "value", "unit", "baseline (same run)", "baseline",
	       "ratio", "target");
	for (int i = 0; i < nresults; i++) {
		struct result *r = &results[i];
		char ratio[16] = "-", target[64] = "";
		if (r->baseline > 0)
			snprintf(ratio, sizeof(ratio), "%.3f", r->value / r->baseline);
		if (r->target)
			snprintf(target, sizeof(target), "%s: %s", r->target, r->met ? "met" : "NOT met");
		printf("%-34s %10.2f %-6s %-30s %10.2f %7s  %s\n", r->name, r->value, r->unit, r->baseline_name,
		       r->baseline, ratio, target);
	}
}

/* Our libraries must be the ones loaded: Debian's would need a Xen hypervisor. */
static void check_libraries(void)
{
	Dl_info info;
	if (!dladdr((void *)xengnttab_open, &info) || !strstr(info.dli_fname, "lib/xen") ||
	    !dladdr((void *)xenevtchn_open, &info) || !strstr(info.dli_fname, "lib/xen")) {
		fprintf(stderr, "bench_grants: memvisor's libxengnttab/libxenevtchn are not the ones loaded (%s)\n",
			info.dli_fname);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			quick = true;
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--vchan-client"))
			return vchan_client();
		else if (!strcmp(argv[i], "--evtchn-peer"))
			return evtchn_peer();
		else if (!strcmp(argv[i], "--grant-peer"))
			return grant_peer();
		else if (strcmp(argv[i], "--full")) {
			fprintf(stderr, "usage: bench_grants [--quick] [--json]\n");
			return 2;
		}
	}
	check_libraries();
	char xs[300];
	if (mvu_runtime_path(xs, sizeof(xs), "xenstored.sock", 1) < 0)
		die("runtime directory");
	setenv("XENSTORED_PATH", xs, 0);
	if (own_domid() <= 0) {
		fprintf(stderr, "bench_grants: this process is not a domain: is a broker running or startable?\n");
		return 1;
	}
	long long total = quick ? 16ll << 20 : 256ll << 20;
	long pings = quick ? 300 : 3000;

	struct peer p;
	struct libxenvchan *v = vchan_pair(&p);
	static const size_t chunks[] = { 1024, 4096, 16384, 65536 };
	static char names[4][3][48];
	for (int i = 0; i < 4; i++) {
		double vc = vchan_throughput(v, chunks[i], total);
		double sp = stream_throughput(false, chunks[i], total);
		double pi = stream_throughput(true, chunks[i], total);
		snprintf(names[i][0], sizeof(names[i][0]), "vchan throughput, %zu KiB writes", chunks[i] / 1024);
		snprintf(names[i][1], sizeof(names[i][1]), "Unix socketpair, %zu KiB writes", chunks[i] / 1024);
		snprintf(names[i][2], sizeof(names[i][2]), "pipe, %zu KiB writes", chunks[i] / 1024);
		add(names[i][0], vc, "MiB/s", names[i][1], sp, false, i == 3 ? ">= 2x socketpair" : NULL,
		    i == 3 ? vc >= 2 * sp : -1);
		add(names[i][0], vc, "MiB/s", names[i][2], pi, false, NULL, -1);
	}
	double vl = vchan_pingpong(v, pings), sl = socket_pingpong(pings);
	add("vchan ping-pong, 64 B", vl, "us", "socketpair ping-pong, 64 B", sl, true, NULL, -1);
	char end = 'E';
	libxenvchan_write(v, &end, 1);
	libxenvchan_close(v);
	peer_end(&p);

	double er = evtchn_roundtrip(pings), fr = eventfd_roundtrip(pings);
	add("evtchn notify->wake round trip", er, "us", "raw eventfd ping-pong", fr, true, "<= 1.5x eventfd",
	    er <= 1.5 * fr);

	long cycles = quick ? 200 : 2000;
	double unshare1, unshare64, pun1, pun64;
	double g1 = grant_cycle(1, cycles, &unshare1), m1 = memfd_cycle(1, cycles);
	double p1 = grant_peer_cycle(1, cycles, &pun1);
	double g64 = grant_cycle(64, cycles / 4, &unshare64), m64 = memfd_cycle(64, cycles / 4);
	double p64 = grant_peer_cycle(64, cycles / 4, &pun64);
	double gn = grant_notify_cycle(cycles);
	double rt = broker_roundtrip(cycles);
	add("grant share+map+unmap, 1 page", g1, "us", "memfd + SCM_RIGHTS to a peer", m1, true, "<= 10 us", g1 <= 10);
	add("grant to a peer, 1 page", p1, "us", "memfd + SCM_RIGHTS to a peer", m1, true, "<= memfd", p1 <= m1);
	add("grant share+map+unmap, 64 pages", g64, "us", "memfd + SCM_RIGHTS to a peer", m64, true, NULL, -1);
	add("grant to a peer, 64 pages", p64, "us", "memfd + SCM_RIGHTS to a peer", m64, true, "<= memfd", p64 <= m64);
	add("grant with unmap notify, 1 page", gn, "us", "memfd + SCM_RIGHTS to a peer", m1, true, NULL, -1);
	add("grant unshare, 1 page", unshare1, "us", "broker round trip", rt, true, NULL, -1);
	add("grant share+map+unmap, 1 page", g1, "us", "broker round trip", rt, true, NULL, -1);
	add("grant with unmap notify, 1 page", gn, "us", "3 broker round trips", 3 * rt, true, NULL, -1);
	print_results();
	return 0;
}
