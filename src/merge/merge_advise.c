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
#include "merge/merge_gate.h"
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
	unsigned fl = owner ? mvm_merged_vmflags(owner, s) & (VMF_DONTCOPY | VMF_DONTDUMP) : 0;
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

/* The contexts that could merge in a range, locked, and the way to read the process's mappings. */
struct hold {
	struct mv_merge *first, *few[16], **v;
	size_t n;
	int maps_fd, own_fd;
};

static int hold_begin(struct hold *h, uintptr_t a, uintptr_t end)
{
	/* The list's lock first, then contexts' locks, as fork does. It also makes every call that looks
	 * at merged memory wait for the others, so contexts can be locked in any order. */
	h->first = mvm_contexts_lock();
	size_t n = 0;
	for (struct mv_merge *m = h->first; m; m = m->next_ctx)
		n++;
	h->v = n <= 16 ? h->few : malloc(n * sizeof(*h->v));
	if (!h->v) {
		mvm_contexts_unlock();
		return -ENOMEM;
	}
	h->n = 0;
	h->maps_fd = h->own_fd = -1;
	for (struct mv_merge *m = h->first; m; m = m->next_ctx) {
		if (m->uffd < 0)
			continue; /* a context inherited across fork: no registrations, nothing merges */
		h->maps_fd = m->maps_fd;
		if (a < atomic_load(&m->span_hi) && atomic_load(&m->span_lo) < end) {
			api_lock(m);
			h->v[h->n++] = m;
		}
	}
	if (h->maps_fd < 0) /* only inherited contexts, whose descriptors show the parent's maps */
		h->maps_fd = h->own_fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	return 0;
}

static void hold_end(struct hold *h)
{
	for (size_t i = 0; i < h->n; i++) {
		/* the mappings or their flags may have changed: nothing merges there before they are read again */
		h->v[i]->vmflags_pass = 0;
		mvm_publish(h->v[i]);
		pthread_mutex_unlock(&h->v[i]->lock);
	}
	mvm_contexts_unlock();
	if (h->own_fd >= 0)
		(void)mvu_sys_close(h->own_fd);
	if (h->v != h->few)
		free(h->v);
}

/* Every private mapping of a store in [a, end), whoever merged it, made anonymous for advice. */
static void unmerge_range(struct hold *h, uintptr_t a, uintptr_t end, int advice)
{
	for (uintptr_t at = a; h->maps_fd >= 0 && at < end;) {
		struct vma v;
		if (mvm_file_vma_in(h->maps_fd, at, end, &v) <= 0)
			break;
		uintptr_t s = v.start > at ? v.start : at, e = v.end < end ? v.end : end;
		at = v.end;
		if ((v.prot & MV_VMA_SHARED) || !mvm_store_known(v.dev, v.ino))
			continue;
		struct mv_merge *owner = NULL;
		for (struct mv_merge *m = h->first; m && !owner; m = m->next_ctx)
			if (m->uffd >= 0 && (uint64_t)m->store_dev == v.dev && (uint64_t)m->store_ino == v.ino)
				owner = m;
		bool held = false;
		for (size_t i = 0; i < h->n && !held; i++)
			held = h->v[i] == owner;
		if (owner && !held) {
			api_lock(owner);
			h->v[h->n++] = owner;
		}
		make_anonymous(owner, s, e, &v, advice);
	}
}

int mvm_madvise(void *addr, size_t len, int advice, int (*real)(void *, size_t, int))
{
	uintptr_t a = (uintptr_t)addr;
	size_t l = (len + MV_PAGE_SIZE - 1) & ~(size_t)(MV_PAGE_SIZE - 1);
	/* what the kernel refuses or ignores, it answers itself */
	if (advice_effect(advice) == KEEP || !mvm_any_store() || a % MV_PAGE_SIZE || l < len || !l || a + l < a)
		return call_real(real, addr, len, advice);
	struct hold h;
	int r = hold_begin(&h, a, a + l);
	if (r < 0)
		return r;
	unmerge_range(&h, a, a + l, advice);
	r = call_real(real, addr, len, advice);
	hold_end(&h);
	return r;
}

/* Pages [a, a + len) moved into tmp go back; one that will not move is copied (it moved out, so
 * nothing pins it). */
static void move_back(struct mv_merge *m, uint8_t *tmp, uintptr_t a, size_t len)
{
	for (size_t back = 0; back < len; back += MV_PAGE_SIZE) {
		struct mvm_uffdio_move mv = { .dst = a + back,
					      .src = (uintptr_t)tmp + back,
					      .len = MV_PAGE_SIZE,
					      .mode = MV_UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES };
		if (mvu_sys_ioctl(m->uffd, MV_UFFDIO_MOVE, &mv) == 0)
			continue;
		struct uffdio_copy c = { .dst = a + back, .src = (uintptr_t)tmp + back, .len = MV_PAGE_SIZE };
		(void)mvu_sys_ioctl(m->uffd, UFFDIO_COPY, &c);
	}
}

/* Merges split what the application mapped as one anonymous mapping into several, and mremap works on
 * one mapping only. Once nothing in [a, end) is merged, the pages are moved into one fresh mapping put
 * where they were. Only when the pieces are alike (private anonymous, same protection and flags), as
 * the application's one mapping was; a pinned page cannot move, and then the pieces stay. */
static void rejoin(struct hold *h, uintptr_t a, uintptr_t end)
{
	struct mv_merge *m = NULL;
	for (size_t i = 0; i < h->n && !m; i++)
		if (h->v[i]->have_move)
			m = h->v[i];
	struct vma first;
	if (!m || mvm_vma_at(m, a, &first) < 0 || first.kind != VMA_ANON || first.end >= end)
		return; /* one mapping already, or nothing to rejoin with */
	(void)mvm_vmflags_refresh(m, true);
	uintptr_t fl_end;
	unsigned fl = mvm_vmflags_at(m, a, &fl_end);
	if (!m->vmflags_pass || (fl & VMF_LOCKED))
		return;
	for (uintptr_t at = first.end; at < end;) {
		struct vma v;
		if (mvm_vma_at(m, at, &v) < 0 || v.kind != VMA_ANON || v.prot != first.prot ||
		    mvm_vmflags_at(m, at, &fl_end) != fl)
			return;
		at = v.end;
	}
	size_t len = end - a;
	void *tmp = mvm_room_map(len, mvm_prot_of(&first), 0);
	if (tmp == MAP_FAILED)
		return;
	if (mvm_uffd_register(m, (uintptr_t)tmp, len) < 0) {
		mvm_room_unmap(tmp, len);
		return;
	}
	/* what moves out may have to move back, and UFFDIO_MOVE moves only into registered memory (a
	 * mapping the application moved lost its registration) */
	if (mvm_uffd_register(m, a, len) < 0) {
		mvm_room_unmap(tmp, len);
		return;
	}
	size_t moved = 0;
	bool ok = true, copied = false;
	for (int stalls = 0; ok && moved < len;) {
		struct vma v;
		ok = mvm_vma_at(m, a + moved, &v) == 0;
		size_t piece = ok ? (v.end < end ? v.end : end) - (a + moved) : 0;
		struct mvm_uffdio_move mv = { .dst = (uintptr_t)tmp + moved,
					      .src = a + moved,
					      .len = piece,
					      .mode = MV_UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES };
		if (ok && mvu_sys_ioctl(m->uffd, MV_UFFDIO_MOVE, &mv) == 0) {
			moved += piece;
			continue;
		}
		if (mv.move > 0)
			moved += (size_t)mv.move;
		ok = ok && errno == EAGAIN && ++stalls < 16;
	}
	if (!ok) {
		/* Some page would not move (the kernel moves only pages mapped once and not pinned, and
		 * not every one of those). What moved goes back; then, if nothing in the range is pinned,
		 * a copy does as well, and a pinned page keeps the pieces as they are. */
		move_back(m, tmp, a, moved);
		moved = 0;
		size_t n = len / MV_PAGE_SIZE;
		bool *pinned = malloc(n);
		bool any = !pinned || mvm_pins_probe(m, a, n, pinned) < 0;
		for (size_t i = 0; pinned && i < n && !any; i++)
			any = pinned[i];
		free(pinned);
		ok = copied = !any && mvm_read_self(tmp, a, len) == (ssize_t)len;
	}
	mvm_vmflags_apply((uintptr_t)tmp, len, fl);
	if (!ok || mvu_sys_mremap_fixed(tmp, len, (void *)a) == MAP_FAILED) {
		/* back where they were: the application keeps its pieces and mremap answers as it does */
		if (!copied)
			move_back(m, tmp, a, moved);
		mvm_room_unmap(tmp, len);
		return;
	}
	mvm_room_moved(tmp, len);
	/* a moved mapping loses its userfaultfd registration: registered memory stays registered */
	for (size_t i = 0; i < h->n; i++)
		for (uint32_t r = 0; r < h->v[i]->nranges; r++) {
			struct range *rg = h->v[i]->ranges[r];
			if (!rg)
				continue;
			uintptr_t re = rg->start + rg->npages * MV_PAGE_SIZE;
			uintptr_t lo = a > rg->start ? a : rg->start, hi = end < re ? end : re;
			if (lo < hi)
				(void)mvm_uffd_register(h->v[i], lo, hi - lo);
		}
}

/* Moving memory away or onto another address changes what a merge may be about to map over. */
static void *gated_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr,
			  void *(*real)(void *, size_t, size_t, int, void *))
{
	mvm_gate_pass_begin();
	void *r = real(old, old_len, new_len, flags, new_addr);
	int err = errno;
	mvm_gate_pass_end();
	errno = err;
	return r;
}

void *mvm_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr,
		 void *(*real)(void *, size_t, size_t, int, void *))
{
	uintptr_t a = (uintptr_t)old;
	size_t l = (old_len + MV_PAGE_SIZE - 1) & ~(size_t)(MV_PAGE_SIZE - 1);
	struct hold h;
	if (!mvm_any_store() || a % MV_PAGE_SIZE || l < old_len || !l || a + l < a || hold_begin(&h, a, a + l) < 0)
		return gated_mremap(old, old_len, new_len, flags, new_addr, real);
	/* merged pages become the application's own again (any advice that keeps the bytes) */
	unmerge_range(&h, a, a + l, MADV_DONTFORK);
	rejoin(&h, a, a + l);
	void *r = gated_mremap(old, old_len, new_len, flags, new_addr, real);
	int err = errno;
	hold_end(&h);
	errno = err;
	return r;
}

static void *sys_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr)
{
	long r = syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
	return r == -1 ? MAP_FAILED : (void *)r;
}

MV_EXPORT int mv_merge_remap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr, void **out)
{
	if (!out)
		return -EINVAL;
	void *r = mvm_mremap(old, old_len, new_len, flags, new_addr, sys_mremap);
	if (r == MAP_FAILED)
		return -errno;
	*out = r;
	return 0;
}

/* libc's munmap, the application's own call: a sanitizer's interceptor must see memory go */
MV_EXPORT int mv_merge_unmap(void *addr, size_t len)
{
	mvm_gate_pass_begin();
	int r = munmap(addr, len) < 0 ? -errno : 0;
	mvm_gate_pass_end();
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
