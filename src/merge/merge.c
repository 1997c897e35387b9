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
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/sys.h"
#include "common/util.h"
#include "lib/client.h"
#include "memvisor/merge.h"
#include "merge/board.h"
#include "merge/kernel.h"
#include "merge/partition_files.h"

/* Our own ioctls, closes and remaps go straight to the kernel (common/sys.h says why). */

#define BATCH 256u /* pages looked at per pagemap read and per process_vm_readv */
#define VBATCH 64u /* pages verified per read under write protection */

/* site word of a page: 0 unmerged, SITE_ZERO zapped to the zero page, else canonical id + 1 */
#define SITE_ZERO UINT32_MAX

/* page flags */
#define F_SEEN 0x01     /* csum holds the checksum of an earlier look */
#define F_VOLATILE 0x02 /* changed since the earlier look */
#define F_UNSTABLE 0x04 /* in this full scan's table of unique pages */

/* canonical page flags */
#define C_INHERITED 0x01 /* a fork child may map it: never punched, never reused */

struct range {
	uintptr_t start;
	size_t npages;
	uint32_t *site;
	uint32_t *csum;
	uint8_t *flags;
	uint64_t merged, zero, vol, unshared, scanned;
};

struct canon {
	uint64_t hash;
	uint32_t refs;
	uint32_t flags;
};

/* id1 = canonical id + 1 (0: empty); the tag (high half of the hash) spares a look at canon[] */
struct stable_slot {
	uint32_t id1;
	uint32_t tag;
};

struct unstable_entry {
	uint64_t hash;
	uint32_t range; /* UINT32_MAX: removed */
	uint32_t page;
};

struct pending {
	uintptr_t addr;
	uint32_t range;
	uint32_t page;
	uint32_t target; /* canonical id or SITE_ZERO */
	uint32_t held;   /* write-protected since its bytes were compared: no second read needed */
};

struct vma {
	uintptr_t start, end;
	unsigned prot;
	int kind;
	uint64_t offset;
};
enum { VMA_NONE, VMA_ANON, VMA_STORE, VMA_OTHER };

struct mv_merge {
	atomic_int refs;
	pthread_mutex_t lock;
	int uffd;
	bool uffd_full; /* created without UFFD_USER_MODE_ONLY */
	int maps_fd;
	int pagemap_fd;
	bool have_procmap_query;

	int store_fd;
	dev_t store_dev;
	ino_t store_ino;
	uint8_t *store;
	uint32_t store_cap; /* pages */
	struct canon *canon;
	uint32_t canon_used; /* ids handed out so far */
	uint32_t populated;  /* store pages allocated ahead of canon_used */
	uint32_t *free_ids;
	uint32_t nfree;
	struct stable_slot *stable; /* open addressing keyed by canon hash */
	uint32_t stable_cap, stable_n;
	uint64_t live_canon;
	uint64_t canon_refs;

	struct range **ranges;
	uint32_t nranges;
	uint32_t cur_range;
	size_t cur_page;

	struct unstable_entry *unstable;
	uint32_t unstable_cap, unstable_n;
	uint64_t unshared;

	struct pending *pend;
	size_t npend, pend_cap;

	uint64_t zero_pages, volatile_pages, scanned, full_scans;
	uint64_t skipped_budget;
	uint64_t merged_total;
	bool budget_reached;      /* in this full scan */
	bool budget_reached_prev; /* in the previous one */
	uint64_t map_count, map_limit, map_estimate;

	struct mv_merge_knobs knobs;
	atomic_int api_waiting; /* callers waiting for the lock: the scanner thread steps aside */
	pthread_t scanner;
	bool scanner_running;
	bool scanner_stop;
	pthread_cond_t wake;

	uint8_t *buf;    /* BATCH pages */
	uint8_t *vbuf;   /* VBATCH pages */
	uint8_t *cmpbuf; /* one zero page */
	uint64_t zero_hash;

	struct mv_merge *next_ctx; /* fork bookkeeping */

	struct mvm_merge_board *board; /* published statistics, NULL when the runtime dir is unusable */
	char board_path[256];

	/* named partition (see partition_files.h): canonical pages belong to the broker */
	bool part;
	char part_name[MV_PART_NAME_MAX];
	uint64_t member_id;
	uint32_t member_slot, member_gen;
	int member_fd, hints_fd;
	uint8_t *member_map;
	struct mvm_part_member_head *mhead;
	uint32_t *ledger;
	uint8_t *part_map;
	const struct mvm_part_head *phead;
	const struct mvm_part_slot *pindex;
	struct mvm_part_hint *hints;
	uint64_t store_base; /* file offset of canonical page 0 in store_fd */
	struct staged {
		uint32_t range, page;
		uint32_t prange, ppage;
		bool partner;
	} staged[MV_PART_STAGE];
	uint32_t nstaged;
};

/* The scanner thread relocks between batches; without this a caller could wait for the lock for as
 * long as the thread keeps finding work (mutexes are not fair). */
static void api_lock(struct mv_merge *m)
{
	atomic_fetch_add(&m->api_waiting, 1);
	pthread_mutex_lock(&m->lock);
	atomic_fetch_sub(&m->api_waiting, 1);
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
}

static void fork_parent(void)
{
	for (struct mv_merge *m = all_ctx; m; m = m->next_ctx)
		pthread_mutex_unlock(&m->lock);
	pthread_mutex_unlock(&all_lock);
}

static void fork_child(void)
{
	for (struct mv_merge *m = all_ctx; m; m = m->next_ctx) {
		drop_in_child(m);
		pthread_mutex_unlock(&m->lock);
	}
	pthread_mutex_unlock(&all_lock);
}

static void atfork_init(void)
{
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* ---- small helpers ---- */

static ssize_t read_self(void *dst, uintptr_t src, size_t len)
{
	struct iovec l = { dst, len }, r = { (void *)src, len };
	ssize_t n = process_vm_readv(getpid(), &l, 1, &r, 1, 0);
	return n < 0 ? -errno : n;
}

static bool page_is_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)p;
	for (size_t i = 0; i < MV_PAGE_SIZE / 8; i += 4)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3])
			return false;
	return true;
}

static int uffd_wp(struct mv_merge *m, uintptr_t addr, size_t len, bool on)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = addr, .len = len },
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	return mvu_sys_ioctl(m->uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

static void uffd_wake(struct mv_merge *m, uintptr_t addr, size_t len)
{
	struct uffdio_range r = { .start = addr, .len = len };
	(void)mvu_sys_ioctl(m->uffd, UFFDIO_WAKE, &r);
}

static int uffd_register(struct mv_merge *m, uintptr_t addr, size_t len)
{
	struct uffdio_register reg = { .range = { .start = addr, .len = len }, .mode = UFFDIO_REGISTER_MODE_WP };
	return mvu_sys_ioctl(m->uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

static int vma_at(struct mv_merge *m, uintptr_t addr, struct vma *v);

/* Lift write protection from every registered mapping in [a, a + len); a waiting writer must never be
 * left behind, so a failure over the whole range is retried mapping by mapping, then page by page. */
static void unprotect(struct mv_merge *m, uintptr_t a, size_t len)
{
	if (uffd_wp(m, a, len, false) == 0)
		return;
	uintptr_t end = a + len;
	for (uintptr_t p = a; p < end;) {
		struct vma v;
		uintptr_t e;
		if (vma_at(m, p, &v) == 0 && v.end > p)
			e = v.end < end ? v.end : end;
		else
			e = p + MV_PAGE_SIZE;
		if (uffd_wp(m, p, e - p, false) < 0 && e - p > MV_PAGE_SIZE)
			for (uintptr_t q = p; q < e; q += MV_PAGE_SIZE)
				(void)uffd_wp(m, q, MV_PAGE_SIZE, false);
		p = e;
	}
}

static int uffd_open(bool *full)
{
	/* Full mode lets kernel-mode writes (read(2) into the page) wait like user writes; it needs
	 * vm.unprivileged_userfaultfd=1 or CAP_SYS_PTRACE, else user-mode-only is what we get. */
	int fd = mvu_sys_userfaultfd(O_CLOEXEC | O_NONBLOCK);
	*full = fd >= 0;
	if (fd < 0)
		fd = mvu_sys_userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	return fd < 0 ? -errno : fd;
}

static int uffd_setup(struct mv_merge *m)
{
	bool full;
	int probe = uffd_open(&full);
	if (probe < 0)
		return probe;
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	if (mvu_sys_ioctl(probe, UFFDIO_API, &api) < 0) {
		int err = -errno;
		(void)mvu_sys_close(probe);
		return err;
	}
	(void)mvu_sys_close(probe);
	if (!(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP))
		return -ENOSYS;
	uint64_t want = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED;
	int fd = uffd_open(&full);
	if (fd < 0)
		return fd;
	struct uffdio_api api2 = { .api = UFFD_API, .features = api.features & want };
	if (mvu_sys_ioctl(fd, UFFDIO_API, &api2) < 0) {
		int err = -errno;
		(void)mvu_sys_close(fd);
		return err;
	}
	m->uffd = fd;
	m->uffd_full = full;
	return 0;
}

static int parse_maps_for(struct mv_merge *m, uintptr_t addr, struct vma *v)
{
	/* Fallback for kernels without PROCMAP_QUERY: find the line of /proc/self/maps covering addr. */
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return -errno;
	char line[512];
	int found = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e, off, ino;
		unsigned maj, min;
		char perms[5];
		if (sscanf(line, "%lx-%lx %4s %lx %x:%x %lu", &s, &e, perms, &off, &maj, &min, &ino) != 7)
			continue;
		if (addr < s || addr >= e)
			continue;
		v->start = s;
		v->end = e;
		v->prot = (perms[0] == 'r' ? MV_VMA_READ : 0) | (perms[1] == 'w' ? MV_VMA_WRITE : 0) |
			  (perms[2] == 'x' ? MV_VMA_EXEC : 0) | (perms[3] == 's' ? MV_VMA_SHARED : 0);
		v->offset = off;
		if (ino == 0 && maj == 0 && min == 0)
			v->kind = VMA_ANON;
		else if (ino == m->store_ino && makedev(maj, min) == m->store_dev)
			v->kind = VMA_STORE;
		else
			v->kind = VMA_OTHER;
		found = 1;
		break;
	}
	fclose(f);
	if (!found) {
		v->start = addr;
		v->end = addr + MV_PAGE_SIZE;
		v->kind = VMA_NONE;
		v->prot = 0;
	}
	return 0;
}

/* The mapping covering addr; VMA_NONE (one page long) when nothing is mapped there. */
static int vma_at(struct mv_merge *m, uintptr_t addr, struct vma *v)
{
	if (!m->have_procmap_query)
		return parse_maps_for(m, addr, v);
	struct mvm_procmap_query q = { .size = sizeof(q), .query_addr = addr };
	if (mvu_sys_ioctl(m->maps_fd, MV_PROCMAP_QUERY, &q) < 0) {
		if (errno == ENOENT) {
			v->start = addr;
			v->end = addr + MV_PAGE_SIZE;
			v->kind = VMA_NONE;
			v->prot = 0;
			return 0;
		}
		if (errno == ENOTTY || errno == EINVAL) {
			m->have_procmap_query = false;
			return parse_maps_for(m, addr, v);
		}
		return -errno;
	}
	v->start = q.vma_start;
	v->end = q.vma_end;
	v->prot = (unsigned)q.vma_flags & (MV_VMA_READ | MV_VMA_WRITE | MV_VMA_EXEC | MV_VMA_SHARED);
	v->offset = q.vma_offset;
	if (q.inode == 0 && q.dev_major == 0 && q.dev_minor == 0)
		v->kind = VMA_ANON;
	else if (q.inode == m->store_ino && makedev(q.dev_major, q.dev_minor) == m->store_dev)
		v->kind = VMA_STORE;
	else
		v->kind = VMA_OTHER;
	return 0;
}

static int prot_of(const struct vma *v)
{
	return (v->prot & MV_VMA_READ ? PROT_READ : 0) | (v->prot & MV_VMA_WRITE ? PROT_WRITE : 0) |
	       (v->prot & MV_VMA_EXEC ? PROT_EXEC : 0);
}

static bool vma_mergeable(const struct vma *v)
{
	return (v->kind == VMA_ANON || v->kind == VMA_STORE) && !(v->prot & MV_VMA_SHARED) && (v->prot & MV_VMA_READ) &&
	       (v->prot & MV_VMA_WRITE);
}

static uint64_t count_maps(void)
{
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	char buf[65536];
	uint64_t n = 0;
	ssize_t r;
	while ((r = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < r; i++)
			n += buf[i] == '\n';
	(void)mvu_sys_close(fd);
	return n;
}

static uint64_t read_max_map_count(void)
{
	char buf[32] = { 0 };
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 65530;
	ssize_t r = read(fd, buf, sizeof(buf) - 1);
	(void)mvu_sys_close(fd);
	unsigned long long v = r > 0 ? strtoull(buf, NULL, 10) : 0;
	return v ? v : 65530;
}

/* ---- the published board ---- */

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

static void publish(struct mv_merge *m)
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

/* ---- the store of canonical pages ---- */

static int store_grow(struct mv_merge *m, uint32_t want)
{
	if (m->part || want <= m->store_cap)
		return 0; /* a partition's store is the broker's, of fixed size */
	uint32_t cap = m->store_cap ? m->store_cap : 1024;
	while (cap < want)
		cap *= 2;
	if (ftruncate(m->store_fd, (off_t)cap * MV_PAGE_SIZE) < 0)
		return -errno;
	void *p = m->store ? mremap(m->store, (size_t)m->store_cap * MV_PAGE_SIZE, (size_t)cap * MV_PAGE_SIZE,
				    MREMAP_MAYMOVE)
			   : mmap(NULL, (size_t)cap * MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, m->store_fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	struct canon *c = realloc(m->canon, (size_t)cap * sizeof(*c));
	uint32_t *f = realloc(m->free_ids, (size_t)cap * sizeof(*f));
	if (c)
		m->canon = c;
	if (f)
		m->free_ids = f;
	m->store = p;
	if (!c || !f)
		return -ENOMEM;
	memset(m->canon + m->store_cap, 0, (size_t)(cap - m->store_cap) * sizeof(*c));
	m->store_cap = cap;
	return 0;
}

static int stable_resize(struct mv_merge *m, uint32_t cap)
{
	struct stable_slot *t = calloc(cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	for (uint32_t i = 0; i < m->stable_cap; i++) {
		struct stable_slot e = m->stable[i];
		if (!e.id1)
			continue;
		uint32_t j = (uint32_t)m->canon[e.id1 - 1].hash & (cap - 1);
		while (t[j].id1)
			j = (j + 1) & (cap - 1);
		t[j] = e;
	}
	free(m->stable);
	m->stable = t;
	m->stable_cap = cap;
	return 0;
}

static int stable_insert(struct mv_merge *m, uint32_t id)
{
	if ((m->stable_n + 1) * 2 > m->stable_cap) {
		int r = stable_resize(m, m->stable_cap ? m->stable_cap * 2 : 1024);
		if (r < 0)
			return r;
	}
	uint64_t h = m->canon[id].hash;
	uint32_t j = (uint32_t)h & (m->stable_cap - 1);
	while (m->stable[j].id1)
		j = (j + 1) & (m->stable_cap - 1);
	m->stable[j] = (struct stable_slot){ id + 1, (uint32_t)(h >> 32) };
	m->stable_n++;
	return 0;
}

static void stable_remove(struct mv_merge *m, uint32_t id)
{
	uint32_t mask = m->stable_cap - 1;
	uint32_t j = (uint32_t)m->canon[id].hash & mask;
	while (m->stable[j].id1 && m->stable[j].id1 != id + 1)
		j = (j + 1) & mask;
	if (!m->stable[j].id1)
		return;
	/* backward-shift deletion keeps probe chains intact without tombstones */
	uint32_t i = j;
	for (;;) {
		m->stable[i].id1 = 0;
		uint32_t k = i;
		for (;;) {
			k = (k + 1) & mask;
			if (!m->stable[k].id1)
				goto done;
			uint32_t home = (uint32_t)m->canon[m->stable[k].id1 - 1].hash & mask;
			bool movable = (i <= k) ? (home <= i || home > k) : (home <= i && home > k);
			if (movable)
				break;
		}
		m->stable[i] = m->stable[k];
		i = k;
	}
done:
	m->stable_n--;
}

static int canon_new(struct mv_merge *m, const uint8_t *data, uint64_t hash, uint32_t *out)
{
	uint32_t id;
	if (m->nfree) {
		id = m->free_ids[--m->nfree];
	} else {
		int r = store_grow(m, m->canon_used + 1);
		if (r < 0)
			return r;
		id = m->canon_used++;
		if (id >= m->populated) {
			/* one call allocates the next 64 store pages: cheaper than 64 page faults */
			uint32_t end = id + 64 < m->store_cap ? id + 64 : m->store_cap;
			if (madvise(m->store + (size_t)id * MV_PAGE_SIZE, (size_t)(end - id) * MV_PAGE_SIZE,
				    MADV_POPULATE_WRITE) == 0)
				m->populated = end;
		}
	}
	memcpy(m->store + (size_t)id * MV_PAGE_SIZE, data, MV_PAGE_SIZE);
	m->canon[id] = (struct canon){ .hash = hash, .refs = 0, .flags = 0 };
	int r = stable_insert(m, id);
	if (r < 0) {
		m->free_ids[m->nfree++] = id;
		return r;
	}
	m->live_canon++;
	*out = id;
	return 0;
}

static void canon_put(struct mv_merge *m, uint32_t id)
{
	if (m->part) {
		uint32_t v = m->ledger[id];
		__atomic_store_n(&m->ledger[id], v - 1, __ATOMIC_RELEASE);
		m->canon_refs--;
		if (((v - 1) & ~MV_PART_INHERITED) == 0) {
			m->live_canon--;
			__atomic_fetch_add(&m->mhead->frees, 1, __ATOMIC_RELEASE); /* the broker may collect it */
		}
		return;
	}
	struct canon *c = &m->canon[id];
	m->canon_refs--;
	if (--c->refs)
		return;
	stable_remove(m, id);
	m->live_canon--;
	if (c->flags & C_INHERITED)
		return; /* a fork child may still map it: the kernel frees it with the last mapping */
	(void)fallocate(m->store_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)id * MV_PAGE_SIZE,
			MV_PAGE_SIZE);
	m->free_ids[m->nfree++] = id;
}

static void canon_get(struct mv_merge *m, uint32_t id)
{
	if (m->part) {
		/* counted before the page is compared and mapped: the broker's collection relies on it */
		uint32_t v = m->ledger[id];
		if ((v & ~MV_PART_INHERITED) == 0)
			m->live_canon++;
		__atomic_store_n(&m->ledger[id], v + 1, __ATOMIC_SEQ_CST);
		m->canon_refs++;
		return;
	}
	m->canon[id].refs++;
	m->canon_refs++;
}

/* ---- unstable table: pages seen once in this full scan ---- */

static void unstable_reset(struct mv_merge *m)
{
	if ((size_t)m->unstable_cap * sizeof(*m->unstable) > (1u << 20)) {
		/* a big table is rebuilt by the next pass anyway; between passes it is only weight */
		free(m->unstable);
		m->unstable = NULL;
		m->unstable_cap = 0;
	} else if (m->unstable) {
		memset(m->unstable, 0xff, (size_t)m->unstable_cap * sizeof(*m->unstable));
	}
	m->unstable_n = 0;
	for (uint32_t r = 0; r < m->nranges; r++) {
		struct range *rg = m->ranges[r];
		if (!rg)
			continue;
		for (size_t p = 0; p < rg->npages; p++)
			rg->flags[p] &= (uint8_t)~F_UNSTABLE;
		rg->unshared = 0;
	}
	m->unshared = 0;
}

/* Empty slot: range == UINT32_MAX && page == UINT32_MAX; removed: range == UINT32_MAX, page == 0. */
static bool ue_empty(const struct unstable_entry *e)
{
	return e->range == UINT32_MAX && e->page == UINT32_MAX;
}

static int unstable_insert(struct mv_merge *m, uint64_t hash, uint32_t range, uint32_t page)
{
	if ((m->unstable_n + 1) * 2 > m->unstable_cap) {
		uint32_t cap = m->unstable_cap ? m->unstable_cap * 2 : 4096;
		struct unstable_entry *t = malloc((size_t)cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		memset(t, 0xff, (size_t)cap * sizeof(*t));
		uint32_t n = 0;
		for (uint32_t i = 0; i < m->unstable_cap; i++) {
			struct unstable_entry *e = &m->unstable[i];
			if (e->range == UINT32_MAX)
				continue;
			uint32_t j = (uint32_t)e->hash & (cap - 1);
			while (!ue_empty(&t[j]))
				j = (j + 1) & (cap - 1);
			t[j] = *e;
			n++;
		}
		free(m->unstable);
		m->unstable = t;
		m->unstable_cap = cap;
		m->unstable_n = n;
	}
	uint32_t j = (uint32_t)hash & (m->unstable_cap - 1);
	while (!ue_empty(&m->unstable[j]))
		j = (j + 1) & (m->unstable_cap - 1);
	m->unstable[j] = (struct unstable_entry){ .hash = hash, .range = range, .page = page };
	m->unstable_n++;
	return 0;
}

static void range_unstable_drop(struct mv_merge *m, struct range *rg, size_t p)
{
	if (rg->flags[p] & F_UNSTABLE) {
		rg->flags[p] &= (uint8_t)~F_UNSTABLE;
		rg->unshared--;
		m->unshared--;
	}
}

static void set_volatile(struct mv_merge *m, struct range *rg, size_t p, bool on)
{
	bool was = rg->flags[p] & F_VOLATILE;
	if (was == on)
		return;
	if (on) {
		rg->flags[p] |= F_VOLATILE;
		rg->vol++;
		m->volatile_pages++;
	} else {
		rg->flags[p] &= (uint8_t)~F_VOLATILE;
		rg->vol--;
		m->volatile_pages--;
	}
}

/* ---- site bookkeeping ---- */

static void site_clear(struct mv_merge *m, struct range *rg, size_t p)
{
	uint32_t s = rg->site[p];
	if (s == SITE_ZERO) {
		rg->zero--;
		m->zero_pages--;
	} else if (s) {
		canon_put(m, s - 1);
		rg->merged--;
	}
	rg->site[p] = 0;
}

static void site_set(struct mv_merge *m, struct range *rg, size_t p, uint32_t target)
{
	if (target == SITE_ZERO) {
		rg->zero++;
		m->zero_pages++;
	} else {
		rg->merged++; /* the reference was taken when the merge was queued */
	}
	rg->site[p] = target == SITE_ZERO ? SITE_ZERO : target + 1;
	range_unstable_drop(m, rg, p);
	set_volatile(m, rg, p, false);
}

/* Is the merge recorded for page p still in place? pm is its pagemap word, v its mapping. */
static bool site_intact(struct mv_merge *m, struct range *rg, size_t p, uint64_t pm, const struct vma *v)
{
	uint32_t s = rg->site[p];
	uintptr_t addr = rg->start + p * MV_PAGE_SIZE;
	if (pm & MV_PM_SWAPPED)
		return false; /* only a private copy can be in swap */
	if (s == SITE_ZERO)
		/* zero page or not yet touched; an exclusive present page was written */
		return v->kind == VMA_ANON && (!(pm & MV_PM_PRESENT) || !(pm & MV_PM_EXCLUSIVE));
	if (v->kind != VMA_STORE || v->offset + (addr - v->start) != m->store_base + (uint64_t)(s - 1) * MV_PAGE_SIZE)
		return false;
	/* a present page that is not the file's is the writer's private copy */
	return !(pm & MV_PM_PRESENT) || (pm & MV_PM_FILE);
}

/* ---- applying merges ---- */

static int pend_push(struct mv_merge *m, struct range *rg, uint32_t ri, size_t p, uint32_t target, bool held)
{
	if (m->npend == m->pend_cap) {
		size_t cap = m->pend_cap ? m->pend_cap * 2 : 1024;
		struct pending *n = realloc(m->pend, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		m->pend = n;
		m->pend_cap = cap;
	}
	if (target != SITE_ZERO)
		canon_get(m, target);
	m->pend[m->npend++] = (struct pending){ rg->start + p * MV_PAGE_SIZE, ri, (uint32_t)p, target, held };
	return 0;
}

static int pend_cmp(const void *a, const void *b)
{
	const struct pending *x = a, *y = b;
	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static void pend_drop(struct mv_merge *m, const struct pending *e)
{
	if (e->target != SITE_ZERO)
		canon_put(m, e->target);
}

static bool budget_allows(struct mv_merge *m, unsigned new_maps)
{
	uint64_t reserve = m->knobs.map_reserve;
	uint64_t limit = m->map_limit > reserve ? m->map_limit - reserve : 0;
	if (m->map_estimate + new_maps <= limit)
		return true;
	/* the estimate only grows; adjacent runs the kernel merged are found by counting again */
	m->map_count = count_maps();
	m->map_estimate = m->map_count;
	return m->map_estimate + new_maps <= limit;
}

/* Mappings put over the application's pages change no byte it can see, so they go to the kernel
 * directly: a sanitizer's mmap interceptor would otherwise treat them as fresh memory written by us. */
#define remap_raw mvu_sys_mmap
#define move_raw mvu_sys_mremap_fixed

/* Replace pages [a, a + n*MV_PAGE_SIZE), already verified under write protection, by their targets. */
static int replace(struct mv_merge *m, const struct vma *v, uintptr_t a, size_t n, uint32_t target)
{
	int prot = prot_of(v);
	if (target == SITE_ZERO && v->kind == VMA_ANON) {
		if (madvise((void *)a, n * MV_PAGE_SIZE, MADV_DONTNEED) < 0)
			return -errno;
		(void)uffd_wp(m, a, n * MV_PAGE_SIZE, false);
		return 0;
	}
	void *p;
	if (target == SITE_ZERO)
		p = remap_raw((void *)a, n * MV_PAGE_SIZE, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	else
		p = remap_raw((void *)a, n * MV_PAGE_SIZE, prot, MAP_PRIVATE | MAP_FIXED, m->store_fd,
			      (off_t)(m->store_base + (uint64_t)target * MV_PAGE_SIZE));
	if (p == MAP_FAILED)
		return -errno;
	m->map_estimate += 2;
	(void)uffd_register(m, a, n * MV_PAGE_SIZE);
	uffd_wake(m, a, n * MV_PAGE_SIZE);
	return 0;
}

/* Pages verified under write protection: map their targets and record the sites. */
static unsigned replace_stretch(struct mv_merge *m, const struct vma *v, struct pending *e, size_t n)
{
	if (replace(m, v, e[0].addr, n, e[0].target) < 0) {
		(void)uffd_wp(m, e[0].addr, n * MV_PAGE_SIZE, false);
		for (size_t t = 0; t < n; t++)
			pend_drop(m, &e[t]);
		return 0;
	}
	for (size_t t = 0; t < n; t++) {
		struct range *r2 = m->ranges[e[t].range];
		if (r2->site[e[t].page])
			site_clear(m, r2, e[t].page);
		site_set(m, r2, e[t].page, e[t].target);
	}
	return (unsigned)n;
}

/* Apply one run of pending merges with consecutive addresses and consecutive targets. */
static unsigned apply_run(struct mv_merge *m, struct pending *run, size_t n)
{
	unsigned done = 0;
	size_t i = 0;
	while (i < n) {
		struct range *rg = m->ranges[run[i].range];
		struct vma v;
		uintptr_t a = run[i].addr;
		if (!rg || vma_at(m, a, &v) < 0 || !vma_mergeable(&v)) {
			pend_drop(m, &run[i++]);
			continue;
		}
		size_t k = n - i;
		if (a + k * MV_PAGE_SIZE > v.end)
			k = (v.end - a) / MV_PAGE_SIZE;
		bool to_zero = run[i].target == SITE_ZERO;
		unsigned maps = (to_zero && v.kind == VMA_ANON) ? 0 : 2;
		if (maps && !budget_allows(m, maps)) {
			m->budget_reached = true;
			m->skipped_budget += k;
			for (size_t j = 0; j < k; j++)
				pend_drop(m, &run[i + j]);
			i += k;
			continue;
		}
		bool all_held = true;
		for (size_t j = 0; j < k && all_held; j++)
			all_held = run[i + j].held;
		if (!all_held && uffd_wp(m, a, k * MV_PAGE_SIZE, true) < 0) {
			unprotect(m, a, k * MV_PAGE_SIZE);
			for (size_t j = 0; j < k; j++)
				pend_drop(m, &run[i + j]);
			i += k;
			continue;
		}
		/* Writers now wait. Verified stretches are replaced, each mismatch is given back. */
		size_t j = 0, start = 0, base = 0, have = 0;
		while (j < k) {
			if (run[i + j].held) {
				j++;
				continue;
			}
			if (j >= base + have) {
				size_t chunk = k - j < VBATCH ? k - j : VBATCH;
				ssize_t got = read_self(m->vbuf, run[i + j].addr, chunk * MV_PAGE_SIZE);
				base = j;
				have = got > 0 ? (size_t)got / MV_PAGE_SIZE : 0;
			}
			if (j < base + have) {
				const uint8_t *cur = m->vbuf + (j - base) * MV_PAGE_SIZE;
				uint32_t t = run[i + j].target;
				if (t == SITE_ZERO ? page_is_zero(cur)
						   : !memcmp(cur, m->store + (size_t)t * MV_PAGE_SIZE, MV_PAGE_SIZE)) {
					j++;
					continue;
				}
			}
			if (j > start)
				done += replace_stretch(m, &v, &run[i + start], j - start);
			(void)uffd_wp(m, run[i + j].addr, MV_PAGE_SIZE, false);
			pend_drop(m, &run[i + j]);
			j++;
			start = j;
		}
		if (k > start)
			done += replace_stretch(m, &v, &run[i + start], k - start);
		i += k;
	}
	return done;
}

static bool continues(const struct pending *prev, const struct pending *e)
{
	if (e->addr != prev->addr + MV_PAGE_SIZE || e->range != prev->range)
		return false;
	if (e->target == SITE_ZERO || prev->target == SITE_ZERO)
		return e->target == prev->target;
	return e->target == prev->target + 1;
}

static unsigned flush(struct mv_merge *m)
{
	if (!m->npend)
		return 0;
	qsort(m->pend, m->npend, sizeof(*m->pend), pend_cmp);
	size_t w = 0;
	for (size_t i = 0; i < m->npend; i++) {
		if (w && m->pend[w - 1].addr == m->pend[i].addr) {
			pend_drop(m, &m->pend[i]);
			continue;
		}
		m->pend[w++] = m->pend[i];
	}
	m->npend = w;
	unsigned done = 0;
	for (size_t i = 0; i < m->npend;) {
		size_t len = 1;
		while (i + len < m->npend && continues(&m->pend[i + len - 1], &m->pend[i + len]))
			len++;
		done += apply_run(m, &m->pend[i], len);
		i += len;
	}
	m->npend = 0;
	m->merged_total += done;
	return done;
}

/* ---- scanning ---- */

/* A canonical page with this hash and room for another sharer. The hash only picks the candidate:
 * the page is compared with it byte for byte under write protection before it is merged. */
static int find_stable(struct mv_merge *m, uint64_t hash, uint32_t *out)
{
	if (m->part) {
		/* the broker's index, read-only here and trusted for nothing: ids are checked, bytes compared */
		uint32_t mask = MV_PART_INDEX_SLOTS - 1, tag = (uint32_t)(hash >> 32);
		uint32_t j = (uint32_t)hash & mask;
		for (uint32_t probes = 0; probes < 64; probes++, j = (j + 1) & mask) {
			uint32_t id1 = __atomic_load_n(&m->pindex[j].id1, __ATOMIC_ACQUIRE);
			if (!id1)
				return 0;
			uint32_t id = id1 - 1;
			if (__atomic_load_n(&m->pindex[j].tag, __ATOMIC_RELAXED) != tag || id >= MV_PART_CAP)
				continue;
			if ((m->ledger[id] & ~MV_PART_INHERITED) >= m->knobs.max_page_sharing)
				continue;
			*out = id;
			return 1;
		}
		return 0;
	}
	if (!m->stable_cap)
		return 0;
	uint32_t mask = m->stable_cap - 1;
	uint32_t tag = (uint32_t)(hash >> 32);
	for (uint32_t j = (uint32_t)hash & mask; m->stable[j].id1; j = (j + 1) & mask) {
		if (m->stable[j].tag != tag)
			continue;
		uint32_t id = m->stable[j].id1 - 1;
		struct canon *c = &m->canon[id];
		if (c->hash == hash && c->refs < m->knobs.max_page_sharing) {
			*out = id;
			return 1;
		}
	}
	return 0;
}

/* A twin in the unstable table with the same hash; its slot is removed when found. */
static int find_unstable(struct mv_merge *m, uint64_t hash, uint32_t self_r, size_t self_p, uint32_t *tr, uint32_t *tp)
{
	if (!m->unstable_cap)
		return 0;
	uint32_t mask = m->unstable_cap - 1;
	for (uint32_t j = (uint32_t)hash & mask; !ue_empty(&m->unstable[j]); j = (j + 1) & mask) {
		struct unstable_entry *e = &m->unstable[j];
		if (e->range == UINT32_MAX || e->hash != hash)
			continue;
		if (e->range == self_r && e->page == self_p)
			continue;
		struct range *rg = e->range < m->nranges ? m->ranges[e->range] : NULL;
		if (!rg || e->page >= rg->npages || rg->site[e->page] || !(rg->flags[e->page] & F_UNSTABLE)) {
			e->range = UINT32_MAX, e->page = 0;
			continue;
		}
		/* the twin is compared byte for byte when it is merged, under write protection */
		*tr = e->range;
		*tp = e->page;
		range_unstable_drop(m, rg, e->page);
		e->range = UINT32_MAX, e->page = 0;
		return 1;
	}
	return 0;
}

static bool hint_from_other(struct mv_merge *m, uint64_t h)
{
	struct mvm_part_hint hint = m->hints[h & (MV_PART_HINT_SLOTS - 1)];
	if (hint.hash != h || !hint.slot || hint.slot > MV_PART_MAX_MEMBERS || hint.slot == m->member_slot + 1)
		return false;
	const struct mvm_part_member_state *ms = &m->phead->members[hint.slot - 1];
	return ms->live && ms->gen == hint.gen;
}

static int stage(struct mv_merge *m, const uint8_t *data, uint32_t ri, size_t p, bool twin, uint32_t tr, uint32_t tp)
{
	if (m->nstaged >= MV_PART_STAGE)
		return 0;
	memcpy(m->member_map + MV_PART_STAGE_OFF + (uint64_t)m->nstaged * MV_PAGE_SIZE, data, MV_PAGE_SIZE);
	m->staged[m->nstaged++] = (struct staged){ ri, (uint32_t)p, tr, tp, twin };
	return 1;
}

/* Hands the staged pages to the broker and queues the merges onto the canonical pages it made. */
static void promote(struct mv_merge *m)
{
	if (!m->nstaged)
		return;
	struct mvw_req_merge_promote req = { .member_id = m->member_id, .n = m->nstaged };
	struct mvw_msg rep;
	m->mhead->nstaged = m->nstaged;
	int r = mvc_request(MV_MSG_MERGE_PROMOTE, &req, sizeof(req), -1, &rep, NULL);
	for (uint32_t k = 0; k < m->nstaged && r == 0; k++) {
		uint32_t id = __atomic_load_n(&m->mhead->ids[k], __ATOMIC_RELAXED);
		struct staged *st = &m->staged[k];
		struct range *rg = st->range < m->nranges ? m->ranges[st->range] : NULL;
		if (id >= MV_PART_CAP || !rg)
			continue;
		/* the canonical page was made from these very bytes, read under write protection */
		if (pend_push(m, rg, st->range, st->page, id, true) < 0)
			continue;
		struct range *r2 = st->partner && st->prange < m->nranges ? m->ranges[st->prange] : NULL;
		if (r2 && st->ppage < r2->npages)
			(void)pend_push(m, r2, st->prange, st->ppage, id, false);
	}
	m->nstaged = 0;
}

/* Look at one page whose bytes are in data. Returns 1 when a merge was queued for it. */
static int consider(struct mv_merge *m, struct range *rg, uint32_t ri, size_t p, const uint8_t *data, uint64_t h,
		    uint64_t pm, const struct vma *v, unsigned flags)
{
	if (!(flags & MV_MERGE_STABLE)) {
		uint32_t c = (uint32_t)h;
		if (!(rg->flags[p] & F_SEEN) || rg->csum[p] != c) {
			rg->csum[p] = c;
			rg->flags[p] |= F_SEEN;
			range_unstable_drop(m, rg, p);
			set_volatile(m, rg, p, true);
			return 0;
		}
	}
	set_volatile(m, rg, p, false);
	if (h == m->zero_hash && page_is_zero(data)) {
		/* in an anonymous mapping a shared present zero page is already the kernel's zero page */
		if (v->kind == VMA_ANON && !(pm & MV_PM_EXCLUSIVE))
			return 0;
		return pend_push(m, rg, ri, p, SITE_ZERO, true) == 0;
	}
	uint32_t id;
	/* data was read under write protection: comparing it now is comparing the page */
	if (find_stable(m, h, &id) && !memcmp(data, m->store + (size_t)id * MV_PAGE_SIZE, MV_PAGE_SIZE))
		return pend_push(m, rg, ri, p, id, true) == 0;
	uint32_t tr, tp;
	if (rg->flags[p] & F_UNSTABLE)
		return 0;
	if (m->part) {
		/* a twin here, or a page another member has seen: the broker makes this one canonical */
		bool twin = find_unstable(m, h, ri, p, &tr, &tp);
		if (twin || hint_from_other(m, h))
			return stage(m, data, ri, p, twin, tr, tp);
		if (unstable_insert(m, h, ri, (uint32_t)p) == 0) {
			rg->flags[p] |= F_UNSTABLE;
			rg->unshared++;
			m->unshared++;
			struct mvm_part_hint *hs = &m->hints[h & (MV_PART_HINT_SLOTS - 1)];
			hs->hash = h;
			hs->gen = m->member_gen;
			hs->slot = m->member_slot + 1;
		}
		return 0;
	}
	if (find_unstable(m, h, ri, p, &tr, &tp)) {
		if (canon_new(m, data, h, &id) < 0)
			return 0;
		struct range *r2 = m->ranges[tr];
		/* the canonical page lives while a queued merge refers to it */
		canon_get(m, id);
		int q = pend_push(m, r2, tr, tp, id, false) == 0; /* the twin was read earlier: check again */
		q += pend_push(m, rg, ri, p, id, true) == 0;      /* the canonical page is a copy of this one */
		canon_put(m, id);
		return q == 2;
	}
	if (unstable_insert(m, h, ri, (uint32_t)p) == 0) {
		rg->flags[p] |= F_UNSTABLE;
		rg->unshared++;
		m->unshared++;
	}
	return 0;
}

/* Scan pages [p0, p0+n) of range ri and merge what they pair with. */
static void scan_batch(struct mv_merge *m, uint32_t ri, size_t p0, size_t n, unsigned flags)
{
	struct range *rg = m->ranges[ri];
	uint64_t pm[BATCH];
	uintptr_t base = rg->start + p0 * MV_PAGE_SIZE;
	if (pread(m->pagemap_fd, pm, n * 8, (off_t)(base / MV_PAGE_SIZE) * 8) != (ssize_t)(n * 8))
		memset(pm, 0, sizeof(pm));
	struct vma v = { 0 };
	struct vma vm[BATCH];
	struct iovec liov[BATCH], riov[BATCH];
	int niov = 0;
	for (size_t i = 0; i < n; i++) {
		uintptr_t a = base + i * MV_PAGE_SIZE;
		if (a >= v.end || a < v.start)
			if (vma_at(m, a, &v) < 0)
				v = (struct vma){ .start = a, .end = a + MV_PAGE_SIZE, .kind = VMA_NONE };
		vm[i] = v;
		size_t p = p0 + i;
		if (rg->site[p]) {
			if (site_intact(m, rg, p, pm[i], &v))
				continue;
			site_clear(m, rg, p);
		}
		if (!(pm[i] & MV_PM_PRESENT) || !vma_mergeable(&v))
			continue;
		/* the store's page mapped without a site of ours: nothing to gain from looking at it */
		if (v.kind == VMA_STORE && (pm[i] & MV_PM_FILE))
			continue;
		if (niov && (uintptr_t)riov[niov - 1].iov_base + riov[niov - 1].iov_len == a && i &&
		    vm[i - 1].start == v.start) {
			riov[niov - 1].iov_len += MV_PAGE_SIZE;
			liov[niov - 1].iov_len += MV_PAGE_SIZE;
		} else {
			riov[niov] = (struct iovec){ (void *)a, MV_PAGE_SIZE };
			liov[niov] = (struct iovec){ m->buf + i * MV_PAGE_SIZE, MV_PAGE_SIZE };
			niov++;
		}
	}
	rg->scanned += n;
	m->scanned += n;
	if (!niov)
		return;
	/* From here until this batch's merges are done, writes to these pages wait: what is read now is
	 * what gets merged, with no second read. */
	int nw = 0;
	for (int k = 0; k < niov; k++) {
		if (uffd_wp(m, (uintptr_t)riov[k].iov_base, riov[k].iov_len, true) < 0) {
			unprotect(m, (uintptr_t)riov[k].iov_base, riov[k].iov_len);
			continue;
		}
		riov[nw] = riov[k];
		liov[nw] = liov[k];
		nw++;
	}
	niov = nw;
	ssize_t got = niov ? process_vm_readv(getpid(), liov, (unsigned long)niov, riov, (unsigned long)niov, 0) : 0;
	/* process_vm_readv stops at the first page it cannot read; only bytes before that are valid */
	size_t valid = got > 0 ? (size_t)got : 0;
	/* hash the batch first and prefetch the table slots: the lookups then rarely wait for memory */
	uint64_t hv[BATCH];
	size_t off = 0;
	for (int k = 0; k < niov; k++) {
		uintptr_t a = (uintptr_t)riov[k].iov_base;
		for (size_t b = 0; b < riov[k].iov_len && off + MV_PAGE_SIZE <= valid;
		     b += MV_PAGE_SIZE, off += MV_PAGE_SIZE) {
			size_t i = (a + b - base) / MV_PAGE_SIZE;
			hv[i] = XXH3_64bits(m->buf + i * MV_PAGE_SIZE, MV_PAGE_SIZE);
			if (m->stable_cap)
				__builtin_prefetch(&m->stable[(uint32_t)hv[i] & (m->stable_cap - 1)]);
		}
	}
	off = 0;
	for (int k = 0; k < niov; k++) {
		uintptr_t a = (uintptr_t)riov[k].iov_base;
		for (size_t b = 0; b < riov[k].iov_len; b += MV_PAGE_SIZE, off += MV_PAGE_SIZE) {
			if (off + MV_PAGE_SIZE > valid)
				goto done;
			size_t i = (a + b - base) / MV_PAGE_SIZE;
			consider(m, rg, ri, p0 + i, m->buf + i * MV_PAGE_SIZE, hv[i], pm[i], &vm[i], flags);
		}
	}
done:
	promote(m);
	flush(m);
	for (int k = 0; k < niov; k++)
		unprotect(m, (uintptr_t)riov[k].iov_base, riov[k].iov_len);
}

static bool advance_to_range(struct mv_merge *m)
{
	for (uint32_t tries = 0; tries <= m->nranges; tries++) {
		if (m->cur_range < m->nranges && m->ranges[m->cur_range] &&
		    m->cur_page < m->ranges[m->cur_range]->npages)
			return true;
		m->cur_page = 0;
		if (++m->cur_range >= m->nranges) {
			m->cur_range = 0;
			m->full_scans++;
			/* pairs found in this pass must be merged before the table of unique pages is gone */
			flush(m);
			unstable_reset(m);
			m->map_count = count_maps();
			m->map_estimate = m->map_count;
			m->budget_reached_prev = m->budget_reached;
			m->budget_reached = false;
		}
	}
	return false;
}

static uint64_t total_pages(struct mv_merge *m)
{
	uint64_t t = 0;
	for (uint32_t r = 0; r < m->nranges; r++)
		if (m->ranges[r])
			t += m->ranges[r]->npages;
	return t;
}

static int scan_locked(struct mv_merge *m, unsigned pages_to_scan, unsigned max_merge, unsigned flags)
{
	uint64_t budget = pages_to_scan ? pages_to_scan : total_pages(m);
	uint64_t first = m->merged_total, scanned_now = 0;
	while (budget && (!max_merge || m->merged_total - first < max_merge)) {
		if (!advance_to_range(m))
			break;
		struct range *rg = m->ranges[m->cur_range];
		size_t n = rg->npages - m->cur_page;
		if (n > BATCH)
			n = BATCH;
		if (n > budget)
			n = budget;
		if (max_merge) {
			/* a page merges itself, or itself and its twin: at most two merges per page */
			uint64_t left = max_merge - (m->merged_total - first);
			if (n > (left + 1) / 2)
				n = (left + 1) / 2;
		}
		scan_batch(m, m->cur_range, m->cur_page, n, flags);
		m->cur_page += n;
		budget -= n;
		scanned_now += n;
	}
	flush(m);
	/* a scan that stopped at the end of the last range completes the full scan now */
	advance_to_range(m);
	if (m->populated > m->canon_used) {
		/* store pages allocated ahead and not used: give them back */
		(void)fallocate(m->store_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				(off_t)m->canon_used * MV_PAGE_SIZE,
				(off_t)(m->populated - m->canon_used) * MV_PAGE_SIZE);
		m->populated = m->canon_used;
	}
	if (scanned_now >= 4 * BATCH)
		(void)madvise(m->buf, (BATCH + VBATCH) * MV_PAGE_SIZE,
			      MADV_DONTNEED); /* big scans: give the buffers back */
	publish(m);
	uint64_t merged = m->merged_total - first;
	return (int)(merged > INT32_MAX ? INT32_MAX : merged);
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
	r = uffd_setup(m);
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
	m->zero_hash = XXH3_64bits(m->cmpbuf, MV_PAGE_SIZE);
	m->map_limit = read_max_map_count();
	m->map_count = m->map_estimate = count_maps();
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
	publish(m);
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

/* Turn every merged page of [start, end) back into private anonymous memory. */
static void restore_private(struct mv_merge *m, uintptr_t start, uintptr_t end)
{
	uintptr_t a = start;
	while (a < end) {
		struct vma v;
		if (vma_at(m, a, &v) < 0)
			return;
		uintptr_t e = v.end < end ? v.end : end;
		if (v.kind == VMA_STORE && !(v.prot & MV_VMA_SHARED)) {
			size_t len = e - a;
			void *tmp = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (tmp != MAP_FAILED) {
				bool wp = uffd_wp(m, a, len, true) == 0;
				if (read_self(tmp, a, len) == (ssize_t)len && mprotect(tmp, len, prot_of(&v)) == 0 &&
				    move_raw(tmp, len, (void *)a) != MAP_FAILED)
					tmp = NULL;
				if (wp)
					uffd_wake(m, a, len);
				if (tmp)
					munmap(tmp, len);
			}
		}
		a = e > a ? e : a + MV_PAGE_SIZE;
	}
}

static void unregister_range(struct mv_merge *m, uint32_t ri)
{
	struct range *rg = m->ranges[ri];
	size_t len = rg->npages * MV_PAGE_SIZE;
	restore_private(m, rg->start, rg->start + len);
	for (size_t p = 0; p < rg->npages; p++) {
		if (rg->site[p])
			site_clear(m, rg, p);
		set_volatile(m, rg, p, false);
	}
	struct uffdio_range ur = { .start = rg->start, .len = len };
	(void)mvu_sys_ioctl(m->uffd, UFFDIO_UNREGISTER, &ur);
	m->ranges[ri] = NULL;
	range_free(rg);
	unstable_reset(m);
	while (m->nranges && !m->ranges[m->nranges - 1])
		m->nranges--;
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
		pend_drop(m, &m->pend[i]);
	board_close(m);
	if (m->part && m->member_map) {
		struct mvw_req_merge_leave req = { .member_id = m->member_id };
		(void)mvc_request(MV_MSG_MERGE_LEAVE, &req, sizeof(req), -1, NULL, NULL);
	}
	pthread_mutex_unlock(&m->lock);
	if (m->store && !m->part)
		munmap(m->store, (size_t)m->store_cap * MV_PAGE_SIZE);
	part_unmap(m);
	if (m->buf)
		munmap(m->buf, (BATCH + VBATCH + 1) * MV_PAGE_SIZE);
	(void)mvu_sys_close(m->store_fd);
	(void)mvu_sys_close(m->uffd);
	(void)mvu_sys_close(m->maps_fd);
	(void)mvu_sys_close(m->pagemap_fd);
	free(m->canon);
	free(m->free_ids);
	free(m->stable);
	free(m->unstable);
	free(m->pend);
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
	if (m->board) /* the parent's: not ours to rewrite or remove */
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
	for (uintptr_t p = a; p < a + len;) {
		struct vma v;
		r = vma_at(m, p, &v);
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
	r = uffd_register(m, a, len);
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
	r = store_grow(m,
		       (uint32_t)((total_pages(m) / 2 + BATCH) > UINT32_MAX ? UINT32_MAX : total_pages(m) / 2 + BATCH));
	if (r < 0) {
		m->ranges[slot] = NULL;
		struct uffdio_range ur = { .start = a, .len = len };
		(void)mvu_sys_ioctl(m->uffd, UFFDIO_UNREGISTER, &ur);
		range_free(rg);
		goto out;
	}
	m->map_count = m->map_estimate = count_maps();
	publish(m);
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
			flush(m);
			unregister_range(m, i);
			publish(m);
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
		r = scan_locked(m, pages_to_scan, max_pages_to_merge, flags);
	pthread_mutex_unlock(&m->lock);
	return r;
}

static void *scanner_main(void *arg)
{
	struct mv_merge *m = arg;
	pthread_mutex_lock(&m->lock);
	while (!m->scanner_stop) {
		struct mv_merge_knobs k = m->knobs;
		scan_locked(m, k.pages_to_scan, k.max_pages_to_merge, k.scan_flags);
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
	publish(m);
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
					if (vma_at(m, a, &v) < 0)
						v = (struct vma){ .start = a,
								  .end = a + MV_PAGE_SIZE,
								  .kind = VMA_NONE };
				if (!site_intact(m, rg, p0 + i, pm[i], &v))
					site_clear(m, rg, p0 + i);
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
	publish(m);
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
		r = 0;
		break;
	}
	pthread_mutex_unlock(&m->lock);
	if (r == 0)
		memcpy(out, &s, size);
	return r;
}
