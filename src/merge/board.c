/* SPDX-License-Identifier: MIT */
/* The statistics board: checking one read back (the reader is `memvisor merge`; any process of the
 * user can write a board file, so its bytes are untrusted) and telling a live writer from a dead one. */
#define _GNU_SOURCE
#include "merge/board.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int mv_board_decode(const void *buf, size_t len, struct mv_merge_board *out)
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

uint64_t mv_proc_starttime(int pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
	if (!p)
		return 0;
	unsigned long long st = 0;
	/* fields after the name start at 3 (state); starttime is field 22 */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", &st) != 1)
		return 0;
	return st;
}
