/* SPDX-License-Identifier: MIT */
/* A client for the tests that drive the installed programs (socket_activation.sh, top_tmux.sh).
 * "status": an ordinary client of the library (auto-start as the environment allows) prints the pid of
 * the broker that answered. "notify PATH": a service manager's notification socket, printing each
 * message it receives on one line until killed. "hold": makes something for memvisor top to show (two
 * regions, a domain with an event channel and a grant, a merging context), prints "ready PID DOMID",
 * and keeps it until its standard input closes. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <sys/mman.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#include "memvisor/broker.h"
#include "memvisor/memvisor.h"
#include "memvisor/merge.h"

static int status(void)
{
	mv_broker_status *st;
	int r = mv_broker_status_new(&st);

	if (r < 0) {
		fprintf(stderr, "service_client: no broker: %s\n", strerror(-r));
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
		perror("service_client: bind");
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

static int hold(void)
{
	mv_region *small, *big;
	void *a, *b;
	mv_merge *m;
	char c;
	uint32_t ref;

	if (mv_region_new("alpha-cache", 1 << 20, &small) < 0 || mv_region_new("zeta-big", 4 << 20, &big) < 0 ||
	    mv_region_map(small, PROT_READ | PROT_WRITE, &a) < 0 || mv_region_map(big, PROT_READ | PROT_WRITE, &b) < 0)
		return 1;
	memset(a, 1, 1 << 20);
	memset(b, 2, 4 << 20);
	/* Half of the big one unpinned, then reclaimed by a budget of 0 (an explicit purge would drop
	 * it): the broker holds it compressed. */
	if (mv_region_unpin(big, 0, 2 << 20) < 0 || mv_broker_set(MV_BROKER_UNPINNED_BUDGET, 0) < 0 || mv_sync() < 0 ||
	    mv_broker_set(MV_BROKER_UNPINNED_BUDGET, MV_BROKER_NO_LIMIT) < 0)
		return 2;
	int domid = mv_broker_domain_self();
	xenevtchn_handle *xe = xenevtchn_open(NULL, 0);
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	void *granted;
	if (domid <= 0 || !xe || !gs || xenevtchn_bind_unbound_port(xe, (uint32_t)domid) < 0 ||
	    !(granted = xengntshr_share_pages(gs, (uint32_t)domid, 1, &ref, 1)))
		return 3;
	/* 64 equal pages: one canonical page, 63 saved. */
	size_t len = 64 * (size_t)MV_PAGE_SIZE;
	void *same = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (same == MAP_FAILED || mv_merge_new(NULL, 0, &m) < 0)
		return 4;
	memset(same, 7, len);
	if (mv_merge_register(m, same, len) < 0)
		return 5;
	for (int i = 0; i < 3; i++)
		if (mv_merge_scan(m, 64, 64, 0) < 0)
			return 6;
	struct mv_merge_stats st;
	if (mv_merge_get_stats(m, &st, sizeof(st)) < 0)
		return 7;
	printf("ready %d %d %llu\n", (int)getpid(), domid, (unsigned long long)st.pages_sharing);
	fflush(stdout);
	while (read(STDIN_FILENO, &c, 1) > 0)
		;
	mv_merge_unregister(m, same, len);
	mv_merge_unref(m);
	munmap(same, len);
	xengntshr_unshare(gs, granted, 1);
	xengntshr_close(gs);
	xenevtchn_close(xe);
	mv_region_unmap(small, a);
	mv_region_unmap(big, b);
	mv_region_unref(small);
	mv_region_unref(big);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "status") == 0)
		return status();
	if (argc == 3 && strcmp(argv[1], "notify") == 0)
		return notify(argv[2]);
	if (argc == 2 && strcmp(argv[1], "hold") == 0)
		return hold();
	fprintf(stderr, "usage: service_client status | notify PATH | hold\n");
	return 2;
}
