/* SPDX-License-Identifier: MIT */
/* Small helpers shared by the library, the broker and the tools. Internal. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "memvisor/memvisor.h" /* MV_PAGE_SIZE, the one page size */

#define MV_PAGE_SHIFT 12u

#define MV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MV_HIDDEN __attribute__((visibility("hidden")))
/* The one export macro: everything else is hidden (-fvisibility=hidden), and the version scripts say
 * which node an exported name belongs to. The public API (include/memvisor) and the ABIs we stand in for
 * (libcutils, libxenevtchn, libxengnttab, libc's calls in the preload) are MV_EXPORT. */
#define MV_EXPORT __attribute__((visibility("default")))
/* Internal, but exported by libmemvisor.so.0 under the MEMVISOR_PRIVATE node for the thin
 * compatibility layers (the preload, the Xen libraries), which link the engine instead of copying it.
 * No compatibility promise: the layers are built and installed with the library. */
#define MV_PRIVATE MV_EXPORT

static inline uint64_t mvu_round_up(uint64_t v, uint64_t to)
{
	return (v + to - 1) / to * to;
}

static inline uint64_t mvu_now_ns(void)
{
	struct timespec ts;

	/* vDSO on every Linux architecture we care about: no syscall. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* sendmsg/recvmsg with SCM_RIGHTS; up to MV_MAX_FDS descriptors. */
#define MV_MAX_FDS 4
MV_HIDDEN ssize_t mvu_send_fds(int sock, const void *buf, size_t len, const int *fds, unsigned nfds, int flags);
/* Received descriptors are O_CLOEXEC. *nfds is in: capacity, out: received.
 * MSG_TRUNC / MSG_CTRUNC are reported as -EMSGSIZE after closing any fds. */
MV_HIDDEN ssize_t mvu_recv_fds(int sock, void *buf, size_t len, int *fds, unsigned *nfds, int flags);

MV_HIDDEN void mvu_close_fds(int *fds, unsigned nfds);

/* Resolve the runtime directory: $MEMVISOR_RUNTIME_DIR, $XDG_RUNTIME_DIR/memvisor, /tmp/memvisor-UID, or
 * $HOME/.memvisor-runtime when someone else took that name in /tmp.
 * Creates it (mode 0700) when create is set and checks that it belongs to us and is private. */
MV_HIDDEN int mvu_runtime_dir(char *buf, size_t len, int create);
/* Only the name mvu_runtime_dir would resolve, without creating or checking it (one lstat at most). */
MV_HIDDEN int mvu_runtime_dir_name(char *buf, size_t len);
MV_HIDDEN int mvu_runtime_path(char *buf, size_t len, const char *leaf, int create);

/* What /proc/PID/stat says of a process: its state letter, parent and start time (clock ticks since
 * boot, which with the pid names the process across pid reuse). */
struct mvu_proc_stat {
	char state;
	int ppid;
	uint64_t starttime;
};
/* 0, or -errno when the process is gone or its stat is unreadable. */
MV_HIDDEN int mvu_proc_stat(int pid, struct mvu_proc_stat *out);

/* Field of /proc/meminfo in bytes, or -errno. */
MV_HIDDEN int64_t mvu_meminfo(const char *field);

/* Parse "123", "64K", "16M", "2G" into bytes; -EINVAL on junk or overflow. */
MV_HIDDEN int mvu_parse_size(const char *s, uint64_t *out);
