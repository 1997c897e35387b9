/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "tier_workers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ctl.h"

struct mvb_tier_workers {
	mv_store *store;
	int efd;
	pthread_mutex_t lock;
	pthread_cond_t work, done_cv;
	struct mvb_tier_job *queue, **tail, *done;
	bool stop;
	unsigned nthreads;
	pthread_t threads[];
};

/* The pages of a job as they are in the data file, read into buf. */
static size_t read_run(const struct mvb_tier_job *j, unsigned char *buf)
{
	size_t bytes = (size_t)j->n * MV_PAGE_SIZE;
	off_t off = (off_t)(j->start * MV_PAGE_SIZE);
	ssize_t got = 0;

	/* One read for the run: a read per page cost as much as a fifth of the compression. */
	while ((size_t)got < bytes) {
		ssize_t k = pread(j->fd, buf + got, bytes - (size_t)got, off + got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		got += k;
	}
	/* The data file ends inside its last page: the rest of that page reads as zeros. After a failed
	 * read, the pages it did not fill are not kept. */
	if ((uint64_t)off + (uint64_t)got >= j->size) {
		memset(buf + got, 0, bytes - (size_t)got);
		return bytes;
	}
	return (size_t)got;
}

void mvb_tier_job_run(mv_store *store, struct mvb_tier_job *j, unsigned char *buf)
{
	size_t bytes = (size_t)j->n * MV_PAGE_SIZE, valid = bytes;
	/* Compressed where it lies: the copy a read makes cost about a sixth of a job. The file's size
	 * is sealed (the broker holds no region otherwise), so the mapping cannot fault past its end;
	 * the last page's bytes past the end read as zeros. */
	unsigned char *src =
		mmap(NULL, bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, j->fd, (off_t)(j->start * MV_PAGE_SIZE));
	if (src == MAP_FAILED) {
		src = buf;
		valid = read_run(j, buf);
	}
	uint64_t whole = valid / MV_PAGE_SIZE < j->n ? valid / MV_PAGE_SIZE : j->n;
	if (mv_store_put_many(store, src, whole, j->handles) < 0)
		whole = 0;
	for (uint64_t i = whole; i < j->n; i++)
		j->handles[i] = 0;
	if (src != buf)
		munmap(src, bytes);
	j->punch_err = mvr_punch(j->fd, j->start, j->n);
	close(j->fd);
	j->fd = -1;
}

/* The scheduling attributes sched_setattr(2) takes; glibc before 2.41 declares neither the call nor this. */
struct sched_attr_v1 {
	uint32_t size, sched_policy;
	uint64_t sched_flags;
	int32_t sched_nice;
	uint32_t sched_priority;
	uint64_t sched_runtime, sched_deadline, sched_period;
	uint32_t sched_util_min, sched_util_max;
};

/* A compressing thread asks for long time slices (Linux 6.12 and later; earlier kernels ignore it). Its
 * share of the CPU is unchanged, but a task that wakes with the usual, shorter slice now preempts it at
 * once instead of waiting for its slice to end: the loop that answers requests, and the clients that
 * wait for the answers. With the default slices both waited up to 3.5 ms for a core during a 1 GiB
 * reclaim (scheduler traces); in 8 alternating runs each, the longest status wait had a median of
 * 4.5 ms with long slices against 5.3 ms without. Policy and nice value stay as the broker has them. */
static void prefer_long_slices(void)
{
#if defined(SYS_sched_getattr) && defined(SYS_sched_setattr)
	struct sched_attr_v1 a = { 0 };

	if (syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0) < 0 || a.size < sizeof(a))
		return;
	if (a.sched_policy != SCHED_OTHER && a.sched_policy != SCHED_BATCH)
		return; /* real-time or idle, as the administrator set it */
	a.size = sizeof(a);
	a.sched_flags = 0;
	a.sched_runtime = 20 * 1000 * 1000; /* ns: a slice; the kernel allows 0.1 to 100 ms */
	(void)syscall(SYS_sched_setattr, 0, &a, 0);
#endif
}

static void *worker(void *arg)
{
	struct mvb_tier_workers *w = arg;
	unsigned char *buf = malloc((size_t)MVB_TIER_JOB_PAGES * MV_PAGE_SIZE);
	uint64_t one = 1;

	prefer_long_slices();

	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (!w->queue && !w->stop)
			pthread_cond_wait(&w->work, &w->lock);
		struct mvb_tier_job *j = w->queue;
		if (!j)
			break;
		w->queue = j->next;
		if (!w->queue)
			w->tail = &w->queue;
		pthread_mutex_unlock(&w->lock);
		if (buf) {
			mvb_tier_job_run(w->store, j, buf);
		} else {
			/* No buffer: nothing is kept, the pages are only freed. */
			memset(j->handles, 0, j->n * sizeof(*j->handles));
			j->punch_err = mvr_punch(j->fd, j->start, j->n);
			close(j->fd);
			j->fd = -1;
		}
		pthread_mutex_lock(&w->lock);
		j->next = w->done;
		w->done = j;
		pthread_cond_broadcast(&w->done_cv);
		/* Written under the lock, so that the loop never reads the signal before the job it is for. */
		if (write(w->efd, &one, sizeof(one)) < 0) {
			/* the counter is full: the loop has a wakeup pending already */
		}
	}
	pthread_mutex_unlock(&w->lock);
	free(buf);
	return NULL;
}

int mvb_tier_workers_new(mv_store *store, unsigned nthreads, int efd, struct mvb_tier_workers **out)
{
	struct mvb_tier_workers *w;

	*out = NULL;
	if (!nthreads)
		nthreads = 1;
	w = calloc(1, sizeof(*w) + nthreads * sizeof(pthread_t));
	if (!w)
		return -ENOMEM;
	w->store = store;
	w->efd = efd;
	w->tail = &w->queue;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->work, NULL);
	pthread_cond_init(&w->done_cv, NULL);
	for (unsigned i = 0; i < nthreads; i++) {
		int e = pthread_create(&w->threads[i], NULL, worker, w);
		if (e) {
			if (i == 0) {
				pthread_cond_destroy(&w->work);
				pthread_cond_destroy(&w->done_cv);
				pthread_mutex_destroy(&w->lock);
				free(w);
				return -e;
			}
			break; /* fewer threads than asked still work */
		}
		w->nthreads++;
	}
	*out = w;
	return 0;
}

void mvb_tier_workers_submit(struct mvb_tier_workers *w, struct mvb_tier_job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&w->lock);
	*w->tail = j;
	w->tail = &j->next;
	pthread_cond_signal(&w->work);
	pthread_mutex_unlock(&w->lock);
}

struct mvb_tier_job *mvb_tier_workers_done(struct mvb_tier_workers *w, bool wait)
{
	pthread_mutex_lock(&w->lock);
	while (wait && !w->done)
		pthread_cond_wait(&w->done_cv, &w->lock);
	struct mvb_tier_job *d = w->done;
	w->done = NULL;
	pthread_mutex_unlock(&w->lock);
	return d;
}

void mvb_tier_workers_free(struct mvb_tier_workers *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stop = true;
	pthread_cond_broadcast(&w->work);
	pthread_mutex_unlock(&w->lock);
	for (unsigned i = 0; i < w->nthreads; i++)
		pthread_join(w->threads[i], NULL);
	for (struct mvb_tier_job *j = w->done, *next; j; j = next) {
		next = j->next;
		for (uint64_t i = 0; i < j->n; i++)
			if (j->handles[i])
				mv_store_drop(w->store, j->handles[i]);
		free(j);
	}
	pthread_cond_destroy(&w->work);
	pthread_cond_destroy(&w->done_cv);
	pthread_mutex_destroy(&w->lock);
	free(w);
}
