/* SPDX-License-Identifier: MIT */
/* Scanning: reading registered pages in batches, the unstable table of pages seen once, finding twins
 * (in the stable table, the unstable one or another member of the partition), and the scan loop. */
#define _GNU_SOURCE
#include "merge_internal.h"

/* ---- unstable table: pages seen once in this full scan ---- */

void mvm_unstable_reset(struct mv_merge *m)
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

void mvm_range_unstable_drop(struct mv_merge *m, struct range *rg, size_t p)
{
	if (rg->flags[p] & F_UNSTABLE) {
		rg->flags[p] &= (uint8_t)~F_UNSTABLE;
		rg->unshared--;
		m->unshared--;
	}
}

void mvm_set_volatile(struct mv_merge *m, struct range *rg, size_t p, bool on)
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
		mvm_range_unstable_drop(m, rg, e->page);
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

/* Queues a request for the broker: canonical page want (found in the index), or a copy of data made
 * canonical (MV_PART_WANT_STAGED); twin: a second page of ours, read earlier, to map onto it too. */
static int ask(struct mv_merge *m, uint32_t want, const uint8_t *data, uint32_t ri, size_t p, bool twin, uint32_t tr,
	       uint32_t tp)
{
	if (m->nasks >= MV_PART_STAGE)
		return 0;
	if (want == MV_PART_WANT_STAGED)
		memcpy(m->member_map + MV_PART_STAGE_OFF + (uint64_t)m->nstaged++ * MV_PAGE_SIZE, data, MV_PAGE_SIZE);
	m->asks[m->nasks++] = (struct ask){ want, ri, (uint32_t)p, tr, tp, twin, data };
	return 1;
}

/* One round trip for the batch: the broker makes the staged pages canonical, and counts every page it
 * grants in our ledger before it answers. Each page is then compared with its canonical page, since
 * that may have been freed and reused since we found it, and merged. */
static void ask_broker(struct mv_merge *m)
{
	if (!m->nasks)
		return;
	for (uint32_t k = 0; k < m->nasks; k++) {
		m->mhead->want[k] = m->asks[k].want;
		m->mhead->sites[k] = m->asks[k].partner ? 2 : 1;
	}
	struct mvw_req_merge_promote req = { .member_id = m->member_id,
					     .n = m->nasks,
					     .max_sharing = m->knobs.max_page_sharing };
	struct mvw_msg rep;
	int r = mvc_request(MV_MSG_MERGE_PROMOTE, &req, sizeof(req), -1, &rep, NULL);
	for (uint32_t k = 0; k < m->nasks && r == 0; k++) {
		uint32_t id = __atomic_load_n(&m->mhead->ids[k], __ATOMIC_RELAXED);
		struct ask *a = &m->asks[k];
		uint32_t sites = a->partner ? 2 : 1;
		if (id >= MV_PART_CAP)
			continue;
		mvm_canon_adopt(m, id, sites);
		struct range *rg = a->range < m->nranges ? m->ranges[a->range] : NULL;
		/* with UFFDIO_MOVE the comparison is made once the page is detached (merge_apply.c) */
		if (rg && (m->have_move || !memcmp(a->data, m->store + (size_t)id * MV_PAGE_SIZE, MV_PAGE_SIZE)) &&
		    mvm_pend_push(m, rg, a->range, a->page, id, true) == 0) {
			struct range *r2 = a->partner && a->prange < m->nranges ? m->ranges[a->prange] : NULL;
			/* the twin was read earlier: it is compared again when merged */
			if (r2 && a->ppage < r2->npages)
				(void)mvm_pend_push(m, r2, a->prange, a->ppage, id, false);
		}
		for (uint32_t n = 0; n < sites; n++)
			mvm_canon_put(m, id); /* the queued merges hold their own counts */
	}
	m->nasks = m->nstaged = 0;
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
			mvm_range_unstable_drop(m, rg, p);
			mvm_set_volatile(m, rg, p, true);
			return 0;
		}
	}
	mvm_set_volatile(m, rg, p, false);
	if (h == m->zero_hash && mvm_page_is_zero(data)) {
		/* in an anonymous mapping a shared present zero page is already the kernel's zero page */
		if (v->kind == VMA_ANON && !(pm & MV_PM_EXCLUSIVE))
			return 0;
		return mvm_pend_push(m, rg, ri, p, SITE_ZERO, true) == 0;
	}
	uint32_t id;
	/* data was read under write protection: comparing it now is comparing the page. With UFFDIO_MOVE
	 * the page is compared where it can no longer change, once detached (merge_apply.c): the hash
	 * only picks the candidate, and comparing here too would compare twice. */
	if (find_stable(m, h, &id)) {
		if (!m->have_move)
			mvm_canon_write(m); /* the candidate may be one this batch made */
		if (m->have_move || !memcmp(data, m->store + (size_t)id * MV_PAGE_SIZE, MV_PAGE_SIZE))
			return m->part ? ask(m, id, data, ri, p, false, 0, 0)
				       : mvm_pend_push(m, rg, ri, p, id, true) == 0;
	}
	uint32_t tr, tp;
	if (rg->flags[p] & F_UNSTABLE)
		return 0;
	if (m->part) {
		/* a twin here, or a page another member has seen: the broker makes this one canonical */
		bool twin = find_unstable(m, h, ri, p, &tr, &tp);
		if (twin || hint_from_other(m, h))
			return ask(m, MV_PART_WANT_STAGED, data, ri, p, twin, tr, tp);
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
		if (mvm_canon_new(m, data, h, &id) < 0)
			return 0;
		struct range *r2 = m->ranges[tr];
		/* the canonical page lives while a queued merge refers to it */
		mvm_canon_get(m, id);
		int q = mvm_pend_push(m, r2, tr, tp, id, false) == 0; /* the twin was read earlier: check again */
		q += mvm_pend_push(m, rg, ri, p, id, true) == 0;      /* the canonical page is a copy of this one */
		mvm_canon_put(m, id);
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
	uintptr_t fl_start = 0, fl_end = 0;
	unsigned fl_bits = 0;
	struct vma vm[BATCH];
	struct iovec liov[BATCH], riov[BATCH];
	int niov = 0;
	for (size_t i = 0; i < n; i++) {
		uintptr_t a = base + i * MV_PAGE_SIZE;
		if (a >= v.end || a < v.start)
			if (mvm_vma_at(m, a, &v) < 0)
				v = (struct vma){ .start = a, .end = a + MV_PAGE_SIZE, .kind = VMA_NONE };
		vm[i] = v;
		size_t p = p0 + i;
		if (rg->site[p]) {
			if (mvm_site_intact(m, rg, p, pm[i], &v))
				continue;
			mvm_site_clear(m, rg, p);
		}
		if (!(pm[i] & MV_PM_PRESENT) || !mvm_vma_mergeable(&v))
			continue;
		if (a >= fl_end || a < fl_start) {
			fl_start = a;
			fl_bits = mvm_vmflags_at(m, a, &fl_end);
		}
		if (fl_bits & VMF_NEVER)
			continue;
		/* The store's page mapped without a site of ours: nothing to gain from looking at it. A
		 * private copy in a store mapping cannot be detached (UFFDIO_MOVE takes only anonymous
		 * pages), so whether it is pinned cannot be known: it is not merged again. */
		if (v.kind == VMA_STORE && ((pm[i] & MV_PM_FILE) || m->have_move))
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
	/* Without UFFDIO_MOVE, writes to these pages wait from here until this batch's merges are done:
	 * what is read now is what gets merged, with no second read. With it, each page is compared with
	 * its target once detached, where no write reaches it, and writers need not wait for the scan. */
	int nw = m->have_move ? niov : 0;
	for (int k = 0; k < niov && !m->have_move; k++) {
		if (mvm_uffd_wp(m, (uintptr_t)riov[k].iov_base, riov[k].iov_len, true) < 0) {
			mvm_unprotect(m, (uintptr_t)riov[k].iov_base, riov[k].iov_len);
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
			hv[i] = mvm_page_hash(m->buf + i * MV_PAGE_SIZE);
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
	ask_broker(m);
	mvm_flush(m);
	for (int k = 0; k < niov && !m->have_move; k++)
		mvm_unprotect(m, (uintptr_t)riov[k].iov_base, riov[k].iov_len);
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
			mvm_canon_reap(m);
			/* pairs found in this pass must be merged before the table of unique pages is gone */
			mvm_flush(m);
			mvm_unstable_reset(m);
			/* the flags are read again when the next pass looks at its first batch, not here: a scan
			 * that ends with the pass would read them for nothing (a walk of every page table) */
			m->budget_reached_prev = m->budget_reached;
			m->budget_reached = false;
		}
	}
	return false;
}

uint64_t mvm_total_pages(struct mv_merge *m)
{
	uint64_t t = 0;
	for (uint32_t r = 0; r < m->nranges; r++)
		if (m->ranges[r])
			t += m->ranges[r]->npages;
	return t;
}

/* The mappings' flags, when the snapshot is not of this pass; the mapping count comes with them (the
 * estimate only grows in between). */
static void flags_for_pass(struct mv_merge *m)
{
	uint64_t maps = mvm_vmflags_refresh(m, false);
	if (maps) {
		m->map_count = maps;
		m->map_estimate = maps;
	}
}

int mvm_scan_locked(struct mv_merge *m, unsigned pages_to_scan, unsigned max_merge, unsigned flags)
{
	uint64_t budget = pages_to_scan ? pages_to_scan : mvm_total_pages(m);
	uint64_t first = m->merged_total, scanned_now = 0;
	while (budget && (!max_merge || m->merged_total - first < max_merge)) {
		if (!advance_to_range(m))
			break;
		flags_for_pass(m);
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
	mvm_flush(m);
	/* a scan that stopped at the end of the last range completes the full scan now */
	advance_to_range(m);
	if (scanned_now >= 4 * BATCH)
		(void)mvu_sys_madvise(m->buf, (BATCH + VBATCH) * MV_PAGE_SIZE,
				      MADV_DONTNEED); /* big scans: give the buffers back */
	mvm_publish(m);
	uint64_t merged = m->merged_total - first;
	return (int)(merged > INT32_MAX ? INT32_MAX : merged);
}
