/* SPDX-License-Identifier: MIT */
/* One end of a Unix stream socket for the vchan-socket-proxy test: sends BYTES of its pattern while it
 * receives BYTES of the other end's, full duplex, and checks every byte.
 *
 *   stream_peer listen PATH BYTES COUNT   serves COUNT connections one after the other: "exchanged N"
 *                                         once both directions are through, "ok N" when the other side
 *                                         then closed, or "failed N" for one that broke off
 *   stream_peer connect PATH BYTES        one connection: "ok", or what went wrong (exit 1)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
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

/* 0 when both directions are done and right. */
static int exchange(int fd, uint64_t bytes, uint32_t send_seed, uint32_t recv_seed)
{
	static uint8_t out[1 << 16], in[1 << 16];
	uint64_t sent = 0, got = 0;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	while (sent < bytes || got < bytes) {
		struct pollfd p = { .fd = fd,
				    .events = (short)((got < bytes ? POLLIN : 0) | (sent < bytes ? POLLOUT : 0)) };
		if (poll(&p, 1, 30000) != 1) {
			printf("stalled: sent %llu got %llu\n", (unsigned long long)sent, (unsigned long long)got);
			return -1;
		}
		if ((p.revents & POLLOUT) && sent < bytes) {
			size_t n = bytes - sent < sizeof(out) ? (size_t)(bytes - sent) : sizeof(out);
			for (size_t i = 0; i < n; i++)
				out[i] = pattern(sent + i, send_seed);
			ssize_t w = write(fd, out, n);
			if (w < 0 && errno != EAGAIN) {
				printf("write: %s\n", strerror(errno));
				return -1;
			}
			if (w > 0)
				sent += (uint64_t)w;
		}
		if ((p.revents & (POLLIN | POLLHUP | POLLERR)) && got < bytes) {
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
			if (r > 0)
				got += (uint64_t)r;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN); /* a peer that went is an error reported, not a death */
	if (argc < 4 || (strcmp(argv[1], "listen") != 0 && strcmp(argv[1], "connect") != 0) ||
	    (argv[1][0] == 'l' && argc != 5) || (argv[1][0] == 'c' && argc != 4)) {
		fprintf(stderr, "usage: stream_peer listen PATH BYTES COUNT | connect PATH BYTES\n");
		return 2;
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(argv[2]) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "stream_peer: path too long\n");
		return 2;
	}
	strcpy(sa.sun_path, argv[2]);
	uint64_t bytes = strtoull(argv[3], NULL, 10);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return 1;
	if (argv[1][0] == 'c') {
		if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			printf("connect: %s\n", strerror(errno));
			return 1;
		}
		int r = exchange(s, bytes, 1, 2);
		if (r == 0)
			printf("ok\n");
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
		int r = exchange(c, bytes, 2, 1);
		/* the connecting side closes first, as a client does: a proxy then sees its vchan client go
		 * before its socket does */
		if (r == 0)
			printf("exchanged %d\n", i);
		struct pollfd p = { .fd = c, .events = POLLIN };
		char junk;
		while (r == 0 && poll(&p, 1, 30000) == 1 && read(c, &junk, 1) > 0)
			r = -1; /* nothing more was due */
		close(c);
		printf("%s %d\n", r < 0 ? "failed" : "ok", i);
	}
	return 0;
}
