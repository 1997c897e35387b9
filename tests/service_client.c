/* SPDX-License-Identifier: MIT */
/* For socket_activation.sh. "status": an ordinary client of the library (auto-start as the environment
 * allows) prints the pid of the broker that answered. "notify PATH": a service manager's notification
 * socket, printing each message it receives on one line until killed. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "memvisor/broker.h"

static int status(void)
{
	mv_broker_status *st;
	int r = mv_broker_status_new(&st);

	if (r < 0) {
		fprintf(stderr, "activation_client: no broker: %s\n", strerror(-r));
		return 1;
	}
	printf("%llu\n", (unsigned long long)mv_broker_status_value(st, "broker.pid", 0));
	mv_broker_status_free(st);
	return 0;
}

static int notify(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char buf[4096];
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || strlen(path) >= sizeof(sa.sun_path))
		return 1;
	strcpy(sa.sun_path, path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("activation_client: bind");
		return 1;
	}
	printf("bound\n");
	fflush(stdout);
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
		if (n < 0)
			return 1;
		buf[n] = '\0';
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] == '\n')
				buf[i] = ' ';
		printf("%s\n", buf);
		fflush(stdout);
	}
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "status") == 0)
		return status();
	if (argc == 3 && strcmp(argv[1], "notify") == 0)
		return notify(argv[2]);
	fprintf(stderr, "usage: activation_client status | notify PATH\n");
	return 2;
}
