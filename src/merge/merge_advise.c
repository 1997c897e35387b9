/* SPDX-License-Identifier: MIT */
/* madvise on merged memory. A merged page is a private mapping of a store, a file mapping where the
 * application had anonymous memory: the kernel would answer MADV_DONTNEED there by reading the store's
 * bytes again instead of zeros, refuse MADV_FREE and MADV_WIPEONFORK, and keep flags such as
 * MADV_DONTFORK's on a mapping the engine replaces when it lets the page go. So before the real madvise
 * runs, every private mapping of a store in the range becomes private anonymous memory: fresh memory
 * (zeros) for the advice that discards the contents, a copy of the merged bytes for the advice that
 * changes the mapping or treats anonymous and file memory differently. Access hints, which mean the
 * same for a file mapping, and values unknown here leave merges alone. The real madvise then runs while the
 * contexts that could merge in the range are locked, so no scan merges there in between. */
#define _GNU_SOURCE
#include "merge/merge_advise.h"
#include "merge_internal.h"

enum { KEEP, ZERO, UNMERGE };

static int advice_effect(int advice)
{
	switch (advice) {
	case MADV_NORMAL:
	case MADV_RANDOM:
	case MADV_SEQUENTIAL:
	case MADV_WILLNEED:
	case MADV_COLD:
	case MADV_PAGEOUT:
	case MADV_POPULATE_READ:
	case MADV_POPULATE_WRITE: return KEEP;
	case MADV_DONTNEED:
	case MADV_DONTNEED_LOCKED:
	case MADV_FREE: return ZERO;
	case MADV_REMOVE:
	case MADV_DONTFORK:
	case MADV_DOFORK:
	case MADV_MERGEABLE:
	case MADV_UNMERGEABLE:
	case MADV_HUGEPAGE:
	case MADV_NOHUGEPAGE:
	case MADV_DONTDUMP:
	case MADV_DODUMP:
	case MADV_WIPEONFORK:
	case MADV_KEEPONFORK:
	case MADV_HWPOISON:
	case MADV_SOFT_OFFLINE:
	case MADV_COLLAPSE:
	case MADV_GUARD_INSTALL:
	case MADV_GUARD_REMOVE: return UNMERGE;
	default: /* not an advice this engine knows: the kernel's to answer, most likely EINVAL */ return KEEP;
	}
}

static int call_real(int (*real)(void *, size_t, int), void *addr, size_t len, int advice)
{
	int r = real(addr, len, advice);
	return r < 0 ? -errno : r;
}

/* Makes the private store mapping [s, e) anonymous memory; owner is the live context whose store it
 * maps (locked), NULL for one this process inherited or let go of. */
static void make_anonymous(struct mv_merge *owner, uintptr_t s, uintptr_t e, const struct vma *v, int advice)
{
	size_t len = e - s;
	int prot = mvm_prot_of(v);
	/* MADV_COLD, a mere hint elsewhere, is refused exactly on mlocked memory: the new memory must be
	 * locked too, and the discarding advice is refused there as on locked anonymous memory. */
	bool locked = mvu_sys_madvise((void *)s, len, MADV_COLD) < 0 && errno == EINVAL;
	/* the flags a merge gave the store mapping (the anonymous memory's before it) go back with it */
	unsigned fl = 0;
	if (owner) {
		uintptr_t fl_end;
		(void)mvm_vmflags_refresh(owner, true);
		fl = mvm_vmflags_at(owner, s, &fl_end) & (VMF_DONTCOPY | VMF_DONTDUMP);
		if (!owner->vmflags_pass)
			fl = 0;
	}
	bool done;
	if (advice_effect(advice) == ZERO) {
		if (locked && advice != MADV_DONTNEED_LOCKED)
			return;
		done = mvu_sys_mmap((void *)s, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED;
		if (done)
			mvm_vmflags_apply(s, len, fl);
	} else {
		done = mvm_restore_vma(owner, s, len, prot, fl);
	}
	if (!done)
		return;
	if (locked)
		(void)mlock((void *)s, len);
	if (!owner)
		return;
	owner->map_estimate += 2;
	for (uint32_t i = 0; i < owner->nranges; i++) {
		struct range *rg = owner->ranges[i];
		if (!rg)
			continue;
		uintptr_t re = rg->start + rg->npages * MV_PAGE_SIZE;
		uintptr_t lo = s > rg->start ? s : rg->start, hi = e < re ? e : re;
		if (lo >= hi)
			continue;
		/* registered memory stays registered: it can merge again, under write protection */
		(void)mvm_uffd_register(owner, lo, hi - lo);
		for (size_t p = (lo - rg->start) / MV_PAGE_SIZE; p < (hi - rg->start) / MV_PAGE_SIZE; p++)
			if (rg->site[p])
				mvm_site_clear(owner, rg, p);
	}
}

static bool held_has(struct mv_merge **held, size_t n, const struct mv_merge *m)
{
	for (size_t i = 0; i < n; i++)
		if (held[i] == m)
			return true;
	return false;
}

int mvm_madvise(void *addr, size_t len, int advice, int (*real)(void *, size_t, int))
{
	uintptr_t a = (uintptr_t)addr;
	size_t l = (len + MV_PAGE_SIZE - 1) & ~(size_t)(MV_PAGE_SIZE - 1);
	/* what the kernel refuses or ignores, it answers itself */
	if (advice_effect(advice) == KEEP || !mvm_any_store() || a % MV_PAGE_SIZE || l < len || !l || a + l < a)
		return call_real(real, addr, len, advice);
	uintptr_t end = a + l;

	/* The list's lock first, then contexts' locks, as fork does. It also makes every madvise that looks
	 * at merged memory wait for the others, so contexts can be locked in any order. */
	struct mv_merge *first = mvm_contexts_lock();
	size_t n = 0;
	for (struct mv_merge *m = first; m; m = m->next_ctx)
		n++;
	struct mv_merge *few[16], **held = n <= 16 ? few : malloc(n * sizeof(*held));
	if (!held) {
		mvm_contexts_unlock();
		return -ENOMEM;
	}
	size_t nheld = 0;
	int maps_fd = -1, own_fd = -1;
	for (struct mv_merge *m = first; m; m = m->next_ctx) {
		if (m->uffd < 0)
			continue; /* a context inherited across fork: no registrations, nothing merges */
		maps_fd = m->maps_fd;
		if (a < atomic_load(&m->span_hi) && atomic_load(&m->span_lo) < end) {
			api_lock(m);
			held[nheld++] = m;
		}
	}
	if (maps_fd < 0) /* only inherited contexts, whose descriptors show the parent's maps */
		maps_fd = own_fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);

	/* every private mapping of a store in the range, whoever merged it */
	for (uintptr_t at = a; maps_fd >= 0 && at < end;) {
		struct vma v;
		if (mvm_file_vma_in(maps_fd, at, end, &v) <= 0)
			break;
		uintptr_t s = v.start > at ? v.start : at, e = v.end < end ? v.end : end;
		at = v.end;
		if ((v.prot & MV_VMA_SHARED) || !mvm_store_known(v.dev, v.ino))
			continue;
		struct mv_merge *owner = NULL;
		for (struct mv_merge *m = first; m && !owner; m = m->next_ctx)
			if (m->uffd >= 0 && (uint64_t)m->store_dev == v.dev && (uint64_t)m->store_ino == v.ino)
				owner = m;
		if (owner && !held_has(held, nheld, owner)) {
			api_lock(owner);
			held[nheld++] = owner;
		}
		make_anonymous(owner, s, e, &v, advice);
	}

	int r = call_real(real, addr, len, advice);
	for (size_t i = 0; i < nheld; i++) {
		/* the mappings' flags may have changed: nothing merges there before they are read again */
		held[i]->vmflags_pass = 0;
		mvm_publish(held[i]);
		pthread_mutex_unlock(&held[i]->lock);
	}
	mvm_contexts_unlock();
	if (own_fd >= 0)
		(void)mvu_sys_close(own_fd);
	if (held != few)
		free(held);
	return r;
}

static int sys_madvise(void *addr, size_t len, int advice)
{
	return mvu_sys_madvise(addr, len, advice);
}

MV_EXPORT int mv_merge_advise(void *addr, size_t len, int advice)
{
	return mvm_madvise(addr, len, advice, sys_madvise);
}
