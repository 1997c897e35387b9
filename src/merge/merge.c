/* SPDX-License-Identifier: MIT */
/* Same-page merging inside one process.
 *
 * A merged page is a MAP_PRIVATE mapping of one page of the context's store, a memfd holding one
 * canonical copy of each merged content: every site maps the same page-cache page, and the kernel's
 * own copy-on-write gives a writer its private copy. Sites that share a run of consecutive canonical
 * pages are mapped with one mmap, so duplicated runs cost one mapping, not one per page.
 *
 * Merging a page: userfaultfd write-protect it, compare it byte for byte with the canonical page, map the
 * canonical page over it, wake anyone who tried to write meanwhile (their write then lands on a private
 * copy of the canonical page, whose bytes are the ones they wrote over). Zero pages are zapped with
 * MADV_DONTNEED instead, so that reads map the kernel's zero page.
 *
 * Nothing here trusts that the application left its memory alone: every scan re-checks the mapping of
 * each page (PROCMAP_QUERY) and its pagemap bits, reads through process_vm_readv (an unmapped or
 * PROT_NONE page is an error, not a crash), and drops sites the application unmapped or rewrote.
 */
#define _GNU_SOURCE
#include "merge/merge_gate.h"
#include "merge_internal.h"

/* ---- stores this process has had ---- */

/* Every store (or partition file) a context of this process ever mapped, including contexts it
 * inherited across fork, whose merged pages its memory may still map. Not under all_lock: register
 * looks here with a context's lock held, and fork takes all_lock before those. */
#define MAX_KNOWN_STORES 64
static pthread_mutex_t stores_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	uint64_t dev, ino;
	pid_t owner; /* the process whose live context maps it, 0 once that context is gone */
} known_stores[MAX_KNOWN_STORES];
static unsigned nknown_stores;

static void store_set_owner(uint64_t dev, uint64_t ino, pid_t owner)
{
	pthread_mutex_lock(&stores_lock);
	unsigned i = 0;
	while (i < nknown_stores && !(known_stores[i].dev == dev && known_stores[i].ino == ino))
		i++;
	if (i == nknown_stores && nknown_stores < MAX_KNOWN_STORES) {
		known_stores[i] = (__typeof__(known_stores[0])){ dev, ino, 0 };
		__atomic_store_n(&nknown_stores, i + 1, __ATOMIC_RELEASE); /* mvm_any_store reads it unlocked */
	}
	if (i < nknown_stores)
		known_stores[i].owner = owner;
	pthread_mutex_unlock(&stores_lock);
}

static void store_remember(uint64_t dev, uint64_t ino)
{
	store_set_owner(dev, ino, getpid());
}

/* A store whose merged pages the caller may take back as its own: one of a context it inherited
 * across fork or one that is gone, never a live context's of this process. */
static bool store_adoptable(uint64_t dev, uint64_t ino)
{
	bool yes = false;
	pthread_mutex_lock(&stores_lock);
	for (unsigned i = 0; i < nknown_stores; i++)
		if (known_stores[i].dev == dev && known_stores[i].ino == ino)
			yes = known_stores[i].owner != getpid();
	pthread_mutex_unlock(&stores_lock);
	return yes;
}

bool mvm_any_store(void)
{
	return __atomic_load_n(&nknown_stores, __ATOMIC_ACQUIRE) != 0;
}

bool mvm_store_known(uint64_t dev, uint64_t ino)
{
	bool yes = false;
	pthread_mutex_lock(&stores_lock);
	for (unsigned i = 0; i < nknown_stores && !yes; i++)
		yes = known_stores[i].dev == dev && known_stores[i].ino == ino;
	pthread_mutex_unlock(&stores_lock);
	return yes;
}

/* ---- fork: contexts are per process ---- */

static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mv_merge *all_ctx;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void drop_in_child(struct mv_merge *m);

static void fork_prepare(void)
{
	pthread_mutex_lock(&all_lock);
	for (struct mv_merge *m = all_ctx; m; m = m->next_ctx) {
		pthread_mutex_lock(&m->lock);
		/* The child maps every canonical page live now; neither side may free or reuse one. */
		for (uint32_t id = 0; id < m->canon_used; id++)
			if (m->canon[id].refs)
				m->canon[id].flags |= C_INHERITED;
		for (uint32_t id = 0; m->part && m->live_canon && id < MV_PART_CAP; id++)
			if (m->ledger[id] & ~MV_PART_INHERITED)
				__atomic_fetch_or(&m->ledger[id], MV_PART_INHERITED, __ATOMIC_RELAXED);
	}
	pthread_mutex_lock(&stores_lock); /* last: all_lock, then a context's lock, then this */
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&stores_lock);
	for (struct mv_merge *m = all_ctx; m; m = m->next_ctx)
		pthread_mutex_unlock(&m->lock);
	pthread_mutex_unlock(&all_lock);
}

static void fork_child(void)
{
	pthread_mutex_unlock(&stores_lock);
	for (struct mv_merge *m = all_ctx; m; m = m->next_ctx) {
		drop_in_child(m);
		pthread_mutex_unlock(&m->lock);
	}
	pthread_mutex_unlock(&all_lock);
}

struct mv_merge *mvm_contexts_lock(void)
{
	pthread_mutex_lock(&all_lock);
	return all_ctx;
}

void mvm_contexts_unlock(void)
{
	pthread_mutex_unlock(&all_lock);
}

static void atfork_init(void)
{
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

void mvm_atfork_register(void)
{
	pthread_once(&atfork_once, atfork_init);
}

/* ---- the published board ---- */

/* A process that exits without letting go of its contexts takes their boards with it; only a killed
 * one leaves them, for the next merging process to sweep. */
static void boards_at_exit(void)
{
	pthread_mutex_lock(&all_lock);
	for (struct mv_merge *m = all_ctx; m; m = m->next_ctx)
		if (m->board && m->board_path[0] && m->board->pid == (uint32_t)getpid())
			unlink(m->board_path);
	pthread_mutex_unlock(&all_lock);
}

static void fill_stats(struct mv_merge *m, struct mv_merge_stats *s);

static void board_open(struct mv_merge *m)
{
	/* best effort: merging works without it, only `memvisor merge` cannot see this context */
	static atomic_uint seq;
	char dir[200];
	if (mvu_runtime_path(dir, sizeof(dir), "merge", 1) < 0)
		return;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return;
	/* A context of a killed process leaves its board behind; each process clears up once. */
	static atomic_bool board_swept;
	if (!atomic_exchange(&board_swept, true)) {
		mvm_board_sweep(dir);
		atexit(boards_at_exit);
	}
	snprintf(m->board_path, sizeof(m->board_path), "%s/%d-%u.board", dir, (int)getpid(), atomic_fetch_add(&seq, 1));
	int fd = open(m->board_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return;
	void *p = MAP_FAILED;
	if (ftruncate(fd, sizeof(struct mvm_merge_board)) == 0)
		p = mmap(NULL, sizeof(struct mvm_merge_board), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	(void)mvu_sys_close(fd);
	if (p == MAP_FAILED) {
		unlink(m->board_path);
		return;
	}
	m->board = p;
	m->board->magic = MV_BOARD_MAGIC;
	m->board->version = MV_BOARD_VERSION;
	m->board->pid = (uint32_t)getpid();
	m->board->starttime = mvm_proc_starttime((int)getpid());
	snprintf(m->board->partition, sizeof(m->board->partition), "%s", m->part ? m->part_name : "(process)");
}

static void board_close(struct mv_merge *m)
{
	if (!m->board)
		return;
	munmap(m->board, sizeof(*m->board));
	m->board = NULL;
	unlink(m->board_path);
}

void mvm_publish(struct mv_merge *m)
{
	struct mvm_merge_board *b = m->board;
	if (!b)
		return;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	/* readers are other processes copying the page with pread: an odd count tells them to retry */
	__atomic_store_n(&b->seq, b->seq + 1, __ATOMIC_SEQ_CST);
	fill_stats(m, &b->stats);
	b->knobs = m->knobs;
	b->scanner_running = m->scanner_running;
	b->updated_realtime_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	__atomic_store_n(&b->seq, b->seq + 1, __ATOMIC_SEQ_CST);
}

/* ---- public API ---- */

static void part_unmap(struct mv_merge *m)
{
	if (m->member_map)
		munmap(m->member_map, MV_PART_MEMBER_SIZE);
	if (m->part_map)
		munmap(m->part_map, MV_PART_FILE_SIZE);
	if (m->hints)
		munmap(m->hints, MV_PART_HINTS_SIZE);
	if (m->member_fd >= 0)
		(void)mvu_sys_close(m->member_fd);
	if (m->hints_fd >= 0)
		(void)mvu_sys_close(m->hints_fd);
	m->member_map = m->part_map = NULL;
	m->hints = NULL;
	m->member_fd = m->hints_fd = -1;
}

/* Becomes a member of the broker's partition `name`: store_fd becomes the partition file. */
static int part_join(struct mv_merge *m, const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n >= MV_PART_NAME_MAX)
		return -EINVAL;
	int mfd = memfd_create("memvisor-merge-member", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mfd < 0)
		return -errno;
	m->member_fd = mfd;
	if (ftruncate(mfd, (off_t)MV_PART_MEMBER_SIZE) < 0 || fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
		return -errno;
	void *mm = mmap(NULL, MV_PART_MEMBER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, mfd, 0);
	if (mm == MAP_FAILED)
		return -errno;
	m->member_map = mm;
	m->mhead = mm;
	m->ledger = (uint32_t *)(m->member_map + MV_PART_LEDGER_OFF);
	struct mvw_req_merge_join req = { { 0 } };
	memcpy(req.name, name, n);
	struct mvw_msg rep;
	int fds[2] = { -1, -1 };
	int r = mvc_request(MV_MSG_MERGE_JOIN, &req, sizeof(req), mfd, &rep, fds);
	if (r < 0)
		return r;
	m->store_fd = fds[0];
	m->hints_fd = fds[1];
	if (m->store_fd < 0 || m->hints_fd < 0)
		return -EPROTO;
	m->member_id = rep.u.merge_join_rep.member_id;
	m->member_slot = rep.u.merge_join_rep.slot;
	m->member_gen = rep.u.merge_join_rep.gen;
	struct stat st;
	if (fstat(m->store_fd, &st) < 0 || st.st_size != (off_t)MV_PART_FILE_SIZE ||
	    m->member_slot >= MV_PART_MAX_MEMBERS)
		return -EPROTO;
	void *pm = mmap(NULL, MV_PART_FILE_SIZE, PROT_READ, MAP_SHARED | MAP_NORESERVE, m->store_fd, 0);
	if (pm == MAP_FAILED)
		return -errno;
	m->part_map = pm;
	void *hm = mmap(NULL, MV_PART_HINTS_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, m->hints_fd, 0);
	if (hm == MAP_FAILED)
		return -errno;
	m->hints = hm;
	m->phead = pm;
	if (m->phead->magic != MV_PART_MAGIC || m->phead->cap != MV_PART_CAP ||
	    m->phead->index_slots != MV_PART_INDEX_SLOTS || m->phead->store_off != MV_PART_STORE_OFF)
		return -EPROTO;
	m->pindex = (const struct mvm_part_slot *)(m->part_map + MV_PART_INDEX_OFF);
	m->store = m->part_map + MV_PART_STORE_OFF; /* read-only: only the broker writes canonical pages */
	m->store_base = MV_PART_STORE_OFF;
	m->store_dev = st.st_dev;
	m->store_ino = st.st_ino;
	store_remember(m->store_dev, m->store_ino);
	snprintf(m->part_name, sizeof(m->part_name), "%s", name);
	m->part = true;
	return 0;
}

MV_EXPORT int mv_merge_new(const char *partition, unsigned flags, mv_merge **ret)
{
	if (!ret || flags)
		return -EINVAL;
	if (partition && (!*partition || strlen(partition) >= MV_PART_NAME_MAX))
		return -EINVAL;
	pthread_once(&atfork_once, atfork_init);
	struct mv_merge *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	int r;
	atomic_init(&m->refs, 1);
	atomic_init(&m->api_waiting, 0);
	m->uffd = m->maps_fd = m->pagemap_fd = m->store_fd = m->member_fd = m->hints_fd = -1;
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->wake, NULL);
	r = mvm_uffd_setup(m);
	if (r < 0)
		goto fail;
	m->maps_fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	m->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (m->maps_fd < 0 || m->pagemap_fd < 0) {
		r = -errno;
		goto fail;
	}
	m->have_procmap_query = true;
	if (partition) {
		r = part_join(m, partition);
		if (r < 0)
			goto fail;
	} else {
		m->store_fd = memfd_create("memvisor-merge", MFD_CLOEXEC);
		struct stat st;
		if (m->store_fd < 0 || fstat(m->store_fd, &st) < 0) {
			r = -errno;
			goto fail;
		}
		m->store_dev = st.st_dev;
		m->store_ino = st.st_ino;
		store_remember(m->store_dev, m->store_ino);
	}
	m->buf = mmap(NULL, (BATCH + VBATCH + 1) * MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	if (m->buf == MAP_FAILED) {
		m->buf = NULL;
		r = -ENOMEM;
		goto fail;
	}
	m->vbuf = m->buf + BATCH * MV_PAGE_SIZE;
	m->cmpbuf = m->vbuf + VBATCH * MV_PAGE_SIZE;
	memset(m->cmpbuf, 0, MV_PAGE_SIZE);
	m->zero_hash = mvm_page_hash(m->cmpbuf);
	m->map_limit = mvm_read_max_map_count();
	m->map_count = m->map_estimate = mvm_count_maps();
	m->knobs = (struct mv_merge_knobs){
		.sleep_usecs = 20000,
		.pages_to_scan = 100,
		.max_pages_to_merge = 0,
		.run = 0,
		.scan_flags = 0,
		.max_page_sharing = 256,
		.map_reserve = (uint32_t)(m->map_limit / 4),
	};
	board_open(m);
	mvm_publish(m);
	pthread_mutex_lock(&all_lock);
	m->next_ctx = all_ctx;
	all_ctx = m;
	pthread_mutex_unlock(&all_lock);
	*ret = m;
	return 0;
fail:
	if (m->uffd >= 0)
		(void)mvu_sys_close(m->uffd);
	if (m->maps_fd >= 0)
		(void)mvu_sys_close(m->maps_fd);
	if (m->pagemap_fd >= 0)
		(void)mvu_sys_close(m->pagemap_fd);
	if (m->store_fd >= 0)
		(void)mvu_sys_close(m->store_fd);
	part_unmap(m);
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->wake);
	free(m);
	return r;
}

MV_EXPORT mv_merge *mv_merge_ref(mv_merge *m)
{
	if (m)
		atomic_fetch_add(&m->refs, 1);
	return m;
}

static void range_free(struct range *rg)
{
	if (!rg)
		return;
	free(rg->site);
	free(rg->csum);
	free(rg->flags);
	free(rg);
}

/* Is all of [a, a + len) a mapping of the file of dev and ino (the store it was merged into, this
 * context's or one inherited)? */
static bool still_mapped_from(struct mv_merge *m, uintptr_t a, size_t len, uint64_t dev, uint64_t ino)
{
	for (uintptr_t at = a; at < a + len;) {
		struct vma v;
		if (mvm_vma_at(m, at, &v) < 0 || v.kind == VMA_NONE || v.kind == VMA_ANON || v.start > at ||
		    v.dev != dev || v.ino != ino)
			return false;
		at = v.end;
	}
	return true;
}

/* Copies [a, a + len) of a store mapping into private anonymous memory put in its place, with the same
 * bytes, protection and flags (a PROT_NONE page is made readable just long enough to be copied). */
static bool restore_run(struct mv_merge *m, uintptr_t a, size_t len, int prot, unsigned fl)
{
	bool readable = prot & PROT_READ, done = false;
	void *tmp = mvm_room_map(len, PROT_READ | PROT_WRITE, 0);
	if (tmp == MAP_FAILED)
		return false;
	bool wp = m && mvm_uffd_wp(m, a, len, true) == 0;
	struct vma was = { 0 };
	bool known = m && mvm_vma_at(m, a, &was) == 0 && was.kind != VMA_NONE && was.kind != VMA_ANON;
	if ((readable || mvu_sys_mprotect((void *)a, len, prot | PROT_READ) == 0) &&
	    mvm_read_self(tmp, a, len) == (ssize_t)len && mprotect(tmp, len, prot) == 0) {
		mvm_vmflags_apply((uintptr_t)tmp, len, fl);
		if (fl & VMF_LOCKED)
			(void)mlock(tmp, len);
		/* The copy replaces whatever is at a by then: still the store's mapping, asked with the gate
		 * closed, so that no munmap and mmap of the application's comes in between (merge_gate.h). */
		bool closed = mvm_gate_close();
		if (!m || (known && still_mapped_from(m, a, len, was.dev, was.ino)))
			done = mvu_sys_mremap_fixed(tmp, len, (void *)a) != MAP_FAILED;
		mvm_gate_open(closed);
		if (done)
			mvm_room_moved(tmp, len);
	}
	if (!done && !readable)
		(void)mvu_sys_mprotect((void *)a, len, prot);
	if (wp)
		mvm_uffd_wake(m, a, len);
	if (!done)
		mvm_room_unmap(tmp, len);
	return done;
}

bool mvm_restore_vma(struct mv_merge *m, uintptr_t a, size_t len, int prot, unsigned fl)
{
	return restore_run(m, a, len, prot, fl);
}

/* Is page pm of a store mapping a private copy? Only the canonical page (or nothing yet) can be copied
 * away: a private copy may be pinned by the kernel or a device, which no copy would follow. */
static bool private_copy(uint64_t pm)
{
	return (pm & MV_PM_SWAPPED) || ((pm & MV_PM_PRESENT) && !(pm & MV_PM_FILE));
}

static bool store_mapping(struct mv_merge *m, const struct vma *v, bool any_store)
{
	return (v->kind == VMA_STORE || (any_store && v->kind == VMA_OTHER && store_adoptable(v->dev, v->ino))) &&
	       !(v->prot & MV_VMA_SHARED);
}

static bool has_private_copies(struct mv_merge *m, uintptr_t start, uintptr_t end, bool any_store)
{
	for (uintptr_t a = start; a < end;) {
		struct vma v;
		if (mvm_vma_at(m, a, &v) < 0)
			return true;
		uintptr_t e = v.end < end ? v.end : end;
		for (uintptr_t p = a; store_mapping(m, &v, any_store) && p < e;) {
			uint64_t pm[BATCH];
			size_t n = (e - p) / MV_PAGE_SIZE < BATCH ? (e - p) / MV_PAGE_SIZE : BATCH;
			if (pread(m->pagemap_fd, pm, n * 8, (off_t)(p / MV_PAGE_SIZE) * 8) != (ssize_t)(n * 8))
				return true;
			for (size_t i = 0; i < n; i++)
				if (private_copy(pm[i]))
					return true;
			p += n * MV_PAGE_SIZE;
		}
		a = e > a ? e : a + MV_PAGE_SIZE;
	}
	return false;
}

/* Puts private anonymous memory in place of every mapping of the store in [start, end). Pages written
 * since they merged (private copies already) stay where they are. False if anything of the store is
 * left mapped: its canonical pages must then stay. */
static bool restore_mappings(struct mv_merge *m, uintptr_t start, uintptr_t end, bool any_store)
{
	uintptr_t a = start;
	bool all = true;
	size_t npages = (end - start) / MV_PAGE_SIZE;
	bool *pinned = NULL;

	if (any_store) /* an inherited context's memory: no range of ours recorded its flags */
		(void)mvm_vmflags_refresh(m, true);
	if (has_private_copies(m, start, end, any_store)) {
		/* only a private copy nothing pins may be copied away */
		pinned = malloc(npages ? npages : 1);
		if (!pinned || mvm_pins_probe(m, start, npages, pinned) < 0) {
			free(pinned);
			pinned = NULL;
		}
	}
	while (a < end) {
		struct vma v;
		if (mvm_vma_at(m, a, &v) < 0) {
			all = false; /* cannot tell what is mapped here: assume the worst */
			a += MV_PAGE_SIZE;
			continue;
		}
		uintptr_t e = v.end < end ? v.end : end;
		if (store_mapping(m, &v, any_store)) {
			uintptr_t fl_end;
			unsigned fl = !any_store        ? mvm_merged_vmflags(m, a)
				      : m->vmflags_pass ? mvm_vmflags_at(m, a, &fl_end) & (VMF_DONTCOPY | VMF_DONTDUMP)
							: 0;
			/* MADV_COLD, a hint elsewhere, is refused exactly on mlocked memory */
			if (mvu_sys_madvise((void *)a, e - a, MADV_COLD) < 0 && errno == EINVAL)
				fl |= VMF_LOCKED;
			for (uintptr_t p = a; p < e;) {
				uint64_t pm[BATCH];
				size_t n = (e - p) / MV_PAGE_SIZE < BATCH ? (e - p) / MV_PAGE_SIZE : BATCH;
				if (pread(m->pagemap_fd, pm, n * 8, (off_t)(p / MV_PAGE_SIZE) * 8) !=
				    (ssize_t)(n * 8)) {
					all = false;
					break;
				}
				size_t base = (p - start) / MV_PAGE_SIZE;
				for (size_t i = 0; i < n; i++)
					if (private_copy(pm[i]) && pinned && !pinned[base + i])
						pm[i] = MV_PM_PRESENT | MV_PM_FILE; /* nothing pins it: copied */
				for (size_t i = 0; i < n;) {
					size_t j = i;
					bool copy = private_copy(pm[i]);
					while (j < n && private_copy(pm[j]) == copy)
						j++;
					if (copy)
						all = false;
					else
						all = restore_run(m, p + i * MV_PAGE_SIZE, (j - i) * MV_PAGE_SIZE,
								  mvm_prot_of(&v), fl) &&
						      all;
					i = j;
				}
				p += n * MV_PAGE_SIZE;
			}
		}
		a = e > a ? e : a + MV_PAGE_SIZE;
	}
	free(pinned);
	return all;
}

static bool restore_private(struct mv_merge *m, uintptr_t start, uintptr_t end)
{
	return restore_mappings(m, start, end, false);
}

/* The same for mappings of any store this process's contexts ever had (an inherited context's). */
static bool restore_private_any(struct mv_merge *m, uintptr_t start, uintptr_t end)
{
	return restore_mappings(m, start, end, true);
}

static void span_update(struct mv_merge *m)
{
	uintptr_t lo = UINTPTR_MAX, hi = 0;
	for (uint32_t i = 0; i < m->nranges; i++) {
		struct range *rg = m->ranges[i];
		if (!rg)
			continue;
		lo = rg->start < lo ? rg->start : lo;
		hi = rg->start + rg->npages * MV_PAGE_SIZE > hi ? rg->start + rg->npages * MV_PAGE_SIZE : hi;
	}
	atomic_store(&m->span_lo, hi ? lo : 0);
	atomic_store(&m->span_hi, hi);
}

static void unregister_range(struct mv_merge *m, uint32_t ri)
{
	struct range *rg = m->ranges[ri];
	size_t len = rg->npages * MV_PAGE_SIZE;
	bool restored = restore_private(m, rg->start, rg->start + len);
	for (size_t p = 0; p < rg->npages; p++) {
		/* A page left mapped from the store keeps its canonical page: its data is never destroyed. */
		if (!restored && rg->site[p] && rg->site[p] != SITE_ZERO)
			mvm_canon_keep(m, rg->site[p] - 1);
		if (rg->site[p])
			mvm_site_clear(m, rg, p);
		mvm_set_volatile(m, rg, p, false);
	}
	struct uffdio_range ur = { .start = rg->start, .len = len };
	(void)mvu_sys_ioctl(m->uffd, UFFDIO_UNREGISTER, &ur);
	m->ranges[ri] = NULL;
	range_free(rg);
	mvm_unstable_reset(m);
	while (m->nranges && !m->ranges[m->nranges - 1])
		m->nranges--;
	span_update(m);
}

static void stop_scanner(struct mv_merge *m)
{
	if (!m->scanner_running)
		return;
	m->scanner_stop = true;
	pthread_cond_broadcast(&m->wake);
	pthread_t t = m->scanner;
	pthread_mutex_unlock(&m->lock);
	pthread_join(t, NULL);
	pthread_mutex_lock(&m->lock);
	m->scanner_running = false;
	m->scanner_stop = false;
}

MV_EXPORT mv_merge *mv_merge_unref(mv_merge *m)
{
	if (!m || atomic_fetch_sub(&m->refs, 1) != 1)
		return NULL;
	pthread_mutex_lock(&all_lock);
	for (struct mv_merge **pp = &all_ctx; *pp; pp = &(*pp)->next_ctx)
		if (*pp == m) {
			*pp = m->next_ctx;
			break;
		}
	pthread_mutex_unlock(&all_lock);
	api_lock(m);
	stop_scanner(m);
	for (uint32_t r = 0; r < m->nranges; r++)
		if (m->ranges[r])
			unregister_range(m, r);
	for (size_t i = 0; i < m->npend; i++)
		mvm_pend_drop(m, &m->pend[i]);
	board_close(m);
	if (m->part && m->member_map) {
		struct mvw_req_merge_leave req = { .member_id = m->member_id };
		(void)mvc_request(MV_MSG_MERGE_LEAVE, &req, sizeof(req), -1, NULL, NULL);
	}
	pthread_mutex_unlock(&m->lock);
	if (m->store && !m->part)
		mvm_room_unmap(m->store, (size_t)m->store_cap * MV_PAGE_SIZE);
	part_unmap(m);
	if (m->buf)
		munmap(m->buf, (BATCH + VBATCH + 1) * MV_PAGE_SIZE);
	mvm_scratch_free(m);
	store_set_owner(m->store_dev, m->store_ino, 0); /* what still maps it may be taken back */
	(void)mvu_sys_close(m->store_fd);
	(void)mvu_sys_close(m->uffd);
	(void)mvu_sys_close(m->maps_fd);
	(void)mvu_sys_close(m->pagemap_fd);
	free(m->canon);
	free(m->free_ids);
	free(m->stable);
	free(m->unstable);
	free(m->pend);
	free(m->vmflags);
	free(m->ranges);
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->wake);
	free(m);
	return NULL;
}

static void drop_in_child(struct mv_merge *m)
{
	/* The uffd belongs to the parent's mm: using it here would write-protect the parent's pages. The
	 * child keeps its merged pages (plain copy-on-write mappings) but no registrations. */
	if (m->uffd >= 0)
		(void)mvu_sys_close(m->uffd);
	m->uffd = -1;
	m->scratch[0] = m->scratch[1] = NULL; /* not inherited (MADV_DONTFORK) */
	if (m->board)                         /* the parent's: not ours to rewrite or remove */
		munmap(m->board, sizeof(*m->board));
	m->board = NULL;
	if (m->part) {
		/* the ledger and the membership are the parent's */
		munmap(m->member_map, MV_PART_MEMBER_SIZE);
		m->member_map = NULL;
		m->ledger = NULL;
		m->mhead = NULL;
	}
	for (uint32_t r = 0; r < m->nranges; r++) {
		range_free(m->ranges[r]);
		m->ranges[r] = NULL;
	}
	m->nranges = 0;
	span_update(m);
	m->npend = 0;
	m->scanner_running = false;
	m->live_canon = m->canon_refs = 0;
	m->zero_pages = m->volatile_pages = m->unshared = 0;
	m->unstable_n = 0;
	if (m->unstable)
		memset(m->unstable, 0xff, (size_t)m->unstable_cap * sizeof(*m->unstable));
	m->stable_n = 0;
	if (m->stable)
		memset(m->stable, 0, (size_t)m->stable_cap * sizeof(*m->stable));
	/* every id handed out so far may be mapped by the parent: never reuse or punch one here */
	for (uint32_t id = 0; id < m->canon_used; id++)
		m->canon[id] = (struct canon){ .flags = C_INHERITED };
	m->nfree = 0;
	pthread_cond_init(&m->wake, NULL);
}

static int check_usable(struct mv_merge *m)
{
	return m->uffd < 0 ? -ECHILD : 0;
}

MV_EXPORT int mv_merge_register(mv_merge *m, void *addr, size_t len)
{
	if (!m)
		return -EINVAL;
	uintptr_t a = (uintptr_t)addr;
	if (!len || a % MV_PAGE_SIZE || len % MV_PAGE_SIZE || a + len < a)
		return -EINVAL;
	if (len / MV_PAGE_SIZE > UINT32_MAX)
		return -E2BIG;
	api_lock(m);
	int r = check_usable(m);
	if (r < 0)
		goto out;
	for (uint32_t i = 0; i < m->nranges; i++) {
		struct range *o = m->ranges[i];
		if (o && a < o->start + o->npages * MV_PAGE_SIZE && o->start < a + len) {
			r = -EEXIST;
			goto out;
		}
	}
	/* Memory merged by a context this process inherited across fork (or one it let go of) maps that
	 * context's store: it becomes private anonymous memory again, so that it can be merged anew. */
	for (uintptr_t p = a; p < a + len;) {
		struct vma v;
		r = mvm_vma_at(m, p, &v);
		if (r < 0)
			goto out;
		if (v.kind == VMA_NONE)
			break; /* a hole: refused below */
		uintptr_t e = v.end < a + len ? v.end : a + len;
		if (v.kind != VMA_ANON && v.kind != VMA_NONE && !(v.prot & MV_VMA_SHARED) &&
		    store_adoptable(v.dev, v.ino)) {
			/* write-protected while it is copied, so that no racing write is lost; without that,
			 * it stays as it is and is refused below */
			if (mvm_uffd_register(m, p, e - p) < 0) {
				p = e;
				continue;
			}
			bool ok = restore_private_any(m, p, e);
			struct uffdio_range ur = { .start = p, .len = e - p };
			(void)mvu_sys_ioctl(m->uffd, UFFDIO_UNREGISTER, &ur);
			if (!ok) {
				r = -ENOMEM;
				goto out;
			}
		}
		p = e > p ? e : p + MV_PAGE_SIZE;
	}
	for (uintptr_t p = a; p < a + len;) {
		struct vma v;
		r = mvm_vma_at(m, p, &v);
		if (r < 0)
			goto out;
		if (v.kind == VMA_NONE) {
			r = -ENOMEM;
			goto out;
		}
		if (v.kind != VMA_ANON || (v.prot & MV_VMA_SHARED) ||
		    (v.prot & (MV_VMA_READ | MV_VMA_WRITE)) != (MV_VMA_READ | MV_VMA_WRITE)) {
			r = -EACCES;
			goto out;
		}
		p = v.end;
	}
	struct range *rg = calloc(1, sizeof(*rg));
	if (!rg) {
		r = -ENOMEM;
		goto out;
	}
	rg->start = a;
	rg->npages = len / MV_PAGE_SIZE;
	rg->site = calloc(rg->npages, sizeof(*rg->site));
	rg->csum = calloc(rg->npages, sizeof(*rg->csum));
	rg->flags = calloc(rg->npages, 1);
	uint32_t slot = m->nranges;
	for (uint32_t i = 0; i < m->nranges; i++)
		if (!m->ranges[i]) {
			slot = i;
			break;
		}
	if (slot == m->nranges) {
		struct range **n = realloc(m->ranges, (m->nranges + 1) * sizeof(*n));
		if (n)
			m->ranges = n;
		if (!n)
			slot = UINT32_MAX;
	}
	if (!rg->site || !rg->csum || !rg->flags || slot == UINT32_MAX) {
		range_free(rg);
		r = -ENOMEM;
		goto out;
	}
	r = mvm_uffd_register(m, a, len);
	if (r < 0) {
		range_free(rg);
		if (r == -EINVAL)
			r = -EACCES;
		goto out;
	}
	m->ranges[slot] = rg;
	if (slot == m->nranges)
		m->nranges++;
	/* canonical ids never exceed half the registered pages plus the pages of one batch */
	r = mvm_store_grow(m,
			   (uint32_t)((mvm_total_pages(m) / 2 + BATCH) > UINT32_MAX ? UINT32_MAX
										    : mvm_total_pages(m) / 2 + BATCH));
	if (r < 0) {
		m->ranges[slot] = NULL;
		struct uffdio_range ur = { .start = a, .len = len };
		(void)mvu_sys_ioctl(m->uffd, UFFDIO_UNREGISTER, &ur);
		range_free(rg);
		goto out;
	}
	span_update(m);
	m->map_count = m->map_estimate = mvm_count_maps();
	mvm_publish(m);
	r = 0;
out:
	pthread_mutex_unlock(&m->lock);
	return r;
}

MV_EXPORT int mv_merge_unregister(mv_merge *m, void *addr, size_t len)
{
	if (!m)
		return -EINVAL;
	api_lock(m);
	int r = -ENOENT;
	for (uint32_t i = 0; i < m->nranges; i++) {
		struct range *rg = m->ranges[i];
		if (rg && rg->start == (uintptr_t)addr && rg->npages * MV_PAGE_SIZE == len) {
			mvm_flush(m);
			unregister_range(m, i);
			mvm_publish(m);
			r = 0;
			break;
		}
	}
	pthread_mutex_unlock(&m->lock);
	return r;
}

MV_EXPORT int mv_merge_scan(mv_merge *m, unsigned pages_to_scan, unsigned max_pages_to_merge, unsigned flags)
{
	if (!m || (flags & ~MV_MERGE_STABLE))
		return -EINVAL;
	api_lock(m);
	int r = check_usable(m);
	if (r == 0)
		r = mvm_scan_locked(m, pages_to_scan, max_pages_to_merge, flags);
	pthread_mutex_unlock(&m->lock);
	return r;
}

static void *scanner_main(void *arg)
{
	struct mv_merge *m = arg;
	pthread_mutex_lock(&m->lock);
	while (!m->scanner_stop) {
		struct mv_merge_knobs k = m->knobs;
		mvm_scan_locked(m, k.pages_to_scan, k.max_pages_to_merge, k.scan_flags);
		if (k.sleep_usecs) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)k.sleep_usecs * 1000u;
			ts.tv_sec += (time_t)(ns / 1000000000u);
			ts.tv_nsec = (long)(ns % 1000000000u);
			pthread_cond_timedwait(&m->wake, &m->lock, &ts);
		} else {
			/* let registration and statistics in between batches */
			pthread_mutex_unlock(&m->lock);
			do
				sched_yield();
			while (atomic_load(&m->api_waiting));
			pthread_mutex_lock(&m->lock);
		}
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

MV_EXPORT int mv_merge_set_knobs(mv_merge *m, const struct mv_merge_knobs *k)
{
	if (!m || !k || k->run > 1 || k->pages_to_scan == 0 || k->max_page_sharing < 2 ||
	    (k->scan_flags & ~MV_MERGE_STABLE))
		return -EINVAL;
	api_lock(m);
	int r = check_usable(m);
	if (r < 0)
		goto out;
	if (k->map_reserve >= m->map_limit) {
		r = -EINVAL;
		goto out;
	}
	m->knobs = *k;
	if (k->run && !m->scanner_running) {
		m->scanner_stop = false;
		r = -pthread_create(&m->scanner, NULL, scanner_main, m);
		if (r == 0)
			m->scanner_running = true;
		else
			m->knobs.run = 0;
	} else if (!k->run) {
		stop_scanner(m);
	} else {
		pthread_cond_broadcast(&m->wake);
	}
	mvm_publish(m);
out:
	pthread_mutex_unlock(&m->lock);
	return r;
}

MV_EXPORT int mv_merge_get_knobs(mv_merge *m, struct mv_merge_knobs *k)
{
	if (!m || !k)
		return -EINVAL;
	api_lock(m);
	*k = m->knobs;
	k->run = m->scanner_running;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

/* Find merges broken since the last look (COW, munmap, mprotect) so the counts are exact. */
static void refresh(struct mv_merge *m)
{
	uint64_t pm[BATCH];
	for (uint32_t ri = 0; ri < m->nranges; ri++) {
		struct range *rg = m->ranges[ri];
		if (!rg || (!rg->merged && !rg->zero))
			continue;
		struct vma v = { 0 };
		for (size_t p0 = 0; p0 < rg->npages; p0 += BATCH) {
			size_t n = rg->npages - p0 < BATCH ? rg->npages - p0 : BATCH;
			uintptr_t base = rg->start + p0 * MV_PAGE_SIZE;
			if (pread(m->pagemap_fd, pm, n * 8, (off_t)(base / MV_PAGE_SIZE) * 8) != (ssize_t)(n * 8))
				memset(pm, 0, sizeof(pm));
			for (size_t i = 0; i < n; i++) {
				if (!rg->site[p0 + i])
					continue;
				uintptr_t a = base + i * MV_PAGE_SIZE;
				if (a >= v.end || a < v.start)
					if (mvm_vma_at(m, a, &v) < 0)
						v = (struct vma){ .start = a,
								  .end = a + MV_PAGE_SIZE,
								  .kind = VMA_NONE };
				if (!mvm_site_intact(m, rg, p0 + i, pm[i], &v))
					mvm_site_clear(m, rg, p0 + i);
			}
		}
	}
}

static int64_t metadata_bytes(struct mv_merge *m)
{
	/* what grows with the memory merged, like the kernel's rmap_items; not the fixed scan buffers */
	int64_t b = (int64_t)m->store_cap * (int64_t)(sizeof(struct canon) + 4) +
		    (int64_t)m->stable_cap * (int64_t)sizeof(struct stable_slot) +
		    (int64_t)m->unstable_cap * (int64_t)sizeof(struct unstable_entry);
	for (uint32_t r = 0; r < m->nranges; r++)
		if (m->ranges[r])
			b += (int64_t)sizeof(struct range) + (int64_t)m->ranges[r]->npages * 9;
	return b;
}

static void fill_stats(struct mv_merge *m, struct mv_merge_stats *s)
{
	*s = (struct mv_merge_stats){ 0 };
	s->pages_shared = m->live_canon;
	/* references held by queued merges are not sites yet; there are none outside a scan */
	s->pages_sharing = m->canon_refs - m->live_canon;
	s->pages_unshared = m->unshared;
	s->pages_volatile = m->volatile_pages;
	s->pages_scanned = m->scanned;
	s->full_scans = m->full_scans;
	s->zero_pages = m->zero_pages;
	s->general_profit = (int64_t)(s->pages_sharing + s->zero_pages) * MV_PAGE_SIZE - metadata_bytes(m);
	s->pages_skipped_budget = m->skipped_budget;
	s->map_budget_reached = m->budget_reached || m->budget_reached_prev;
	s->map_count = m->map_count;
	s->map_limit = m->map_limit;
	for (uint32_t r = 0; r < m->nranges; r++)
		if (m->ranges[r]) {
			s->ranges++;
			s->pages_registered += m->ranges[r]->npages;
		}
	s->kernel_faults_wait = m->uffd_full;
	s->pages_skipped_pinned = m->skipped_pinned;
	s->pins_checked = m->have_move;
	s->partition_pages = m->part ? __atomic_load_n(&m->phead->live_canon, __ATOMIC_RELAXED) : m->live_canon;
}

MV_EXPORT int mv_merge_get_stats(mv_merge *m, struct mv_merge_stats *out, size_t size)
{
	if (!m || !out || size == 0 || size > sizeof(struct mv_merge_stats))
		return -EINVAL;
	struct mv_merge_stats s;
	api_lock(m);
	refresh(m);
	fill_stats(m, &s);
	mvm_publish(m);
	pthread_mutex_unlock(&m->lock);
	memcpy(out, &s, size);
	return 0;
}

static int u32cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

MV_EXPORT int mv_merge_range_stats(mv_merge *m, void *addr, struct mv_merge_stats *out, size_t size)
{
	if (!m || !out || size == 0 || size > sizeof(struct mv_merge_stats))
		return -EINVAL;
	struct mv_merge_stats s = { 0 };
	api_lock(m);
	int r = -ENOENT;
	refresh(m);
	for (uint32_t i = 0; i < m->nranges; i++) {
		struct range *rg = m->ranges[i];
		if (!rg || rg->start != (uintptr_t)addr)
			continue;
		uint32_t *ids = malloc((rg->merged ? rg->merged : 1) * sizeof(*ids));
		if (!ids) {
			r = -ENOMEM;
			break;
		}
		size_t n = 0;
		for (size_t p = 0; p < rg->npages; p++)
			if (rg->site[p] && rg->site[p] != SITE_ZERO)
				ids[n++] = rg->site[p] - 1;
		qsort(ids, n, sizeof(*ids), u32cmp);
		uint64_t distinct = 0;
		for (size_t k = 0; k < n; k++)
			distinct += k == 0 || ids[k] != ids[k - 1];
		free(ids);
		s.pages_shared = distinct;
		s.pages_sharing = rg->merged - distinct;
		s.pages_unshared = rg->unshared;
		s.pages_volatile = rg->vol;
		s.pages_scanned = rg->scanned;
		s.full_scans = m->full_scans;
		s.zero_pages = rg->zero;
		s.general_profit = (int64_t)(s.pages_sharing + s.zero_pages) * MV_PAGE_SIZE - (int64_t)rg->npages * 9;
		s.pages_skipped_budget = m->skipped_budget;
		s.map_budget_reached = m->budget_reached || m->budget_reached_prev;
		s.map_count = m->map_count;
		s.map_limit = m->map_limit;
		s.ranges = 1;
		s.pages_registered = rg->npages;
		s.kernel_faults_wait = m->uffd_full;
		s.pages_skipped_pinned = m->skipped_pinned;
		s.pins_checked = m->have_move;
		r = 0;
		break;
	}
	pthread_mutex_unlock(&m->lock);
	if (r == 0)
		memcpy(out, &s, size);
	return r;
}
