/* SPDX-License-Identifier: MIT */
/* Test helpers: a private broker per test, and small process utilities. */
#pragma once
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/client.h"
#include "proto/wire.h"
#include "tbroker.h"

static inline int tb_status(struct mvw_rep_status *s)
{
	struct mvw_msg rep;
	int r = mvc_request(MV_MSG_STATUS, NULL, 0, -1, &rep, NULL);
	if (r == 0)
		*s = rep.u.status_rep;
	return r;
}

/* cmocka fixtures: one plain broker per test. */
static struct tbroker TB __attribute__((unused));

static inline int tb_fixture_start(void **state)
{
	(void)state;
	return tb_start(&TB, NULL);
}

static inline int tb_fixture_stop(void **state)
{
	(void)state;
	tb_stop(&TB);
	return 0;
}

/* One descriptor over a Unix socket, with a one-byte message. */
static inline int tb_send_fd(int sock, int fd)
{
	char c = 'F';
	return mvu_send_fds(sock, &c, 1, &fd, 1, 0) == 1 ? 0 : -1;
}

static inline int tb_recv_fd(int sock)
{
	char c;
	int fd = -1;
	unsigned n = 1;
	return mvu_recv_fds(sock, &c, 1, &fd, &n, 0) == 1 && n == 1 ? fd : -1;
}
