/* SPDX-License-Identifier: MIT */
/* Tour step 9: two processes talk over Debian's unmodified libxenvchan. Each peer is this program run
 * again with memvisor's Xen libraries first on LD_LIBRARY_PATH and XENSTORED_PATH on the broker's xenstore;
 * it loads Debian's libxenvchan.so.4.17 and libxenstore.so.4 by name, as any Xen program would. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libxenvchan.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xenstore.h>

#include "cli/cli.h"
#include "memvisor/broker.h"

#define BULK (64u << 20)

struct xenlibs {
	__typeof__(&libxenvchan_server_init) server_init;
	__typeof__(&libxenvchan_client_init) client_init;
	__typeof__(&libxenvchan_read) read;
	__typeof__(&libxenvchan_recv) recv;
	__typeof__(&libxenvchan_write) write;
	__typeof__(&libxenvchan_is_open) is_open;
	__typeof__(&libxenvchan_wait) wait;
	__typeof__(&libxenvchan_close) close;
	__typeof__(&xs_open) xs_open;
	__typeof__(&xs_read) xs_read;
	__typeof__(&xs_close) xs_close;
};

static int load(struct xenlibs *x)
{
	void *v = dlopen("libxenvchan.so.4.17", RTLD_NOW), *s = dlopen("libxenstore.so.4", RTLD_NOW);
	if (!v || !s) {
		printf("error Debian's libxenvchan.so.4.17/libxenstore.so.4 are missing (apt-get install "
		       "libxenmisc4.17)\n");
		return -1;
	}
	x->server_init = dlsym(v, "libxenvchan_server_init");
	x->client_init = dlsym(v, "libxenvchan_client_init");
	x->read = dlsym(v, "libxenvchan_read");
	x->recv = dlsym(v, "libxenvchan_recv");
	x->write = dlsym(v, "libxenvchan_write");
	x->is_open = dlsym(v, "libxenvchan_is_open");
	x->wait = dlsym(v, "libxenvchan_wait");
	x->close = dlsym(v, "libxenvchan_close");
	x->xs_open = dlsym(s, "xs_open");
	x->xs_read = dlsym(s, "xs_read");
	x->xs_close = dlsym(s, "xs_close");
	return x->server_init && x->client_init && x->read && x->recv && x->write && x->is_open && x->wait &&
			       x->close && x->xs_open && x->xs_read && x->xs_close
		       ? 0
		       : -1;
}

static int domid_from_store(struct xenlibs *x)
{
	struct xs_handle *h = x->xs_open(0);
	unsigned len;
	char *v = h ? x->xs_read(h, XBT_NULL, "domid", &len) : NULL;
	int d = v ? atoi(v) : -1;
	free(v);
	if (h)
		x->xs_close(h);
	return d;
}

/* The peer. stdin/stdout carry the tour's lines. */
int cli_tour_vchan_peer(const char *role)
{
	struct xenlibs x;
	char line[256];
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (load(&x) < 0)
		return 1;
	int me = domid_from_store(&x);
	printf("domid %d\n", me);
	if (me <= 0 || !fgets(line, sizeof(line), stdin))
		return 1;
	int peer = atoi(line);
	bool server = strcmp(role, "server") == 0;
	char path[128];
	snprintf(path, sizeof(path), "/local/domain/%d/data/vchan/%d/tour", server ? me : peer, server ? peer : me);
	if (server) {
		struct libxenvchan *v = x.server_init(NULL, peer, path, 1 << 20, 1 << 20);
		if (!v)
			return printf("error server_init: %s\n", strerror(errno)), 1;
		v->blocking = 1;
		printf("ready %s\n", path);
		char hello[64] = { 0 };
		if (x.recv(v, hello, sizeof(hello)) != sizeof(hello))
			return 1;
		char answer[64] = { 0 };
		hello[sizeof(hello) - 1] = '\0';
		int l = snprintf(answer, sizeof(answer), "domain %d heard: ", me);
		if (l > 0 && (size_t)l < sizeof(answer))
			memcpy(answer + l, hello, strnlen(hello, sizeof(answer) - (size_t)l - 1));
		if (x.write(v, answer, sizeof(answer)) != sizeof(answer))
			return 1;
		/* the bulk: a checksum over every byte, sent back */
		static uint8_t buf[1 << 16];
		uint64_t sum = 0;
		for (uint32_t got = 0; got < BULK;) {
			int n = x.read(v, buf, sizeof(buf));
			if (n <= 0)
				return 1;
			for (int i = 0; i < n; i++)
				sum = sum * 31 + buf[i];
			got += (uint32_t)n;
		}
		if (x.write(v, &sum, sizeof(sum)) != sizeof(sum))
			return 1;
		/* now wait for the client to go, however it goes */
		uint64_t t0 = cli_now_ns();
		while (x.is_open(v))
			if (x.wait(v) < 0)
				break;
		printf("gone %.1f\n", (double)(cli_now_ns() - t0) / 1e6);
		x.close(v);
		return 0;
	}
	if (!fgets(line, sizeof(line), stdin)) /* "go": the server is ready */
		return 1;
	struct libxenvchan *v = x.client_init(NULL, peer, path);
	if (!v)
		return printf("error client_init: %s\n", strerror(errno)), 1;
	v->blocking = 1;
	char hello[64] = { 0 }, answer[64];
	snprintf(hello, sizeof(hello), "hello from domain %d", me);
	if (x.write(v, hello, sizeof(hello)) != sizeof(hello) || x.recv(v, answer, sizeof(answer)) != sizeof(answer))
		return 1;
	printf("answer %.63s\n", answer);
	static uint8_t buf[1 << 16];
	uint64_t sum = 0, theirs = 0, t0 = cli_now_ns();
	for (uint32_t sent = 0; sent < BULK; sent += sizeof(buf)) {
		for (size_t i = 0; i < sizeof(buf); i++) {
			buf[i] = (uint8_t)((sent + i) * 2654435761u >> 13);
			sum = sum * 31 + buf[i];
		}
		if (x.write(v, buf, sizeof(buf)) != sizeof(buf))
			return 1;
	}
	if (x.recv(v, &theirs, sizeof(theirs)) != sizeof(theirs))
		return 1;
	printf("bulk %.1f %s\n", (double)(cli_now_ns() - t0) / 1e6, sum == theirs ? "match" : "MISMATCH");
	pause(); /* until the tour kills it */
	return 0;
}

int cli_xen_libdir(char *out, size_t len)
{
	const char *env = getenv("MEMVISOR_XEN_LIBDIR");
	if (env) {
		snprintf(out, len, "%s", env);
		return access(out, R_OK) == 0 ? 0 : -1;
	}
	static const char *const rel[] = { "/../lib/xen", "/../" MV_INSTALL_LIBDIR "/memvisor/xen",
					   "/../lib/memvisor/xen" };
	return cli_find_beside_exe(rel, CLI_ARRAY_SIZE(rel), "/libxengnttab.so.1", out, len);
}

struct peer {
	pid_t pid;
	FILE *to, *from;
};

static int spawn(struct peer *p, const char *role, const char *libdir, const char *xs)
{
	int to[2], from[2];
	if (pipe2(to, O_CLOEXEC) < 0 || pipe2(from, O_CLOEXEC) < 0)
		return -1;
	p->pid = fork();
	if (p->pid < 0)
		return -1;
	if (p->pid == 0) {
		dup2(to[0], 0);
		dup2(from[1], 1);
		setenv("LD_LIBRARY_PATH", libdir, 1);
		setenv("XENSTORED_PATH", xs, 1);
		execl("/proc/self/exe", "memvisor", "tour-vchan-peer", role, (char *)NULL);
		_exit(127);
	}
	close(to[0]);
	close(from[1]);
	p->to = fdopen(to[1], "w");
	p->from = fdopen(from[0], "r");
	setvbuf(p->to, NULL, _IOLBF, 0);
	return 0;
}

static const char *get(struct peer *p, char *buf, size_t len, const char *want)
{
	struct pollfd pf = { .fd = fileno(p->from), .events = POLLIN };
	if (poll(&pf, 1, 30000) != 1 || !fgets(buf, (int)len, p->from))
		return NULL;
	buf[strcspn(buf, "\n")] = '\0';
	size_t wl = strlen(want);
	return strncmp(buf, want, wl) == 0 && buf[wl] == ' ' ? buf + wl + 1 : NULL;
}

int cli_tour_vchan(FILE *out)
{
	char libdir[PATH_MAX], xs[300], rt[256];
	if (cli_xen_libdir(libdir, sizeof(libdir)) < 0 || mv_broker_runtime_dir(rt, sizeof(rt)) < 0 ||
	    (size_t)snprintf(xs, sizeof(xs), "%s/xenstored.sock", rt) >= sizeof(xs)) {
		fprintf(out, "9. (vchan skipped: memvisor's Xen libraries not found; set MEMVISOR_XEN_LIBDIR)\n");
		return 0;
	}
	struct peer s = { .pid = -1 }, c = { .pid = -1 };
	char sb[256] = "", cb[256] = "", path[128] = "";
	const char *v;
	int ret = -1, sd = -1, cd = -1;
	double bulk_ms = 0, gone_ms = 0;
	bool match = false;
	char answer[128] = "";
	if (spawn(&s, "server", libdir, xs) < 0 || spawn(&c, "client", libdir, xs) < 0)
		goto done;
	if (!(v = get(&s, sb, sizeof(sb), "domid")) || (sd = atoi(v)) <= 0 || !(v = get(&c, cb, sizeof(cb), "domid")) ||
	    (cd = atoi(v)) <= 0)
		goto done;
	fprintf(s.to, "%d\n", cd);
	fprintf(c.to, "%d\n", sd);
	if (!(v = get(&s, sb, sizeof(sb), "ready")))
		goto done;
	snprintf(path, sizeof(path), "%s", v);
	fprintf(c.to, "go\n");
	if (!(v = get(&c, cb, sizeof(cb), "answer")))
		goto done;
	snprintf(answer, sizeof(answer), "%s", v);
	if (!(v = get(&c, cb, sizeof(cb), "bulk")))
		goto done;
	bulk_ms = atof(v);
	match = strstr(v, " match") != NULL;
	kill(c.pid, SIGKILL);
	if (!(v = get(&s, sb, sizeof(sb), "gone")))
		goto done;
	gone_ms = atof(v);
	fprintf(out,
		"9. Xen's sharing model: pid %d became domain %d and pid %d domain %d. Debian's unmodified\n"
		"   libxenvchan connected them through the broker's xenstore (%s),\n"
		"   grant tables and event channels: the client said hello and got \"%s\";\n"
		"   64 MiB streamed in %.0f ms (%.1f GiB/s), checksum %s; then the client was killed (SIGKILL)\n"
		"   and the server noticed %.1f ms later: the broker cleared cli_live and fired its event\n",
		(int)s.pid, sd, (int)c.pid, cd, path, answer, bulk_ms, bulk_ms > 0 ? 64.0 / 1024 / (bulk_ms / 1000) : 0,
		match ? "matches" : "DOES NOT MATCH", gone_ms);
	ret = match ? 0 : -1;
done:
	if (ret < 0) {
		fprintf(stderr, "memvisor tour: the vchan step failed%s%s\n", sb[0] ? ": server said " : "", sb);
	}
	int st;
	if (c.pid > 0) {
		kill(c.pid, SIGKILL);
		waitpid(c.pid, &st, 0);
		fclose(c.to), fclose(c.from);
	}
	if (s.pid > 0) {
		if (ret < 0)
			kill(s.pid, SIGKILL);
		if (waitpid(s.pid, &st, 0) < 0 || (ret == 0 && (!WIFEXITED(st) || WEXITSTATUS(st))))
			ret = -1;
		fclose(s.to), fclose(s.from);
	}
	return ret;
}
