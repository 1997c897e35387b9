/* SPDX-License-Identifier: MIT */
/* The statistics board: checking one read back (the reader is `memvisor merge`; any process of the
 * user can write a board file, so its bytes are untrusted) and telling a live writer from a dead one. */
#define _GNU_SOURCE
#include "merge/board.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "memvisor/broker.h"

int mvm_board_decode(const void *buf, size_t len, struct mvm_merge_board *out)
{
	if (len != sizeof(*out))
		return -EPROTO;
	memcpy(out, buf, sizeof(*out));
	if (out->magic != MV_BOARD_MAGIC || out->version != MV_BOARD_VERSION || (out->seq & 1) || !out->pid)
		return -EPROTO;
	out->partition[sizeof(out->partition) - 1] = 0;
	for (char *c = out->partition; *c; c++)
		if (*c < ' ' || *c > '~')
			*c = '?'; /* shown on a terminal: nothing that could drive it */
	return 0;
}

uint64_t mvm_proc_starttime(int pid)
{
	struct mvu_proc_stat st;
	return mvu_proc_stat(pid, &st) == 0 ? st.starttime : 0;
}

/* A consistent copy of one board, or -1 when it is torn, foreign or stale (stale ones are removed). */
static int read_board(const char *dir, const char *name, struct mvm_merge_board *b)
{
	char file[300];
	int n = snprintf(file, sizeof(file), "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= sizeof(file))
		return -1; /* a truncated name would be some other file */
	int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	struct stat st;
	int ok = -1;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() && st.st_size == (off_t)sizeof(*b)) {
		/* a writer mid-update shows an odd or changing sequence: read again */
		for (int tries = 0; tries < 100 && ok < 0; tries++) {
			unsigned char raw[sizeof(*b)];
			uint32_t s2;
			if (pread(fd, raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
				break;
			if (pread(fd, &s2, sizeof(s2), offsetof(struct mvm_merge_board, seq)) != sizeof(s2))
				break;
			if (mvm_board_decode(raw, sizeof(raw), b) == 0 && b->seq == s2)
				ok = 0;
			else
				usleep(100);
		}
	}
	close(fd);
	if (ok < 0)
		return -1;
	if (mvm_proc_starttime((int)b->pid) != b->starttime) {
		unlink(file); /* its process died without cleaning up */
		return -1;
	}
	return 0;
}

void mvm_board_sweep(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	while (d && (e = readdir(d))) {
		struct mvm_merge_board b;
		size_t l = strlen(e->d_name);
		if (l >= 7 && strcmp(e->d_name + l - 6, ".board") == 0)
			(void)read_board(dir, e->d_name, &b); /* removes it if its process is gone */
	}
	if (d)
		closedir(d);
}

MV_EXPORT int mv_broker_mergers(struct mv_broker_merger **list, size_t *n)
{
	struct mv_broker_merger *v = NULL;
	size_t cap = 0;
	char dir[256];
	int r;

	if (!list || !n)
		return -EINVAL;
	*list = NULL;
	*n = 0;
	r = mvu_runtime_path(dir, sizeof(dir), "merge", 0);
	if (r == -ENOENT)
		return 0; /* nobody ever merged here */
	if (r < 0)
		return r;
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	struct dirent *e;
	while ((e = readdir(d))) {
		struct mvm_merge_board b;
		size_t l = strlen(e->d_name);
		if (l < 7 || strcmp(e->d_name + l - 6, ".board") || read_board(dir, e->d_name, &b) < 0)
			continue;
		if (*n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			struct mv_broker_merger *nv = realloc(v, nc * sizeof(*nv));
			if (!nv) {
				closedir(d);
				free(v);
				*n = 0;
				return -ENOMEM;
			}
			v = nv;
			cap = nc;
		}
		struct mv_broker_merger *m = &v[(*n)++];
		memset(m, 0, sizeof(*m));
		m->pid = (pid_t)b.pid;
		memcpy(m->partition, b.partition, sizeof(m->partition));
		m->knobs = b.knobs;
		m->scanner_running = b.scanner_running != 0;
		m->updated_realtime_ns = b.updated_realtime_ns;
		m->stats = b.stats;
	}
	closedir(d);
	*list = v;
	return (int)*n;
}
