/* SPDX-License-Identifier: MIT */
/* The shared control block of a region.
 *
 * A region is two memfds: the data file, exactly the region's size (what is handed around: fork,
 * SCM_RIGHTS), and the control file laid out as
 *     [ ctl header page | one 64-bit word per data page ]
 * which no one reaches through the data file. The creator hands the control file to the broker, and a
 * process that adopts a data file gets it from the broker (or from a region it holds already). Both are
 * sealed against shrinking and growing. Holders pin and unpin by updating the words with
 * atomics under a robust process-shared mutex that only holders take; the broker never takes that
 * mutex (a client could hold it forever) and instead claims pages with compare-and-swap.
 *
 * Page word: bits 0..7 state, bits 8..63 an unpin stamp (CLOCK_MONOTONIC in 16 ns units, made unique
 * per region). An unpinned range of the kernel driver is a maximal run of contiguous non-pinned pages
 * with the same stamp; the stamp also orders ranges for least-recently-unpinned purging across regions.
 *
 * Everything in here is shared with other processes and therefore untrusted by the broker.
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/util.h"

#define MV_CTL_MAGIC 0x4e4f494745525f56ull /* "V_REGION" */
#define MV_CTL_VERSION 2u
#define MV_NAME_LEN 256u
#define MV_REGION_MAX_SIZE (1ull << 44)

enum mvr_pg_state {
	MV_PG_PINNED = 0,
	MV_PG_UNPINNED = 1,    /* unpinned, contents resident, purge candidate */
	MV_PG_PURGED = 2,      /* unpinned, its range carries the purged mark */
	MV_PG_PURGING = 3,     /* claimed by the broker, hole punch in flight */
	MV_PG_COMPRESSING = 4, /* claimed by the broker: being compressed away or restored */
	MV_PG_COMPRESSED = 5,  /* unpinned; the data lives only in the broker's compressed store */
};

#define MV_PG_STATE(w) ((unsigned)((w)&0xffu))
#define MV_PG_STAMP(w) ((w) >> 8)
#define MV_PG_MAKE(st, stamp) (((uint64_t)(stamp) << 8) | (uint64_t)(st))
#define MV_STAMP_MASK ((1ull << 56) - 1)

/* Header flags */
#define MV_CTL_F_UNPURGEABLE 0x1u /* write-sealed: the kernel refuses to punch holes */
#define MV_CTL_F_NO_COMPRESS 0x2u /* the region opted out of the compressed tier: drop at once */

struct mvr_ctl_hdr {
	uint64_t magic;
	uint32_t version;
	uint32_t hdr_size;
	uint64_t size;   /* bytes asked for, unrounded */
	uint64_t npages; /* data pages */
	_Atomic uint32_t prot;
	_Atomic uint32_t broker_holds; /* the broker keeps an fd and watches this region */
	_Atomic uint32_t purge_seq;    /* futex: bumped when a purge batch completes */
	_Atomic int32_t purger_pid;    /* broker with claims outstanding here, or 0 */
	_Atomic uint64_t last_stamp;
	_Atomic uint64_t purge_events;
	_Atomic uint64_t purged_pages_total;
	_Atomic uint32_t flags;
	uint32_t name_len;
	uint64_t data_dev, data_ino; /* the data file this block belongs to */
	char name[MV_NAME_LEN];
	pthread_mutex_t lock __attribute__((aligned(64)));
};

_Static_assert(sizeof(struct mvr_ctl_hdr) <= MV_PAGE_SIZE, "ctl header fits a page");

/* The length of the control file of a region of npages data pages. */
static inline uint64_t mvr_ctl_length(uint64_t npages)
{
	return MV_PAGE_SIZE + mvu_round_up(npages * sizeof(uint64_t), MV_PAGE_SIZE);
}

/* Data pages of a data file of size bytes; -EINVAL for sizes no region has. */
MV_HIDDEN int mvr_npages_of_size(uint64_t size, uint64_t *npages);

/* A process's view of one region's control block. */
struct mvr_ctl_view {
	struct mvr_ctl_hdr *hdr;
	_Atomic uint64_t *pages;
	uint64_t npages;
	int data_fd; /* for finishing a purge whose broker died */
};

static inline void mvr_ctl_view_init(struct mvr_ctl_view *v, void *ctl, uint64_t npages, int data_fd)
{
	v->hdr = ctl;
	v->pages = (_Atomic uint64_t *)((char *)ctl + MV_PAGE_SIZE);
	v->npages = npages;
	v->data_fd = data_fd;
}

/* Creator side: fill a zeroed control block for the data file (dev, ino). */
MV_HIDDEN int mvr_ctl_format(void *ctl, uint64_t size, const char *name, uint64_t dev, uint64_t ino);

/* Ashmem's range rules: page aligned, len 0 = to the end, no overflow, within PAGE_ALIGN(size).
 * Gives inclusive page bounds. */
MV_HIDDEN int mvr_ctl_range(uint64_t size, uint64_t off, uint64_t len, uint64_t *pg0, uint64_t *pg1);

/* Holder operations. pin returns MV_NOT_PURGED/MV_WAS_PURGED, unpin 0, status MV_IS_*; or -errno.
 * *unpinned_delta receives the change in resident unpinned pages, for the broker's budget hint.
 * Pinning pages whose data sits compressed in the broker calls restore(ctx, first, last), without the
 * holder lock, to get them back into the region; the broker hands restored pages back pinned. Pages it
 * could not restore count as purged. */
typedef int (*mvr_ctl_restore_fn)(void *ctx, uint64_t pg0, uint64_t pg1);
MV_HIDDEN int mvr_ctl_pin(struct mvr_ctl_view *v, uint64_t pg0, uint64_t pg1, int64_t *unpinned_delta,
			  mvr_ctl_restore_fn restore, void *ctx);
MV_HIDDEN int mvr_ctl_unpin(struct mvr_ctl_view *v, uint64_t pg0, uint64_t pg1, int64_t *unpinned_delta);
MV_HIDDEN int mvr_ctl_status(struct mvr_ctl_view *v, uint64_t pg0, uint64_t pg1);

struct mvr_ctl_counts {
	uint64_t pinned, unpinned, purged, purging, compressed, other;
};
MV_HIDDEN void mvr_ctl_count(const struct mvr_ctl_view *v, struct mvr_ctl_counts *c);

/* Broker side. None of these trust the contents; none take the holder lock. */
MV_HIDDEN int mvr_ctl_validate(const struct mvr_ctl_hdr *hdr, uint64_t npages);
/* Checks that ctl_fd is the sealed control file of the data file data_fd (not trusted either) and reads
 * its header into *hdr. -EINVAL if not. */
MV_HIDDEN int mvr_ctl_check_files(int data_fd, int ctl_fd, uint64_t *npages, struct mvr_ctl_hdr *hdr);

typedef int (*mvr_ctl_run_fn)(void *opaque, uint64_t start, uint64_t len, uint64_t stamp);
/* Calls fn for every run of purge candidates (same stamp, contiguous, UNPINNED). Stops if fn < 0. */
MV_HIDDEN int mvr_ctl_for_each_run(const struct mvr_ctl_view *v, mvr_ctl_run_fn fn, void *opaque);

/* Claims pages [start, start+len) that still are UNPINNED with stamp; stops at the first that is not.
 * Returns how many leading pages were claimed. */
MV_HIDDEN uint64_t mvr_ctl_claim(struct mvr_ctl_view *v, uint64_t start, uint64_t len, uint64_t stamp);
/* Same, into COMPRESSING instead of PURGING. */
MV_HIDDEN uint64_t mvr_ctl_claim_compress(struct mvr_ctl_view *v, uint64_t start, uint64_t len, uint64_t stamp);
/* One page from one exact word to a new state (same stamp); false if the word changed. */
MV_HIDDEN bool mvr_ctl_move(struct mvr_ctl_view *v, uint64_t page, uint64_t expect, unsigned new_state);
/* Wakes pinners waiting for claimed pages; once per batch of moves out of a claimed state. */
MV_HIDDEN void mvr_ctl_wake(struct mvr_ctl_view *v);
/* Ends a claim: purged (hole punched) or handed back unpurged. Wakes waiting pinners. */
MV_HIDDEN void mvr_ctl_complete(struct mvr_ctl_view *v, uint64_t start, uint64_t n, uint64_t stamp, bool purged);
/* After a broker died mid-purge: punch and mark every PURGING page. Caller makes sure no live
 * purger owns them. Returns pages finished. */
MV_HIDDEN uint64_t mvr_ctl_finish_orphans(struct mvr_ctl_view *v);

MV_HIDDEN int mvr_punch(int fd, uint64_t pg, uint64_t n);
