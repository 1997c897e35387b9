/* SPDX-License-Identifier: MIT */
/* libxengnttab.so.1 on memvisor: Xen's grant table API (Debian libxen-dev's xengnttab.h is the contract)
 * between ordinary processes. gntshr shares pages: the broker places them in a pool, a memfd it keeps for
 * this process's grants to one domain with one permission, and issues one ref per page. The process maps
 * each pool whole once, when it gets it, and gives each share a mapping of its pages made from that one
 * (mremap), so a read-only pool sealed since still gives the granter writable pages. gnttab maps refs:
 * the broker checks the grant and hands over the pool's memfd, which is mapped at the granted pages'
 * offsets into one reserved range. Unmap notifications are the broker's to fire, so they happen on
 * unmap, on close and when the process dies alike.
 *
 * Grants without notifications go faster, through table pools (gnttab_table.h): the broker gives the
 * granter a pool and its grant table once, and the grantee the same once, at its first mapping of one
 * of the pool's refs. From then on a share takes free slots of the table and grants them there, a map
 * checks the slot and counts itself in it, an unmap counts itself out: no broker round trip, and a
 * mapping is an mremap of the process's one mapping of the pool. The broker reads the tables to end a
 * dead granter's grants and to drop a dead grantee's mappings; notifications stay the broker's.
 *
 * As on Linux, unmapping or unsharing memory with a plain munmap is allowed: the records stay until the
 * handle closes or the process exits. Closing a handle releases its grants and mappings (notifications
 * fire) but leaves the memory mapped: the application may still be using it, and munmaps it itself.
 * Calls return NULL or -1 with errno set, as libxengnttab does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xengnttab.h>

#include "lib/client.h"
#include "proto/wire.h"
#include "xen/gnttab_table.h"

#define MAP_REQUEST_MAX 65536u      /* Linux gntdev: pages one mapping request may name */
#define MAX_GRANTS_LIMIT (1u << 20) /* gntdev's global limit on mapped pages */
#define POOL_VIEWS 64               /* pools this process keeps mapped (the broker's POOLS_PER_OWNER) */
#define VMA_CACHE 16                /* mappings kept per table pool for reuse */

/* A table pool this process shares from (its grantee's domid) or maps from (its granter's). Pieces that
 * lie in it hold a reference, so the table stays mapped as long as they need it. */
struct tview {
	uint64_t pool_id, epoch;
	uint32_t domid, base, window;
	bool writable;
	unsigned refs;
	uint8_t *pool; /* the whole pool */
	struct mvgt_table *tab;
	int fd; /* the granter's: reused pages are punched through it */
	bool listed;
	uint32_t live; /* the granter's: grants live in it, under views_lock */
	/* Mappings the application let go, kept for the next grant of the same slots: a new vma costs an
	 * mremap, a page fault and a munmap, most of a share's or a map's time. A kept one shows pages of
	 * this pool, which the process maps whole anyway. Under the list's lock. */
	struct vma_cache {
		uint8_t *addr;
		uint32_t slot, count;
		int prot;
	} cache[VMA_CACHE];
	unsigned ncache, next_evict;
};

struct piece {
	uint64_t id;          /* map id (gnttab) or share id (gntshr); 0 for a table piece */
	uint32_t page, count; /* where it lies in the area, in pages */
	uint32_t share_page;  /* gntshr: the area's first page within the share */
	struct tview *tv;     /* a table piece: slots slot..slot+count of tv */
	uint32_t slot;
	uint32_t *refs; /* gntshr table piece: each page's ref (a slot's next grant has another) */
};

struct area {
	uint8_t *addr;
	uint32_t count;
	int prot;
	struct piece *pieces;
	uint32_t npieces;
};

enum kind { GNTTAB, GNTSHR };

struct xengntdev_handle {
	enum kind kind;
	int fd; /* what xengnttab_fd returns: an eventfd that never fires, the handle's identity */
	pthread_mutex_t lock;
	struct area *areas;
	size_t nareas, cap;
	uint64_t mapped_pages;
	uint32_t max_grants;
	bool used;
};

/* A program that loads Xen's guest libraries is a domain from the start, as a guest is: it can then
 * read its own domid from the xenstore ("domid", relative) before it binds or shares anything. If the
 * broker does not answer at once, the domain is made on first use instead. Its fork children are new
 * domains from the fork on; MEMVISOR_XEN_DOMID chooses its id (mvc_domain_init). */
static void tables_forget(void);

__attribute__((constructor)) static void become_domain(void)
{
	mvc_domain_init();
	pthread_atfork(NULL, NULL, tables_forget);
}

static void *fail_null(int e)
{
	errno = e;
	return NULL;
}

static int fail(int e)
{
	errno = e;
	return -1;
}

static struct xengntdev_handle *handle_open(enum kind kind, unsigned flags)
{
	if (flags) {
		errno = EINVAL;
		return NULL;
	}
	int e = mvc_domain_check();
	if (e < 0 && e != -ETIMEDOUT && e != -EAGAIN && e != -ENOTCONN)
		return fail_null(-e); /* the domain MEMVISOR_XEN_DOMID chose is not to be had */
	struct xengntdev_handle *h = calloc(1, sizeof(*h));
	if (!h)
		return fail_null(ENOMEM);
	h->kind = kind;
	h->max_grants = MAX_GRANTS_LIMIT;
	h->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->fd < 0) {
		int e = errno;
		free(h);
		return fail_null(e);
	}
	pthread_mutex_init(&h->lock, NULL);
	return h;
}

static int area_add(struct xengntdev_handle *h, struct area *a)
{
	if (h->nareas == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 8;
		struct area *n = realloc(h->areas, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		h->areas = n;
		h->cap = cap;
	}
	h->areas[h->nareas++] = *a;
	return 0;
}

/* The process's mapping of each pool it shares from: the process-wide table of them. */
struct pool_view {
	uint64_t id;
	uint32_t domid, pages;
	bool writable;
	uint8_t *base;
};
static pthread_mutex_t views_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pool_view views[POOL_VIEWS];
static unsigned nviews;

/* Table pools: the granter's (under views_lock) and those it maps from (under mviews_lock). */
static struct tview *gviews[POOL_VIEWS], *mviews[POOL_VIEWS];
static unsigned ngviews, nmviews;
static pthread_mutex_t mviews_lock = PTHREAD_MUTEX_INITIALIZER;
/* Grants live in this domain's listed tables (gntalloc's limit), under views_lock. A table of a broker
 * that died is no longer listed, and its grants no longer count: that broker's refs are gone. */
static uint32_t table_live;

static void tview_unref(struct tview *tv)
{
	if (__atomic_sub_fetch(&tv->refs, 1, __ATOMIC_ACQ_REL))
		return;
	munmap(tv->pool, (size_t)MVGT_SLOTS * MV_PAGE_SIZE);
	munmap(tv->tab, MVGT_SIZE);
	if (tv->fd >= 0)
		close(tv->fd);
	free(tv);
}

static void tview_drop(struct tview **list, unsigned *n, unsigned i)
{
	struct tview *tv = list[i];
	list[i] = list[--*n];
	tv->listed = false;
	if (list == gviews)
		table_live -= tv->live;
	for (unsigned k = 0; k < tv->ncache; k++)
		munmap(tv->cache[k].addr, (size_t)tv->cache[k].count * MV_PAGE_SIZE);
	tv->ncache = 0;
	tview_unref(tv);
}

/* A kept mapping of exactly these slots, taken out of the cache; NULL if none. Under the list's lock.
 * What the application gave back is the library's from then on: a program that munmaps it as well (a
 * second munmap, which on Linux too would unmap whatever was mapped there since) breaks the kept
 * mapping, and whoever holds that address next. */
static uint8_t *cache_take(struct tview *tv, uint32_t slot, uint32_t count, int prot)
{
	for (unsigned k = 0; k < tv->ncache; k++)
		if (tv->cache[k].slot == slot && tv->cache[k].count == count && tv->cache[k].prot == prot) {
			uint8_t *addr = tv->cache[k].addr;
			tv->cache[k] = tv->cache[--tv->ncache];
			return addr;
		}
	return NULL;
}

/* Keeps a mapping the application let go, if its pool is still in use here; else it goes. Under the
 * list's lock. */
static void cache_put(struct tview *tv, uint8_t *addr, uint32_t slot, uint32_t count, int prot)
{
	if (!tv->listed) {
		munmap(addr, (size_t)count * MV_PAGE_SIZE);
		return;
	}
	if (tv->ncache == VMA_CACHE) {
		unsigned k = tv->next_evict++ % VMA_CACHE;
		munmap(tv->cache[k].addr, (size_t)tv->cache[k].count * MV_PAGE_SIZE);
		tv->cache[k] = tv->cache[--tv->ncache];
	}
	tv->cache[tv->ncache++] = (struct vma_cache){ .addr = addr, .slot = slot, .count = count, .prot = prot };
}

/* A pool and its table from the broker's answer, mapped whole. fds are consumed. */
static struct tview *tview_new(uint32_t domid, const struct mvw_rep_gnt_table *rep, int *fds, bool granter, int *e)
{
	struct tview *tv = NULL;
	*e = EPROTO;
	if (fds[0] < 0 || fds[1] < 0 || rep->pages != MVGT_SLOTS || rep->window < MVGT_SLOTS ||
	    rep->window % MVGT_SLOTS || rep->base_ref < MV_GNT_FIRST_REF || rep->base_ref > MV_GNT_MAX_REF ||
	    rep->window > MV_GNT_MAX_REF - rep->base_ref + 1)
		goto out;
	*e = ENOMEM;
	if (!(tv = calloc(1, sizeof(*tv))))
		goto out;
	bool writable = rep->flags & MV_GNT_WRITABLE;
	int prot = granter || writable ? PROT_READ | PROT_WRITE : PROT_READ;
	tv->pool = mmap(NULL, (size_t)MVGT_SLOTS * MV_PAGE_SIZE, prot, MAP_SHARED, fds[0], 0);
	tv->tab = mmap(NULL, MVGT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
	if (tv->pool == MAP_FAILED || tv->tab == MAP_FAILED) {
		*e = errno;
		if (tv->pool != MAP_FAILED)
			munmap(tv->pool, (size_t)MVGT_SLOTS * MV_PAGE_SIZE);
		if (tv->tab != MAP_FAILED)
			munmap(tv->tab, MVGT_SIZE);
		free(tv);
		tv = NULL;
		goto out;
	}
	tv->pool_id = rep->pool_id;
	tv->domid = domid;
	tv->base = rep->base_ref;
	tv->window = rep->window;
	tv->writable = writable;
	tv->refs = 1;
	tv->fd = -1;
	if (granter) {
		tv->fd = fds[0];
		fds[0] = -1;
	}
	*e = 0;
out:
	for (int i = 0; i < 2; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return tv;
}

/* A fork child is a domain of its own: its parent's tables are not its to grant or map in. mvc_epoch
 * tells it so too (the child's connection is not the parent's), but only once the lists' locks are
 * taken, which a parent's thread may have held at the fork. What its inherited handles still name is
 * left alone (their records belong to the parent). */
static void tables_forget(void)
{
	pthread_mutex_init(&views_lock, NULL);
	pthread_mutex_init(&mviews_lock, NULL);
	for (unsigned i = 0; i < ngviews; i++)
		gviews[i]->listed = false;
	for (unsigned i = 0; i < nmviews; i++)
		mviews[i]->listed = false;
	ngviews = nmviews = 0;
	table_live = 0;
}

static void unshare_run(uint64_t id, uint32_t page, uint32_t count, uint32_t flags)
{
	struct mvw_req_gnt_unshare req = { .share_id = id, .page = page, .count = count, .flags = flags };
	(void)mvc_request(MV_MSG_GNT_UNSHARE, &req, sizeof(req), -1, NULL, NULL);
}

static bool page_mapped(uint8_t *addr)
{
	unsigned char v;
	return mincore(addr, MV_PAGE_SIZE, &v) == 0;
}

/* A closing handle ends its grants but leaves their memory mapped. Pages the application still maps
 * are ended with MV_GNT_UNSHARE_KEEP, so the broker does not grant them again under it; pages it
 * already munmapped (libxenvchan does so with its rings) go back to the pool. */
static void unshare_closing(const struct piece *p, uint8_t *addr)
{
	for (uint32_t i = 0; i < p->count;) {
		bool mapped = page_mapped(addr + (size_t)i * MV_PAGE_SIZE);
		uint32_t j = i + 1;
		while (j < p->count && page_mapped(addr + (size_t)j * MV_PAGE_SIZE) == mapped)
			j++;
		unshare_run(p->id, p->share_page + i, j - i, mapped ? MV_GNT_UNSHARE_KEEP : 0);
		i = j;
	}
}

/* Ends page k of a table share, once: its slot may carry a later grant afterwards. A page nobody maps
 * any more (keep: the application still does) is zeroed now, so that no mapper given the pool later
 * finds what it held; one still mapped is zeroed when it is granted again. */
static void table_end(struct piece *p, uint32_t k, bool keep)
{
	struct tview *tv = p->tv;
	uint64_t *w = &tv->tab->slot[p->slot + k];

	if (!p->refs[k])
		return;
	/* under the lock shares take slots with: none may take this one between its end and its zeroing */
	pthread_mutex_lock(&views_lock);
	if (mvgt_end(w, p->refs[k], keep)) {
		tv->live--;
		if (tv->listed)
			table_live--;
	}
	if (!keep && mvgt_free(mvgt_load(w))) {
		memset(tv->pool + (size_t)(p->slot + k) * MV_PAGE_SIZE, 0, MV_PAGE_SIZE);
		(void)mvgt_mark_clean(w, p->refs[k]);
	}
	pthread_mutex_unlock(&views_lock);
	p->refs[k] = 0;
}

static void table_piece_free(struct piece *p)
{
	free(p->refs);
	p->refs = NULL;
	tview_unref(p->tv);
	p->tv = NULL;
}

/* A table mapping counts itself out, once its pages are unmapped (or left to the application, on
 * close): from then on the granter may grant the pages again. */
static void table_unmap(struct piece *p)
{
	for (uint32_t k = 0; k < p->count; k++)
		mvgt_unmap(&p->tv->tab->slot[p->slot + k]);
	uint64_t n = __atomic_load_n(&p->tv->tab->maps, __ATOMIC_RELAXED);
	while (n &&
	       !__atomic_compare_exchange_n(&p->tv->tab->maps, &n, n - 1, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
	table_piece_free(p);
}

/* The broker's pieces: their notifications fire while the pages are still mapped, as gntdev clears
 * the byte first. */
static void release_broker_pieces(enum kind kind, struct area *a)
{
	for (uint32_t i = 0; i < a->npieces; i++) {
		struct piece *p = &a->pieces[i];
		if (p->tv)
			continue;
		if (kind == GNTTAB) {
			struct mvw_req_gnt_unmap req = { .map_id = p->id };
			(void)mvc_request(MV_MSG_GNT_UNMAP, &req, sizeof(req), -1, NULL, NULL);
		} else {
			unshare_closing(p, a->addr + (size_t)p->page * MV_PAGE_SIZE);
		}
	}
}

/* The table pieces, after the area is unmapped (or left mapped, on close). */
static void release_table_pieces(enum kind kind, struct area *a)
{
	for (uint32_t i = 0; i < a->npieces; i++) {
		struct piece *p = &a->pieces[i];
		if (!p->tv)
			continue;
		if (kind == GNTTAB) {
			table_unmap(p);
			continue;
		}
		uint8_t *addr = a->addr + (size_t)p->page * MV_PAGE_SIZE;
		for (uint32_t k = 0; k < p->count; k++)
			table_end(p, k, page_mapped(addr + (size_t)k * MV_PAGE_SIZE));
		table_piece_free(p);
	}
	free(a->pieces);
	a->pieces = NULL;
	a->npieces = 0;
}

static void release_pieces(enum kind kind, struct area *a)
{
	release_broker_pieces(kind, a);
	release_table_pieces(kind, a);
}

static int handle_close(struct xengntdev_handle *h)
{
	if (!h)
		return 0;
	for (size_t i = 0; i < h->nareas; i++)
		release_pieces(h->kind, &h->areas[i]);
	free(h->areas);
	close(h->fd);
	pthread_mutex_destroy(&h->lock);
	free(h);
	return 0;
}

MV_EXPORT xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
	(void)logger;
	return handle_open(GNTTAB, open_flags);
}

MV_EXPORT int xengnttab_close(xengnttab_handle *xgt)
{
	return handle_close(xgt);
}

MV_EXPORT int xengnttab_fd(xengnttab_handle *xgt)
{
	return xgt->fd;
}

/* Linux's gntdev took this only before the first mapping, and never above its global limit. */
MV_EXPORT int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
	pthread_mutex_lock(&xgt->lock);
	int e = 0;
	if (xgt->used)
		e = EBUSY;
	else if (nr_grants > MAX_GRANTS_LIMIT)
		e = E2BIG;
	else
		xgt->max_grants = nr_grants;
	pthread_mutex_unlock(&xgt->lock);
	return e ? fail(e) : 0;
}

/* The table pool of granter domid whose window holds ref, from the cache or asked of the broker, with
 * a reference for the caller. fresh: the cached one is not believed. NULL with *e; ENOENT: the ref is no
 * table pool's (it is mapped through the broker). */
static struct tview *mview_get(uint32_t domid, uint32_t ref, bool writable, bool fresh, int *e)
{
	uint64_t epoch = mvc_epoch();

	pthread_mutex_lock(&mviews_lock);
	for (unsigned i = 0; i < nmviews;) {
		struct tview *tv = mviews[i];
		/* a table of a broker that died (or before a fork) means nothing to the broker now */
		if (!epoch || tv->epoch != epoch ||
		    (fresh && tv->domid == domid && mvgt_slot_of(tv->base, tv->window, ref) >= 0)) {
			tview_drop(mviews, &nmviews, i);
			continue;
		}
		if (tv->domid == domid && mvgt_slot_of(tv->base, tv->window, ref) >= 0) {
			__atomic_add_fetch(&tv->refs, 1, __ATOMIC_RELAXED);
			pthread_mutex_unlock(&mviews_lock);
			return tv;
		}
		i++;
	}
	pthread_mutex_unlock(&mviews_lock);

	struct mvw_req_gnt_table_open req = { .domid = domid, .ref = ref, .flags = writable ? MV_GNT_WRITABLE : 0 };
	struct mvw_msg rep;
	int fds[2] = { -1, -1 };
	int r = mvc_request(MV_MSG_GNT_TABLE_OPEN, &req, sizeof(req), -1, &rep, fds);
	if (r < 0) {
		*e = -r;
		return NULL;
	}
	struct tview *tv = tview_new(domid, &rep.u.gnt_table_rep, fds, false, e);
	if (!tv)
		return NULL;
	tv->epoch = mvc_epoch();
	tv->refs = 2; /* the cache's and the caller's */
	pthread_mutex_lock(&mviews_lock);
	if (nmviews == POOL_VIEWS)
		tview_drop(mviews, &nmviews, 0);
	tv->listed = true;
	mviews[nmviews++] = tv;
	pthread_mutex_unlock(&mviews_lock);
	return tv;
}

/* Maps refs[i..] that lie in consecutive slots of tv and are granted now, counting a mapping of each in
 * the table, at *dst (anywhere if NULL). Returns how many, or -errno. */
static int map_table_run(struct tview *tv, const uint32_t *domids, uint32_t domid, const uint32_t *refs, uint32_t i,
			 uint32_t count, int prot, uint8_t **dst)
{
	int64_t slot = mvgt_slot_of(tv->base, tv->window, refs[i]);
	uint32_t run = 0;

	while (i + run < count && slot + run < MVGT_SLOTS && (!domids || domids[i + run] == domid) &&
	       mvgt_slot_of(tv->base, tv->window, refs[i + run]) == slot + run &&
	       mvgt_map(&tv->tab->slot[slot + run], refs[i + run]))
		run++;
	if (run == 0)
		return -EINVAL;
	size_t len = (size_t)run * MV_PAGE_SIZE;
	int base_prot = tv->writable ? PROT_READ | PROT_WRITE : PROT_READ;
	if (!*dst) {
		pthread_mutex_lock(&mviews_lock);
		uint8_t *kept = cache_take(tv, (uint32_t)slot, run, prot);
		pthread_mutex_unlock(&mviews_lock);
		if (kept) {
			__atomic_add_fetch(&tv->tab->maps, 1, __ATOMIC_RELAXED);
			*dst = kept;
			return (int)run;
		}
	}
	void *m = mremap(tv->pool + (size_t)slot * MV_PAGE_SIZE, 0, len, MREMAP_MAYMOVE | (*dst ? MREMAP_FIXED : 0),
			 *dst);
	int e = m == MAP_FAILED ? errno : 0;
	if (!e && prot != base_prot && mprotect(m, len, prot) < 0) {
		e = errno;
		if (!*dst)
			munmap(m, len);
	}
	if (e) {
		for (uint32_t k = 0; k < run; k++)
			mvgt_unmap(&tv->tab->slot[slot + k]);
		return -e;
	}
	__atomic_add_fetch(&tv->tab->maps, 1, __ATOMIC_RELAXED);
	*dst = m;
	return (int)run;
}

static int pieces_add(struct area *a, uint32_t *cap, struct piece p)
{
	if (a->npieces == *cap) {
		uint32_t n = *cap ? *cap * 2 : 4;
		struct piece *np = realloc(a->pieces, n * sizeof(*np));
		if (!np)
			return -ENOMEM;
		a->pieces = np;
		*cap = n;
	}
	a->pieces[a->npieces++] = p;
	return 0;
}

/* An inaccessible range for the whole area, which its pieces are mapped into. */
static int reserve(struct area *a)
{
	void *r = mmap(NULL, (size_t)a->count * MV_PAGE_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	if (r == MAP_FAILED)
		return -1;
	a->addr = r;
	return 0;
}

static void *map_refs(struct xengntdev_handle *h, uint32_t count, const uint32_t *domids, uint32_t one_domid,
		      const uint32_t *refs, int prot, uint32_t notify_offset, evtchn_port_t notify_port)
{
	bool writable = prot & PROT_WRITE;
	uint32_t nflags = (notify_offset != (uint32_t)-1 ? MV_GNT_NOTIFY_CLEAR_BYTE : 0) |
			  (notify_port != (evtchn_port_t)-1 ? MV_GNT_NOTIFY_SEND_EVENT : 0);

	if (count == 0 || count > MAP_REQUEST_MAX || !refs || (prot & ~(PROT_READ | PROT_WRITE)))
		return fail_null(EINVAL);
	if ((nflags & MV_GNT_NOTIFY_CLEAR_BYTE) && (!writable || notify_offset >= MV_PAGE_SIZE))
		return fail_null(EINVAL);
	pthread_mutex_lock(&h->lock);
	h->used = true;
	bool over = h->mapped_pages + count > h->max_grants;
	pthread_mutex_unlock(&h->lock);
	if (over)
		return fail_null(ENOMEM);

	struct area a = { .count = count, .prot = prot };
	uint32_t cap = 0;
	int e = 0;
	/* consecutive refs of one domain may be one table run: that needs no reserved range (a table
	 * mapping lands where the kernel puts it, or where a kept one is), nor does a single page */
	bool one_run = !nflags && count <= MVGT_SLOTS;
	for (uint32_t i = 1; i < count && one_run; i++)
		one_run = refs[i] == refs[0] + i && (!domids || domids[i] == domids[0]);
	if (!one_run && reserve(&a) < 0)
		return NULL;
	for (uint32_t i = 0; i < count;) {
		uint32_t domid = domids ? domids[i] : one_domid;
		/* a mapping with notifications is the broker's, which fires them whatever becomes of us */
		if (!nflags) {
			struct tview *tv = mview_get(domid, refs[i], writable, false, &e);
			int run = -EINVAL;
			if (tv && writable && !tv->writable) {
				tview_unref(tv);
				e = EINVAL;
				goto undo;
			}
			uint8_t *dst = a.addr ? a.addr + (size_t)i * MV_PAGE_SIZE : NULL;
			if (tv && (run = map_table_run(tv, domids, domid, refs, i, count, prot, &dst)) == -EINVAL) {
				/* ended, or the cached table is not the pool's any more: the broker decides */
				tview_unref(tv);
				tv = mview_get(domid, refs[i], writable, true, &e);
				if (tv)
					run = map_table_run(tv, domids, domid, refs, i, count, prot, &dst);
			}
			if (tv) {
				if (run < 0) {
					tview_unref(tv);
					e = -run;
					goto undo;
				}
				if (!a.addr && (uint32_t)run < count) {
					/* not one run after all: it moves into a range for the whole */
					size_t len = (size_t)run * MV_PAGE_SIZE;
					void *moved = MAP_FAILED;
					if (reserve(&a) == 0 &&
					    (moved = mremap(dst, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, a.addr)) ==
						    MAP_FAILED)
						e = errno;
					if (moved == MAP_FAILED) {
						munmap(dst, len);
						struct piece p = { .count = (uint32_t)run, .tv = tv };
						p.slot = (uint32_t)mvgt_slot_of(tv->base, tv->window, refs[i]);
						table_unmap(&p);
						e = e ? e : ENOMEM;
						goto undo;
					}
				}
				if (!a.addr)
					a.addr = dst;
				struct piece p = { .page = i, .count = (uint32_t)run, .tv = tv };
				p.slot = (uint32_t)mvgt_slot_of(tv->base, tv->window, refs[i]);
				if (pieces_add(&a, &cap, p) < 0) {
					table_unmap(&p);
					e = ENOMEM;
					goto undo;
				}
				i += (uint32_t)run;
				continue;
			}
			if (e != ENOENT)
				goto undo;
			e = 0;
		}
		if (!a.addr && reserve(&a) < 0) {
			e = errno;
			goto undo;
		}
		struct mvw_req_gnt_map req = {
			.domid = domid,
			.flags = writable ? MV_GNT_WRITABLE : 0,
			.notify_flags = i == 0 ? nflags : 0,
			.notify_offset = i == 0 && nflags ? notify_offset : 0,
			.notify_port = i == 0 && (nflags & MV_GNT_NOTIFY_SEND_EVENT) ? notify_port : 0,
		};
		while (req.count < MV_GNT_MAP_MAX_REFS && i + req.count < count &&
		       (!domids || domids[i + req.count] == req.domid)) {
			req.refs[req.count] = refs[i + req.count];
			req.count++;
		}
		struct mvw_msg rep;
		int fd = -1;
		int r = mvc_request(MV_MSG_GNT_MAP, &req, sizeof(req), -1, &rep, &fd);
		if (r < 0) {
			e = -r;
			goto undo;
		}
		uint32_t run = rep.u.gnt_map_rep.run;
		if (fd < 0 || run == 0 || run > req.count) {
			if (fd >= 0)
				close(fd);
			e = EPROTO;
			goto undo;
		}
		if (pieces_add(&a, &cap, (struct piece){ .id = rep.u.gnt_map_rep.map_id, .page = i, .count = run }) <
		    0) {
			struct mvw_req_gnt_unmap ureq = { .map_id = rep.u.gnt_map_rep.map_id };
			(void)mvc_request(MV_MSG_GNT_UNMAP, &ureq, sizeof(ureq), -1, NULL, NULL);
			close(fd);
			e = ENOMEM;
			goto undo;
		}
		void *m = mmap(a.addr + (size_t)i * MV_PAGE_SIZE, (size_t)run * MV_PAGE_SIZE, prot,
			       MAP_SHARED | MAP_FIXED, fd, (off_t)rep.u.gnt_map_rep.page * MV_PAGE_SIZE);
		e = m == MAP_FAILED ? errno : 0;
		close(fd);
		if (e)
			goto undo;
		i += run;
	}
	pthread_mutex_lock(&h->lock);
	e = area_add(h, &a) < 0 ? ENOMEM : 0;
	if (!e)
		h->mapped_pages += count;
	pthread_mutex_unlock(&h->lock);
	if (e)
		goto undo;
	return a.addr;
undo:
	/* all or nothing: what was mapped goes back */
	release_broker_pieces(GNTTAB, &a);
	if (a.addr)
		munmap(a.addr, (size_t)count * MV_PAGE_SIZE);
	release_table_pieces(GNTTAB, &a);
	return fail_null(e);
}

MV_EXPORT void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot)
{
	return map_refs(xgt, 1, NULL, domid, &ref, prot, (uint32_t)-1, (evtchn_port_t)-1);
}

MV_EXPORT void *xengnttab_map_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t *domids, uint32_t *refs,
					 int prot)
{
	if (!domids)
		return fail_null(EINVAL);
	return map_refs(xgt, count, domids, 0, refs, prot, (uint32_t)-1, (evtchn_port_t)-1);
}

MV_EXPORT void *xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid, uint32_t *refs,
						int prot)
{
	return map_refs(xgt, count, NULL, domid, refs, prot, (uint32_t)-1, (evtchn_port_t)-1);
}

MV_EXPORT void *xengnttab_map_grant_ref_notify(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot,
					       uint32_t notify_offset, evtchn_port_t notify_port)
{
	return map_refs(xgt, 1, NULL, domid, &ref, prot, notify_offset, notify_port);
}

/* The area starting at start; its count must be the mapped count. */
static int take_area(struct xengntdev_handle *h, void *start, uint32_t count, struct area *out)
{
	int e = EINVAL;
	pthread_mutex_lock(&h->lock);
	for (size_t i = 0; i < h->nareas; i++)
		if (h->areas[i].addr == start) {
			if (h->areas[i].count == count) {
				*out = h->areas[i];
				h->areas[i] = h->areas[--h->nareas];
				e = 0;
			}
			break;
		}
	pthread_mutex_unlock(&h->lock);
	return e;
}

MV_EXPORT int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
	struct area a;
	int e = take_area(xgt, start_address, count, &a);
	if (e)
		return fail(e);
	pthread_mutex_lock(&xgt->lock);
	xgt->mapped_pages -= a.count;
	pthread_mutex_unlock(&xgt->lock);
	/* notifications fire while the pages are still mapped here, as gntdev clears the byte first; a table
	 * mapping counts itself out once it is gone (or kept for reuse) */
	release_broker_pieces(GNTTAB, &a);
	int r = 0;
	if (a.npieces == 1 && a.pieces[0].tv && a.pieces[0].count == a.count) {
		pthread_mutex_lock(&mviews_lock);
		cache_put(a.pieces[0].tv, a.addr, a.pieces[0].slot, a.count, a.prot);
		pthread_mutex_unlock(&mviews_lock);
	} else {
		r = munmap(a.addr, (size_t)a.count * MV_PAGE_SIZE);
	}
	release_table_pieces(GNTTAB, &a);
	return r;
}

/* Each segment goes through the granted page's memfd with pread/pwrite: nothing is mapped. */
static int16_t copy_segment(xengnttab_grant_copy_segment_t *seg)
{
	bool src_foreign = seg->flags & GNTCOPY_source_gref, dst_foreign = seg->flags & GNTCOPY_dest_gref;

	if (seg->flags & ~(GNTCOPY_source_gref | GNTCOPY_dest_gref))
		return GNTST_general_error;
	if (src_foreign == dst_foreign)
		return GNTST_general_error; /* Linux's gntdev copies between a local buffer and a grant */
	const __typeof__(seg->source.foreign) *f = src_foreign ? &seg->source.foreign : &seg->dest.foreign;
	if ((uint32_t)f->offset + seg->len > MV_PAGE_SIZE)
		return GNTST_bad_copy_arg;
	struct mvw_req_gnt_map req = { .domid = f->domid,
				       .count = 1,
				       .flags = MV_GNT_MAP_TRANSIENT | (dst_foreign ? MV_GNT_WRITABLE : 0) };
	req.refs[0] = f->ref;
	struct mvw_msg rep;
	int fd = -1;
	int r = mvc_request(MV_MSG_GNT_MAP, &req, sizeof(req), -1, &rep, &fd);
	if (r == -EINVAL)
		return dst_foreign ? GNTST_permission_denied : GNTST_bad_gntref;
	if (r < 0 || fd < 0)
		return GNTST_general_error;
	off_t off = (off_t)rep.u.gnt_map_rep.page * MV_PAGE_SIZE + f->offset;
	ssize_t n =
		src_foreign ? pread(fd, seg->dest.virt, seg->len, off) : pwrite(fd, seg->source.virt, seg->len, off);
	close(fd);
	return n == (ssize_t)seg->len ? GNTST_okay : GNTST_general_error;
}

MV_EXPORT int xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count, xengnttab_grant_copy_segment_t *segs)
{
	(void)xgt;
	if (count && !segs)
		return fail(EINVAL);
	for (uint32_t i = 0; i < count; i++)
		segs[i].status = copy_segment(&segs[i]);
	return 0;
}

/* There is no DMA buffer framework between processes: these fail as a kernel without
 * CONFIG_XEN_GNTDEV_DMABUF does. */
MV_EXPORT int xengnttab_dmabuf_exp_from_refs(xengnttab_handle *xgt, uint32_t domid, uint32_t flags, uint32_t count,
					     const uint32_t *refs, uint32_t *fd)
{
	(void)xgt, (void)domid, (void)flags, (void)count, (void)refs, (void)fd;
	return fail(EOPNOTSUPP);
}

MV_EXPORT int xengnttab_dmabuf_exp_wait_released(xengnttab_handle *xgt, uint32_t fd, uint32_t wait_to_ms)
{
	(void)xgt, (void)fd, (void)wait_to_ms;
	return fail(EOPNOTSUPP);
}

MV_EXPORT int xengnttab_dmabuf_imp_to_refs(xengnttab_handle *xgt, uint32_t domid, uint32_t fd, uint32_t count,
					   uint32_t *refs)
{
	(void)xgt, (void)domid, (void)fd, (void)count, (void)refs;
	return fail(EOPNOTSUPP);
}

MV_EXPORT int xengnttab_dmabuf_imp_release(xengnttab_handle *xgt, uint32_t fd)
{
	(void)xgt, (void)fd;
	return fail(EOPNOTSUPP);
}

MV_EXPORT xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned open_flags)
{
	(void)logger;
	return handle_open(GNTSHR, open_flags);
}

MV_EXPORT int xengntshr_close(xengntshr_handle *xgs)
{
	return handle_close(xgs);
}

MV_EXPORT int xengntshr_fd(xengntshr_handle *xgs)
{
	return xgs->fd;
}

static void view_drop(struct pool_view *v)
{
	munmap(v->base, (size_t)v->pages * MV_PAGE_SIZE);
	*v = views[--nviews];
}

/* A new pool for grants to domid, mapped whole before any grant in it exists. Under views_lock. */
static struct pool_view *view_open(uint32_t domid, bool writable, int *e)
{
	struct mvw_req_gnt_pool req = { .domid = domid, .flags = writable ? MV_GNT_WRITABLE : 0 };
	struct mvw_msg rep;
	int fd = -1;
	int r = mvc_request(MV_MSG_GNT_POOL, &req, sizeof(req), -1, &rep, &fd);
	if (r < 0) {
		*e = -r;
		return NULL;
	}
	uint32_t pages = rep.u.gnt_pool_rep.pages;
	if (fd < 0 || pages == 0 || pages > MV_GNT_SHARE_LIMIT) {
		if (fd >= 0)
			close(fd);
		*e = EPROTO;
		return NULL;
	}
	void *base = mmap(NULL, (size_t)pages * MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	*e = base == MAP_FAILED ? errno : 0;
	close(fd);
	if (*e)
		return NULL;
	if (nviews == POOL_VIEWS)
		view_drop(&views[0]); /* the broker retires a pool past its limit too */
	struct pool_view *v = &views[nviews++];
	*v = (struct pool_view){
		.id = rep.u.gnt_pool_rep.pool_id, .domid = domid, .pages = pages, .writable = writable, .base = base
	};
	return v;
}

/* A new table pool for grants to domid. Under views_lock. */
static struct tview *gview_open(uint32_t domid, bool writable, int *e)
{
	struct mvw_req_gnt_table_pool req = { .domid = domid, .flags = writable ? MV_GNT_WRITABLE : 0 };
	struct mvw_msg rep;
	int fds[2] = { -1, -1 };
	int r = mvc_request(MV_MSG_GNT_TABLE_POOL, &req, sizeof(req), -1, &rep, fds);
	if (r < 0) {
		*e = -r;
		return NULL;
	}
	struct tview *tv = tview_new(domid, &rep.u.gnt_table_rep, fds, true, e);
	if (!tv)
		return NULL;
	tv->epoch = mvc_epoch();
	/* the broker retires the pool of the same kind this one replaces, and the oldest past its limit */
	for (unsigned i = 0; i < ngviews; i++)
		if (gviews[i]->domid == domid && gviews[i]->writable == writable) {
			tview_drop(gviews, &ngviews, i);
			break;
		}
	if (ngviews == POOL_VIEWS)
		tview_drop(gviews, &ngviews, 0);
	tv->listed = true;
	gviews[ngviews++] = tv;
	return tv;
}

/* count free slots in a row, first fit: the slots (and the kept mappings) used last are used again,
 * under new refs (a slot's refs go through MVGT_GENS generations); -1 if there are none. */
static int64_t table_place(const struct tview *tv, uint32_t count)
{
	for (uint32_t i = 0, run = 0; i < MVGT_SLOTS; i++) {
		run = mvgt_free(mvgt_load(&tv->tab->slot[i])) ? run + 1 : 0;
		if (run == count)
			return (int64_t)i + 1 - count;
	}
	return -1;
}

/* A share without notifications: slots of the table pool for domid are granted, no round trip (but the
 * pool's first). Under views_lock; refs get the share's refs, *addr a kept mapping of its slots if
 * there is one. */
static struct tview *table_share(uint32_t domid, uint32_t count, bool writable, uint32_t *refs, uint8_t **addr, int *e)
{
	uint64_t epoch = mvc_epoch();
	struct tview *tv = NULL;
	int64_t slot = -1;

	for (unsigned i = 0; i < ngviews;) {
		/* pools of a broker that died, or before a fork, are nobody's now */
		if (!epoch || gviews[i]->epoch != epoch) {
			tview_drop(gviews, &ngviews, i);
			continue;
		}
		if (gviews[i]->domid == domid && gviews[i]->writable == writable)
			tv = gviews[i];
		i++;
	}
	if (table_live + count > MV_GNT_SHARE_LIMIT) {
		*e = ENOSPC;
		return NULL;
	}
	for (int attempt = 0; attempt < 2 && slot < 0; attempt++) {
		if (!tv && !(tv = gview_open(domid, writable, e)))
			return NULL;
		if ((slot = table_place(tv, count)) < 0)
			tv = NULL; /* full: the next pool replaces it */
	}
	if (slot < 0) {
		*e = ENOSPC;
		return NULL;
	}
	uint32_t gen = 0, gens = tv->window / MVGT_SLOTS;
	bool reused = false;
	for (uint32_t k = 0; k < count; k++) {
		uint64_t w = mvgt_load(&tv->tab->slot[slot + k]);
		uint32_t g = mvgt_next_gen(tv->base, tv->window, (uint32_t)slot + k, w);
		gen = g > gen ? g : gen;
		reused |= mvgt_dirty(w);
	}
	if (gen >= gens)
		gen = 0;
	for (uint32_t k = 0; k < count; k++) {
		refs[k] = tv->base + gen * MVGT_SLOTS + (uint32_t)slot + k;
		if (!mvgt_claim(&tv->tab->slot[slot + k], refs[k])) {
			*e = EAGAIN; /* the grantee wrote the table meanwhile; the claimed slots stay free */
			return NULL;
		}
	}
	/* a page granted before is zeroed before anyone sees it again: punched in a pool not sealed yet
	 * (memory goes back), cleared otherwise; nobody maps it now, and nobody can until it is granted */
	if (reused) {
		off_t off = (off_t)slot * MV_PAGE_SIZE, len = (off_t)count * MV_PAGE_SIZE;
		if (count < 16 || fallocate(tv->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) < 0)
			memset(tv->pool + off, 0, (size_t)len);
	}
	for (uint32_t k = 0; k < count; k++)
		(void)mvgt_grant(&tv->tab->slot[slot + k], refs[k], k == 0);
	table_live += count;
	tv->live += count;
	__atomic_add_fetch(&tv->refs, 1, __ATOMIC_RELAXED);
	*addr = cache_take(tv, (uint32_t)slot, count, PROT_READ | PROT_WRITE);
	return tv;
}

static void *share(struct xengntdev_handle *h, uint32_t domid, int count, uint32_t *refs, int writable,
		   uint32_t notify_flags, uint32_t notify_offset, uint32_t notify_port)
{
	if (count <= 0 || !refs || domid > MV_DOMID_LAST)
		return fail_null(EINVAL);
	if ((uint32_t)count > MV_GNT_SHARE_LIMIT)
		return fail_null(ENOSPC);
	if (!notify_flags) {
		int e = 0;
		uint8_t *kept = NULL;
		pthread_mutex_lock(&views_lock);
		struct tview *tv = table_share(domid, (uint32_t)count, !!writable, refs, &kept, &e);
		pthread_mutex_unlock(&views_lock);
		if (!tv)
			return fail_null(e);
		struct piece p = { .page = 0, .count = (uint32_t)count, .tv = tv };
		p.slot = (uint32_t)mvgt_slot_of(tv->base, tv->window, refs[0]);
		p.refs = malloc((size_t)count * sizeof(*p.refs));
		struct area a = { .count = (uint32_t)count, .npieces = 1, .pieces = malloc(sizeof(p)) };
		a.addr = kept ? kept
			      : mremap(tv->pool + (size_t)p.slot * MV_PAGE_SIZE, 0, (size_t)count * MV_PAGE_SIZE,
				       MREMAP_MAYMOVE);
		e = a.addr == MAP_FAILED ? errno : !p.refs || !a.pieces ? ENOMEM : 0;
		if (!e) {
			memcpy(p.refs, refs, (size_t)count * sizeof(*refs));
			a.pieces[0] = p;
			pthread_mutex_lock(&h->lock);
			e = area_add(h, &a) < 0 ? ENOMEM : 0;
			pthread_mutex_unlock(&h->lock);
		}
		if (e) {
			if (a.addr != MAP_FAILED)
				munmap(a.addr, (size_t)count * MV_PAGE_SIZE);
			for (uint32_t k = 0; p.refs && k < (uint32_t)count; k++)
				table_end(&p, k, false);
			if (!p.refs) {
				pthread_mutex_lock(&views_lock);
				for (uint32_t k = 0; k < (uint32_t)count; k++)
					if (mvgt_end(&tv->tab->slot[p.slot + k], refs[k], false)) {
						tv->live--;
						table_live -= tv->listed;
					}
				pthread_mutex_unlock(&views_lock);
			}
			table_piece_free(&p);
			free(a.pieces);
			return fail_null(e);
		}
		return a.addr;
	}
	struct mvw_req_gnt_share req = { .domid = domid,
					 .count = (uint32_t)count,
					 .flags = writable ? MV_GNT_WRITABLE : 0,
					 .notify_flags = notify_flags,
					 .notify_offset = notify_offset,
					 .notify_port = notify_port };
	struct mvw_msg rep;
	struct pool_view *v = NULL;
	int r = 0, e = 0;

	pthread_mutex_lock(&views_lock);
	/* a pool the broker no longer knows (ESTALE: another connection's, after a fork) or without room
	 * for count pages (EXFULL) is replaced by a new one, once */
	for (int attempt = 0; attempt < 2; attempt++) {
		v = NULL;
		for (unsigned i = 0; i < nviews && !v; i++)
			if (views[i].domid == domid && views[i].writable == !!writable)
				v = &views[i];
		if (!v && !(v = view_open(domid, !!writable, &e))) {
			pthread_mutex_unlock(&views_lock);
			return fail_null(e);
		}
		req.pool_id = v->id;
		r = mvc_request(MV_MSG_GNT_SHARE, &req, sizeof(req), -1, &rep, NULL);
		if (r != -ESTALE && r != -EXFULL)
			break;
		view_drop(v);
		v = NULL;
	}
	if (r < 0 || !v) {
		pthread_mutex_unlock(&views_lock);
		return fail_null(r < 0 ? -r : EPROTO);
	}
	struct area a = { .count = (uint32_t)count, .addr = MAP_FAILED };
	struct piece p = { .id = rep.u.gnt_share_rep.share_id, .count = (uint32_t)count };
	uint32_t page = rep.u.gnt_share_rep.page;
	a.pieces = malloc(sizeof(p));
	if (page > v->pages || (uint32_t)count > v->pages - page)
		e = EPROTO;
	else if ((a.addr = mremap(v->base + (size_t)page * MV_PAGE_SIZE, 0, (size_t)count * MV_PAGE_SIZE,
				  MREMAP_MAYMOVE)) == MAP_FAILED)
		e = errno;
	else if (!a.pieces)
		e = ENOMEM;
	pthread_mutex_unlock(&views_lock);
	if (!e) {
		a.pieces[0] = p;
		a.npieces = 1;
		pthread_mutex_lock(&h->lock);
		e = area_add(h, &a) < 0 ? ENOMEM : 0;
		pthread_mutex_unlock(&h->lock);
	}
	if (e) {
		if (a.addr != MAP_FAILED)
			munmap(a.addr, (size_t)count * MV_PAGE_SIZE);
		free(a.pieces);
		unshare_run(p.id, 0, (uint32_t)count, 0);
		return fail_null(e);
	}
	for (int i = 0; i < count; i++)
		refs[i] = rep.u.gnt_share_rep.first_ref + (uint32_t)i;
	return a.addr;
}

MV_EXPORT void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs, int writable)
{
	return share(xgs, domid, count, refs, writable, 0, 0, 0);
}

MV_EXPORT void *xengntshr_share_page_notify(xengntshr_handle *xgs, uint32_t domid, uint32_t *ref, int writable,
					    uint32_t notify_offset, evtchn_port_t notify_port)
{
	uint32_t flags = (notify_offset != (uint32_t)-1 ? MV_GNT_NOTIFY_CLEAR_BYTE : 0) |
			 (notify_port != (evtchn_port_t)-1 ? MV_GNT_NOTIFY_SEND_EVENT : 0);
	if ((flags & MV_GNT_NOTIFY_CLEAR_BYTE) && notify_offset >= MV_PAGE_SIZE)
		return fail_null(EINVAL);
	return share(xgs, domid, 1, ref, writable, flags, flags & MV_GNT_NOTIFY_CLEAR_BYTE ? notify_offset : 0,
		     flags & MV_GNT_NOTIFY_SEND_EVENT ? notify_port : 0);
}

/* On Linux this is munmap of the range; the grants in it end. Any part of a shared area may go. */
MV_EXPORT int xengntshr_unshare(xengntshr_handle *xgs, void *start_address, uint32_t count)
{
	uint8_t *lo = start_address, *hi = lo + (size_t)count * MV_PAGE_SIZE;

	bool kept = false;

	if (((uintptr_t)lo & (MV_PAGE_SIZE - 1)) || count == 0)
		return fail(EINVAL);
	pthread_mutex_lock(&xgs->lock);
	for (size_t i = 0; i < xgs->nareas;) {
		struct area *a = &xgs->areas[i];
		uint8_t *alo = a->addr, *ahi = alo + (size_t)a->count * MV_PAGE_SIZE;
		if (ahi <= lo || alo >= hi) {
			i++;
			continue;
		}
		uint8_t *clo = lo > alo ? lo : alo, *chi = hi < ahi ? hi : ahi;
		uint32_t first = (uint32_t)((clo - alo) / MV_PAGE_SIZE), n = (uint32_t)((chi - clo) / MV_PAGE_SIZE);
		struct piece *p = &a->pieces[0];
		if (p->tv) {
			/* let go first: a page whose grant ended may be granted (and zeroed) again at once */
			if (alo == lo && ahi == hi) {
				/* exactly one share's mapping: kept for the next share of these slots */
				pthread_mutex_lock(&views_lock);
				cache_put(p->tv, alo, p->slot, a->count, PROT_READ | PROT_WRITE);
				pthread_mutex_unlock(&views_lock);
				kept = true;
			} else {
				munmap(clo, (size_t)n * MV_PAGE_SIZE);
			}
			for (uint32_t k = first; k < first + n; k++)
				table_end(p, k, false);
		} else {
			unshare_run(p->id, first, n, 0);
		}
		if (clo == alo && chi == ahi) {
			if (p->tv)
				table_piece_free(p);
			free(a->pieces);
			*a = xgs->areas[--xgs->nareas];
			continue;
		}
		i++; /* a partly unshared area keeps its record; ending a page twice is harmless */
	}
	pthread_mutex_unlock(&xgs->lock);
	return kept ? 0 : munmap(start_address, (size_t)count * MV_PAGE_SIZE);
}
