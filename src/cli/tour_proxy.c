/* SPDX-License-Identifier: MIT */
/* Tour step 10: Debian's unmodified vchan-socket-proxy on both sides of a vchan, when this machine has
 * it (xen-utils-4.17, or MEMVISOR_VCHAN_SOCKET_PROXY naming it). Its client side, one domain, listens
 * on a Unix socket; its server side, another, forwards each vchan connection to a local service that
 * this process forks. Several connections go through the one pair, then the server side is killed. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "memvisor/broker.h"

#define CONNS 3
#define CONN_BYTES (16ull << 20)
#define FNV_START 0xcbf29ce484222325ull

static const char debian_proxy[] = "/usr/lib/xen-4.17/bin/vchan-socket-proxy";

static int find_proxy(char *out, size_t len)
{
	const char *env = getenv("MEMVISOR_VCHAN_SOCKET_PROXY");
	if (env) {
		snprintf(out, len, "%s", env);
		return access(out, X_OK) == 0 ? 0 : -1;
	}
	if (access(debian_proxy, X_OK) == 0) {
		snprintf(out, len, "%s", debian_proxy);
		return 0;
	}
	/* the build tree, where the vchan_proxy test unpacks xen-utils-4.17 */
	static const char *const rel[] = { "/../xen-utils/usr/lib/xen-4.17/bin" };
	char dir[PATH_MAX];
	char found[PATH_MAX + 32];
	if (cli_find_beside_exe(rel, CLI_ARRAY_SIZE(rel), "/vchan-socket-proxy", dir, sizeof(dir)) < 0)
		return -1;
	snprintf(found, sizeof(found), "%s/vchan-socket-proxy", dir);
	if (!realpath(found, dir) || (size_t)snprintf(out, len, "%s", dir) >= len)
		return -1;
	return access(out, X_OK) == 0 ? 0 : -1;
}

static uint8_t pattern(uint64_t i, uint32_t seed)
{
	return (uint8_t)((i + seed * 7919u) * 2654435761u >> 13);
}

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* The local service behind the server side. Per connection: it speaks first (its connection number),
 * then takes a length and that many bytes, answers their checksum and then as many bytes of its own
 * pattern. Speaking first matters: the proxy's server side waits for its client's first event, then
 * for the next one before it looks at the ring, so bytes the client wrote meanwhile would sit there
 * unseen while the client waits for room (the tool's, on Xen too). It answers only once it has
 * everything, so the client, which closes when it has the answer, never closes with bytes in flight
 * (the proxy would drop them). */
static void service(int lfd)
{
	static uint8_t buf[1 << 16];
	for (uint32_t n = 1;; n++) {
		int c = accept(lfd, NULL, NULL);
		if (c < 0)
			_exit(1);
		uint64_t len, sum = FNV_START, moved = 0, hello = n;
		int r = cli_full_io(c, &hello, sizeof(hello), true);
		if (r == 0)
			r = cli_full_io(c, &len, sizeof(len), false);
		while (r == 0 && moved < len) {
			size_t k = len - moved < sizeof(buf) ? (size_t)(len - moved) : sizeof(buf);
			if ((r = cli_full_io(c, buf, k, false)) == 0)
				sum = fnv(sum, buf, k);
			moved += k;
		}
		if (r == 0)
			r = cli_full_io(c, &sum, sizeof(sum), true);
		for (moved = 0; r == 0 && moved < len;) {
			size_t k = len - moved < sizeof(buf) ? (size_t)(len - moved) : sizeof(buf);
			for (size_t i = 0; i < k; i++)
				buf[i] = pattern(moved + i, n);
			r = cli_full_io(c, buf, k, true);
			moved += k;
		}
		while (r == 0 && read(c, buf, 1) > 0) /* until the proxy closes its end */
			;
		close(c);
	}
}

static int unix_socket(const char *path, bool listening)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int r = listening ? bind(fd, (struct sockaddr *)&sa, sizeof(sa))
			  : connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (r == 0 && listening)
		r = listen(fd, 4);
	if (r < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

/* Connection n through the client side's socket: 1 when a byte or a checksum is wrong, -errno when it
 * broke off; *ms is how long it took. */
static int exchange(const char *sock, uint32_t n, double *ms)
{
	static uint8_t buf[1 << 16];
	uint64_t t0 = cli_now_ns(), len = CONN_BYTES, sum = FNV_START, theirs = 0, hello = 0;
	int fd = unix_socket(sock, false), bad = 0;
	if (fd < 0)
		return fd;
	int r = cli_full_io(fd, &hello, sizeof(hello), false);
	if (r == 0 && hello != n)
		bad = 1;
	if (r == 0)
		r = cli_full_io(fd, &len, sizeof(len), true);
	for (uint64_t sent = 0; r == 0 && sent < len; sent += sizeof(buf)) {
		for (size_t i = 0; i < sizeof(buf); i++)
			buf[i] = pattern(sent + i, 1000 + n);
		sum = fnv(sum, buf, sizeof(buf));
		r = cli_full_io(fd, buf, sizeof(buf), true);
	}
	if (r == 0 && (r = cli_full_io(fd, &theirs, sizeof(theirs), false)) == 0 && theirs != sum)
		bad = 1;
	for (uint64_t got = 0; r == 0 && got < len; got += sizeof(buf)) {
		if ((r = cli_full_io(fd, buf, sizeof(buf), false)) < 0)
			break;
		for (size_t i = 0; i < sizeof(buf); i++)
			bad |= buf[i] != pattern(got + i, n);
	}
	close(fd);
	*ms = (double)(cli_now_ns() - t0) / 1e6;
	return r < 0 ? r : bad;
}

/* "memvisor run --domid D -- PROXY ARGS" with the Xen libraries first, output to log. */
static pid_t start_proxy(const char *proxy, const char *libdir, const char *xs, int domid, const char *mode, int peer,
			 const char *node, const char *sock, const char *log)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	FILE *f = fopen(log, "w");
	if (f) {
		dup2(fileno(f), 1);
		dup2(fileno(f), 2);
	}
	char d[16], p[16];
	snprintf(d, sizeof(d), "%d", domid);
	snprintf(p, sizeof(p), "%d", peer);
	setenv("LD_LIBRARY_PATH", libdir, 1);
	setenv("XENSTORED_PATH", xs, 1);
	execl("/proc/self/exe", "memvisor", "run", "--domid", d, "--", proxy, "-m", mode, p, node, sock, (char *)NULL);
	_exit(127);
}

/* Two ids no domain has now, from 100 up. */
static int free_ids(int ids[2])
{
	struct mv_broker_domain *list = NULL;
	size_t n = 0;
	int r = mv_broker_domains(&list, &n), found = 0;
	for (uint32_t id = 100; r == 0 && found < 2 && id < 0x7ff0; id++) {
		bool taken = false;
		for (size_t i = 0; i < n; i++)
			taken |= list[i].domid == id;
		if (!taken)
			ids[found++] = (int)id;
	}
	free(list);
	return r < 0 ? r : found == 2 ? 0 : -ENOSPC;
}

/* pid's exit within ms: its wait status, or -1. */
static int reap(pid_t pid, int ms)
{
	for (int i = 0; i < ms; i++) {
		int st;
		pid_t w = waitpid(pid, &st, WNOHANG);
		if (w == pid)
			return st;
		if (w < 0)
			return -1;
		usleep(1000);
	}
	return -1;
}

static void last_line(const char *log, char *out, size_t len)
{
	FILE *f = fopen(log, "r");
	char line[256];
	out[0] = '\0';
	while (f && fgets(line, sizeof(line), f))
		snprintf(out, len, "%.*s", (int)strcspn(line, "\n"), line);
	if (f)
		fclose(f);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int cli_tour_vchan_proxy(FILE *out)
{
	char proxy[PATH_MAX] = "", libdir[PATH_MAX], rt[256], xs[300];
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	fprintf(out, "10. (vchan-socket-proxy skipped: a sanitizer build's Xen libraries cannot load into Debian's "
		     "uninstrumented proxy)\n");
	return 0;
#endif
	if (find_proxy(proxy, sizeof(proxy)) < 0 && getenv("MEMVISOR_VCHAN_SOCKET_PROXY")) {
		fprintf(out, "10. (vchan-socket-proxy skipped: MEMVISOR_VCHAN_SOCKET_PROXY=%s is not a program)\n",
			getenv("MEMVISOR_VCHAN_SOCKET_PROXY"));
		return 0;
	}
	if (!proxy[0] || access(proxy, X_OK) < 0) {
		fprintf(out,
			"10. (vchan-socket-proxy skipped: Debian's %s is not here (package xen-utils-4.17);\n"
			"    MEMVISOR_VCHAN_SOCKET_PROXY may name another)\n",
			debian_proxy);
		return 0;
	}
	if (cli_xen_libdir(libdir, sizeof(libdir)) < 0 || mv_broker_runtime_dir(rt, sizeof(rt)) < 0 ||
	    (size_t)snprintf(xs, sizeof(xs), "%s/xenstored.sock", rt) >= sizeof(xs)) {
		fprintf(out, "10. (vchan-socket-proxy skipped: memvisor's Xen libraries not found; set "
			     "MEMVISOR_XEN_LIBDIR)\n");
		return 0;
	}
	char dir[] = "/tmp/memvisor-tour.XXXXXX", front[128], back[128], clog[128], slog[128], node[128], why[256] = "";
	if (!mkdtemp(dir))
		return -1;
	snprintf(front, sizeof(front), "%s/front.sock", dir);
	snprintf(back, sizeof(back), "%s/back.sock", dir);
	snprintf(clog, sizeof(clog), "%s/client.log", dir);
	snprintf(slog, sizeof(slog), "%s/server.log", dir);
	pid_t svc = -1, cpid = -1, spid = -1;
	int ret = -1, ids[2], lfd = unix_socket(back, true), cst = -1, bad = 0, r = 0;
	double ms[CONNS], gone_ms = 0;
	if (lfd < 0 || free_ids(ids) < 0)
		goto done;
	/* The server side takes the lower id. The proxy gives up on its server only when xc_domain_getinfo
	 * answers with a domain other than the server's: on Xen it answers none (0) when no domain is at or
	 * above the id, and the proxy of Xen 4.17 then waits on. The client's own domain is that other one. */
	int sd = ids[0], cd = ids[1];
	snprintf(node, sizeof(node), "/local/domain/%d/data/vchan/%d/socket-proxy", sd, cd);
	if ((svc = fork()) == 0)
		service(lfd);
	close(lfd);
	lfd = -1;
	/* the client side first: the server's vchan is for its domain, which must exist, as on Xen */
	if (svc < 0 || (cpid = start_proxy(proxy, libdir, xs, cd, "client", sd, node, front, clog)) < 0)
		goto done;
	struct stat sb;
	for (int i = 0; i < 200 && stat(front, &sb) < 0; i++)
		usleep(50000);
	if ((spid = start_proxy(proxy, libdir, xs, sd, "server", cd, node, back, slog)) < 0)
		goto done;
	char ec[300];
	snprintf(ec, sizeof(ec), "%s/event-channel", node);
	for (int i = 0; i < 200 && cli_store_read(ec, NULL, 0) < 0; i++)
		usleep(50000);
	for (uint32_t n = 1; n <= CONNS && r >= 0; n++)
		if ((r = exchange(front, n, &ms[n - 1])) > 0)
			bad++;
	if (r < 0) {
		snprintf(why, sizeof(why), "a connection broke off: %s", strerror(-r));
		goto done;
	}
	if (reap(cpid, 0) != -1 || reap(spid, 0) != -1) {
		snprintf(why, sizeof(why), "a proxy exited between connections");
		goto done;
	}
	/* the server side dies; the client side's next connection finds its domain gone */
	kill(spid, SIGKILL);
	waitpid(spid, NULL, 0);
	spid = -1;
	uint64_t t0 = cli_now_ns();
	int late = unix_socket(front, false);
	cst = reap(cpid, 10000);
	gone_ms = (double)(cli_now_ns() - t0) / 1e6;
	if (late >= 0)
		close(late);
	if (cst == -1) {
		snprintf(why, sizeof(why), "the client side did not give up after its server died");
		goto done;
	}
	cpid = -1;
	qsort(ms, CONNS, sizeof(ms[0]), cmp_double);
	double med = ms[CONNS / 2];
	fprintf(out,
		"10. Debian's unmodified vchan-socket-proxy (%s) on both sides of a vchan:\n"
		"    domain %d is its client side, listening on a Unix socket; domain %d its server side,\n"
		"    forwarding to a local service. %d connections one after the other through that one pair,\n"
		"    %llu MiB each way each: %s; %.0f ms a connection (median, %.0f MiB/s both ways)\n"
		"    then the server side was killed (SIGKILL): at its next connection the client side found\n"
		"    domain %d gone and exited with status %d, %.1f ms later\n",
		proxy, cd, sd, CONNS, CONN_BYTES >> 20, bad ? "DATA ERRORS" : "every byte and checksum right", med,
		med > 0 ? 2.0 * (double)(CONN_BYTES >> 20) / (med / 1000) : 0, sd,
		WIFEXITED(cst) ? WEXITSTATUS(cst) : -1, gone_ms);
	ret = bad == 0 && WIFEXITED(cst) && WEXITSTATUS(cst) != 0 ? 0 : -1;
	if (ret < 0 && !bad)
		snprintf(why, sizeof(why), "the client side exited 0 after its server died");
done:
	if (ret < 0) {
		char cl[256], sl[256];
		last_line(clog, cl, sizeof(cl));
		last_line(slog, sl, sizeof(sl));
		fprintf(stderr,
			"memvisor tour: the vchan-socket-proxy step failed: %s (client side: '%s', server side: "
			"'%s')\n",
			why[0] ? why : strerror(errno), cl, sl);
	}
	if (lfd >= 0)
		close(lfd);
	pid_t all[3] = { cpid, spid, svc };
	for (int i = 0; i < 3; i++)
		if (all[i] > 0) {
			kill(all[i], SIGKILL);
			waitpid(all[i], NULL, 0);
		}
	unlink(front);
	unlink(back);
	unlink(clog);
	unlink(slog);
	rmdir(dir);
	return ret;
}
