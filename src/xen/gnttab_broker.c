/* SPDX-License-Identifier: MIT */
/* memvisord: grant tables. A share is a memfd the broker makes for the granter, with one grant ref per
 * page; a mapper gets the same memfd and maps the pages it was granted. The broker keeps the records that
 * give a grant its meaning: who may map it, whether it may be written, which unmap notifications are due,
 * and when a ref may be issued again (not before its last mapping is gone).
 *
 * Read-only grants are enforced by the mappers' kernel: before the first mapper gets the memfd it is
 * sealed against new writable mappings (F_SEAL_FUTURE_WRITE), so only the granter's own mapping, made
 * when it shared the pages, can write. Mappers get an O_RDONLY reopening besides. */
#define _GNU_SOURCE
#include "xen/gnttab_broker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct mvg_share {
	uint64_t id;
	void *owner;
	uint16_t granter, grantee;
	uint32_t first_ref, count;
	bool writable, sealed;
	int fd, ro_fd;
	uint8_t *ended;   /* per page: the granter no longer grants it */
	uint32_t *mapped; /* per page: mappings holding it */
	uint32_t live;    /* pages not ended */
	uint32_t holds;   /* mappings of this share */
	uint32_t notify_flags, notify_offset, notify_port;
	uint8_t *notify_page; /* the broker's own writable mapping of the page to clear */
	struct mvg_share *next;
};

struct mvg_map {
	uint64_t id;
	void *owner;
	uint16_t mapper;
	struct mvg_share *share;
	uint32_t page, count;
	uint32_t notify_flags, notify_offset, notify_port;
	struct mvg_map *next;
};

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
		for (struct mvg_share *sh = s->shares; sh; sh = sh->next)
			if (refs_overlap(sh, granter, c, count)) {
				c = sh->first_ref + sh->count;
				clash = true;
				break;
			}
		if (!clash)
			break;
	}
	*first = c;
	s->next_ref[granter] = c + count;
	return 0;
}

static void share_free(struct mvg_state *s, struct mvg_share *sh)
{
	for (struct mvg_share **pp = &s->shares; *pp; pp = &(*pp)->next)
		if (*pp == sh) {
			*pp = sh->next;
			break;
		}
	if (sh->notify_page)
		munmap(sh->notify_page, MV_PAGE_SIZE);
	close(sh->fd);
	if (sh->ro_fd >= 0)
		close(sh->ro_fd);
	free(sh->ended);
	free(sh->mapped);
	free(sh);
	s->nshares--;
}

/* A share goes once the granter has ended every page and nobody maps any. */
static void share_maybe_free(struct mvg_state *s, struct mvg_share *sh)
{
	if (sh->live == 0 && sh->holds == 0)
		share_free(s, sh);
}

static void fire(struct mvg_state *s, uint16_t dom, uint32_t flags, uint32_t port, uint8_t *byte_in_map, int fd,
		 uint64_t fd_offset)
{
	static const uint8_t zero;

	if (flags & MV_GNT_NOTIFY_CLEAR_BYTE) {
		if (byte_in_map)
			*(volatile uint8_t *)byte_in_map = 0;
		else if (fd >= 0)
			(void)!pwrite(fd, &zero, 1, (off_t)fd_offset);
	}
	if ((flags & MV_GNT_NOTIFY_SEND_EVENT) && s->notify)
		s->notify(dom, port);
}

/* The granter's notification: due when the page holding its byte stops being granted. */
static void end_pages(struct mvg_state *s, struct mvg_share *sh, uint32_t page, uint32_t count)
{
	for (uint32_t p = page; p < page + count; p++) {
		if (sh->ended[p])
			continue;
		sh->ended[p] = 1;
		sh->live--;
		s->live[sh->granter]--;
		if (sh->notify_flags && sh->notify_offset / MV_PAGE_SIZE == p) {
			fire(s, sh->granter, sh->notify_flags, sh->notify_port,
			     sh->notify_page ? sh->notify_page + sh->notify_offset % MV_PAGE_SIZE : NULL, -1, 0);
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

int mvg_share(struct mvg_state *s, void *owner, uint16_t granter, const struct mvw_req_gnt_share *req,
	      struct mvw_rep_gnt_share *rep, int *fd_out)
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

	struct mvg_share *sh = calloc(1, sizeof(*sh));
	if (!sh)
		return -ENOMEM;
	sh->fd = sh->ro_fd = -1;
	sh->ended = calloc(count, 1);
	sh->mapped = calloc(count, sizeof(*sh->mapped));
	int e = -ENOMEM;
	if (!sh->ended || !sh->mapped)
		goto fail;
	e = alloc_refs(s, granter, count, &sh->first_ref);
	if (e < 0)
		goto fail;
	sh->fd = memfd_create("memvisor-grant", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (sh->fd < 0 || ftruncate(sh->fd, (off_t)count * MV_PAGE_SIZE) < 0 ||
	    fcntl(sh->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
		e = -errno;
		goto fail;
	}
	if (req->notify_flags & MV_GNT_NOTIFY_CLEAR_BYTE) {
		/* made before any seal: the byte stays clearable even on a read-only grant */
		void *m = mmap(NULL, MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, sh->fd,
			       (off_t)(req->notify_offset / MV_PAGE_SIZE) * MV_PAGE_SIZE);
		if (m == MAP_FAILED) {
			e = -errno;
			goto fail;
		}
		sh->notify_page = m;
	}
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
	*fd_out = sh->fd;
	return 0;
fail:
	if (sh->fd >= 0)
		close(sh->fd);
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
		if (req->count == 0 || req->page >= sh->count || req->count > sh->count - req->page)
			return -EINVAL;
		end_pages(s, sh, req->page, req->count);
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
	if (!sh || sh->grantee != mapper || (writable && !sh->writable))
		return -EINVAL;
	uint32_t run = 1;
	while (run < req->count && req->refs[run] == req->refs[0] + run && page + run < sh->count &&
	       !sh->ended[page + run])
		run++;
	if (req->notify_flags && req->notify_offset >= (uint64_t)run * MV_PAGE_SIZE)
		return -EINVAL;

	int fd = sh->fd;
	if (!sh->writable) {
		if (!sh->sealed) {
			if (fcntl(sh->fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) < 0)
				return -errno;
			sh->sealed = true;
		}
		if (sh->ro_fd < 0) {
			char path[64];
			snprintf(path, sizeof(path), "/proc/self/fd/%d", sh->fd);
			sh->ro_fd = open(path, O_RDONLY | O_CLOEXEC);
			if (sh->ro_fd < 0)
				return -errno;
		}
		fd = sh->ro_fd;
	}
	rep->run = run;
	rep->page = page;
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

	if (m->notify_flags)
		fire(s, m->mapper, m->notify_flags, m->notify_port, NULL, sh->fd,
		     (uint64_t)m->page * MV_PAGE_SIZE + m->notify_offset);
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
	for (struct mvg_share *sh = s->shares, *next; sh; sh = next) {
		next = sh->next;
		if (sh->owner != owner)
			continue;
		end_pages(s, sh, 0, sh->count);
		share_maybe_free(s, sh);
	}
	/* shares still mapped by others stay until those mappings go; their owner is gone */
	for (struct mvg_share *sh = s->shares; sh; sh = sh->next)
		if (sh->owner == owner)
			sh->owner = NULL;
}
