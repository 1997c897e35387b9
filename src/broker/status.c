/* SPDX-License-Identifier: MIT */
/* The broker's status: the core's own counters and every service's, by name (STATS, in a sealed memfd)
 * and as the fixed struct older clients know (STATUS, filled from the same names). */
#define _GNU_SOURCE
#include "core.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct mvb_stats {
	struct mvw_stats_rec *recs;
	uint32_t n, cap;
	bool failed;
};

void mvb_stats_add(struct mvb_stats *st, const char *name, uint64_t value)
{
	if (st->n == st->cap) {
		uint32_t cap = st->cap ? st->cap * 2 : 64;
		struct mvw_stats_rec *v = realloc(st->recs, cap * sizeof(*v));
		if (!v) {
			st->failed = true;
			return;
		}
		st->recs = v;
		st->cap = cap;
	}
	struct mvw_stats_rec *r = &st->recs[st->n++];
	memset(r, 0, sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", name);
	r->value = value;
}

/* What the broker holds of the system, for anyone checking that clients leave nothing behind. */
static uint64_t open_descriptors(void)
{
	DIR *d = opendir("/proc/self/fd");
	uint64_t n = 0;
	if (!d)
		return 0;
	for (struct dirent *e; (e = readdir(d));)
		n += e->d_name[0] != '.';
	closedir(d);
	return n ? n - 1 : 0; /* the directory's own descriptor */
}

static uint64_t resident_bytes(void)
{
	unsigned long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "re");
	if (!f)
		return 0;
	if (fscanf(f, "%lu %lu", &size, &resident) != 2)
		resident = 0;
	fclose(f);
	return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static int collect_stats(struct mvb_stats *st)
{
	struct mallinfo2 mi = mallinfo2();

	*st = (struct mvb_stats){ 0 };
	mvb_stats_add(st, "broker.pid", (uint64_t)mvb_pid());
	mvb_stats_add(st, "broker.uid", mvb_owner_uid());
	mvb_stats_add(st, "broker.uptime_ns", mvb_uptime_ns());
	mvb_stats_add(st, "broker.clients", mvb_client_count());
	mvb_stats_add(st, "broker.refused_connections", mvb_refused_count());
	mvb_stats_add(st, "broker.heap_bytes", mi.uordblks);
	mvb_stats_add(st, "broker.fds", open_descriptors());
	mvb_stats_add(st, "broker.rss_bytes", resident_bytes());
	mvb_services_stats(st);
	if (st->failed) {
		free(st->recs);
		return -ENOMEM;
	}
	return 0;
}

/* The fixed-struct status of older clients, filled from the named counters. */
static void on_status(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_status s;
	struct mvb_stats st;
	int e = collect_stats(&st);

	memset(&s, 0, sizeof(s));
	for (uint32_t i = 0; e == 0 && i < st.n; i++)
		(void)mvw_status_set(&s, st.recs[i].name, st.recs[i].value);
	mvb_reply(c, m, e, &s, sizeof(s), -1);
	if (e == 0)
		free(st.recs);
}

static int stats_memfd(const struct mvb_stats *st)
{
	struct mvw_stats_head head = { .magic = MV_STATS_MAGIC,
				       .count = st->n,
				       .rec_size = sizeof(struct mvw_stats_rec) };
	size_t len = sizeof(head) + (size_t)st->n * sizeof(struct mvw_stats_rec);
	int fd = memfd_create("memvisor-stats", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0)
		return -errno;
	if (pwrite(fd, &head, sizeof(head), 0) != (ssize_t)sizeof(head) ||
	    pwrite(fd, st->recs, len - sizeof(head), sizeof(head)) != (ssize_t)(len - sizeof(head)) ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
		int e = -errno;
		close(fd);
		return e ? e : -EIO;
	}
	return fd;
}

/* The named counters, in a sealed memfd: any number of them, and new ones need no protocol change. */
static void on_stats(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvb_stats st;
	int e = collect_stats(&st), fd = -1;

	if (e == 0) {
		fd = stats_memfd(&st);
		free(st.recs);
		e = fd < 0 ? fd : 0;
	}
	mvb_reply(c, m, e, NULL, 0, fd);
	if (fd >= 0)
		close(fd);
}

void mvb_status_init(void)
{
	mvb_handler_register(MV_MSG_STATUS, on_status);
	mvb_handler_register(MV_MSG_STATS, on_stats);
}
