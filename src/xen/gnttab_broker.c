/* SPDX-License-Identifier: MIT */
/* memvisord: grant tables. A share is pages a granter grants to one domain, with one grant ref per page.
 * Its pages lie in a pool: a memfd of MV_GNT_SHARE_LIMIT pages that the broker makes for one granter
 * connection, one grantee and one permission. A mapper gets the pool's memfd and maps the pages it was
 * granted. So a descriptor serves many grants, and still only ever holds pages granted to the domain
 * that gets it, with the permission it gets them with: a mapper that keeps the memfd and reads or maps
 * any offset of it finds pages granted to it (or zeros), never another domain's. The broker keeps the
 * records that give a grant its meaning: who may map it, whether it may be written, which unmap
 * notifications are due, and when a ref may be issued again (not before its last mapping is gone).
 *
 * A share's pages go back to its pool once every page is ended, no mapping holds any and the granter no
 * longer maps them (it unshared through the library, which munmaps, or its connection is gone). They are
 * zeroed then (punched, or cleared through the broker's mapping in a sealed pool) before they are granted
 * again, to the same domain. The granter maps a new pool whole (MV_MSG_GNT_POOL) before any grant in it
 * exists, and makes each share's mapping from that one (mremap), so no later mmap is needed.
 *
 * Read-only grants are enforced by the mappers' kernel: before the first mapper gets a read-only pool it
 * is sealed against new writable mappings (F_SEAL_FUTURE_WRITE), so only the granter's mapping, made
 * before any grant in the pool existed, and the broker's can write. Mappers get an O_RDONLY reopening
 * besides. */
#define _GNU_SOURCE
#include "xen/gnttab_broker.h"
#include "xen/gnttab_table.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#define POOL_PAGES MV_GNT_SHARE_LIMIT
#define POOLS_PER_OWNER 64                  /* pools taking new grants, per granter connection */
#define KEPT_LIMIT (4 * MV_GNT_SHARE_LIMIT) /* ended pages a granter may keep out of reuse */

struct mvg_pool {
	uint64_t id;
	void *owner; /* the granter's connection; NULL once it is gone */
	uint16_t granter, grantee;
	bool writable, sealed, retired; /* retired: takes no new shares, goes with its last one */
	int fd, ro_fd;
	uint8_t *view; /* the broker's writable mapping of the whole pool, made before any seal */
	uint32_t nshares;
	uint8_t used[POOL_PAGES]; /* pages some share holds */
	/* a table pool: its grants are in its table, which its granter and grantee write (untrusted) */
	struct mvgt_table *tab;
	int tab_fd;
	uint32_t base_ref, window;
	struct mvg_pool *next;
};

struct mvg_share {
	uint64_t id;
	void *owner;
	uint16_t granter, grantee;
	uint32_t first_ref, count;
	bool writable;
	struct mvg_pool *pool;
	uint32_t pool_page; /* the share's first page in the pool */
	uint8_t *ended;     /* per page: the granter no longer grants it */
	uint32_t *mapped;   /* per page: mappings holding it */
	uint32_t live;      /* pages not ended */
	uint32_t kept;      /* ended pages the granter still maps (MV_GNT_UNSHARE_KEEP) */
	uint32_t holds;     /* mappings of this share */
	uint32_t notify_flags, notify_offset, notify_port;
	struct mvg_share *next;
};

struct mvg_map {
	uint64_t id;
	void *owner;
	uint16_t mapper;
	struct mvg_share *share; /* or, for a table pool's grant: */
	struct mvg_pool *tpool;  /* whose slots page..page+count it counts a mapping of */
	uint32_t page, count;
	uint32_t notify_flags, notify_offset, notify_port;
	struct mvg_map *next;
};

static bool pool_done(const struct mvg_pool *p);
static void pool_free(struct mvg_state *s, struct mvg_pool *p);

void mvg_mapped_pages(const struct mvg_state *s, uint32_t *maps)
{
	for (const struct mvg_map *m = s->maps; m; m = m->next)
		if (m->mapper <= MV_DOMID_LAST && !m->tpool)
			maps[m->mapper] += m->count;
	/* a table counts the broker's mappings of its pages too */
	for (const struct mvg_pool *p = s->pools; p; p = p->next)
		for (uint32_t i = 0; p->tab && i < MVGT_SLOTS; i++) {
			uint64_t n = mvgt_mappings(mvgt_load(&p->tab->slot[i]));
			maps[p->grantee] += n < MVGT_SLOTS ? (uint32_t)n : MVGT_SLOTS;
		}
}

void mvg_table_counts(const struct mvg_state *s, uint64_t *shares, uint64_t *maps, uint32_t *live)
{
	*shares = *maps = 0;
	for (const struct mvg_pool *p = s->pools; p; p = p->next) {
		if (!p->tab)
			continue;
		uint64_t m = __atomic_load_n(&p->tab->maps, __ATOMIC_RELAXED);
		*maps += m < MVGT_SLOTS ? m : MVGT_SLOTS; /* the grantee's word for it, bounded by its pages */
		for (uint32_t i = 0; i < MVGT_SLOTS; i++) {
			uint64_t w = mvgt_load(&p->tab->slot[i]);
			*shares += mvgt_share_lives(w);
			if (live && (w & MVGT_GRANTED))
				live[p->granter]++;
		}
	}
}

void mvg_grantee_gone(struct mvg_state *s, uint16_t grantee)
{
	for (struct mvg_pool *p = s->pools, *next; p; p = next) {
		next = p->next;
		if (!p->tab || p->grantee != grantee)
			continue;
		for (uint32_t i = 0; i < MVGT_SLOTS; i++)
			mvgt_unmap_all(&p->tab->slot[i]);
		__atomic_store_n(&p->tab->maps, 0, __ATOMIC_RELAXED);
		if (pool_done(p))
			pool_free(s, p);
	}
}

static bool refs_overlap(const struct mvg_share *sh, uint16_t granter, uint32_t first, uint32_t count)
{
	return sh->granter == granter && first < sh->first_ref + sh->count && sh->first_ref < first + count;
}

/* Consecutive refs for count pages, first fit from the domain's cursor: a ref is not reissued soon after
 * it ends, so a late mapper of an old ref finds nothing rather than someone else's page. */
static int alloc_refs(struct mvg_state *s, uint16_t granter, uint32_t count, uint32_t *first)
{
	uint32_t c = s->next_ref[granter];
	bool wrapped = false;

	if (c < MV_GNT_FIRST_REF)
		c = MV_GNT_FIRST_REF;
	for (;;) {
		if (c > MV_GNT_MAX_REF - count + 1) {
			if (wrapped)
				return -ENOSPC;
			wrapped = true;
			c = MV_GNT_FIRST_REF;
		}
		bool clash = false;
		for (struct mvg_share *sh = s->shares; sh && !clash; sh = sh->next)
			if (refs_overlap(sh, granter, c, count)) {
				c = sh->first_ref + sh->count;
				clash = true;
			}
		for (struct mvg_pool *p = s->pools; p && !clash; p = p->next)
			if (p->tab && p->granter == granter && c < p->base_ref + p->window && p->base_ref < c + count) {
				c = p->base_ref + p->window;
				clash = true;
			}
		if (!clash)
			break;
	}
	*first = c;
	s->next_ref[granter] = c + count;
	return 0;
}

static void pool_free(struct mvg_state *s, struct mvg_pool *p)
{
	for (struct mvg_pool **pp = &s->pools; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	munmap(p->view, (size_t)POOL_PAGES * MV_PAGE_SIZE);
	close(p->fd);
	if (p->ro_fd >= 0)
		close(p->ro_fd);
	if (p->tab) {
		munmap(p->tab, MVGT_SIZE);
		close(p->tab_fd);
	}
	free(p);
	s->npools--;
}

/* No slot of the table holds the pool: nothing granted, nothing mapped. */
static bool table_idle(const struct mvg_pool *p)
{
	for (uint32_t i = 0; i < MVGT_SLOTS; i++)
		if (!mvgt_idle(mvgt_load(&p->tab->slot[i])))
			return false;
	return true;
}

static bool pool_done(const struct mvg_pool *p)
{
	return (p->retired || !p->owner) && p->nshares == 0 && (!p->tab || table_idle(p));
}

/* The share's pages go back to its pool, zeroed: nothing of them is left for the next grant. Pages
 * the granter still maps are not zeroed: they come back only to a retired pool, which reuses nothing. */
static void pool_release(struct mvg_state *s, struct mvg_pool *p, uint32_t page, uint32_t count, bool zero)
{
	p->nshares--;
	if (pool_done(p)) {
		pool_free(s, p);
		return;
	}
	if (!zero)
		return;
	off_t off = (off_t)page * MV_PAGE_SIZE, len = (off_t)count * MV_PAGE_SIZE;
	/* a sealed pool cannot be punched; its pages are cleared through the broker's mapping */
	if (p->sealed || fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) < 0)
		memset(p->view + off, 0, (size_t)len);
	memset(p->used + page, 0, count);
}

static void share_free(struct mvg_state *s, struct mvg_share *sh)
{
	for (struct mvg_share **pp = &s->shares; *pp; pp = &(*pp)->next)
		if (*pp == sh) {
			*pp = sh->next;
			break;
		}
	bool kept = sh->kept;
	s->kept[sh->granter] -= sh->kept;
	pool_release(s, sh->pool, sh->pool_page, sh->count, !kept);
	free(sh->ended);
	free(sh->mapped);
	free(sh);
	s->nshares--;
}

/* A share goes once the granter has ended every page and nobody maps any, and, while its pool may
 * reuse pages, the granter keeps none mapped. */
static void share_maybe_free(struct mvg_state *s, struct mvg_share *sh)
{
	if (sh->live == 0 && sh->holds == 0 && (sh->kept == 0 || sh->pool->retired || !sh->pool->owner))
		share_free(s, sh);
}

/* A retired pool takes no new shares, so pages kept for the granter no longer hold it: only pages
 * still granted or mapped do. */
static void pool_retire(struct mvg_state *s, struct mvg_pool *p)
{
	p->retired = true;
	if (pool_done(p)) {
		pool_free(s, p);
		return;
	}
	if (p->tab)
		return; /* its grants are in its table: it goes once nothing there holds it (mvg_sweep) */
	uint32_t left = p->nshares;
	for (struct mvg_share *sh = s->shares, *next; sh && left; sh = next) {
		next = sh->next;
		if (sh->pool != p)
			continue;
		left--;
		share_maybe_free(s, sh); /* the last one frees p */
	}
}

static uint8_t *share_byte(const struct mvg_share *sh, uint32_t page, uint32_t offset)
{
	return sh->pool->view + (size_t)(sh->pool_page + page) * MV_PAGE_SIZE + offset;
}

static void fire(struct mvg_state *s, uint16_t dom, uint32_t flags, uint32_t port, uint8_t *byte)
{
	if (flags & MV_GNT_NOTIFY_CLEAR_BYTE)
		*(volatile uint8_t *)byte = 0;
	if ((flags & MV_GNT_NOTIFY_SEND_EVENT) && s->notify)
		s->notify(dom, port);
}

/* The granter's notification: due when the page holding its byte stops being granted. */
static void end_pages(struct mvg_state *s, struct mvg_share *sh, uint32_t page, uint32_t count, bool keep)
{
	for (uint32_t p = page; p < page + count; p++) {
		if (sh->ended[p])
			continue;
		sh->ended[p] = 1;
		sh->live--;
		s->live[sh->granter]--;
		if (keep && s->kept[sh->granter] < KEPT_LIMIT) {
			sh->kept++;
			s->kept[sh->granter]++;
		}
		if (sh->notify_flags && sh->notify_offset / MV_PAGE_SIZE == p) {
			fire(s, sh->granter, sh->notify_flags, sh->notify_port, share_byte(sh, 0, sh->notify_offset));
			sh->notify_flags = 0;
		}
	}
}

static bool notify_valid(uint32_t flags, uint32_t port)
{
	if (flags & ~(MV_GNT_NOTIFY_CLEAR_BYTE | MV_GNT_NOTIFY_SEND_EVENT))
		return false;
	return !(flags & MV_GNT_NOTIFY_SEND_EVENT) || (port >= 1 && port <= MV_EVTCHN_MAX_PORT);
}

static struct mvg_pool *pool_new(struct mvg_state *s, void *owner, uint16_t granter, uint32_t grantee, uint32_t flags,
				 bool table, int *err)
{
	bool writable = flags & MV_GNT_WRITABLE;

	*err = -EINVAL;
	if (granter < MV_DOMID_FIRST || granter > MV_DOMID_LAST)
		return NULL;
	if (grantee > MV_DOMID_LAST || (flags & ~MV_GNT_WRITABLE))
		return NULL;
	*err = -ENOMEM;
	struct mvg_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->ro_fd = -1;
	p->tab_fd = -1;
	p->view = MAP_FAILED;
	p->fd = memfd_create("memvisor-grants", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	int e = 0;
	if (p->fd < 0 || ftruncate(p->fd, (off_t)POOL_PAGES * MV_PAGE_SIZE) < 0 ||
	    fcntl(p->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
		e = -errno;
	else {
		p->view = mmap(NULL, (size_t)POOL_PAGES * MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);
		if (p->view == MAP_FAILED)
			e = -errno;
	}
	if (!e && table) {
		p->tab_fd = memfd_create("memvisor-grant-table", MFD_CLOEXEC | MFD_ALLOW_SEALING);
		p->tab = MAP_FAILED;
		if (p->tab_fd < 0 || ftruncate(p->tab_fd, (off_t)MVGT_SIZE) < 0 ||
		    fcntl(p->tab_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0 ||
		    (p->tab = mmap(NULL, MVGT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, p->tab_fd, 0)) == MAP_FAILED)
			e = -errno;
		else
			p->tab->magic = MVGT_MAGIC;
		if (e == 0 && alloc_refs(s, granter, MVGT_WINDOW, &p->base_ref) < 0)
			e = -ENOSPC;
		p->window = MVGT_WINDOW;
	}
	if (e) {
		if (p->view != MAP_FAILED)
			munmap(p->view, (size_t)POOL_PAGES * MV_PAGE_SIZE);
		if (p->fd >= 0)
			close(p->fd);
		if (p->tab && p->tab != MAP_FAILED)
			munmap(p->tab, MVGT_SIZE);
		if (p->tab_fd >= 0)
			close(p->tab_fd);
		free(p);
		*err = e;
		return NULL;
	}
	/* the pool of its kind it replaces takes no new shares; so does the oldest past the owner's limit */
	unsigned active = 0;
	struct mvg_pool *oldest = NULL;
	for (struct mvg_pool *q = s->pools, *next; q; q = next) {
		next = q->next;
		if (q->owner != owner || q->retired)
			continue;
		if (q->grantee == grantee && q->writable == writable && !q->tab == !table) {
			pool_retire(s, q);
			continue;
		}
		active++;
		oldest = q;
	}
	if (active >= POOLS_PER_OWNER && oldest)
		pool_retire(s, oldest);
	p->id = ++s->next_id;
	p->owner = owner;
	p->granter = granter;
	p->grantee = (uint16_t)grantee;
	p->writable = writable;
	p->next = s->pools;
	s->pools = p;
	s->npools++;
	return p;
}

int mvg_pool(struct mvg_state *s, void *owner, uint16_t granter, const struct mvw_req_gnt_pool *req,
	     struct mvw_rep_gnt_pool *rep, int *fd_out)
{
	int e;
	struct mvg_pool *p = pool_new(s, owner, granter, req->domid, req->flags, false, &e);
	if (!p)
		return e;
	rep->pool_id = p->id;
	rep->pages = POOL_PAGES;
	*fd_out = p->fd;
	return 0;
}

static void table_rep(const struct mvg_pool *p, struct mvw_rep_gnt_table *rep)
{
	rep->pool_id = p->id;
	rep->base_ref = p->base_ref;
	rep->window = p->window;
	rep->pages = MVGT_SLOTS;
	rep->flags = p->writable ? MV_GNT_WRITABLE : 0;
}

int mvg_table_pool(struct mvg_state *s, void *owner, uint16_t granter, const struct mvw_req_gnt_table_pool *req,
		   struct mvw_rep_gnt_table *rep, int *fds)
{
	int e;
	mvg_sweep(s);
	struct mvg_pool *p = pool_new(s, owner, granter, req->domid, req->flags, true, &e);
	if (!p)
		return e;
	table_rep(p, rep);
	fds[0] = p->fd;
	fds[1] = p->tab_fd;
	return 0;
}

void mvg_sweep(struct mvg_state *s)
{
	for (struct mvg_pool *p = s->pools, *next; p; p = next) {
		next = p->next;
		if (p->tab && pool_done(p))
			pool_free(s, p);
	}
}

/* First fit of count free pages in the pool; -1 if none. */
static int64_t pool_place(const struct mvg_pool *p, uint32_t count)
{
	for (uint32_t i = 0, run = 0; i < POOL_PAGES; i++) {
		run = p->used[i] ? 0 : run + 1;
		if (run == count)
			return (int64_t)i + 1 - count;
	}
	return -1;
}

int mvg_share(struct mvg_state *s, void *owner, uint16_t granter, const struct mvw_req_gnt_share *req,
	      struct mvw_rep_gnt_share *rep)
{
	uint32_t count = req->count;

	if (granter < MV_DOMID_FIRST || granter > MV_DOMID_LAST)
		return -EINVAL;
	if (req->domid > MV_DOMID_LAST || count == 0 || count > MV_GNT_SHARE_LIMIT || (req->flags & ~MV_GNT_WRITABLE))
		return -EINVAL;
	if (!notify_valid(req->notify_flags, req->notify_port) ||
	    (req->notify_flags && req->notify_offset >= (uint64_t)count * MV_PAGE_SIZE))
		return -EINVAL;
	if (s->live[granter] + count > MV_GNT_SHARE_LIMIT)
		return -ENOSPC;
	struct mvg_pool *pool = s->pools;
	while (pool && pool->id != req->pool_id)
		pool = pool->next;
	if (!pool || pool->owner != owner || pool->retired || pool->granter != granter || pool->grantee != req->domid ||
	    pool->writable != (bool)(req->flags & MV_GNT_WRITABLE))
		return -ESTALE;
	int64_t place = pool_place(pool, count);
	if (place < 0)
		return -EXFULL;

	struct mvg_share *sh = calloc(1, sizeof(*sh));
	if (!sh)
		return -ENOMEM;
	sh->ended = calloc(count, 1);
	sh->mapped = calloc(count, sizeof(*sh->mapped));
	int e = -ENOMEM;
	if (!sh->ended || !sh->mapped)
		goto fail;
	e = alloc_refs(s, granter, count, &sh->first_ref);
	if (e < 0)
		goto fail;
	sh->pool = pool;
	sh->pool_page = (uint32_t)place;
	memset(pool->used + place, 1, count);
	pool->nshares++;
	sh->id = ++s->next_id;
	sh->owner = owner;
	sh->granter = granter;
	sh->grantee = (uint16_t)req->domid;
	sh->count = count;
	sh->live = count;
	sh->writable = req->flags & MV_GNT_WRITABLE;
	sh->notify_flags = req->notify_flags;
	sh->notify_offset = req->notify_offset;
	sh->notify_port = req->notify_port;
	sh->next = s->shares;
	s->shares = sh;
	s->nshares++;
	s->live[granter] += count;
	rep->share_id = sh->id;
	rep->first_ref = sh->first_ref;
	rep->page = sh->pool_page;
	return 0;
fail:
	free(sh->ended);
	free(sh->mapped);
	free(sh);
	return e;
}

int mvg_unshare(struct mvg_state *s, void *owner, const struct mvw_req_gnt_unshare *req)
{
	for (struct mvg_share *sh = s->shares; sh; sh = sh->next) {
		if (sh->id != req->share_id)
			continue;
		if (sh->owner != owner)
			return -EPERM;
		if (req->count == 0 || req->page >= sh->count || req->count > sh->count - req->page ||
		    (req->flags & ~MV_GNT_UNSHARE_KEEP) || req->reserved)
			return -EINVAL;
		end_pages(s, sh, req->page, req->count, req->flags & MV_GNT_UNSHARE_KEEP);
		share_maybe_free(s, sh);
		return 0;
	}
	return -ENOENT;
}

static struct mvg_share *find_grant(struct mvg_state *s, uint16_t granter, uint32_t ref, uint32_t *page)
{
	for (struct mvg_share *sh = s->shares; sh; sh = sh->next)
		if (sh->granter == granter && ref >= sh->first_ref && ref - sh->first_ref < sh->count) {
			*page = ref - sh->first_ref;
			return sh->ended[*page] ? NULL : sh;
		}
	return NULL;
}

/* The descriptor a mapper of the pool gets: a read-only pool is sealed against writable mappings
 * first, and mappers get an O_RDONLY reopening of it. */
static int mapper_fd(struct mvg_pool *pool)
{
	if (pool->writable)
		return pool->fd;
	if (!pool->sealed) {
		if (fcntl(pool->fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) < 0)
			return -errno;
		pool->sealed = true;
	}
	if (pool->ro_fd < 0) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", pool->fd);
		pool->ro_fd = open(path, O_RDONLY | O_CLOEXEC);
		if (pool->ro_fd < 0)
			return -errno;
	}
	return pool->ro_fd;
}

/* The live table pool of granter whose window holds ref. */
static struct mvg_pool *table_pool_of(struct mvg_state *s, uint16_t granter, uint32_t ref)
{
	for (struct mvg_pool *p = s->pools; p; p = p->next)
		if (p->tab && p->owner && p->granter == granter && mvgt_slot_of(p->base_ref, p->window, ref) >= 0)
			return p;
	return NULL;
}

int mvg_table_open(struct mvg_state *s, uint16_t mapper, const struct mvw_req_gnt_table_open *req,
		   struct mvw_rep_gnt_table *rep, int *fds)
{
	if (req->domid > MV_DOMID_LAST || (req->flags & ~MV_GNT_WRITABLE) || req->reserved)
		return -EINVAL;
	struct mvg_pool *p = table_pool_of(s, (uint16_t)req->domid, req->ref);
	if (!p)
		return -ENOENT; /* not a table pool's ref: the mapper asks with MV_MSG_GNT_MAP */
	uint64_t w = mvgt_load(&p->tab->slot[mvgt_slot_of(p->base_ref, p->window, req->ref)]);
	if (p->grantee != mapper || ((req->flags & MV_GNT_WRITABLE) && !p->writable) || !(w & MVGT_GRANTED) ||
	    mvgt_ref(w) != req->ref)
		return -EINVAL;
	int fd = mapper_fd(p);
	if (fd < 0)
		return fd;
	table_rep(p, rep);
	fds[0] = fd;
	fds[1] = p->tab_fd;
	return 0;
}

/* A table pool's grants, mapped through the broker (with notifications, or for a copy): consecutive
 * refs of consecutive slots, each granted to mapper now; a recorded mapping counts in the table as the
 * mapper's own do. */
static int map_table(struct mvg_state *s, void *owner, uint16_t mapper, struct mvg_pool *p,
		     const struct mvw_req_gnt_map *req, struct mvw_rep_gnt_map *rep, int *fd_out)
{
	bool writable = req->flags & MV_GNT_WRITABLE, transient = req->flags & MV_GNT_MAP_TRANSIENT;
	int64_t slot = mvgt_slot_of(p->base_ref, p->window, req->refs[0]);

	if (p->grantee != mapper || (writable && !p->writable))
		return -EINVAL;
	uint32_t run = 0;
	while (run < req->count && slot + run < MVGT_SLOTS &&
	       mvgt_slot_of(p->base_ref, p->window, req->refs[run]) == slot + run) {
		uint64_t *w = &p->tab->slot[slot + run];
		if (transient ? !((mvgt_load(w) & MVGT_GRANTED) && mvgt_ref(mvgt_load(w)) == req->refs[run])
			      : !mvgt_map(w, req->refs[run]))
			break;
		run++;
	}
	if (run == 0)
		return -EINVAL;
	int e = 0;
	if (req->notify_flags && req->notify_offset >= (uint64_t)run * MV_PAGE_SIZE)
		e = -EINVAL;
	int fd = e ? e : mapper_fd(p);
	struct mvg_map *m = NULL;
	if (fd < 0)
		e = fd;
	else if (!transient && !(m = calloc(1, sizeof(*m))))
		e = -ENOMEM;
	if (e) {
		for (uint32_t i = 0; i < run && !transient; i++)
			mvgt_unmap(&p->tab->slot[slot + i]);
		return e;
	}
	rep->run = run;
	rep->page = (uint32_t)slot;
	rep->map_id = 0;
	*fd_out = fd;
	if (transient)
		return 0;
	m->id = ++s->next_id;
	m->owner = owner;
	m->mapper = mapper;
	m->tpool = p;
	m->page = (uint32_t)slot;
	m->count = run;
	m->notify_flags = req->notify_flags;
	m->notify_offset = req->notify_offset;
	m->notify_port = req->notify_port;
	p->nshares++;
	m->next = s->maps;
	s->maps = m;
	s->nmaps++;
	rep->map_id = m->id;
	return 0;
}

/* Every failure is EINVAL, as a refused grant mapping is on Linux: an unknown or ended ref, a grant
 * to another domain, a writable mapping of a read-only grant. */
int mvg_map(struct mvg_state *s, void *owner, uint16_t mapper, const struct mvw_req_gnt_map *req,
	    struct mvw_rep_gnt_map *rep, int *fd_out)
{
	bool writable = req->flags & MV_GNT_WRITABLE, transient = req->flags & MV_GNT_MAP_TRANSIENT;
	uint32_t page;

	if (req->count == 0 || req->count > MV_GNT_MAP_MAX_REFS ||
	    (req->flags & ~(MV_GNT_WRITABLE | MV_GNT_MAP_TRANSIENT)) || req->domid > MV_DOMID_LAST)
		return -EINVAL;
	if (!notify_valid(req->notify_flags, req->notify_port) || (transient && req->notify_flags) ||
	    ((req->notify_flags & MV_GNT_NOTIFY_CLEAR_BYTE) && !writable))
		return -EINVAL;
	struct mvg_share *sh = find_grant(s, (uint16_t)req->domid, req->refs[0], &page);
	if (!sh) {
		struct mvg_pool *p = table_pool_of(s, (uint16_t)req->domid, req->refs[0]);
		return p ? map_table(s, owner, mapper, p, req, rep, fd_out) : -EINVAL;
	}
	if (sh->grantee != mapper || (writable && !sh->writable))
		return -EINVAL;
	uint32_t run = 1;
	while (run < req->count && req->refs[run] == req->refs[0] + run && page + run < sh->count &&
	       !sh->ended[page + run])
		run++;
	if (req->notify_flags && req->notify_offset >= (uint64_t)run * MV_PAGE_SIZE)
		return -EINVAL;

	int fd = mapper_fd(sh->pool);
	if (fd < 0)
		return fd;
	rep->run = run;
	rep->page = sh->pool_page + page;
	rep->map_id = 0;
	*fd_out = fd;
	if (transient)
		return 0;

	struct mvg_map *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->id = ++s->next_id;
	m->owner = owner;
	m->mapper = mapper;
	m->share = sh;
	m->page = page;
	m->count = run;
	m->notify_flags = req->notify_flags;
	m->notify_offset = req->notify_offset;
	m->notify_port = req->notify_port;
	for (uint32_t p = page; p < page + run; p++)
		sh->mapped[p]++;
	sh->holds++;
	m->next = s->maps;
	s->maps = m;
	s->nmaps++;
	rep->map_id = m->id;
	return 0;
}

static void map_release(struct mvg_state *s, struct mvg_map **pp)
{
	struct mvg_map *m = *pp;
	struct mvg_share *sh = m->share;

	if (m->tpool) {
		struct mvg_pool *p = m->tpool;
		if (m->notify_flags)
			fire(s, m->mapper, m->notify_flags, m->notify_port,
			     p->view + (size_t)m->page * MV_PAGE_SIZE + m->notify_offset);
		for (uint32_t i = m->page; i < m->page + m->count; i++)
			mvgt_unmap(&p->tab->slot[i]);
		p->nshares--;
		*pp = m->next;
		free(m);
		s->nmaps--;
		if (pool_done(p))
			pool_free(s, p);
		return;
	}
	if (m->notify_flags)
		fire(s, m->mapper, m->notify_flags, m->notify_port, share_byte(sh, m->page, m->notify_offset));
	for (uint32_t p = m->page; p < m->page + m->count; p++)
		sh->mapped[p]--;
	sh->holds--;
	*pp = m->next;
	free(m);
	s->nmaps--;
	share_maybe_free(s, sh);
}

int mvg_unmap(struct mvg_state *s, void *owner, uint64_t map_id)
{
	for (struct mvg_map **pp = &s->maps; *pp; pp = &(*pp)->next)
		if ((*pp)->id == map_id) {
			if ((*pp)->owner != owner)
				return -EPERM;
			map_release(s, pp);
			return 0;
		}
	return -ENOENT;
}

void mvg_owner_gone(struct mvg_state *s, void *owner)
{
	/* mappings first: a share of the same owner may be mapped by it */
	for (struct mvg_map **pp = &s->maps; *pp;)
		if ((*pp)->owner == owner)
			map_release(s, pp);
		else
			pp = &(*pp)->next;
	/* its pools take no new shares: what it kept mapped is never reused, nor zeroed under a process
	 * that may outlive its connection */
	for (struct mvg_pool *p = s->pools, *next; p; p = next) {
		next = p->next;
		if (p->owner != owner)
			continue;
		p->owner = NULL;
		/* a table's grants end with their granter: nothing in it can be mapped any more */
		for (uint32_t i = 0; p->tab && i < MVGT_SLOTS; i++)
			mvgt_end_any(&p->tab->slot[i]);
		if (pool_done(p))
			pool_free(s, p);
	}
	for (struct mvg_share *sh = s->shares, *next; sh; sh = next) {
		next = sh->next;
		if (sh->owner != owner)
			continue;
		end_pages(s, sh, 0, sh->count, false);
		share_maybe_free(s, sh);
	}
	/* shares still mapped by others stay until those mappings go; their owner is gone */
	for (struct mvg_share *sh = s->shares; sh; sh = sh->next)
		if (sh->owner == owner)
			sh->owner = NULL;
}
