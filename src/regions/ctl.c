/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "ctl.h"

#include "common/sys.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "memvisor/memvisor.h"

int mvr_npages_of_size(uint64_t size, uint64_t *npages)
{
	if (!size || size > MV_REGION_MAX_SIZE)
		return -EINVAL;
	*npages = mvu_round_up(size, MV_PAGE_SIZE) / MV_PAGE_SIZE;
	return 0;
}

static bool sealed_size(int fd)
{
	int seals = fcntl(fd, F_GET_SEALS);
	return seals >= 0 && (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) == (F_SEAL_SHRINK | F_SEAL_GROW);
}

int mvr_ctl_check_files(int data_fd, int ctl_fd, uint64_t *npages, struct mvr_ctl_hdr *hdr)
{
	struct stat ds, cs;

	if (fstat(data_fd, &ds) < 0 || fstat(ctl_fd, &cs) < 0)
		return -EBADF;
	if (!S_ISREG(ds.st_mode) || !S_ISREG(cs.st_mode) || mvr_npages_of_size((uint64_t)ds.st_size, npages) < 0)
		return -EINVAL;
	/* Sealed sizes: neither file can shrink under a mapping (no SIGBUS) or grow past what we check. */
	if ((uint64_t)cs.st_size != mvr_ctl_length(*npages) || !sealed_size(data_fd) || !sealed_size(ctl_fd))
		return -EINVAL;
	if (pread(ctl_fd, hdr, sizeof(*hdr), 0) != (ssize_t)sizeof(*hdr) || mvr_ctl_validate(hdr, *npages) < 0)
		return -EINVAL;
	if (hdr->size != (uint64_t)ds.st_size || hdr->data_dev != (uint64_t)ds.st_dev ||
	    hdr->data_ino != (uint64_t)ds.st_ino)
		return -EINVAL;
	return 0;
}

int mvr_ctl_format(void *ctl, uint64_t size, const char *name, uint64_t dev, uint64_t ino)
{
	struct mvr_ctl_hdr *h = ctl;
	pthread_mutexattr_t a;
	size_t nl;
	int r;

	if (!size || size > MV_REGION_MAX_SIZE)
		return -EINVAL;
	h->magic = MV_CTL_MAGIC;
	h->version = MV_CTL_VERSION;
	h->hdr_size = sizeof(*h);
	h->size = size;
	h->npages = mvu_round_up(size, MV_PAGE_SIZE) / MV_PAGE_SIZE;
	h->data_dev = dev;
	h->data_ino = ino;
	atomic_init(&h->prot, 7); /* PROT_READ | PROT_WRITE | PROT_EXEC */
	if (!name)
		name = "dev/ashmem";
	nl = strnlen(name, MV_NAME_LEN - 1);
	memcpy(h->name, name, nl);
	h->name[nl] = '\0';
	h->name_len = (uint32_t)nl;

	r = pthread_mutexattr_init(&a);
	if (!r)
		r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	if (!r)
		r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	if (!r)
		r = pthread_mutex_init(&h->lock, &a);
	pthread_mutexattr_destroy(&a);
	return -r;
}

int mvr_ctl_range(uint64_t size, uint64_t off, uint64_t len, uint64_t *pg0, uint64_t *pg1)
{
	uint64_t end = mvu_round_up(size, MV_PAGE_SIZE);

	if (!len) {
		if (off > end)
			return -EINVAL;
		len = end - off;
	}
	if ((off | len) & (MV_PAGE_SIZE - 1))
		return -EINVAL;
	if (UINT64_MAX - off < len || off + len > end || !len)
		return -EINVAL;
	*pg0 = off / MV_PAGE_SIZE;
	*pg1 = *pg0 + len / MV_PAGE_SIZE - 1;
	return 0;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#else
	__asm__ volatile("" ::: "memory");
#endif
}

static inline uint64_t ld(const struct mvr_ctl_view *v, uint64_t p)
{
	return atomic_load_explicit(&v->pages[p], memory_order_acquire);
}

static inline bool cas(struct mvr_ctl_view *v, uint64_t p, uint64_t *old, uint64_t new)
{
	return atomic_compare_exchange_strong_explicit(&v->pages[p], old, new, memory_order_acq_rel,
						       memory_order_acquire);
}

/* Non-pinned, i.e. part of some unpinned range. Unknown states are treated as pinned. */
static inline bool in_range(uint64_t w)
{
	unsigned s = MV_PG_STATE(w);
	return s == MV_PG_UNPINNED || s == MV_PG_PURGED || s == MV_PG_PURGING || s == MV_PG_COMPRESSING ||
	       s == MV_PG_COMPRESSED;
}

/* The broker owns the page for now: wait for it. */
static inline bool claimed(uint64_t w)
{
	return MV_PG_STATE(w) == MV_PG_PURGING || MV_PG_STATE(w) == MV_PG_COMPRESSING;
}

static int ctl_lock(struct mvr_ctl_view *v)
{
	int r = pthread_mutex_lock(&v->hdr->lock);

	if (r == EOWNERDEAD) {
		/* A holder died inside pin/unpin: every page word is individually valid, so the only
		 * damage is a half-applied range operation. */
		pthread_mutex_consistent(&v->hdr->lock);
		r = 0;
	}
	return -r;
}

static void ctl_unlock(struct mvr_ctl_view *v)
{
	pthread_mutex_unlock(&v->hdr->lock);
}

/* Unique within the region (the lock-free paths race each other for it), ordered by time across
 * regions. */
static uint64_t fresh_stamp(struct mvr_ctl_view *v)
{
	uint64_t now = (mvu_now_ns() >> 4) & MV_STAMP_MASK;
	uint64_t last = atomic_load_explicit(&v->hdr->last_stamp, memory_order_relaxed), s;

	do
		s = (now > (last & MV_STAMP_MASK) ? now : (last & MV_STAMP_MASK) + 1) & MV_STAMP_MASK;
	while (!atomic_compare_exchange_weak_explicit(&v->hdr->last_stamp, &last, s, memory_order_relaxed,
						      memory_order_relaxed));
	return s;
}

static bool purger_alive(pid_t pid)
{
	char path[64], comm[32] = "";
	FILE *f;

	if (pid <= 0)
		return false;
	if (kill(pid, 0) < 0 && errno == ESRCH)
		return false;
	/* Guard against pid reuse: the claimant is a memvisord. */
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return errno != ENOENT;
	if (!fgets(comm, sizeof(comm), f))
		comm[0] = '\0';
	fclose(f);
	return strncmp(comm, "memvisord", 9) == 0;
}

int mvr_punch(int fd, uint64_t pg, uint64_t n)
{
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(pg * MV_PAGE_SIZE),
		      (off_t)(n * MV_PAGE_SIZE)) < 0)
		return -errno;
	return 0;
}

uint64_t mvr_ctl_finish_orphans(struct mvr_ctl_view *v)
{
	uint64_t done = 0;

	for (uint64_t p = 0; p < v->npages; p++) {
		uint64_t w = ld(v, p);

		if (!claimed(w))
			continue;
		/* Punch even if the dead broker already did: idempotent, and a pin reporting
		 * WAS_PURGED must find zeros. If punching is refused the contents are intact. */
		bool punched = mvr_punch(v->data_fd, p, 1) == 0;
		uint64_t nw = MV_PG_MAKE(punched ? MV_PG_PURGED : MV_PG_UNPINNED, MV_PG_STAMP(w));
		if (cas(v, p, &w, nw)) {
			done++;
			if (punched)
				atomic_fetch_add(&v->hdr->purged_pages_total, 1);
		}
	}
	return done;
}

/* A page we need is being purged. Wait for the broker to finish the batch; if the broker died in the
 * middle, finish its work ourselves (by compare-and-swap, so holders finishing side by side agree). */
static int wait_purge(struct mvr_ctl_view *v, uint64_t p)
{
	for (unsigned spins = 0;; spins++) {
		uint32_t seq = atomic_load(&v->hdr->purge_seq);

		if (!claimed(ld(v, p)))
			return 0;
		if (spins < 64) {
			cpu_relax();
			continue;
		}
		pid_t pid = atomic_load(&v->hdr->purger_pid);
		if (!purger_alive(pid)) {
			if (v->data_fd < 0)
				return -EIO;
			mvr_ctl_finish_orphans(v);
			continue;
		}
		struct timespec ts = { .tv_sec = 0, .tv_nsec = 2 * 1000 * 1000 };
		mvu_sys_futex(&v->hdr->purge_seq, FUTEX_WAIT, seq, &ts);
	}
}

/* The same without holding the holder lock across the wait: the broker that owns the page may be stopped,
 * and every other holder of the region, in every process, would wait on it too. Only those that need
 * this very page wait. The lock is held again on return (0 or -errno from the wait). */
static int wait_purge_unlocked(struct mvr_ctl_view *v, uint64_t p)
{
	int r, r2;

	ctl_unlock(v);
	r = wait_purge(v, p);
	r2 = ctl_lock(v);
	return r < 0 ? r : r2;
}

/* One page whose neighbours are not both in its range: a single word changes, so no lock is needed.
 * The locked paths re-check every word they rely on, so they tolerate this running beside them.
 * Returns 1 if it could not decide alone. */
static int pin_one_fast(struct mvr_ctl_view *v, uint64_t p, int64_t *du)
{
	uint64_t w = ld(v, p);
	unsigned st = MV_PG_STATE(w);

	if (st == MV_PG_PINNED)
		return MV_NOT_PURGED;
	if (st != MV_PG_UNPINNED && st != MV_PG_PURGED)
		return -1;
	if (p > 0 && p + 1 < v->npages) {
		uint64_t l = ld(v, p - 1), r = ld(v, p + 1);
		if (in_range(l) && in_range(r) && MV_PG_STAMP(l) == MV_PG_STAMP(w) && MV_PG_STAMP(r) == MV_PG_STAMP(w))
			return -1; /* splits a range: the right piece needs a new LRU position */
	}
	if (!cas(v, p, &w, MV_PG_MAKE(MV_PG_PINNED, 0)))
		return -1;
	if (st == MV_PG_UNPINNED)
		*du = -1;
	return st == MV_PG_PURGED ? MV_WAS_PURGED : MV_NOT_PURGED;
}

/* Pins what it can of [pg0, pg1] under the holder lock. Pages whose data sits compressed in the broker
 * are left as they are (nobody but the broker may change them, and it only moves them out of that
 * state) and reported through *c0..*c1; with compressed_is_lost they are taken as purged instead. */
static int pin_pass(struct mvr_ctl_view *v, uint64_t pg0, uint64_t pg1, bool compressed_is_lost, int64_t *du,
		    uint64_t *c0, uint64_t *c1)
{
	int ret = MV_NOT_PURGED, r;
	bool split = false;
	uint64_t split_stamp = 0;

	*c0 = UINT64_MAX;
	*c1 = 0;
	r = ctl_lock(v);
	if (r < 0)
		return r;

	/* Pinning the middle of one range leaves two; the kernel puts the right piece at the LRU tail. */
	if (pg0 > 0 && pg1 + 1 < v->npages) {
		uint64_t l = ld(v, pg0 - 1), rr = ld(v, pg1 + 1);
		if (in_range(l) && in_range(rr) && MV_PG_STAMP(l) == MV_PG_STAMP(rr)) {
			split = true;
			split_stamp = MV_PG_STAMP(rr);
		}
	}

	for (uint64_t p = pg0; p <= pg1; p++) {
		for (;;) {
			uint64_t w = ld(v, p);
			unsigned st = MV_PG_STATE(w);

			if (st == MV_PG_PINNED)
				break;
			if (claimed(w)) {
				r = wait_purge_unlocked(v, p);
				if (r < 0)
					goto out;
				continue;
			}
			if (st == MV_PG_COMPRESSED && !compressed_is_lost) {
				if (*c0 == UINT64_MAX)
					*c0 = p;
				*c1 = p;
				break;
			}
			/* A compressed page the broker could not give back was punched when it was
			 * compressed: it reads as zeros, i.e. it was purged. */
			if (cas(v, p, &w, MV_PG_MAKE(MV_PG_PINNED, 0))) {
				if (st == MV_PG_PURGED || st == MV_PG_COMPRESSED)
					ret = MV_WAS_PURGED;
				else if (st == MV_PG_UNPINNED)
					(*du)--;
				break;
			}
		}
	}

	if (split) {
		uint64_t ns = fresh_stamp(v);

		for (uint64_t q = pg1 + 1; q < v->npages;) {
			uint64_t w = ld(v, q);

			if (!in_range(w) || MV_PG_STAMP(w) != split_stamp)
				break;
			if (claimed(w)) {
				r = wait_purge_unlocked(v, q);
				if (r < 0)
					goto out;
				continue;
			}
			if (cas(v, q, &w, MV_PG_MAKE(MV_PG_STATE(w), ns)))
				q++;
		}
	}
	r = ret;
out:
	ctl_unlock(v);
	return r;
}

int mvr_ctl_pin(struct mvr_ctl_view *v, uint64_t pg0, uint64_t pg1, int64_t *unpinned_delta, mvr_ctl_restore_fn restore,
		void *ctx)
{
	int64_t du = 0;
	uint64_t c0, c1;
	int r, r2;

	*unpinned_delta = 0;
	if (pg0 > pg1 || pg1 >= v->npages)
		return -EINVAL;
	if (pg0 == pg1) {
		r = pin_one_fast(v, pg0, unpinned_delta);
		if (r >= 0)
			return r;
	}
	r = pin_pass(v, pg0, pg1, !restore, &du, &c0, &c1);
	if (r < 0 || c0 == UINT64_MAX)
		goto out;

	/* Compressed pages are all that is left. The round trip that brings them back is made without the
	 * holder lock: holding it would make every holder of the region wait on the broker. Everything
	 * else in the range is pinned now, so the broker cannot compress more of it meanwhile, and what it
	 * restores it hands back pinned. Whatever it could not restore is purged. */
	(void)restore(ctx, c0, c1);
	for (uint64_t p = c0; p <= c1; p++)
		if (MV_PG_STATE(ld(v, p)) != MV_PG_PINNED) {
			r2 = pin_pass(v, p, c1, true, &du, &c0, &c1);
			if (r2 != MV_NOT_PURGED)
				r = r2;
			break;
		}
out:
	*unpinned_delta = du;
	return r;
}

int mvr_ctl_unpin(struct mvr_ctl_view *v, uint64_t pg0, uint64_t pg1, int64_t *unpinned_delta)
{
	int64_t du = 0;
	int r;

	*unpinned_delta = 0;
	if (pg0 > pg1 || pg1 >= v->npages)
		return -EINVAL;
	if (pg0 == pg1) {
		/* A lone page either lies in a range already (nothing to do) or becomes a range of its own:
		 * adjacent ranges are never merged. One word, no lock. */
		uint64_t w = ld(v, pg0);
		if (in_range(w))
			return 0;
		if (MV_PG_STATE(w) == MV_PG_PINNED && cas(v, pg0, &w, MV_PG_MAKE(MV_PG_UNPINNED, fresh_stamp(v)))) {
			*unpinned_delta = 1;
			return 0;
		}
	}
	r = ctl_lock(v);
	if (r < 0)
		return r;
restart:;
	uint64_t w0 = ld(v, pg0), w1 = ld(v, pg1);

	/* Already inside one unpinned range: nothing changes, not even its LRU position. */
	if (in_range(w0)) {
		bool subsumed = true;
		for (uint64_t p = pg0 + 1; p <= pg1 && subsumed; p++) {
			uint64_t w = ld(v, p);
			subsumed = in_range(w) && MV_PG_STAMP(w) == MV_PG_STAMP(w0);
		}
		if (subsumed) {
			r = 0;
			goto out;
		}
	}

	/* The new range absorbs every range it overlaps; adjacent ones stay separate. */
	uint64_t lo = pg0, hi = pg1;
	if (in_range(w0))
		while (lo > 0 && in_range(ld(v, lo - 1)) && MV_PG_STAMP(ld(v, lo - 1)) == MV_PG_STAMP(w0))
			lo--;
	if (in_range(w1))
		while (hi + 1 < v->npages && in_range(ld(v, hi + 1)) && MV_PG_STAMP(ld(v, hi + 1)) == MV_PG_STAMP(w1))
			hi++;

	bool purged = false;
	for (uint64_t p = lo; p <= hi; p++) {
		unsigned st = MV_PG_STATE(ld(v, p));
		if (st == MV_PG_PURGING || st == MV_PG_COMPRESSING) {
			r = wait_purge_unlocked(v, p);
			if (r < 0)
				goto out;
			goto restart;
		}
		if (st == MV_PG_PURGED)
			purged = true;
	}

	/* A merged range inherits the purged mark, as in the kernel: such pages are no longer
	 * purge candidates and pinning any of them reports WAS_PURGED. */
	uint64_t ns = fresh_stamp(v);
	for (uint64_t p = lo; p <= hi; p++) {
		uint64_t w = ld(v, p);
		unsigned st = MV_PG_STATE(w);
		/* A compressed page keeps its data where it is; it only joins the new range. */
		uint64_t nw = MV_PG_MAKE(purged                   ? MV_PG_PURGED
					 : st == MV_PG_COMPRESSED ? MV_PG_COMPRESSED
								  : MV_PG_UNPINNED,
					 ns);

		/* Pages outside the request join only as part of a range we overlap; if one was pinned
		 * meanwhile (lock-free single-page pin), the union is different: start over. */
		if ((p < pg0 && !(in_range(w) && MV_PG_STAMP(w) == MV_PG_STAMP(w0))) ||
		    (p > pg1 && !(in_range(w) && MV_PG_STAMP(w) == MV_PG_STAMP(w1))))
			goto restart;
		if (st == MV_PG_PURGED && !purged)
			goto restart; /* purged since the first pass: the merged range must carry the mark */
		if (claimed(w) || !cas(v, p, &w, nw)) {
			/* The broker claimed it after we looked: let it finish, then recompute. */
			r = wait_purge_unlocked(v, p);
			if (r < 0)
				goto out;
			goto restart;
		}
		if (st == MV_PG_UNPINNED)
			du--;
		if (MV_PG_STATE(nw) == MV_PG_UNPINNED)
			du++;
	}
	r = 0;
out:
	ctl_unlock(v);
	*unpinned_delta = du;
	return r;
}

int mvr_ctl_status(struct mvr_ctl_view *v, uint64_t pg0, uint64_t pg1)
{
	if (pg0 > pg1 || pg1 >= v->npages)
		return -EINVAL;
	for (uint64_t p = pg0; p <= pg1; p++)
		if (in_range(ld(v, p)))
			return MV_IS_UNPINNED;
	return MV_IS_PINNED;
}

void mvr_ctl_count(const struct mvr_ctl_view *v, struct mvr_ctl_counts *c)
{
	/* Every status and sweep counts every page of every region: over a 1 GiB region's 2 MiB of words
	 * several times a second during a reclaim. A table of counts indexed by state, four of them so
	 * that runs of one state do not wait on one counter, took a half to an eighth of the time of a
	 * branch per word here (runs of one state, mixed states). Relaxed loads: only counts are wanted. */
	_Static_assert(MV_PG_COMPRESSED < 6, "states 6 and 7 of the table are the others");
	uint64_t t[4][8] = { { 0 } }, h[8] = { 0 }, p = 0;

	for (; p + 4 <= v->npages; p += 4)
		for (unsigned k = 0; k < 4; k++) {
			unsigned st = MV_PG_STATE(atomic_load_explicit(&v->pages[p + k], memory_order_relaxed));
			t[k][st < 7 ? st : 7]++;
		}
	for (; p < v->npages; p++) {
		unsigned st = MV_PG_STATE(atomic_load_explicit(&v->pages[p], memory_order_relaxed));
		t[0][st < 7 ? st : 7]++;
	}
	for (unsigned k = 0; k < 4; k++)
		for (unsigned st = 0; st < 8; st++)
			h[st] += t[k][st];
	*c = (struct mvr_ctl_counts){
		.pinned = h[MV_PG_PINNED],
		.unpinned = h[MV_PG_UNPINNED],
		.purged = h[MV_PG_PURGED],
		.purging = h[MV_PG_PURGING] + h[MV_PG_COMPRESSING],
		.compressed = h[MV_PG_COMPRESSED],
		.other = h[6] + h[7],
	};
}

int mvr_ctl_validate(const struct mvr_ctl_hdr *hdr, uint64_t npages)
{
	if (hdr->magic != MV_CTL_MAGIC || hdr->version != MV_CTL_VERSION || hdr->hdr_size != sizeof(*hdr))
		return -EINVAL;
	if (hdr->npages != npages || !npages)
		return -EINVAL;
	if (hdr->size == 0 || hdr->size > npages * MV_PAGE_SIZE || hdr->size <= (npages - 1) * MV_PAGE_SIZE)
		return -EINVAL;
	if (hdr->name_len >= MV_NAME_LEN)
		return -EINVAL;
	return 0;
}

int mvr_ctl_for_each_run(const struct mvr_ctl_view *v, mvr_ctl_run_fn fn, void *opaque)
{
	uint64_t p = 0;

	while (p < v->npages) {
		uint64_t w = ld(v, p);

		if (MV_PG_STATE(w) != MV_PG_UNPINNED) {
			p++;
			continue;
		}
		uint64_t start = p, stamp = MV_PG_STAMP(w);
		while (p < v->npages) {
			uint64_t x = ld(v, p);
			if (MV_PG_STATE(x) != MV_PG_UNPINNED || MV_PG_STAMP(x) != stamp)
				break;
			p++;
		}
		int r = fn(opaque, start, p - start, stamp);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Claims the leading pages of [start, start + len) that are still UNPINNED with stamp, into state. */
static uint64_t claim_as(struct mvr_ctl_view *v, uint64_t start, uint64_t len, uint64_t stamp, unsigned state)
{
	uint64_t n = 0;

	if (start >= v->npages)
		return 0;
	if (len > v->npages - start)
		len = v->npages - start;
	for (; n < len; n++) {
		uint64_t exp = MV_PG_MAKE(MV_PG_UNPINNED, stamp);
		if (!cas(v, start + n, &exp, MV_PG_MAKE(state, stamp)))
			break;
	}
	return n;
}

uint64_t mvr_ctl_claim(struct mvr_ctl_view *v, uint64_t start, uint64_t len, uint64_t stamp)
{
	return claim_as(v, start, len, stamp, MV_PG_PURGING);
}

uint64_t mvr_ctl_claim_compress(struct mvr_ctl_view *v, uint64_t start, uint64_t len, uint64_t stamp)
{
	return claim_as(v, start, len, stamp, MV_PG_COMPRESSING);
}

bool mvr_ctl_move(struct mvr_ctl_view *v, uint64_t page, uint64_t expect, unsigned new_state)
{
	/* A pinned page carries no stamp: it belongs to no unpinned range. */
	uint64_t stamp = new_state == MV_PG_PINNED ? 0 : MV_PG_STAMP(expect);

	return page < v->npages && cas(v, page, &expect, MV_PG_MAKE(new_state, stamp));
}

void mvr_ctl_wake(struct mvr_ctl_view *v)
{
	atomic_fetch_add(&v->hdr->purge_seq, 1);
	mvu_sys_futex(&v->hdr->purge_seq, FUTEX_WAKE, INT32_MAX, NULL);
}

void mvr_ctl_complete(struct mvr_ctl_view *v, uint64_t start, uint64_t n, uint64_t stamp, bool purged)
{
	uint64_t done = 0;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t exp = MV_PG_MAKE(MV_PG_PURGING, stamp);
		if (cas(v, start + i, &exp, MV_PG_MAKE(purged ? MV_PG_PURGED : MV_PG_UNPINNED, stamp)))
			done++;
	}
	if (purged) {
		atomic_fetch_add(&v->hdr->purged_pages_total, done);
		atomic_fetch_add(&v->hdr->purge_events, 1);
	}
	atomic_fetch_add(&v->hdr->purge_seq, 1);
	mvu_sys_futex(&v->hdr->purge_seq, FUTEX_WAKE, INT32_MAX, NULL);
}
