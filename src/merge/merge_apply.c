/* SPDX-License-Identifier: MIT */
/* Applying merges: which canonical page each site maps, and putting the canonical pages over the
 * application's pages in runs, under write protection, within the mapping budget. */
#define _GNU_SOURCE
#include "merge/merge_gate.h"
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

/* ---- detaching the application's pages ---- */

/* Where detached pages wait: UFFDIO_MOVE moves only between anonymous mappings with the same protection,
 * into a mapping registered with the same userfaultfd. */
static uint8_t *scratch_for(struct mv_merge *m, const struct vma *v)
{
	int x = (v->prot & MV_VMA_EXEC) ? 1 : 0;
	if (m->scratch[x])
		return m->scratch[x];
	size_t len = SCRATCH_PAGES * MV_PAGE_SIZE;
	void *p = mvm_room_map(len, PROT_READ | PROT_WRITE | (x ? PROT_EXEC : 0), MAP_NORESERVE);
	if (p == MAP_FAILED)
		return NULL;
	(void)mvu_sys_madvise(p, len, MADV_DONTFORK);
	(void)mvu_sys_madvise(p, len, MADV_NOHUGEPAGE);
	/* a destination must be registered; write protection mode lets reading a hole fault normally */
	if (mvm_uffd_register_mode(m, (uintptr_t)p, len, UFFDIO_REGISTER_MODE_WP) < 0) {
		mvm_room_unmap(p, len);
		return NULL;
	}
	m->scratch[x] = p;
	return p;
}

void mvm_scratch_free(struct mv_merge *m)
{
	for (int x = 0; x < 2; x++)
		if (m->scratch[x])
			mvm_room_unmap(m->scratch[x], SCRATCH_PAGES * MV_PAGE_SIZE);
	m->scratch[0] = m->scratch[1] = NULL;
}

/* The detached pages are not needed any more, and the next detach needs empty room. */
static void scratch_release(struct mv_merge *m, uint8_t *scratch, size_t n)
{
	if (!n || mvu_sys_madvise(scratch, n * MV_PAGE_SIZE, MADV_DONTNEED) == 0)
		return;
	/* locked by mlockall(MCL_FUTURE): only a fresh mapping is empty */
	for (int x = 0; x < 2; x++)
		if (m->scratch[x] == scratch) {
			mvm_room_unmap(scratch, SCRATCH_PAGES * MV_PAGE_SIZE);
			m->scratch[x] = NULL;
		}
}

static int uffd_move(struct mv_merge *m, uintptr_t dst, uintptr_t src, size_t n, size_t *moved)
{
	*moved = 0;
	int err = 0;
	for (int stalls = 0; *moved < n && stalls < 8;) {
		struct mvm_uffdio_move mv = {
			.dst = dst + *moved * MV_PAGE_SIZE,
			.src = src + *moved * MV_PAGE_SIZE,
			.len = (n - *moved) * MV_PAGE_SIZE,
			.mode = MV_UFFDIO_MOVE_MODE_DONTWAKE | MV_UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
		};
		int r = mvu_sys_ioctl(m->uffd, MV_UFFDIO_MOVE, &mv);
		err = r < 0 ? errno : 0;
		if (mv.move > 0)
			*moved += (size_t)mv.move / MV_PAGE_SIZE;
		if (r == 0 || err != EAGAIN)
			break;
		if (mv.move <= 0)
			stalls++;
	}
	return err ? -err : 0;
}

/* Takes the application's pages [a, a + n pages) out of its mapping so that their replacement can be
 * mapped without destroying a page the kernel or a device still writes into: UFFDIO_MOVE refuses to
 * move a pinned page (io_uring fixed buffers, O_DIRECT in flight, vfio, RDMA). Every page here was read
 * through process_vm_readv, which unshares pages a fork left shared, so a refusal means a pin. Returns
 * how many pages from a were taken; *pinned tells whether the next one was refused for a pin. */
static size_t detach(struct mv_merge *m, uint8_t *scratch, uintptr_t a, size_t n, bool *pinned)
{
	size_t moved;
	int r = uffd_move(m, (uintptr_t)scratch, a, n, &moved);
	*pinned = r == -EBUSY;
	return moved;
}

/* The replacement could not be mapped: the detached pages go back where they were. */
static void undo_detach(struct mv_merge *m, uint8_t *scratch, uintptr_t a, size_t n)
{
	size_t moved;
	if (uffd_move(m, a, (uintptr_t)scratch, n, &moved) == 0 && moved == n)
		return;
	/* not a page may be lost: what did not move back is copied */
	for (size_t i = moved; i < n; i++) {
		struct uffdio_copy c = { .dst = a + i * MV_PAGE_SIZE,
					 .src = (uintptr_t)scratch + i * MV_PAGE_SIZE,
					 .len = MV_PAGE_SIZE,
					 .mode = UFFDIO_COPY_MODE_DONTWAKE };
		(void)mvu_sys_ioctl(m->uffd, UFFDIO_COPY, &c);
	}
}

/* Back to write protection alone on pages that stay the application's. */
static void missing_off(struct mv_merge *m, uintptr_t a, size_t len)
{
	struct uffdio_range r = { .start = a, .len = len };
	(void)mvu_sys_ioctl(m->uffd, UFFDIO_UNREGISTER, &r);
	(void)mvm_uffd_register(m, a, len);
}

/* Mappings put over the application's pages change no byte it can see, so they go to the kernel
 * directly: a sanitizer's mmap interceptor would otherwise treat them as fresh memory written by us. */
static void *map_target(struct mv_merge *m, uintptr_t a, size_t n, int prot, uint32_t target)
{
	if (target == SITE_ZERO)
		return mvu_sys_mmap((void *)a, n * MV_PAGE_SIZE, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	return mvu_sys_mmap((void *)a, n * MV_PAGE_SIZE, prot, MAP_PRIVATE | MAP_FIXED, m->store_fd,
			    (off_t)(m->store_base + (uint64_t)target * MV_PAGE_SIZE));
}

/* A new site maps its canonical page at once (read-only, so still shared): the page's mapping count
 * then tells whether anything maps it, whatever the application does with the mapping later. One read
 * per 64 KiB faults its neighbours in with it (fault-around; MADV_POPULATE_READ would walk every page),
 * through process_vm_readv, so that an address unmapped meanwhile is an error, not a crash. pagemap then
 * says which pages that left out (fault-around skips a busy page) and those are populated one by one. */
static void populate(struct mv_merge *m, uintptr_t a, size_t n)
{
	enum { TOUCH = SCRATCH_PAGES / AROUND_PAGES + 1 };
	struct iovec l[TOUCH], r[TOUCH];
	uint8_t sink[TOUCH];
	uint64_t pm[SCRATCH_PAGES];
	uintptr_t end = a + n * MV_PAGE_SIZE, win = AROUND_PAGES * MV_PAGE_SIZE;
	unsigned k = 0;
	if (n > SCRATCH_PAGES)
		goto all;
	for (uintptr_t p = a; p < end && k < TOUCH; p = (p & ~(win - 1)) + win, k++) {
		l[k] = (struct iovec){ &sink[k], 1 };
		r[k] = (struct iovec){ (void *)p, 1 };
	}
	if (process_vm_readv(getpid(), l, k, r, k, 0) != (ssize_t)k ||
	    pread(m->pagemap_fd, pm, n * 8, (off_t)(a / MV_PAGE_SIZE) * 8) != (ssize_t)(n * 8))
		goto all;
	for (size_t i = 0; i < n; i++)
		if (!(pm[i] & MV_PM_PRESENT))
			(void)mvu_sys_madvise((void *)(a + i * MV_PAGE_SIZE), MV_PAGE_SIZE, MADV_POPULATE_READ);
	return;
all:
	(void)mvu_sys_madvise((void *)a, n * MV_PAGE_SIZE, MADV_POPULATE_READ);
}

/* Without UFFDIO_MOVE (before Linux 6.8) a pinned page cannot be told from another one. */
static size_t replace_unchecked(struct mv_merge *m, const struct vma *v, unsigned fl, uintptr_t a, size_t n,
				uint32_t target)
{
	/* Protecting them again, which only registered memory allows, tells that the application has not
	 * mapped new memory here since the scan; the gate keeps it from doing so until the pages are
	 * replaced. */
	bool closed = mvm_gate_close();
	if (mvm_uffd_wp(m, a, n * MV_PAGE_SIZE, true) < 0) {
		mvm_gate_open(closed);
		return 0;
	}
	if (target == SITE_ZERO && v->kind == VMA_ANON) {
		int r = mvu_sys_madvise((void *)a, n * MV_PAGE_SIZE, MADV_DONTNEED);
		mvm_gate_open(closed);
		if (r < 0)
			return 0;
		(void)mvm_uffd_wp(m, a, n * MV_PAGE_SIZE, false);
		return n;
	}
	if (map_target(m, a, n, mvm_prot_of(v), target) == MAP_FAILED) {
		mvm_gate_open(closed);
		return 0;
	}
	m->map_estimate += 2;
	(void)mvm_uffd_register(m, a, n * MV_PAGE_SIZE);
	mvm_vmflags_apply(a, n * MV_PAGE_SIZE, fl);
	if (target != SITE_ZERO)
		populate(m, a, n);
	mvm_gate_open(closed);
	mvm_uffd_wake(m, a, n * MV_PAGE_SIZE);
	return n;
}

/* How many detached pages, from the first, still hold the target's bytes. Write protection stops the
 * CPU, not a device: a DMA into a page pinned while it was compared may have landed since. */
static size_t detached_intact(struct mv_merge *m, const uint8_t *scratch, size_t k, uint32_t target)
{
	for (size_t i = 0; i < k; i++) {
		const uint8_t *p = scratch + i * MV_PAGE_SIZE;
		if (target == SITE_ZERO ? !mvm_page_is_zero(p)
					: memcmp(p, m->store + (size_t)(target + i) * MV_PAGE_SIZE, MV_PAGE_SIZE) != 0)
			return i;
	}
	return k;
}

/* Replace pages [a, a + n pages) by their target: verified under write protection, or, with UFFDIO_MOVE,
 * once detached. Returns how many from a were replaced; the others are still the application's and
 * still write-protected. *pinned: the next one was refused for a pin; *differs: it holds other bytes. */
static size_t replace(struct mv_merge *m, const struct vma *v, unsigned fl, uintptr_t a, size_t n, uint32_t target,
		      bool *pinned, bool *differs)
{
	*pinned = *differs = false;
	if (!m->have_move)
		return replace_unchecked(m, v, fl, a, n, target);
	/* a private copy in a store mapping cannot be moved, so a pin on it could not be seen */
	uint8_t *scratch = v->kind == VMA_ANON ? scratch_for(m, v) : NULL;
	if (!scratch)
		return 0;
	size_t done = 0;
	while (done < n) {
		uintptr_t c = a + done * MV_PAGE_SIZE;
		size_t chunk = n - done < SCRATCH_PAGES ? n - done : SCRATCH_PAGES;
		uint32_t t = target == SITE_ZERO ? SITE_ZERO : target + (uint32_t)done;
		/* The scan did not write-protect these pages, which also told that they were still the
		 * memory registered here: memory the application mapped over them since is not, and lifting
		 * write protection, refused on it, tells. Registration belongs to the mapping, and the run
		 * lies in one (apply_run), so its first page answers for all of it. */
		if (mvm_uffd_wp(m, c, MV_PAGE_SIZE, false) < 0)
			break;
		/* Between taking a page out and mapping its replacement the address is empty: with missing
		 * faults registered too, an access there waits instead of finding a fresh zero page. */
		if (mvm_uffd_register_mode(m, c, chunk * MV_PAGE_SIZE,
					   UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MISSING) < 0)
			break;
		size_t k = detach(m, scratch, c, chunk, pinned);
		size_t ok = detached_intact(m, scratch, k, t);
		if (ok < k) {
			undo_detach(m, scratch + ok * MV_PAGE_SIZE, c + ok * MV_PAGE_SIZE, k - ok);
			*pinned = false;
			*differs = true;
			k = ok;
		}
		/* An application thread may have unmapped these pages and mapped new memory here while they
		 * were compared: that memory is not registered, and mapping the target would destroy it. So
		 * ask again, with the gate closed until the mmap is done: munmap, mmap and mremap through the
		 * engine or the preload library cannot come in between (merge_gate.c, DESIGN.md). */
		bool closed = false, mapped = false;
		if (k && t != SITE_ZERO) {
			closed = mvm_gate_close();
			mapped = mvm_uffd_wp(m, c, k * MV_PAGE_SIZE, false) == 0 &&
				 map_target(m, c, k, mvm_prot_of(v), t) != MAP_FAILED;
			if (mapped) {
				m->map_estimate += 2;
				mvm_vmflags_apply(c, k * MV_PAGE_SIZE, fl);
				populate(m, c, k);
				(void)mvm_uffd_register(m, c, k * MV_PAGE_SIZE);
			}
			mvm_gate_open(closed);
			if (!mapped) {
				undo_detach(m, scratch, c, k);
				*pinned = *differs = false;
				k = 0;
			}
		}
		/* an emptied page of anonymous memory reads as zeros: for a zero target that is the merge */
		scratch_release(m, scratch, chunk);
		/* what is left of the chunk's mapping goes back to write protection alone */
		if (t == SITE_ZERO)
			missing_off(m, c, chunk * MV_PAGE_SIZE);
		else if (k < chunk)
			missing_off(m, c + k * MV_PAGE_SIZE, (chunk - k) * MV_PAGE_SIZE);
		mvm_uffd_wake(m, c, chunk * MV_PAGE_SIZE);
		done += k;
		if (k < chunk)
			break;
	}
	return done;
}

/* Pages verified under write protection: map their targets and record the sites. A pinned page is
 * given back and the ones after it are still merged. */
static unsigned replace_stretch(struct mv_merge *m, const struct vma *v, unsigned fl, struct pending *e, size_t n)
{
	unsigned done = 0;
	while (n) {
		bool pinned, differs;
		size_t k = replace(m, v, fl, e[0].addr, n, e[0].target, &pinned, &differs);
		for (size_t t = 0; t < k; t++) {
			struct range *r2 = m->ranges[e[t].range];
			if (r2->site[e[t].page])
				mvm_site_clear(m, r2, e[t].page);
			site_set(m, r2, e[t].page, e[t].target);
			r2->flags[e[t].page] =
				(uint8_t)((r2->flags[e[t].page] & ~(F_DONTCOPY | F_DONTDUMP)) |
					  (fl & VMF_DONTCOPY ? F_DONTCOPY : 0) | (fl & VMF_DONTDUMP ? F_DONTDUMP : 0));
		}
		done += (unsigned)k;
		if (k == n)
			break;
		/* a pinned or changed page is given back alone; after any other failure the rest waits for the
		 * next scan */
		size_t give = pinned || differs ? 1 : n - k;
		m->skipped_pinned += pinned;
		mvm_unprotect(m, e[k].addr, give * MV_PAGE_SIZE);
		for (size_t t = k; t < k + give; t++)
			mvm_pend_drop(m, &e[t]);
		e += k + give;
		n -= k + give;
	}
	return done;
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
		uintptr_t fl_end;
		unsigned fl = mvm_vmflags_at(m, a, &fl_end);
		if (fl_end < a + k * MV_PAGE_SIZE)
			k = (fl_end - a) / MV_PAGE_SIZE;
		if (fl & VMF_NEVER) {
			for (size_t j = 0; j < k; j++)
				mvm_pend_drop(m, &run[i + j]);
			i += k;
			continue;
		}
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
		/* with UFFDIO_MOVE every page is compared once detached, where no write can reach it */
		bool all_held = true;
		for (size_t j = 0; j < k && all_held; j++)
			all_held = run[i + j].held || m->have_move;
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
			if (run[i + j].held || m->have_move) {
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
				done += replace_stretch(m, &v, fl, &run[i + start], j - start);
			(void)mvm_uffd_wp(m, run[i + j].addr, MV_PAGE_SIZE, false);
			mvm_pend_drop(m, &run[i + j]);
			j++;
			start = j;
		}
		if (k > start)
			done += replace_stretch(m, &v, fl, &run[i + start], k - start);
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
	mvm_canon_write(m);
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
