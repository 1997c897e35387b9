/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "registry.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tier_workers.h"

#define WATCH_MASK (IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE)
#define IDLE_SWEEPS_BEFORE_RELEASE 2
/* A region unpinned again within this many sweeps of its release doubles its wait before the next
 * one (up to 2 << MAX_RELEASE_STREAK sweeps): a program that unpins every few seconds would otherwise
 * pay a handover and a release, a descriptor passed and a mapping made and unmade, for each unpin. */
#define RECENT_RELEASE_SWEEPS 16
#define MAX_RELEASE_STREAK 6

/* ---- the compressed tier's indexes ---- */

struct zrev {
	uint64_t handle; /* 0: empty, UINT64_MAX: deleted */
	uint64_t region_id;
	uint64_t page;
};

/* The store numbers its handles generation << 32 | (index + 1), and a reclaim takes fresh indexes one
 * after another. A slot four places on per index keeps a reclaim's writes moving through the table in
 * order, at the load it is sized for (a quarter), so that its pages fault in one at a time: a scattering
 * hash faulted in a new page on nearly every write at the start of a 1 GiB reclaim, up to 6 ms of the
 * loop's time per batch of jobs. The generation, scattered, spreads reused indexes. Only speed depends
 * on this: the probing finds any handle wherever it lands. */
static size_t zrev_slot(uint64_t h, size_t cap)
{
	uint64_t gen = (h >> 32) * 0x9e3779b97f4a7c15ull;
	return (size_t)(((h & 0xffffffffu) * 4) ^ (gen >> 20)) & (cap - 1);
}

/* Room for extra more entries without growing. */
static int zrev_reserve(struct mvb_registry *g, size_t extra)
{
	if ((g->rev_len + g->rev_dead + extra) * 2 > g->rev_cap) {
		size_t cap = g->rev_cap ? g->rev_cap : 1024;
		while ((g->rev_len + extra) * 4 > cap) /* at most a quarter full after growing */
			cap *= 2;
		/* Mapped, not allocated: fresh zero pages that fault in as they are first written, never a
		 * copy of the whole table cleared here (malloc may hand out used memory). */
		struct zrev *n =
			mmap(NULL, cap * sizeof(*n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (n == MAP_FAILED)
			return -ENOMEM;
		for (size_t i = 0; i < g->rev_cap; i++) {
			struct zrev *e = &g->rev[i];
			if (e->handle && e->handle != UINT64_MAX) {
				size_t k = zrev_slot(e->handle, cap);
				while (n[k].handle)
					k = (k + 1) & (cap - 1);
				n[k] = *e;
			}
		}
		g->heap_bytes += cap * sizeof(*n);
		g->heap_bytes -= g->rev_cap * sizeof(*n);
		if (g->rev)
			munmap(g->rev, g->rev_cap * sizeof(*n));
		g->rev = n;
		g->rev_cap = cap;
		g->rev_dead = 0;
	}
	return 0;
}

static int zrev_put(struct mvb_registry *g, uint64_t h, uint64_t region_id, uint64_t page)
{
	if (zrev_reserve(g, 1) < 0)
		return -ENOMEM;
	size_t k = zrev_slot(h, g->rev_cap);
	while (g->rev[k].handle && g->rev[k].handle != UINT64_MAX)
		k = (k + 1) & (g->rev_cap - 1);
	if (g->rev[k].handle == UINT64_MAX)
		g->rev_dead--;
	g->rev[k] = (struct zrev){ h, region_id, page };
	g->rev_len++;
	return 0;
}

static struct zrev *zrev_find(struct mvb_registry *g, uint64_t h)
{
	if (!g->rev_cap)
		return NULL;
	for (size_t k = zrev_slot(h, g->rev_cap);; k = (k + 1) & (g->rev_cap - 1)) {
		if (!g->rev[k].handle)
			return NULL;
		if (g->rev[k].handle == h)
			return &g->rev[k];
	}
}

static void zrev_del(struct mvb_registry *g, struct zrev *e)
{
	e->handle = UINT64_MAX;
	g->rev_len--;
	g->rev_dead++;
}

/* Forgets the compressed copy of page p of r (its data is no longer wanted or was put back). */
static void zforget(struct mvb_registry *g, struct mvb_region *r, uint64_t p)
{
	uint64_t h = r->zh ? r->zh[p] : 0;
	if (!h)
		return;
	struct zrev *e = zrev_find(g, h);
	if (e)
		zrev_del(g, e);
	mv_store_drop(g->store, h);
	r->zh[p] = 0;
	r->zcount--;
	g->compressed_pages--;
}

static void zforget_all(struct mvb_registry *g, struct mvb_region *r)
{
	if (!r->zh)
		return;
	for (uint64_t p = 0; p < r->npages && r->zcount; p++)
		zforget(g, r, p);
	free(r->zh);
	g->heap_bytes -= r->npages * sizeof(*r->zh);
	r->zh = NULL;
}

static size_t bucket(const struct mvb_registry *g, uint64_t key)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdull;
	key ^= key >> 33;
	return (size_t)(key & (g->nbuckets - 1));
}

static int rehash(struct mvb_registry *g, size_t n)
{
	struct mvb_region **wd = calloc(n, sizeof(*wd)), **id = calloc(n, sizeof(*id)), **ino = calloc(n, sizeof(*ino));

	if (!wd || !id || !ino) {
		free(wd);
		free(id);
		free(ino);
		return -ENOMEM;
	}
	free(g->by_wd);
	free(g->by_id);
	free(g->by_ino);
	g->heap_bytes -= g->nbuckets * 3 * sizeof(void *);
	g->by_wd = wd;
	g->by_id = id;
	g->by_ino = ino;
	g->nbuckets = n;
	g->heap_bytes += n * 3 * sizeof(void *);
	for (struct mvb_region *r = g->all; r; r = r->next) {
		size_t b = bucket(g, (uint64_t)r->wd);
		r->next_by_wd = g->by_wd[b];
		g->by_wd[b] = r;
		b = bucket(g, r->id);
		r->next_by_id = g->by_id[b];
		g->by_id[b] = r;
		b = bucket(g, r->ino);
		r->next_by_ino = g->by_ino[b];
		g->by_ino[b] = r;
	}
	return 0;
}

int mvb_registry_init(struct mvb_registry *g)
{
	memset(g, 0, sizeof(*g));
	g->next_id = 1;
	g->tier_efd = -1;
	g->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (g->inotify_fd < 0)
		return -errno;
	return rehash(g, 64);
}

static void tier_wait_region(struct mvb_registry *g, struct mvb_region *r);

static void unhold(struct mvb_registry *g, struct mvb_region *r)
{
	if (r->hold_fd < 0)
		return;
	/* Runs of it still with the threads finish first (a few jobs at most): their pages must leave
	 * COMPRESSING while the broker can still reach them, and nothing may keep using a descriptor of a
	 * region the broker let go. */
	tier_wait_region(g, r);
	zforget_all(g, r);
	munmap(r->ctl, mvr_ctl_length(r->npages));
	r->ctl = NULL;
	close(r->hold_fd);
	r->own_closes++;
	r->hold_fd = -1;
	g->held--;
}

static void unlink_chain(struct mvb_region **head, struct mvb_region *r, size_t off)
{
	for (struct mvb_region **pp = head; *pp; pp = (struct mvb_region **)((char *)*pp + off))
		if (*pp == r) {
			*pp = *(struct mvb_region **)((char *)r + off);
			return;
		}
}

int mvb_region_ctl_dup(const struct mvb_region *r)
{
	if (r->ctl_keep_fd < 0)
		return -ENOENT;
	int fd = fcntl(r->ctl_keep_fd, F_DUPFD_CLOEXEC, 3);
	return fd < 0 ? -errno : fd;
}

static void region_destroy(struct mvb_registry *g, struct mvb_region *r)
{
	unhold(g, r);
	if (r->ctl_keep_fd >= 0) {
		close(r->ctl_keep_fd);
		g->ctl_kept--;
	}
	unlink_chain(&g->by_wd[bucket(g, (uint64_t)r->wd)], r, offsetof(struct mvb_region, next_by_wd));
	unlink_chain(&g->by_id[bucket(g, r->id)], r, offsetof(struct mvb_region, next_by_id));
	unlink_chain(&g->by_ino[bucket(g, r->ino)], r, offsetof(struct mvb_region, next_by_ino));
	if (r->prev)
		r->prev->next = r->next;
	else
		g->all = r->next;
	if (r->next)
		r->next->prev = r->prev;
	g->count--;
	g->heap_bytes -= sizeof(*r) + strlen(r->name) + 1;
	free(r);
	/* Shrink with the population, so a burst of regions leaves no lasting cost. */
	if (g->nbuckets > 64 && g->count < g->nbuckets / 4)
		rehash(g, g->nbuckets / 2);
}

void mvb_registry_fini(struct mvb_registry *g)
{
	mvb_tier_settle(g);
	mvb_tier_workers_free(g->workers);
	g->workers = NULL;
	free(g->tq);
	if (g->tier_efd >= 0)
		close(g->tier_efd);
	while (g->all)
		region_destroy(g, g->all);
	free(g->by_wd);
	free(g->by_id);
	free(g->by_ino);
	if (g->rev)
		munmap(g->rev, g->rev_cap * sizeof(*g->rev));
	mv_store_unref(g->store);
	if (g->inotify_fd >= 0)
		close(g->inotify_fd);
}

struct mvb_region *mvb_find(struct mvb_registry *g, uint64_t id)
{
	for (struct mvb_region *r = g->by_id[bucket(g, id)]; r; r = r->next_by_id)
		if (r->id == id)
			return r;
	return NULL;
}

static struct mvb_region *find_wd(struct mvb_registry *g, int wd)
{
	for (struct mvb_region *r = g->by_wd[bucket(g, (uint64_t)wd)]; r; r = r->next_by_wd)
		if (r->wd == wd)
			return r;
	return NULL;
}

/* What a region's data file is: a shmem file sealed against shrinking and growing, so its size can never
 * change under our reads and punches. */
static bool is_data_file(int fd, const struct stat *st)
{
	uint64_t npages;
	int seals;

	if (!S_ISREG(st->st_mode) || mvr_npages_of_size((uint64_t)st->st_size, &npages) < 0)
		return false;
	seals = fcntl(fd, F_GET_SEALS);
	return seals >= 0 && (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) == (F_SEAL_SHRINK | F_SEAL_GROW);
}

static struct mvb_region *find_inode(struct mvb_registry *g, uint64_t dev, uint64_t ino)
{
	for (struct mvb_region *r = g->by_ino[bucket(g, ino)]; r; r = r->next_by_ino)
		if (r->ino == ino && r->dev == dev)
			return r;
	return NULL;
}

static bool has_candidates(const struct mvr_ctl_view *v)
{
	for (uint64_t p = 0; p < v->npages; p++) {
		unsigned s = MV_PG_STATE(atomic_load(&v->pages[p]));
		if (s == MV_PG_UNPINNED || s == MV_PG_PURGING || s == MV_PG_COMPRESSING || s == MV_PG_COMPRESSED)
			return true;
	}
	return false;
}

/* Opens our own data file for the region and maps its control block (the mapping keeps the control
 * file alive, no descriptor does), so that nothing the broker keeps refers to a client's descriptor. */
static int hold(struct mvb_registry *g, struct mvb_region *r, int client_fd, int ctl_fd)
{
	char path[64];
	int fd;
	void *m;

	if (r->hold_fd >= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", client_fd);
	r->own_opens++;
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		r->own_opens--;
		return -errno;
	}
	m = mmap(NULL, mvr_ctl_length(r->npages), PROT_READ | PROT_WRITE, MAP_SHARED, ctl_fd, 0);
	if (m == MAP_FAILED) {
		int e = -errno;
		close(fd);
		r->own_closes++;
		return e;
	}
	r->ctl = m;
	r->hold_fd = fd;
	r->ext_files = 1; /* the client's file we were handed; see the header on why this is safe */
	r->idle_sweeps = 0;
	if (r->released_at && g->sweeps - r->released_at <= RECENT_RELEASE_SWEEPS) {
		if (r->release_streak < MAX_RELEASE_STREAK)
			r->release_streak++;
	} else {
		r->release_streak = 0;
	}
	g->held++;
	g->holds_total++;
	return 0;
}

static void view_of(const struct mvb_region *r, struct mvr_ctl_view *v)
{
	mvr_ctl_view_init(v, r->ctl, r->npages, r->hold_fd);
}

static void snapshot(struct mvb_region *r)
{
	struct mvr_ctl_counts c;

	mvb_region_counts(r, &c);
	r->snap_unpinned = (uint32_t)(c.unpinned > UINT32_MAX ? UINT32_MAX : c.unpinned);
	r->snap_purged = (uint32_t)(c.purged > UINT32_MAX ? UINT32_MAX : c.purged);
}

/* Lets go of a region with no purge candidates. Dekker-style against holders: we clear broker_holds
 * and then look; a holder unpins and then looks at broker_holds. One of us sees the other. */
static bool try_release(struct mvb_registry *g, struct mvb_region *r)
{
	struct mvr_ctl_view v;

	view_of(r, &v);
	atomic_store(&r->ctl->broker_holds, 0);
	atomic_thread_fence(memory_order_seq_cst);
	if (has_candidates(&v)) {
		atomic_store(&r->ctl->broker_holds, 1);
		return false;
	}
	snapshot(r);
	unhold(g, r);
	r->released_at = g->sweeps ? g->sweeps : 1;
	return true;
}

static void sanitize_name(char *dst, const char *src, size_t n)
{
	size_t i;

	for (i = 0; i < n && src[i]; i++)
		dst[i] = isprint((unsigned char)src[i]) ? src[i] : '?';
	dst[i] = '\0';
}

bool mvb_is_ctl_of(const struct mvb_region *r, int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 && (uint64_t)st.st_ino == r->ctl_ino && (uint64_t)st.st_dev == r->ctl_dev;
}

struct mvb_region *mvb_find_file(struct mvb_registry *g, int fd)
{
	struct stat st;

	return fstat(fd, &st) < 0 ? NULL : find_inode(g, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
}

int mvb_attach(struct mvb_registry *g, int fd, int ctl_fd, struct mvb_region **out, bool *created)
{
	struct mvr_ctl_hdr hdr;
	struct mvb_region *r;
	struct stat st;
	uint64_t npages;
	char path[64];
	int e;

	*created = false;
	if (fstat(fd, &st) < 0)
		return -EBADF;
	if (!is_data_file(fd, &st))
		return -EINVAL;

	r = find_inode(g, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
	if (!r) {
		char name[MV_NAME_LEN];
		struct stat cs;
		int wd;

		/* The first control file that names this data file, and only one that does, is the region's;
		 * later holders get it from us. */
		if (mvr_ctl_check_files(fd, ctl_fd, &npages, &hdr) < 0 || fstat(ctl_fd, &cs) < 0)
			return -EINVAL;
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		wd = inotify_add_watch(g->inotify_fd, path, WATCH_MASK);
		if (wd < 0)
			return errno == ENOSPC ? -ENOSPC : -errno;
		sanitize_name(name, hdr.name, hdr.name_len < MV_NAME_LEN ? hdr.name_len : MV_NAME_LEN - 1);
		size_t nl = strlen(name) + 1;
		r = calloc(1, sizeof(*r) + nl);
		if (!r) {
			inotify_rm_watch(g->inotify_fd, wd);
			return -ENOMEM;
		}
		r->ctl_dev = (uint64_t)cs.st_dev;
		r->ctl_ino = (uint64_t)cs.st_ino;
		memcpy(r->name, name, nl);
		r->id = g->next_id++;
		r->ino = (uint64_t)st.st_ino;
		r->dev = (uint64_t)st.st_dev;
		r->npages = npages;
		r->size = hdr.size;
		r->wd = wd;
		r->hold_fd = -1;
		/* A holder that is handed the region after every other holder exited can only get its control
		 * file from us, so we keep one, while that costs a small share of our descriptors (past it,
		 * holders still find the file in a live holder). */
		if (!g->ctl_keep_max) {
			struct rlimit rl;
			g->ctl_keep_max = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (uint64_t)rl.rlim_cur / 8 : 128;
		}
		r->ctl_keep_fd = -1;
		if (g->ctl_kept < g->ctl_keep_max && (r->ctl_keep_fd = fcntl(ctl_fd, F_DUPFD_CLOEXEC, 3)) >= 0)
			g->ctl_kept++;
		if (g->count + 1 > g->nbuckets)
			rehash(g, g->nbuckets * 2); /* on failure the chains just get longer */
		r->next = g->all;
		if (g->all)
			g->all->prev = r;
		g->all = r;
		size_t b = bucket(g, (uint64_t)wd);
		r->next_by_wd = g->by_wd[b];
		g->by_wd[b] = r;
		b = bucket(g, r->id);
		r->next_by_id = g->by_id[b];
		g->by_id[b] = r;
		b = bucket(g, r->ino);
		r->next_by_ino = g->by_ino[b];
		g->by_ino[b] = r;
		g->count++;
		g->heap_bytes += sizeof(*r) + nl;
		*created = true;
	} else if (!mvb_is_ctl_of(r, ctl_fd)) {
		return -EINVAL; /* not this region's control file */
	}
	*out = r;
	if (r->flags & MVB_F_UNPURGEABLE)
		return 0;

	bool was_held = r->hold_fd >= 0;
	e = hold(g, r, fd, ctl_fd);
	if (e < 0)
		return 0; /* still tracked; purging this one waits for a later attach */
	struct mvr_ctl_view v;
	view_of(r, &v);
	if (atomic_load(&r->ctl->flags) & MV_CTL_F_UNPURGEABLE) {
		r->flags |= MVB_F_UNPURGEABLE;
		atomic_store(&r->ctl->broker_holds, 0);
		snapshot(r);
		unhold(g, r);
		return 0;
	}
	if (!was_held) {
		/* A broker that died mid-purge leaves claimed pages behind; only a live purger may
		 * own them, and that is us now. */
		pid_t pp = atomic_load(&r->ctl->purger_pid);
		if (pp != 0 && pp != getpid()) {
			mvr_ctl_finish_orphans(&v);
			atomic_store(&r->ctl->purger_pid, 0);
		}
		/* Compressed copies we do not have died with an earlier broker: the pages were punched
		 * when they were compressed, so they are purged. Pinned data is never compressed. */
		for (uint64_t p = 0; p < r->npages; p++) {
			uint64_t w = atomic_load(&v.pages[p]);
			if (MV_PG_STATE(w) == MV_PG_COMPRESSED && !(r->zh && r->zh[p]))
				mvr_ctl_move(&v, p, w, MV_PG_PURGED);
		}
		atomic_store(&r->ctl->broker_holds, 1);
		try_release(g, r);
		if (r->hold_fd >= 0)
			snapshot(r);
	}
	return 0;
}

void mvb_handle_inotify(struct mvb_registry *g)
{
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));

	for (;;) {
		ssize_t n = read(g->inotify_fd, buf, sizeof(buf));

		if (n <= 0)
			return;
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;
			struct mvb_region *r;

			p += sizeof(*ev) + ev->len;
			if (ev->mask & IN_Q_OVERFLOW) {
				/* Counts are lost: let go of every held region (safe direction). */
				g->overflows++;
				for (r = g->all; r; r = r->next)
					if (r->hold_fd >= 0 && !try_release(g, r)) {
						atomic_store(&r->ctl->broker_holds, 0);
						snapshot(r);
						unhold(g, r);
					}
				continue;
			}
			r = find_wd(g, ev->wd);
			if (!r)
				continue;
			if (ev->mask & IN_IGNORED) {
				region_destroy(g, r); /* the inode is gone */
				continue;
			}
			if (ev->mask & IN_OPEN) {
				if (r->own_opens)
					r->own_opens--;
				else
					r->ext_files++;
			}
			if (ev->mask & (IN_CLOSE_WRITE | IN_CLOSE_NOWRITE)) {
				if (r->own_closes)
					r->own_closes--;
				else
					r->ext_files--;
				if (r->hold_fd >= 0 && r->ext_files <= 0) {
					/* Nobody else has it open or mapped: let it die. */
					snapshot(r);
					unhold(g, r);
				}
			}
		}
	}
}

void mvb_region_counts(struct mvb_region *r, struct mvr_ctl_counts *c)
{
	if (r->hold_fd >= 0) {
		struct mvr_ctl_view v;
		view_of(r, &v);
		mvr_ctl_count(&v, c);
		return;
	}
	memset(c, 0, sizeof(*c));
	c->unpinned = r->snap_unpinned;
	c->purged = r->snap_purged;
	c->pinned = r->npages - r->snap_unpinned - r->snap_purged;
}

static void add_totals(struct mvb_totals *t, const struct mvb_region *r, const struct mvr_ctl_counts *c)
{
	t->pages += r->npages;
	t->pinned += c->pinned + c->other;
	t->unpinned += c->unpinned + c->purging;
	t->purged += c->purged;
	t->compressed += c->compressed;
	if (r->hold_fd >= 0)
		t->candidates += c->unpinned;
}

void mvb_totals(struct mvb_registry *g, struct mvb_totals *t)
{
	memset(t, 0, sizeof(*t));
	for (struct mvb_region *r = g->all; r; r = r->next) {
		struct mvr_ctl_counts c;

		mvb_region_counts(r, &c);
		add_totals(t, r, &c);
	}
}

void mvb_sweep(struct mvb_registry *g, struct mvb_totals *t)
{
	g->sweeps++;
	memset(t, 0, sizeof(*t));
	/* One count of each region serves both its release and the totals: the sweep runs every second,
	 * and counting a large region is most of what it costs. */
	for (struct mvb_region *r = g->all, *next; r; r = next) {
		struct mvr_ctl_counts c;

		next = r->next;
		if (r->hold_fd >= 0 && r->zcount) {
			/* Compressed copies of pages that left the compressed state (merged into a purged
			 * range by an unpin, say) are not wanted any more. */
			struct mvr_ctl_view v;
			view_of(r, &v);
			for (uint64_t p = 0; p < r->npages && r->zh; p++) {
				unsigned st = MV_PG_STATE(atomic_load(&v.pages[p]));
				if (r->zh[p] && st != MV_PG_COMPRESSED && st != MV_PG_COMPRESSING)
					zforget(g, r, p);
			}
		}
		mvb_region_counts(r, &c);
		add_totals(t, r, &c);
		if (r->hold_fd < 0)
			continue;
		if (c.unpinned || c.purging)
			r->idle_sweeps = 0;
		else if (++r->idle_sweeps >= (IDLE_SWEEPS_BEFORE_RELEASE << r->release_streak))
			try_release(g, r);
	}
}

uint64_t mvb_unpinned_pages(struct mvb_registry *g)
{
	uint64_t n = 0;

	for (struct mvb_region *r = g->all; r; r = r->next) {
		if (r->hold_fd < 0)
			continue;
		struct mvr_ctl_counts c;
		mvb_region_counts(r, &c);
		n += c.unpinned;
	}
	return n;
}

/* ---- the compressed tier ---- */

static int tier_evict(mv_store *st, uint64_t h, void *ud)
{
	struct mvb_registry *g = ud;
	struct zrev *e = zrev_find(g, h);

	(void)st;
	if (!e)
		return g->inflight ? -EBUSY : 0; /* maybe a page of a job under way, not yet indexed */
	struct mvb_region *r = mvb_find(g, e->region_id);
	uint64_t p = e->page;
	if (r && r->hold_fd >= 0 && r->zh && r->zh[p] == h) {
		struct mvr_ctl_view v;
		view_of(r, &v);
		uint64_t w = atomic_load(&v.pages[p]);
		if (MV_PG_STATE(w) == MV_PG_COMPRESSING)
			return -EBUSY; /* being put back right now */
		/* Its data goes; the page itself was punched when it was compressed. */
		if (MV_PG_STATE(w) == MV_PG_COMPRESSED)
			mvr_ctl_move(&v, p, w, MV_PG_PURGED);
		r->zh[p] = 0;
		r->zcount--;
		r->purged_total++;
		g->compressed_pages--;
		g->purged_pages_total++;
	}
	zrev_del(g, e);
	g->evictions++;
	return 0; /* the store drops it */
}

int mvb_tier_init(struct mvb_registry *g, bool enabled, uint64_t budget, unsigned threads)
{
	struct mv_store_config cfg = {
		.backend = MV_POOL_DENSE,
		.codec = MV_CODEC_LZ4,
		.flags = MV_STORE_REJECT_INCOMPRESSIBLE,
		.evict = tier_evict,
		.userdata = g,
	};
	g->compress = enabled;
	g->store_budget = budget;
	if (threads && g->tier_efd < 0) {
		g->tier_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (g->tier_efd < 0)
			return -errno;
	}
	g->tier_threads = g->tier_efd >= 0 ? (threads > 4 ? 4 : threads) : 0; /* a region's jobs fit a byte */
	/* Two jobs a thread: one running, one waiting, so that no thread waits on the loop. */
	g->tier_window = 2 * g->tier_threads;
	return g->store ? 0 : mv_store_new(&cfg, &g->store);
}

uint64_t mvb_store_bytes(struct mvb_registry *g)
{
	struct mv_store_stats st;
	return g->store && mv_store_stats(g->store, &st) == 0 ? st.mem_used_total : 0;
}

void mvb_store_shrink(struct mvb_registry *g, uint64_t target)
{
	while (g->store && g->compressed_pages && mvb_store_bytes(g) > target) {
		if (mv_store_reclaim(g->store, 4) < 0) {
			mv_store_compact(g->store);
			if (mv_store_reclaim(g->store, 4) < 0)
				break;
		}
	}
}

uint64_t mvb_tier_drop_all(struct mvb_registry *g)
{
	uint64_t dropped = 0;

	for (struct mvb_region *r = g->all; r; r = r->next) {
		struct mvr_ctl_view v;

		if (r->hold_fd < 0 || !r->zh)
			continue;
		view_of(r, &v);
		for (uint64_t p = 0; p < r->npages && r->zcount; p++) {
			uint64_t w = atomic_load(&v.pages[p]);

			if (!r->zh[p] || MV_PG_STATE(w) == MV_PG_COMPRESSING)
				continue;
			/* The page was punched when it was compressed: without its copy it is purged. */
			if (MV_PG_STATE(w) == MV_PG_COMPRESSED && mvr_ctl_move(&v, p, w, MV_PG_PURGED)) {
				dropped++;
				r->purged_total++;
			}
			zforget(g, r, p);
		}
		mvr_ctl_wake(&v);
	}
	g->purged_pages_total += dropped;
	return dropped;
}

/* The broker no longer owns pages of r, unless jobs of it are still with the tier's threads: a pinner
 * that finds no live purger finishes claimed pages as orphans and would pin a page whose punch is yet
 * to come. */
static void purger_done(struct mvb_region *r)
{
	if (!r->jobs)
		atomic_store(&r->ctl->purger_pid, 0);
}

static bool tier_applies(struct mvb_registry *g, struct mvb_region *r)
{
	return g->compress && g->store && !(atomic_load(&r->ctl->flags) & MV_CTL_F_NO_COMPRESS);
}

/* The bytes of page p that lie in the data file: a whole page but for the last one. */
static size_t page_bytes(const struct mvb_region *r, uint64_t p)
{
	uint64_t off = p * MV_PAGE_SIZE;
	return r->size - off < MV_PAGE_SIZE ? (size_t)(r->size - off) : MV_PAGE_SIZE;
}

static bool write_page(struct mvb_region *r, uint64_t p, const unsigned char *buf)
{
	size_t n = page_bytes(r, p);

	return pwrite(r->hold_fd, buf, n, (off_t)(p * MV_PAGE_SIZE)) == (ssize_t)n;
}

#define TIER_BUDGET_CHECK 64 /* jobs: 64 MiB of pages at most */

/* A run of unpinned pages waiting for the tier's reclaim, by region id: the region may go meanwhile. */
struct tier_run {
	uint64_t region_id, start, len, stamp;
};

static int tq_push(struct mvb_registry *g, uint64_t region_id, uint64_t start, uint64_t len, uint64_t stamp)
{
	if (g->tq_n == g->tq_cap) {
		size_t nc = g->tq_cap ? g->tq_cap * 2 : 256;
		struct tier_run *n = realloc(g->tq, nc * sizeof(*n));
		if (!n)
			return -ENOMEM;
		g->heap_bytes += (nc - g->tq_cap) * sizeof(*n);
		g->tq = n;
		g->tq_cap = nc;
	}
	g->tq[g->tq_n++] = (struct tier_run){ region_id, start, len, stamp };
	return 0;
}

static void drop_handles(struct mvb_registry *g, const struct mvb_tier_job *j)
{
	for (uint64_t i = 0; i < j->n; i++)
		if (j->handles[i])
			mv_store_drop(g->store, j->handles[i]);
}

/* A job is back: its pages were stored (or refused) and punched. Marks them COMPRESSED (kept) or PURGED
 * (dropped); if the run could not be freed, everything goes back as it was. */
static void tier_complete(struct mvb_registry *g, struct mvb_tier_job *j)
{
	struct mvb_region *r = mvb_find(g, j->region_id);
	uint64_t cw = MV_PG_MAKE(MV_PG_COMPRESSING, j->stamp);
	struct mvr_ctl_view v;

	g->inflight--;
	g->tier_jobs_done++;
	if (!r || r->hold_fd < 0) {
		/* Not reached: a region is let go only after its jobs came back. */
		drop_handles(g, j);
		free(j);
		return;
	}
	view_of(r, &v);
	if (j->punch_err < 0) {
		/* Cannot free it (write-sealed): everything goes back as it was. */
		drop_handles(g, j);
		for (uint64_t i = 0; i < j->n; i++)
			mvr_ctl_move(&v, j->start + i, cw, MV_PG_UNPINNED);
		r->flags |= MVB_F_UNPURGEABLE;
	} else {
		for (uint64_t i = 0; i < j->n; i++) {
			uint64_t p = j->start + i, h = j->handles[i];
			if (h && zrev_put(g, h, r->id, p) < 0) {
				mv_store_drop(g->store, h);
				h = 0;
			}
			if (h) {
				r->zh[p] = h;
				mvr_ctl_move(&v, p, cw, MV_PG_COMPRESSED);
				r->zcount++;
				g->compressed_pages++;
				g->compressions++;
			} else {
				mvr_ctl_move(&v, p, cw, MV_PG_PURGED);
				r->purged_total++;
				g->purged_pages_total++;
				g->incompressible++;
			}
		}
		g->purged_pages_total += j->n;
		g->reclaimed_pages += j->n;
		g->purge_runs++;
	}
	mvr_ctl_wake(&v);
	r->jobs--;
	purger_done(r);
	free(j);
}

/* Claims the next job's pages (at most MVB_TIER_JOB_PAGES of the oldest run left) and hands it to the
 * threads, or does it here without them. Claiming a job at a time, rather than every run at once,
 * keeps a pinner from waiting for more than the job its pages are in. False when nothing is left. */
static bool tier_next(struct mvb_registry *g)
{
	for (; g->tq_i < g->tq_n; g->tq_i++, g->tq_off = 0) {
		struct tier_run *t = &g->tq[g->tq_i];
		struct mvb_region *r = mvb_find(g, t->region_id);
		struct mvr_ctl_view v;

		if (!r || r->hold_fd < 0 || (r->flags & MVB_F_UNPURGEABLE) || !tier_applies(g, r) ||
		    g->tq_off >= t->len)
			continue;
		if (!r->zh) {
			r->zh = calloc(r->npages, sizeof(*r->zh));
			if (!r->zh)
				continue;
			g->heap_bytes += r->npages * sizeof(*r->zh);
		}
		uint64_t want = t->len - g->tq_off < MVB_TIER_JOB_PAGES ? t->len - g->tq_off : MVB_TIER_JOB_PAGES;
		uint64_t start = t->start + g->tq_off;
		struct mvb_tier_job *j = malloc(sizeof(*j) + want * sizeof(j->handles[0]));
		int fd = j ? fcntl(r->hold_fd, F_DUPFD_CLOEXEC, 0) : -1;
		if (fd < 0) {
			/* Out of memory or descriptors: the rest waits for the next reclaim. */
			free(j);
			g->tq_i = g->tq_n;
			return false;
		}
		view_of(r, &v);
		atomic_store(&r->ctl->purger_pid, getpid());
		uint64_t n = mvr_ctl_claim_compress(&v, start, want, t->stamp);
		/* Someone changed the run while we claimed it: what is left of it is no longer this run. */
		g->tq_off = n < want ? t->len : g->tq_off + n;
		if (!n) {
			close(fd);
			free(j);
			purger_done(r);
			continue;
		}
		/* A copy left from an earlier compression is stale: the page left the compressed state on
		 * the client's side (a pin that gave up on a restore, an unpin that joined a purged range)
		 * and has been written since. It must never come back as this page's data. */
		for (uint64_t i = 0; i < n; i++)
			zforget(g, r, start + i);
		*j = (struct mvb_tier_job){
			.region_id = r->id, .fd = fd, .size = r->size, .start = start, .n = n, .stamp = t->stamp
		};
		r->jobs++;
		g->inflight++;
		if (g->workers) {
			mvb_tier_workers_submit(g->workers, j);
		} else {
			static unsigned char buf[MVB_TIER_JOB_PAGES * MV_PAGE_SIZE];
			mvb_tier_job_run(g->store, j, buf);
			tier_complete(g, j);
		}
		return true;
	}
	return false;
}

bool mvb_tier_busy(const struct mvb_registry *g)
{
	return g->tq_i < g->tq_n || g->inflight > 0;
}

static void tier_pump(struct mvb_registry *g)
{
	if (g->tier_threads && !g->workers && g->tq_i < g->tq_n &&
	    mvb_tier_workers_new(g->store, g->tier_threads, g->tier_efd, &g->workers) < 0)
		g->tier_threads = 0; /* no threads to be had: the loop compresses, as it always could */
	while ((!g->workers || g->inflight < g->tier_window) && tier_next(g))
		;
	if (g->tq_i >= g->tq_n)
		g->tq_n = g->tq_i = g->tq_off = 0;
}

static void tier_take_back(struct mvb_registry *g, bool wait)
{
	struct mvb_tier_job *j = g->workers ? mvb_tier_workers_done(g->workers, wait) : NULL;

	while (j) {
		struct mvb_tier_job *next = j->next;
		tier_complete(g, j);
		j = next;
	}
}

void mvb_tier_poll(struct mvb_registry *g)
{
	uint64_t n;

	if (g->tier_efd >= 0 && read(g->tier_efd, &n, sizeof(n)) < 0) {
		/* nothing signalled: a wakeup that an earlier poll already served */
	}
	uint64_t before = g->tier_jobs_done;
	tier_take_back(g, false);
	tier_pump(g);
	/* The store keeps to its budget during a long reclaim too, not only after it; it is asked for its
	 * size every TIER_BUDGET_CHECK jobs only, since its locks are the threads' too. */
	if (g->compress && (!mvb_tier_busy(g) || g->tier_jobs_done / TIER_BUDGET_CHECK != before / TIER_BUDGET_CHECK) &&
	    mvb_store_bytes(g) > g->store_budget)
		mvb_store_shrink(g, g->store_budget);
}

void mvb_tier_settle(struct mvb_registry *g)
{
	g->tq_n = g->tq_i = g->tq_off = 0;
	while (g->inflight && g->workers)
		tier_take_back(g, true);
}

static void tier_wait_region(struct mvb_registry *g, struct mvb_region *r)
{
	while (r->jobs && g->workers)
		tier_take_back(g, true);
}

int mvb_restore(struct mvb_registry *g, int fd, uint64_t pg0, uint64_t pg1, uint64_t *restored, uint64_t *lost)
{
	unsigned char buf[MV_STORE_PAGE_SIZE];
	struct mvr_ctl_view v;
	struct stat st;

	*restored = *lost = 0;
	if (fstat(fd, &st) < 0)
		return -EBADF;
	struct mvb_region *r = find_inode(g, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
	if (!r && !is_data_file(fd, &st))
		return -EINVAL; /* not a region at all */
	if (!r || r->hold_fd < 0)
		return 0; /* nothing of it here: the pinner counts its compressed pages as lost */
	if (pg0 >= r->npages || pg1 < pg0)
		return -EINVAL;
	if (pg1 >= r->npages)
		pg1 = r->npages - 1;
	view_of(r, &v);
	atomic_store(&r->ctl->purger_pid, getpid());
	for (uint64_t p = pg0; p <= pg1; p++) {
		uint64_t w = atomic_load(&v.pages[p]), h = r->zh ? r->zh[p] : 0;
		if (MV_PG_STATE(w) != MV_PG_COMPRESSED) {
			if (h && MV_PG_STATE(w) != MV_PG_COMPRESSING)
				zforget(g, r, p); /* the page moved on without us: the copy is stale */
			continue;
		}
		if (!h) {
			mvr_ctl_move(&v, p, w, MV_PG_PURGED);
			(*lost)++;
			continue;
		}
		if (!mvr_ctl_move(&v, p, w, MV_PG_COMPRESSING))
			continue; /* changed meanwhile */
		uint64_t cw = MV_PG_MAKE(MV_PG_COMPRESSING, MV_PG_STAMP(w));
		bool ok = mv_store_get(g->store, h, buf) == 0 && write_page(r, p, buf);
		zforget(g, r, p);
		if (ok) {
			/* Straight to pinned: only a pin of this page asks for it, and an unpinned page
			 * could be compressed again before the pinner gets to it. */
			mvr_ctl_move(&v, p, cw, MV_PG_PINNED);
			(*restored)++;
			r->restores++;
			g->restores++;
		} else {
			mvr_punch(r->hold_fd, p, 1); /* whatever pwrite left is not data */
			mvr_ctl_move(&v, p, cw, MV_PG_PURGED);
			(*lost)++;
		}
	}
	mvr_ctl_wake(&v);
	purger_done(r);
	return 0;
}

struct cand {
	struct mvb_region *r;
	uint64_t start, len, stamp;
};

struct cand_vec {
	struct cand *v;
	size_t n, cap;
	struct mvb_region *cur;
};

static int collect(void *opaque, uint64_t start, uint64_t len, uint64_t stamp)
{
	struct cand_vec *cv = opaque;

	if (cv->n == cv->cap) {
		size_t nc = cv->cap ? cv->cap * 2 : 256;
		struct cand *nv = realloc(cv->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		cv->v = nv;
		cv->cap = nc;
	}
	cv->v[cv->n++] = (struct cand){ cv->cur, start, len, stamp };
	return 0;
}

static int by_stamp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	return x->stamp < y->stamp ? -1 : x->stamp > y->stamp;
}

/* Runs that are adjacent in one region and next to each other in LRU order (a cache unpinned chunk
 * by chunk) are claimed together and punched with one call: the kernel's cost per call is not small. */
struct batch {
	struct mvb_region *r;
	uint64_t start, end; /* pages [start, end) claimed */
	size_t first, count; /* candidates claimed, in cv order */
	uint64_t *claimed;   /* pages claimed per candidate */
};

static uint64_t flush(struct mvb_registry *g, struct batch *b, struct cand_vec *cv, uint64_t *runs)
{
	struct mvr_ctl_view v;
	uint64_t done = 0;

	if (!b->r || b->end == b->start)
		goto out;
	view_of(b->r, &v);
	int e = mvr_punch(b->r->hold_fd, b->start, b->end - b->start);
	for (size_t i = 0; i < b->count; i++) {
		struct cand *c = &cv->v[b->first + i];
		mvr_ctl_complete(&v, c->start, b->claimed[i], c->stamp, e == 0);
	}
	if (e == 0) {
		done = b->end - b->start;
		b->r->purged_total += done;
		*runs += b->count;
	} else {
		b->r->flags |= MVB_F_UNPURGEABLE;
	}
	purger_done(b->r);
out:
	b->r = NULL;
	b->count = 0;
	return done;
}

uint64_t mvb_purge(struct mvb_registry *g, uint64_t target, bool second_chance, uint64_t *runs)
{
	struct cand_vec cv = { 0 };
	struct batch b = { 0 };
	uint64_t done = 0, pending = 0, queued = 0;
	pid_t self = getpid();

	*runs = 0;
	if (!target || (second_chance && mvb_tier_busy(g)))
		return 0;
	for (struct mvb_region *r = g->all; r; r = r->next) {
		struct mvr_ctl_view v;

		if (r->hold_fd < 0 || (r->flags & MVB_F_UNPURGEABLE))
			continue;
		view_of(r, &v);
		cv.cur = r;
		if (mvr_ctl_for_each_run(&v, collect, &cv) < 0)
			break; /* out of memory: purge what we found so far */
	}
	if (cv.n)
		qsort(cv.v, cv.n, sizeof(*cv.v), by_stamp);
	/* Without memory for batching, every run is its own batch. */
	uint64_t one;
	bool single = false;
	b.claimed = cv.n ? calloc(cv.n, sizeof(*b.claimed)) : NULL;
	if (!b.claimed) {
		b.claimed = &one;
		single = true;
	}

	for (size_t i = 0; i < cv.n && done + pending + queued < target; i++) {
		struct cand *c = &cv.v[i];
		struct mvb_region *r = c->r;
		struct mvr_ctl_view v;

		if (r->hold_fd < 0 || (r->flags & MVB_F_UNPURGEABLE))
			continue;
		/* The tier's runs are claimed a job at a time, later (tier_next); without memory to queue
		 * one, it is purged now. */
		if (second_chance && tier_applies(g, r) && tq_push(g, r->id, c->start, c->len, c->stamp) == 0) {
			queued += c->len;
			continue;
		}
		if (b.r != r || c->start != b.end) {
			done += flush(g, &b, &cv, runs);
			pending = 0;
			b.r = r;
			b.start = b.end = c->start;
			b.first = i;
			atomic_store(&r->ctl->purger_pid, self);
		}
		view_of(r, &v);
		uint64_t n = mvr_ctl_claim(&v, c->start, c->len, c->stamp);
		b.claimed[b.count++] = n;
		b.end += n;
		pending += n;
		if (single || n < c->len) {
			/* Someone changed the run while we claimed it: nothing further joins this batch. */
			done += flush(g, &b, &cv, runs);
			pending = 0;
		}
	}
	done += flush(g, &b, &cv, runs);
	if (!single)
		free(b.claimed);
	free(cv.v);
	g->purged_pages_total += done;
	g->reclaimed_pages += done;
	g->purge_runs += *runs;
	/* The index grows now, while it is small to copy, not in the middle of the reclaim: growing it
	 * there kept the loop for tens of ms (a quarter million entries moved). */
	if (queued)
		zrev_reserve(g, queued);
	tier_pump(g);
	if (g->compress && !mvb_tier_busy(g))
		mvb_store_shrink(g, g->store_budget);
	return done + queued;
}
