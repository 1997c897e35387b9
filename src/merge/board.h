/* SPDX-License-Identifier: MIT */
/* The statistics board a merge context publishes for `memvisor merge`: one small file per context in
 * $runtime/merge/, mapped shared and rewritten under a sequence counter. Readers trust nothing in it
 * beyond its size and magic, and check that the process is still the one that wrote it. */
#ifndef MV_MERGE_BOARD_H
#define MV_MERGE_BOARD_H

#include <stddef.h>
#include <stdint.h>

#include "memvisor/merge.h"

#define MV_BOARD_MAGIC 0x6d764d42u /* "mvMB" */
#define MV_BOARD_VERSION 1

struct mvm_merge_board {
	uint32_t magic;
	uint32_t version;
	uint32_t seq; /* odd while being rewritten */
	uint32_t pid;
	uint64_t starttime; /* /proc/PID/stat field 22: tells a live writer from a reused pid */
	uint64_t updated_realtime_ns;
	char partition[64];
	struct mv_merge_knobs knobs;
	uint32_t scanner_running;
	uint32_t pad;
	struct mv_merge_stats stats;
};

/* A board file's bytes, checked: 0 and a copy with a terminated partition name, or -EPROTO for a torn
 * (odd sequence), foreign or malformed one. */
int mvm_board_decode(const void *buf, size_t len, struct mvm_merge_board *out) __attribute__((visibility("hidden")));

/* Removes the boards in dir whose processes are gone (killed ones never remove their own). */
void mvm_board_sweep(const char *dir) __attribute__((visibility("hidden")));

/* /proc/PID/stat start time of pid, 0 if it is gone. */
uint64_t mvm_proc_starttime(int pid) __attribute__((visibility("hidden")));

#endif
