/* SPDX-License-Identifier: MIT */
/* The broker's view of regions: which exist, which it holds, and purging. Internal to memvisord.
 *
 * The broker keeps no fd and no mapping for a region whose pages are all pinned: an inotify watch on the
 * data file (no fd) tells it when the inode dies (IN_IGNORED), and the identity of its control file lets
 * it find that file in a holder's descriptor table for a process that adopts the region. It "holds" a
 * region, with its own reopened data file and a mapping of the control block, only while the region has
 * purge candidates. While holding, it
 * counts the other open files of the inode from IN_OPEN/IN_CLOSE events and lets go when they are all
 * closed, so the broker never keeps a dead region alive. Counting errs only towards letting go early,
 * which costs purging opportunities until the next unpin hands the region back, never memory.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ctl.h"
#include "memvisor/pool.h"

struct mvb_region {
	uint64_t id;
	uint64_t ino;
	uint64_t dev;
	uint64_t npages;
	uint64_t size;
	struct mvr_ctl_hdr *ctl;   /* mapped only while held */
	uint64_t ctl_dev, ctl_ino; /* the control file's identity */
	int ctl_keep_fd;           /* the control file, for holders who come after every other one left */
	int wd;
	int hold_fd; /* -1 unless held */
	int32_t ext_files;
	uint16_t own_opens, own_closes;
	uint16_t flags;
	uint16_t idle_sweeps;
	uint8_t release_streak;              /* held again soon after each of the last releases: wait longer */
	uint8_t jobs;                        /* jobs of it with the tier's threads: at most the window, 8 */
	uint64_t released_at;                /* g->sweeps when last let go */
	uint32_t snap_unpinned, snap_purged; /* as of the last look, for unheld regions */
	uint64_t purged_total;
	uint64_t *zh;    /* page -> compressed store handle; allocated on first compression */
	uint32_t zcount; /* pages held compressed */
	uint32_t restores;
	struct mvb_region *next_by_wd, *next_by_id, *next_by_ino;
	struct mvb_region *prev, *next;
	char name[]; /* NUL-terminated, sanitized */
};

#define MVB_F_UNPURGEABLE 0x1

struct mvb_registry {
	int inotify_fd;
	uint64_t next_id;
	uint64_t count, held;
	struct mvb_region *all;
	struct mvb_region **by_wd, **by_id, **by_ino;
	size_t nbuckets;
	uint64_t overflows;
	uint64_t purged_pages_total, purge_runs;
	uint64_t sweeps, holds_total;
	uint64_t ctl_kept, ctl_keep_max; /* control files kept: within an eighth of the descriptor limit */
	uint64_t heap_bytes;
	/* The compressed tier: unpinned pages kept compressed before they are dropped. */
	mv_store *store;
	bool compress;
	uint64_t store_budget; /* bytes */
	uint64_t compressed_pages, compressions, restores, evictions, incompressible;
	struct zrev *rev; /* store handle -> (region, page) */
	size_t rev_cap, rev_len, rev_dead;
	/* The tier's reclaim runs on threads of its own (tier_workers.h): runs wait in tq, in LRU order,
	 * and are claimed a job at a time, at most tier_window jobs ahead of the threads. */
	struct mvb_tier_workers *workers;
	int tier_efd;          /* readable when a job is done */
	unsigned tier_threads; /* 0: compress on the loop */
	unsigned tier_window;
	struct tier_run *tq;
	size_t tq_n, tq_cap, tq_i;
	uint64_t tq_off; /* pages of tq[tq_i] handed out */
	uint32_t inflight;
	uint64_t tier_jobs_done;
	uint64_t reclaimed_pages; /* freed from regions by every purge and reclaim, ever */
};

struct mvb_totals {
	uint64_t pages, pinned, unpinned, purged, compressed;
	uint64_t candidates; /* unpinned pages of held regions: what mvb_unpinned_pages counts */
};

MV_HIDDEN int mvb_registry_init(struct mvb_registry *g);
MV_HIDDEN void mvb_registry_fini(struct mvb_registry *g);

/* Takes a region's data and control files from a client (not consumed). Sets *out to the record.
 * *created tells whether it was new to the broker. -EINVAL for anything that is not a well-formed
 * memvisor region. The first control file the broker accepts for a data file is the region's. */
/* A descriptor of the region's control file, or -ENOENT if the broker keeps none of it. */
MV_HIDDEN int mvb_region_ctl_dup(const struct mvb_region *r);
MV_HIDDEN int mvb_attach(struct mvb_registry *g, int fd, int ctl_fd, struct mvb_region **out, bool *created);
/* The record of the region whose data file is fd, or NULL. */
MV_HIDDEN struct mvb_region *mvb_find_file(struct mvb_registry *g, int fd);
/* 1 if fd is the control file of r. */
MV_HIDDEN bool mvb_is_ctl_of(const struct mvb_region *r, int fd);

MV_HIDDEN struct mvb_region *mvb_find(struct mvb_registry *g, uint64_t id);

/* Drains inotify events. */
MV_HIDDEN void mvb_handle_inotify(struct mvb_registry *g);

/* Periodic upkeep: lets go of regions idle for two sweeps, drops unwanted compressed copies; then
 * counts like mvb_totals. */
MV_HIDDEN void mvb_sweep(struct mvb_registry *g, struct mvb_totals *t);
/* Page totals over every region, without side effects. */
MV_HIDDEN void mvb_totals(struct mvb_registry *g, struct mvb_totals *t);

/* Exact resident unpinned pages over held regions. */
MV_HIDDEN uint64_t mvb_unpinned_pages(struct mvb_registry *g);

/* Purges whole unpinned ranges, least recently unpinned first across every region, until at least
 * target pages are gone (UINT64_MAX: all). With second_chance the compressed tier keeps what it can
 * (reclaim for pressure or budget); without it (an explicit purge) the pages are dropped. Returns pages
 * purged; *runs counts ranges. */
MV_HIDDEN uint64_t mvb_purge(struct mvb_registry *g, uint64_t target, bool second_chance, uint64_t *runs);
/* Drops every page the compressed tier keeps: they become purged. Returns how many. */
MV_HIDDEN uint64_t mvb_tier_drop_all(struct mvb_registry *g);

/* Sets up the compressed tier (store budget in bytes), compressing on threads threads (0: on the
 * caller's). */
MV_HIDDEN int mvb_tier_init(struct mvb_registry *g, bool enabled, uint64_t budget, unsigned threads);
/* Whether a reclaim into the tier is still under way (mvb_purge with second_chance then does
 * nothing: the reclaim under way already takes what it found). */
MV_HIDDEN bool mvb_tier_busy(const struct mvb_registry *g);
/* When g->tier_efd is readable: takes back the jobs done and hands out more. */
MV_HIDDEN void mvb_tier_poll(struct mvb_registry *g);
/* Gives up the runs not yet handed out and waits for the jobs under way. */
MV_HIDDEN void mvb_tier_settle(struct mvb_registry *g);
/* Puts compressed pages of the region behind fd back; counts what came back and what was lost. */
MV_HIDDEN int mvb_restore(struct mvb_registry *g, int fd, uint64_t pg0, uint64_t pg1, uint64_t *restored,
			  uint64_t *lost);
/* Evicts least recently stored compressed pages until the store holds at most target bytes. */
MV_HIDDEN void mvb_store_shrink(struct mvb_registry *g, uint64_t target);
MV_HIDDEN uint64_t mvb_store_bytes(struct mvb_registry *g);

/* Counts for one region (held: live; unheld: last look). */
MV_HIDDEN void mvb_region_counts(struct mvb_region *r, struct mvr_ctl_counts *c);
