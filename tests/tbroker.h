/* SPDX-License-Identifier: MIT */
/* A private broker for a test or a benchmark: memvisord --foreground in a fresh runtime directory,
 * gone with its starter. Public headers only, so benchmarks can use it too. */
#pragma once
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct tbroker {
	pid_t pid;
	char dir[128];
};

/* Starts memvisord --foreground in a fresh runtime directory and returns once it listens. */
static inline int tb_start_in(struct tbroker *b, const char *dir, const char *const *extra)
{
	const char *bin = getenv("MEMVISOR_BROKER");
	char fdbuf[16];
	const char *argv[32];
	int n = 0, p[2];
	char c;

	if (!bin)
		return -ENOENT;
	/* The tests check what the broker answers, not how soon: on a loaded machine (or under a
	 * sanitizer) it may answer later than the library's 50 ms bound. A test of the bound itself sets
	 * it first. */
	setenv("MEMVISOR_TIMEOUT_MS", "2000", 0);
	snprintf(b->dir, sizeof(b->dir), "%s", dir);
	setenv("MEMVISOR_RUNTIME_DIR", b->dir, 1);
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	snprintf(fdbuf, sizeof(fdbuf), "%d", p[1]);
	argv[n++] = "memvisord";
	argv[n++] = "--foreground";
	argv[n++] = "--no-psi";
	/* The drop-at-once semantics of the kernel driver, unless a test wants the compressed tier. */
	if (!getenv("MEMVISOR_TEST_COMPRESS"))
		argv[n++] = "--no-compress";
	argv[n++] = "--runtime-dir";
	argv[n++] = b->dir;
	argv[n++] = "--ready-fd";
	argv[n++] = fdbuf;
	for (; extra && *extra && n < 30; extra++)
		argv[n++] = *extra;
	argv[n] = NULL;
	b->pid = fork();
	if (b->pid < 0)
		return -errno;
	if (b->pid == 0) {
		/* A test that dies must not leave its broker behind (holding ctest's output pipe). */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		fcntl(p[1], F_SETFD, 0);
		/* a broker with few descriptors, for the tests of its limits (it raises soft to hard) */
		const char *nofile = getenv("MEMVISOR_TEST_NOFILE");
		if (nofile) {
			struct rlimit rl = { (rlim_t)atol(nofile), (rlim_t)atol(nofile) };
			setrlimit(RLIMIT_NOFILE, &rl);
		}
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	ssize_t r = read(p[0], &c, 1);
	close(p[0]);
	return r == 1 ? 0 : -ECHILD;
}

static inline int tb_start(struct tbroker *b, const char *const *extra)
{
	char tmpl[] = "/tmp/mvtest-XXXXXX";
	if (!mkdtemp(tmpl))
		return -errno;
	return tb_start_in(b, tmpl, extra);
}

static inline void tb_kill(struct tbroker *b, int sig)
{
	if (b->pid > 0) {
		kill(b->pid, sig);
		waitpid(b->pid, NULL, 0);
		b->pid = 0;
	}
}

static inline void tb_stop(struct tbroker *b)
{
	char path[200];
	tb_kill(b, SIGTERM);
	snprintf(path, sizeof(path), "%s/broker.lock", b->dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/broker.sock", b->dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/xenstored.sock", b->dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/xen.state", b->dir);
	unlink(path);
	rmdir(b->dir);
}

/* Polls a condition the broker reaches asynchronously (inotify), up to a generous deadline. */
#define WAIT_FOR(cond, seconds)                                                                                        \
	({                                                                                                             \
		struct timespec _t0, _t;                                                                               \
		bool _ok = false;                                                                                      \
		clock_gettime(CLOCK_MONOTONIC, &_t0);                                                                  \
		for (;;) {                                                                                             \
			if (cond) {                                                                                    \
				_ok = true;                                                                            \
				break;                                                                                 \
			}                                                                                              \
			clock_gettime(CLOCK_MONOTONIC, &_t);                                                           \
			if (_t.tv_sec - _t0.tv_sec > (seconds))                                                        \
				break;                                                                                 \
			usleep(2000);                                                                                  \
		}                                                                                                      \
		_ok;                                                                                                   \
	})
