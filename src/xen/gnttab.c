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

#define MAP_REQUEST_MAX 65536u      /* Linux gntdev: pages one mapping request may name */
#define MAX_GRANTS_LIMIT (1u << 20) /* gntdev's global limit on mapped pages */
#define POOL_VIEWS 64               /* pools this process keeps mapped (the broker's POOLS_PER_OWNER) */

struct piece {
	uint64_t id;          /* map id (gnttab) or share id (gntshr) */
	uint32_t page, count; /* where it lies in the area, in pages */
	uint32_t share_page;  /* gntshr: the area's first page within the share */
};

struct area {
	uint8_t *addr;
	uint32_t count;
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
__attribute__((constructor)) static void become_domain(void)
{
	mvc_domain_init();
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

static void release_pieces(enum kind kind, struct area *a)
{
	for (uint32_t i = 0; i < a->npieces; i++) {
		if (kind == GNTTAB) {
			struct mvw_req_gnt_unmap req = { .map_id = a->pieces[i].id };
			(void)mvc_request(MV_MSG_GNT_UNMAP, &req, sizeof(req), -1, NULL, NULL);
		} else {
			unshare_closing(&a->pieces[i], a->addr + (size_t)a->pieces[i].page * MV_PAGE_SIZE);
		}
	}
	free(a->pieces);
	a->pieces = NULL;
	a->npieces = 0;
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

	struct area a = { .count = count };
	int e = 0;
	a.addr =
		mmap(NULL, (size_t)count * MV_PAGE_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (a.addr == MAP_FAILED)
		return NULL;
	a.pieces = malloc(sizeof(*a.pieces) * (count < 64 ? count : 64));
	uint32_t cap = count < 64 ? count : 64;
	if (!a.pieces) {
		e = ENOMEM;
		goto undo;
	}
	for (uint32_t i = 0; i < count;) {
		struct mvw_req_gnt_map req = {
			.domid = domids ? domids[i] : one_domid,
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
		if (a.npieces == cap) {
			cap *= 2;
			struct piece *n = realloc(a.pieces, cap * sizeof(*n));
			if (!n) {
				close(fd);
				e = ENOMEM;
				goto undo;
			}
			a.pieces = n;
		}
		a.pieces[a.npieces++] = (struct piece){ .id = rep.u.gnt_map_rep.map_id, .page = i, .count = run };
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
	release_pieces(GNTTAB, &a);
	munmap(a.addr, (size_t)count * MV_PAGE_SIZE);
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
	/* notifications fire while the pages are still mapped here, as gntdev clears the byte first */
	release_pieces(GNTTAB, &a);
	return munmap(a.addr, (size_t)a.count * MV_PAGE_SIZE);
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

static void *share(struct xengntdev_handle *h, uint32_t domid, int count, uint32_t *refs, int writable,
		   uint32_t notify_flags, uint32_t notify_offset, uint32_t notify_port)
{
	if (count <= 0 || !refs || domid > MV_DOMID_LAST)
		return fail_null(EINVAL);
	if ((uint32_t)count > MV_GNT_SHARE_LIMIT)
		return fail_null(ENOSPC);
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
		unshare_run(a->pieces[0].id, (uint32_t)((clo - alo) / MV_PAGE_SIZE),
			    (uint32_t)((chi - clo) / MV_PAGE_SIZE), 0);
		if (clo == alo && chi == ahi) {
			free(a->pieces);
			*a = xgs->areas[--xgs->nareas];
			continue;
		}
		i++; /* a partly unshared area keeps its record; ending a page twice is harmless */
	}
	pthread_mutex_unlock(&xgs->lock);
	return munmap(start_address, (size_t)count * MV_PAGE_SIZE);
}
