/* SPDX-License-Identifier: MIT */
/* The store of canonical pages: a memfd with one copy of each merged content, its reference counts,
 * and the stable table that finds a content by hash. */
#define _GNU_SOURCE
#include "merge_internal.h"

/* ---- the store of canonical pages ---- */

int mvm_store_grow(struct mv_merge *m, uint32_t want)
{
	if (m->part || want <= m->store_cap)
		return 0; /* a partition's store is the broker's, of fixed size */
	uint32_t cap = m->store_cap ? m->store_cap : 1024;
	while (cap < want)
		cap *= 2;
	if (ftruncate(m->store_fd, (off_t)cap * MV_PAGE_SIZE) < 0)
		return -errno;
	/* Grown in the engine's own room, never where mmap would choose (merge_room.c): a hole the
	 * application is about to map over. */
	size_t old_len = (size_t)m->store_cap * MV_PAGE_SIZE, len = (size_t)cap * MV_PAGE_SIZE;
	void *room = mvm_room_take(len), *p = MAP_FAILED;
	if (room) {
		p = m->store ? mvu_sys_mremap(m->store, old_len, len, MREMAP_MAYMOVE | MREMAP_FIXED, room)
			     : mmap(room, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, m->store_fd, 0);
		if (p == MAP_FAILED)
			mvm_room_moved(room, len); /* the reservation may have gone with the failure */
	}
	if (p == MAP_FAILED)
		p = m->store ? mvu_sys_mremap(m->store, old_len, len, MREMAP_MAYMOVE, NULL)
			     : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, m->store_fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	if (m->store)
		mvm_room_moved(m->store, old_len); /* a store that lived in the room leaves a hole there */
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

int mvm_canon_new(struct mv_merge *m, const uint8_t *data, uint64_t hash, uint32_t *out)
{
	uint32_t id;
	if (m->nfree) {
		id = m->free_ids[--m->nfree];
	} else {
		int r = mvm_store_grow(m, m->canon_used + 1);
		if (r < 0)
			return r;
		id = m->canon_used++;
	}
	m->canon[id] = (struct canon){ .hash = hash, .refs = 0, .flags = 0 };
	int r = stable_insert(m, id);
	if (r < 0) {
		m->free_ids[m->nfree++] = id;
		return r;
	}
	if (m->ncw == BATCH)
		mvm_canon_write(m);
	m->cw[m->ncw++] = (struct canon_write){ id, data };
	m->live_canon++;
	*out = id;
	return 0;
}

/* The store's own mapping must map every canonical page (store_page_unmapped counts on it): one read
 * per 64 KiB faults its neighbours in with it, and pagemap says which ones that left out. */
static void store_map_in(struct mv_merge *m, uint32_t id, uint32_t n)
{
	uintptr_t a = (uintptr_t)m->store + (uintptr_t)id * MV_PAGE_SIZE, end = a + (uintptr_t)n * MV_PAGE_SIZE;
	const uintptr_t win = AROUND_PAGES * MV_PAGE_SIZE;
	uint64_t pm[BATCH];
	for (uintptr_t p = a; p < end; p = (p & ~(win - 1)) + win)
		(void)*(volatile const uint8_t *)p;
	if (n > BATCH || pread(m->pagemap_fd, pm, (size_t)n * 8, (off_t)(a / MV_PAGE_SIZE) * 8) != (ssize_t)n * 8) {
		(void)mvu_sys_madvise((void *)a, (size_t)n * MV_PAGE_SIZE, MADV_POPULATE_READ);
		return;
	}
	for (uint32_t i = 0; i < n; i++)
		if (!(pm[i] & MV_PM_PRESENT))
			(void)mvu_sys_madvise((void *)(a + (uintptr_t)i * MV_PAGE_SIZE), MV_PAGE_SIZE,
					      MADV_POPULATE_READ);
}

/* One pwritev per run of consecutive ids: the kernel allocates each page and copies into it without
 * zeroing it first, and without a page fault per page (about 1 us a page less than faulting the
 * store's mapping in and copying through it). */
void mvm_canon_write(struct mv_merge *m)
{
	struct iovec iov[BATCH];
	for (uint32_t i = 0; i < m->ncw;) {
		uint32_t n = 1;
		while (i + n < m->ncw && m->cw[i + n].id == m->cw[i].id + n)
			n++;
		for (uint32_t k = 0; k < n; k++)
			iov[k] = (struct iovec){ (void *)m->cw[i + k].data, MV_PAGE_SIZE };
		off_t off = (off_t)(m->store_base + (uint64_t)m->cw[i].id * MV_PAGE_SIZE);
		ssize_t w = pwritev(m->store_fd, iov, (int)n, off);
		size_t done = w > 0 ? (size_t)w / MV_PAGE_SIZE : 0;
		for (size_t k = done; k < n; k++) /* short or failed: through the mapping */
			memcpy(m->store + (size_t)m->cw[i + k].id * MV_PAGE_SIZE, m->cw[i + k].data, MV_PAGE_SIZE);
		store_map_in(m, m->cw[i].id, n);
		i += n;
	}
	m->ncw = 0;
}

/* A canonical page of this batch not written yet: forgotten, and its id is free again. */
static bool canon_write_cancel(struct mv_merge *m, uint32_t id)
{
	for (uint32_t i = 0; i < m->ncw; i++)
		if (m->cw[i].id == id) {
			memmove(&m->cw[i], &m->cw[i + 1], (m->ncw - i - 1) * sizeof(m->cw[0]));
			m->ncw--;
			m->free_ids[m->nfree++] = id;
			return true;
		}
	return false;
}

/* Is canonical page id mapped by nothing but the store's own mapping? A site the engine lost track of
 * (moved by mremap, say) still maps it, and sites are populated when they are made, so the page's
 * mapping count tells. A page not present in the store's mapping was reclaimed, which unmaps it
 * everywhere: then nothing can be told, and it is kept. */
static bool store_page_unmapped(struct mv_merge *m, uint32_t id)
{
	uint64_t pm;
	uintptr_t a = (uintptr_t)m->store + (uintptr_t)id * MV_PAGE_SIZE;
	if (pread(m->pagemap_fd, &pm, sizeof(pm), (off_t)(a / MV_PAGE_SIZE) * 8) != sizeof(pm))
		return false;
	return (pm & MV_PM_PRESENT) && (pm & MV_PM_EXCLUSIVE);
}

static void free_store_page(struct mv_merge *m, uint32_t id)
{
	(void)fallocate(m->store_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)id * MV_PAGE_SIZE,
			MV_PAGE_SIZE);
	m->free_ids[m->nfree++] = id;
}

void mvm_canon_put(struct mv_merge *m, uint32_t id)
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
	if (m->ncw && canon_write_cancel(m, id))
		return;
	if (!store_page_unmapped(m, id)) {
		c->flags |= C_LINGER;
		m->lingering++;
		return;
	}
	free_store_page(m, id);
}

void mvm_canon_reap(struct mv_merge *m)
{
	for (uint32_t id = 0; m->lingering && id < m->canon_used; id++) {
		struct canon *c = &m->canon[id];
		if (!(c->flags & C_LINGER) || c->refs)
			continue;
		if (!store_page_unmapped(m, id))
			continue;
		c->flags &= ~(uint32_t)C_LINGER;
		m->lingering--;
		free_store_page(m, id);
	}
}

void mvm_canon_keep(struct mv_merge *m, uint32_t id)
{
	if (m->part)
		__atomic_fetch_or(&m->ledger[id], MV_PART_INHERITED, __ATOMIC_RELAXED); /* the broker keeps it */
	else
		m->canon[id].flags |= C_INHERITED; /* never punched, never reused */
}

void mvm_canon_get(struct mv_merge *m, uint32_t id)
{
	if (m->part) {
		/* Only ever on top of a count the broker gave (mvm_canon_adopt): a page we count cannot be
		 * collected, while one counted from zero here could be freed between the broker's look at
		 * our ledger and this store. */
		uint32_t v = m->ledger[id];
		__atomic_store_n(&m->ledger[id], v + 1, __ATOMIC_RELEASE);
		m->canon_refs++;
		return;
	}
	m->canon[id].refs++;
	m->canon_refs++;
}

void mvm_canon_adopt(struct mv_merge *m, uint32_t id, uint32_t n)
{
	if ((m->ledger[id] & ~MV_PART_INHERITED) <= n)
		m->live_canon++; /* nothing of ours counted it before the broker did */
	m->canon_refs += n;
}
