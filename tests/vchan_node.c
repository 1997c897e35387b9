/* SPDX-License-Identifier: MIT */
/* A Xen program, written only against Xen's headers and Debian's libxenvchan.so.4.17 and libxenstore.so.4:
 * it runs on memvisor when memvisor's libxenevtchn/libxengnttab come first on LD_LIBRARY_PATH and
 * XENSTORED_PATH names the broker's xenstore. Driven by lines on stdin, reporting lines on stdout:
 *
 *   vchan_node server PORT BUFSIZE    prints "domid D", reads the client's domid, serves
 *                                     /local/domain/D/data/vchan/CLIENT/PORT, prints "ready", then echoes
 *                                     everything it reads until the client goes: "closed ECHOED"
 *   vchan_node client PORT BYTES      prints "domid D", reads the server's domid, connects, sends BYTES of
 *                                     a pattern in chunks and checks the echo: "verified BYTES"; then
 *                                     waits for a line: "close" closes, "wait" waits for the server to
 *                                     go: "server gone"
 *   vchan_node fork SERVER PORT BYTES  a domain from the start, forks (no exec): SERVER (parent or child)
 *                                     serves, the other is the client, as above, peers' domids passed
 *                                     over a pipe. Prints "parent domid D pid P", "child domid D pid P",
 *                                     then what server and client print; only the client reads stdin.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libxenvchan.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xenstore.h>

static int die(const char *what)
{
	printf("error %s: %s\n", what, strerror(errno));
	fflush(stdout);
	return 1;
}

static int own_domid(void)
{
	struct xs_handle *xs = xs_open(0);
	if (!xs)
		return -1;
	unsigned len;
	char *v = xs_read(xs, XBT_NULL, "domid", &len);
	int d = v ? atoi(v) : -1;
	free(v);
	xs_close(xs);
	return d;
}

/* The peer's domid: from stdin, or in fork mode from the other process over a pipe. */
static int peer_fd = -1, peer_wfd = -1;

static int read_int_line(void)
{
	char line[64];
	if (peer_fd >= 0) {
		int d;
		return read(peer_fd, &d, sizeof(d)) == sizeof(d) ? d : -1;
	}
	return fgets(line, sizeof(line), stdin) ? atoi(line) : -1;
}

static uint8_t pattern(uint64_t i)
{
	return (uint8_t)(i * 2654435761u >> 13);
}

static int server(int port, int bufsize)
{
	int me = own_domid();
	if (me <= 0)
		return die("own domid");
	printf("domid %d\n", me);
	fflush(stdout);
	int peer = read_int_line();
	char path[128];
	snprintf(path, sizeof(path), "/local/domain/%d/data/vchan/%d/%d", me, peer, port);
	struct libxenvchan *v = libxenvchan_server_init(NULL, peer, path, (size_t)bufsize, (size_t)bufsize);
	if (!v)
		return die("server_init");
	char one = 1;
	if (peer_wfd >= 0 && write(peer_wfd, &one, 1) != 1) /* the client may connect now */
		return die("pipe write");
	printf("ready\n");
	fflush(stdout);
	uint64_t echoed = 0;
	static char buf[1 << 16];
	for (;;) {
		/* cli_live: 2 until the client connects, 0 once it has gone (closed, or died) */
		if (!libxenvchan_is_open(v))
			break;
		int n = libxenvchan_data_ready(v);
		if (n <= 0) {
			if (libxenvchan_wait(v) < 0)
				return die("wait");
			continue;
		}
		if (n > (int)sizeof(buf))
			n = sizeof(buf);
		n = libxenvchan_read(v, buf, (size_t)n);
		if (n < 0)
			break;
		for (int off = 0; off < n;) {
			int w = libxenvchan_write(v, buf + off, (size_t)(n - off));
			if (w < 0)
				goto out;
			if (w == 0 && libxenvchan_wait(v) < 0)
				goto out;
			off += w;
		}
		echoed += (uint64_t)n;
	}
out:
	printf("closed %llu\n", (unsigned long long)echoed);
	fflush(stdout);
	libxenvchan_close(v);
	return 0;
}

static int client(int port, long long bytes)
{
	int me = own_domid();
	if (me <= 0)
		return die("own domid");
	printf("domid %d\n", me);
	fflush(stdout);
	int srv = read_int_line();
	char ready;
	if (peer_fd >= 0 && read(peer_fd, &ready, 1) != 1)
		return die("server not ready");
	char path[128];
	snprintf(path, sizeof(path), "/local/domain/%d/data/vchan/%d/%d", srv, me, port);
	struct libxenvchan *v = libxenvchan_client_init(NULL, srv, path);
	if (!v)
		return die("client_init");
	v->blocking = 1;
	static uint8_t out[8192], in[8192];
	uint64_t sent = 0, got = 0;
	while (got < (uint64_t)bytes) {
		if (sent < (uint64_t)bytes && libxenvchan_buffer_space(v) > 0) {
			size_t chunk =
				(size_t)((uint64_t)bytes - sent < sizeof(out) ? (uint64_t)bytes - sent : sizeof(out));
			int space = libxenvchan_buffer_space(v);
			if (chunk > (size_t)space)
				chunk = (size_t)space;
			for (size_t i = 0; i < chunk; i++)
				out[i] = pattern(sent + i);
			int w = libxenvchan_write(v, out, chunk);
			if (w < 0)
				return die("write");
			sent += (uint64_t)w;
			continue;
		}
		int ready = libxenvchan_data_ready(v);
		if (ready <= 0) {
			if (!libxenvchan_is_open(v)) {
				errno = EPIPE;
				return die("server closed early");
			}
			libxenvchan_wait(v);
			continue;
		}
		int n = libxenvchan_read(v, in, (size_t)ready < sizeof(in) ? (size_t)ready : sizeof(in));
		if (n < 0)
			return die("read");
		for (int i = 0; i < n; i++)
			if (in[i] != pattern(got + (uint64_t)i)) {
				printf("mismatch at %llu\n", (unsigned long long)(got + (uint64_t)i));
				fflush(stdout);
				return 1;
			}
		got += (uint64_t)n;
	}
	printf("verified %llu\n", (unsigned long long)got);
	fflush(stdout);
	char line[32];
	if (fgets(line, sizeof(line), stdin) && strncmp(line, "wait", 4) == 0) {
		while (libxenvchan_is_open(v))
			libxenvchan_wait(v);
		printf("server gone\n");
		fflush(stdout);
	}
	libxenvchan_close(v);
	return 0;
}

static int forked(const char *server_side, int port, long long bytes)
{
	int up[2], down[2]; /* child -> parent, parent -> child */
	if (pipe(up) < 0 || pipe(down) < 0)
		return die("pipe");
	int me = own_domid();
	if (me <= 0)
		return die("own domid");
	printf("parent domid %d pid %d\n", me, (int)getpid());
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return die("fork");
	bool child = pid == 0;
	int mine = child ? own_domid() : me;
	if (child) {
		printf("child domid %d pid %d\n", mine, (int)getpid());
		fflush(stdout);
		if (mine <= 0)
			return die("child's own domid");
	}
	/* each tells the other its domid */
	peer_wfd = child ? up[1] : down[1];
	peer_fd = child ? down[0] : up[0];
	if (write(peer_wfd, &mine, sizeof(mine)) != sizeof(mine))
		return die("pipe write");
	bool serve = strcmp(server_side, child ? "child" : "parent") == 0;
	/* server() and client() print "domid D" and read the peer's: the same protocol as the other modes */
	int r = serve ? server(port, 65536) : client(port, bytes);
	if (!child) {
		int st;
		waitpid(pid, &st, 0);
	}
	return r;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && strcmp(argv[1], "fork") == 0 &&
	    (strcmp(argv[2], "parent") == 0 || strcmp(argv[2], "child") == 0))
		return forked(argv[2], atoi(argv[3]), atoll(argv[4]));
	if (argc == 4 && strcmp(argv[1], "server") == 0)
		return server(atoi(argv[2]), atoi(argv[3]));
	if (argc == 4 && strcmp(argv[1], "client") == 0)
		return client(atoi(argv[2]), atoll(argv[3]));
	fprintf(stderr, "usage: vchan_node server PORT BUFSIZE | client PORT BYTES | fork parent|child PORT BYTES\n");
	return 2;
}
