/* SPDX-License-Identifier: MIT */
/* One end of a Unix stream socket for the vchan-socket-proxy test: sends its pattern while it receives
 * the other end's, full duplex, and checks every byte. A SIZE is UP[:DOWN], the bytes the connecting
 * side sends and those the listening side sends (DOWN = UP by default). Connection N has patterns of
 * its own, so bytes left over from an earlier connection cannot pass for this one's. Each side also
 * prints an FNV-1a checksum of what it sent and what it got, for the test to compare across the proxy.
 *
 *   stream_peer listen PATH SIZE[,SIZE...] COUNT
 *       serves COUNT connections one after the other (connection N moves the Nth size, the last one
 *       repeating): "accepted N" when it comes, "exchanged N SENT GOT" once both directions are
 *       through, "ok N" when the other side then closed, or "failed N" for one that broke off
 *   stream_peer connect PATH SIZE [N]
 *       one connection, as connection N (1 by default): "ok SENT GOT", or what went wrong (exit 1)
 *
 * The listening side holds back its last byte until it has every byte of the other's: the connecting
 * side, which closes once it has everything, then never closes while its own bytes are in flight.
 * vchan-socket-proxy needs that of its users: its client side, told of the close, ends the vchan, and
 * the server side drops what was still in the ring (discard_buffers). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static uint8_t pattern(uint64_t i, uint32_t seed)
{
	return (uint8_t)((i + seed) * 2654435761u >> 13);
}

struct sums {
	uint64_t sent, got;
};

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* 0 when both directions are done and right. With hold, the last byte goes once all came in. */
static int exchange(int fd, uint64_t out_bytes, uint64_t in_bytes, uint32_t send_seed, uint32_t recv_seed, bool hold,
		    struct sums *sums)
{
	static uint8_t out[1 << 16], in[1 << 16];
	uint64_t sent = 0, got = 0;
	sums->sent = sums->got = 0xcbf29ce484222325ull;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	while (sent < out_bytes || got < in_bytes) {
		uint64_t may_send = hold && got < in_bytes && out_bytes > 0 ? out_bytes - 1 : out_bytes;
		struct pollfd p = { .fd = fd,
				    .events =
					    (short)((got < in_bytes ? POLLIN : 0) | (sent < may_send ? POLLOUT : 0)) };
		if (poll(&p, 1, 30000) != 1) {
			printf("stalled: sent %llu got %llu\n", (unsigned long long)sent, (unsigned long long)got);
			return -1;
		}
		if ((p.revents & POLLOUT) && sent < may_send) {
			size_t n = may_send - sent < sizeof(out) ? (size_t)(may_send - sent) : sizeof(out);
			for (size_t i = 0; i < n; i++)
				out[i] = pattern(sent + i, send_seed);
			ssize_t w = write(fd, out, n);
			if (w < 0 && errno != EAGAIN) {
				printf("write: %s\n", strerror(errno));
				return -1;
			}
			if (w > 0) {
				sums->sent = fnv(sums->sent, out, (size_t)w);
				sent += (uint64_t)w;
			}
		}
		if ((p.revents & (POLLIN | POLLHUP | POLLERR)) && got < in_bytes) {
			ssize_t r = read(fd, in, sizeof(in));
			if (r == 0 || (r < 0 && errno != EAGAIN)) {
				printf("closed early: got %llu\n", (unsigned long long)got);
				return -1;
			}
			for (ssize_t i = 0; i < r; i++)
				if (in[i] != pattern(got + (uint64_t)i, recv_seed)) {
					printf("mismatch at %llu\n", (unsigned long long)(got + (uint64_t)i));
					return -1;
				}
			if (r > 0) {
				sums->got = fnv(sums->got, in, (size_t)r);
				got += (uint64_t)r;
			}
		}
	}
	return 0;
}

/* UP[:DOWN] at s; returns where it ends. */
static const char *size_arg(const char *s, uint64_t *up, uint64_t *down)
{
	char *end;
	*up = *down = strtoull(s, &end, 10);
	if (*end == ':')
		*down = strtoull(end + 1, &end, 10);
	return end;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN); /* a peer that went is an error reported, not a death */
	if (argc < 4 || (strcmp(argv[1], "listen") != 0 && strcmp(argv[1], "connect") != 0) ||
	    (argv[1][0] == 'l' && argc != 5) || (argv[1][0] == 'c' && argc != 4 && argc != 5)) {
		fprintf(stderr, "usage: stream_peer listen PATH BYTES[,BYTES...] COUNT | connect PATH BYTES [N]\n");
		return 2;
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(argv[2]) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "stream_peer: path too long\n");
		return 2;
	}
	strcpy(sa.sun_path, argv[2]);
	const char *sizes = argv[3];
	uint64_t up, down;
	size_arg(sizes, &up, &down);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return 1;
	if (argv[1][0] == 'c') {
		if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			printf("connect: %s\n", strerror(errno));
			return 1;
		}
		uint32_t n = argc == 5 ? (uint32_t)atoi(argv[4]) : 1;
		struct sums sums;
		int r = exchange(s, up, down, 2 * n - 1, 2 * n, false, &sums);
		if (r == 0)
			printf("ok %016llx %016llx\n", (unsigned long long)sums.sent, (unsigned long long)sums.got);
		return r == 0 ? 0 : 1;
	}
	if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s, 8) < 0) {
		printf("listen: %s\n", strerror(errno));
		return 1;
	}
	printf("listening\n");
	int count = atoi(argv[4]);
	for (int i = 1; i <= count; i++) {
		int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			return 1;
		printf("accepted %d\n", i);
		const char *next = size_arg(sizes, &up, &down);
		if (*next == ',')
			sizes = next + 1;
		struct sums sums;
		int r = exchange(c, down, up, 2 * (uint32_t)i, 2 * (uint32_t)i - 1, true, &sums);
		/* the connecting side closes first, as a client does: a proxy then sees its vchan client go
		 * before its socket does */
		if (r == 0)
			printf("exchanged %d %016llx %016llx\n", i, (unsigned long long)sums.sent,
			       (unsigned long long)sums.got);
		struct pollfd p = { .fd = c, .events = POLLIN };
		char junk;
		while (r == 0 && poll(&p, 1, 30000) == 1 && read(c, &junk, 1) > 0)
			r = -1; /* nothing more was due */
		close(c);
		printf("%s %d\n", r < 0 ? "failed" : "ok", i);
	}
	return 0;
}
