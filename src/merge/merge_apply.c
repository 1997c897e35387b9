/* SPDX-License-Identifier: MIT */
/* Applying merges: which canonical page each site maps, and putting the canonical pages over the
 * application's pages in runs, under write protection, within the mapping budget. */
#define _GNU_SOURCE
#include "merge_internal.h"

/* ---- site bookkeeping ---- */

void mvm_site_clear(struct mv_merge *m, struct range *rg, size_t p)
{
	uint32_t s = rg->site[p];
	if (s == SITE_ZERO) {
		rg->zero--;
		m->zero_pages--;
	} else if (s) {
		mvm_canon_put(m, s - 1);
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
	mvm_range_unstable_drop(m, rg, p);
	mvm_set_volatile(m, rg, p, false);
}

/* Is the merge recorded for page p still in place? pm is its pagemap word, v its mapping. */
bool mvm_site_intact(struct mv_merge *m, struct range *rg, size_t p, uint64_t pm, const struct vma *v)
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

int mvm_pend_push(struct mv_merge *m, struct range *rg, uint32_t ri, size_t p, uint32_t target, bool held)
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
		mvm_canon_get(m, target);
	m->pend[m->npend++] = (struct pending){ rg->start + p * MV_PAGE_SIZE, ri, (uint32_t)p, target, held };
	return 0;
}

static int pend_cmp(const void *a, const void *b)
{
	const struct pending *x = a, *y = b;
	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

void mvm_pend_drop(struct mv_merge *m, const struct pending *e)
{
	if (e->target != SITE_ZERO)
		mvm_canon_put(m, e->target);
}

static bool budget_allows(struct mv_merge *m, unsigned new_maps)
{
	uint64_t reserve = m->knobs.map_reserve;
	uint64_t limit = m->map_limit > reserve ? m->map_limit - reserve : 0;
	if (m->map_estimate + new_maps <= limit)
		return true;
	/* the estimate only grows; adjacent runs the kernel merged are found by counting again */
	m->map_count = mvm_count_maps();
	m->map_estimate = m->map_count;
	return m->map_estimate + new_maps <= limit;
}

/* Mappings put over the application's pages change no byte it can see, so they go to the kernel
 * directly: a sanitizer's mmap interceptor would otherwise treat them as fresh memory written by us. */

/* Replace pages [a, a + n*MV_PAGE_SIZE), already verified under write protection, by their targets. */
static int replace(struct mv_merge *m, const struct vma *v, uintptr_t a, size_t n, uint32_t target)
{
	int prot = mvm_prot_of(v);
	if (target == SITE_ZERO && v->kind == VMA_ANON) {
		if (mvu_sys_madvise((void *)a, n * MV_PAGE_SIZE, MADV_DONTNEED) < 0)
			return -errno;
		(void)mvm_uffd_wp(m, a, n * MV_PAGE_SIZE, false);
		return 0;
	}
	void *p;
	if (target == SITE_ZERO)
		p = mvu_sys_mmap((void *)a, n * MV_PAGE_SIZE, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	else
		p = mvu_sys_mmap((void *)a, n * MV_PAGE_SIZE, prot, MAP_PRIVATE | MAP_FIXED, m->store_fd,
				 (off_t)(m->store_base + (uint64_t)target * MV_PAGE_SIZE));
	if (p == MAP_FAILED)
		return -errno;
	m->map_estimate += 2;
	(void)mvm_uffd_register(m, a, n * MV_PAGE_SIZE);
	mvm_uffd_wake(m, a, n * MV_PAGE_SIZE);
	return 0;
}

/* Pages verified under write protection: map their targets and record the sites. */
static unsigned replace_stretch(struct mv_merge *m, const struct vma *v, struct pending *e, size_t n)
{
	if (replace(m, v, e[0].addr, n, e[0].target) < 0) {
		(void)mvm_uffd_wp(m, e[0].addr, n * MV_PAGE_SIZE, false);
		for (size_t t = 0; t < n; t++)
			mvm_pend_drop(m, &e[t]);
		return 0;
	}
	for (size_t t = 0; t < n; t++) {
		struct range *r2 = m->ranges[e[t].range];
		if (r2->site[e[t].page])
			mvm_site_clear(m, r2, e[t].page);
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
		if (!rg || mvm_vma_at(m, a, &v) < 0 || !mvm_vma_mergeable(&v)) {
			mvm_pend_drop(m, &run[i++]);
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
				mvm_pend_drop(m, &run[i + j]);
			i += k;
			continue;
		}
		bool all_held = true;
		for (size_t j = 0; j < k && all_held; j++)
			all_held = run[i + j].held;
		if (!all_held && mvm_uffd_wp(m, a, k * MV_PAGE_SIZE, true) < 0) {
			mvm_unprotect(m, a, k * MV_PAGE_SIZE);
			for (size_t j = 0; j < k; j++)
				mvm_pend_drop(m, &run[i + j]);
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
				ssize_t got = mvm_read_self(m->vbuf, run[i + j].addr, chunk * MV_PAGE_SIZE);
				base = j;
				have = got > 0 ? (size_t)got / MV_PAGE_SIZE : 0;
			}
			if (j < base + have) {
				const uint8_t *cur = m->vbuf + (j - base) * MV_PAGE_SIZE;
				uint32_t t = run[i + j].target;
				if (t == SITE_ZERO ? mvm_page_is_zero(cur)
						   : !memcmp(cur, m->store + (size_t)t * MV_PAGE_SIZE, MV_PAGE_SIZE)) {
					j++;
					continue;
				}
			}
			if (j > start)
				done += replace_stretch(m, &v, &run[i + start], j - start);
			(void)mvm_uffd_wp(m, run[i + j].addr, MV_PAGE_SIZE, false);
			mvm_pend_drop(m, &run[i + j]);
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

unsigned mvm_flush(struct mv_merge *m)
{
	if (!m->npend)
		return 0;
	qsort(m->pend, m->npend, sizeof(*m->pend), pend_cmp);
	size_t w = 0;
	for (size_t i = 0; i < m->npend; i++) {
		if (w && m->pend[w - 1].addr == m->pend[i].addr) {
			mvm_pend_drop(m, &m->pend[i]);
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
