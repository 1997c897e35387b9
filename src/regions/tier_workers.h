/* SPDX-License-Identifier: MIT */
/* Threads that compress runs of reclaimed pages into the compressed tier's store and punch them from
 * their region, so that the broker's event loop keeps answering while a large reclaim runs. The loop
 * claims each run (COMPRESSING) before it hands it over and moves its pages on when it comes back: the
 * threads never touch a control block, a registry record or the broker's indexes, only the job, its own
 * descriptor of the data file and the store (which locks for itself). Internal to memvisord. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "common/util.h"
#include "memvisor/pool.h"

struct mvb_tier_job {
	struct mvb_tier_job *next;
	uint64_t region_id;
	int fd;        /* the job's own descriptor of the data file; the job closes it */
	uint64_t size; /* the data file's size */
	uint64_t start, n, stamp;
	int punch_err;      /* 0, or -errno: the run could not be freed */
	uint64_t handles[]; /* per page: its store handle, 0 if the store refused it */
};

/* The most pages one job carries: a pinner that meets a page of a job waits for that job alone. */
#define MVB_TIER_JOB_PAGES 256u

struct mvb_tier_workers;

/* Does a job where it stands (the threads run this too): reads the run into buf (room for
 * MVB_TIER_JOB_PAGES pages), stores each page, punches the run, closes the job's descriptor. */
MV_HIDDEN void mvb_tier_job_run(mv_store *store, struct mvb_tier_job *j, unsigned char *buf);

/* Starts nthreads threads (at least one) that store into store; efd (an eventfd) is signalled whenever
 * a job is done. */
MV_HIDDEN int mvb_tier_workers_new(mv_store *store, unsigned nthreads, int efd, struct mvb_tier_workers **out);
MV_HIDDEN void mvb_tier_workers_submit(struct mvb_tier_workers *w, struct mvb_tier_job *j);
/* The jobs done so far (a list through next), or NULL; with wait, blocks until there is one. */
MV_HIDDEN struct mvb_tier_job *mvb_tier_workers_done(struct mvb_tier_workers *w, bool wait);
/* Stops the threads once the queued jobs are done; jobs nobody took back are freed, their pages
 * dropped from the store. */
MV_HIDDEN void mvb_tier_workers_free(struct mvb_tier_workers *w);
