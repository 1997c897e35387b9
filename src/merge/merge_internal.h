/* SPDX-License-Identifier: MIT */
/* The merging engine's shared internals: its structures and what its files (merge.c, merge_memory.c,
 * merge_canon.c, merge_apply.c, merge_scan.c, merge_advise.c) call of each other. Internal. */
#pragma once

#include "merge/page_hash.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "common/sys.h"
#include "common/util.h"
#include "lib/client.h"
#include "memvisor/merge.h"
#include "merge/board.h"
#include "merge/kernel.h"
#include "merge/partition_files.h"

/* Our own ioctls, closes and remaps go straight to the kernel (common/sys.h says why). */

#define BATCH 256u         /* pages looked at per pagemap read and per process_vm_readv */
#define VBATCH 64u         /* pages verified per read under write protection */
#define SCRATCH_PAGES 512u /* pages detached per UFFDIO_MOVE before their replacement is mapped */
#define AROUND_PAGES 16u   /* a read fault on a file mapping maps the cached pages of its aligned 64 KiB */

/* site word of a page: 0 unmerged, SITE_ZERO zapped to the zero page, else canonical id + 1 */
#define SITE_ZERO UINT32_MAX

/* page flags */
#define F_SEEN 0x01     /* csum holds the checksum of an earlier look */
#define F_VOLATILE 0x02 /* changed since the earlier look */
#define F_UNSTABLE 0x04 /* in this full scan's table of unique pages */
#define F_DONTCOPY 0x08 /* merged from a MADV_DONTFORK mapping: a restore gives the flag back */
#define F_DONTDUMP 0x10 /* merged from a MADV_DONTDUMP mapping: likewise */

/* canonical page flags */
#define C_INHERITED 0x01 /* a fork child may map it: never punched, never reused */
#define C_LINGER 0x02    /* no recorded site, but something still maps it (a moved site): freed later */

struct range {
	uintptr_t start;
	size_t npages;
	uint32_t *site;
	uint32_t *csum;
	uint8_t *flags;
	uint64_t merged, zero, vol, unshared, scanned;
};

struct canon {
	uint64_t hash;
	uint32_t refs;
	uint32_t flags;
};

/* id1 = canonical id + 1 (0: empty); the tag (high half of the hash) spares a look at canon[] */
struct stable_slot {
	uint32_t id1;
	uint32_t tag;
};

struct unstable_entry {
	uint64_t hash;
	uint32_t range; /* UINT32_MAX: removed */
	uint32_t page;
};

struct pending {
	uintptr_t addr;
	uint32_t range;
	uint32_t page;
	uint32_t target; /* canonical id or SITE_ZERO */
	uint32_t held;   /* write-protected since its bytes were compared: no second read needed */
};

struct vma {
	uintptr_t start, end;
	unsigned prot;
	int kind;
	uint64_t offset;
	uint64_t dev, ino; /* of the file mapped, 0 for anonymous memory */
};
enum { VMA_NONE, VMA_ANON, VMA_STORE, VMA_OTHER };

/* Mapping flags the merger must keep (from /proc/self/smaps VmFlags): a merge puts a new mapping in
 * place, which has none of the old one's flags. */
#define VMF_LOCKED 0x01     /* lo: mlock; UFFDIO_MOVE refuses it too: never merged */
#define VMF_DONTCOPY 0x02   /* dc: MADV_DONTFORK; given to the new mapping */
#define VMF_WIPEONFORK 0x04 /* wf: MADV_WIPEONFORK; only anonymous memory can have it: never merged */
#define VMF_DONTDUMP 0x08   /* dd: MADV_DONTDUMP; given to the new mapping */
#define VMF_NEVER (VMF_LOCKED | VMF_WIPEONFORK)

struct vmflag_span {
	uintptr_t start, end;
	unsigned bits;
};

struct mv_merge {
	atomic_int refs;
	pthread_mutex_t lock;
	int uffd;
	bool uffd_full;      /* created without UFFD_USER_MODE_ONLY */
	bool have_move;      /* UFFDIO_MOVE: pages can be detached, and pinned ones are refused */
	uint8_t *scratch[2]; /* where detached pages go: read-write, and read-write-exec */
	int maps_fd;
	int pagemap_fd;
	bool have_procmap_query;

	int store_fd;
	dev_t store_dev;
	ino_t store_ino;
	uint8_t *store;
	uint32_t store_cap; /* pages */
	struct canon *canon;
	uint32_t canon_used; /* ids handed out so far */
	/* canonical pages made in this batch, written to the store together before its merges apply */
	struct canon_write {
		uint32_t id;
		const uint8_t *data; /* in buf */
	} cw[BATCH];
	uint32_t ncw;
	uint32_t *free_ids;
	uint32_t nfree;
	struct stable_slot *stable; /* open addressing keyed by canon hash */
	uint32_t stable_cap, stable_n;
	uint64_t live_canon;
	uint64_t canon_refs;
	uint32_t lingering; /* canonical pages with C_LINGER */

	struct range **ranges;
	uint32_t nranges;
	uint32_t cur_range;
	size_t cur_page;

	struct unstable_entry *unstable;
	uint32_t unstable_cap, unstable_n;
	uint64_t unshared;

	struct pending *pend;
	size_t npend, pend_cap;

	uint64_t zero_pages, volatile_pages, scanned, full_scans;
	uint64_t skipped_budget;
	uint64_t skipped_pinned;
	uint64_t merged_total;
	bool budget_reached;      /* in this full scan */
	bool budget_reached_prev; /* in the previous one */
	uint64_t map_count, map_limit, map_estimate;

	struct vmflag_span *vmflags; /* mappings with VMF_ bits, by address, as of vmflags_pass */
	uint32_t nvmflags, vmflags_cap;
	uint64_t vmflags_pass; /* full_scans + 1 when read; 0: to be read again */
	uint64_t vmflags_ns;   /* when read */

	struct mv_merge_knobs knobs;
	atomic_int api_waiting; /* callers waiting for the lock: the scanner thread steps aside */
	pthread_t scanner;
	bool scanner_running;
	bool scanner_stop;
	pthread_cond_t wake;

	uint8_t *buf;    /* BATCH pages */
	uint8_t *vbuf;   /* VBATCH pages */
	uint8_t *cmpbuf; /* one zero page */
	uint64_t zero_hash;

	struct mv_merge *next_ctx; /* fork bookkeeping, and madvise's walk over the contexts */
	/* lowest start and highest end of the registered ranges (0, 0: none); written under lock, read
	 * without it by madvise, which then locks only the contexts whose memory it may touch */
	_Atomic uintptr_t span_lo, span_hi;

	struct mvm_merge_board *board; /* published statistics, NULL when the runtime dir is unusable */
	char board_path[256];

	/* named partition (see partition_files.h): canonical pages belong to the broker */
	bool part;
	char part_name[MV_PART_NAME_MAX];
	uint64_t member_id;
	uint32_t member_slot, member_gen;
	int member_fd, hints_fd;
	uint8_t *member_map;
	struct mvm_part_member_head *mhead;
	uint32_t *ledger;
	uint8_t *part_map;
	const struct mvm_part_head *phead;
	const struct mvm_part_slot *pindex;
	struct mvm_part_hint *hints;
	uint64_t store_base; /* file offset of canonical page 0 in store_fd */
	/* this batch's requests to the broker: pages found in its index, and pages to make canonical */
	struct ask {
		uint32_t want; /* canonical id, or MV_PART_WANT_STAGED */
		uint32_t range, page;
		uint32_t prange, ppage;
		bool partner;
		const uint8_t *data; /* the page's bytes, read under write protection (in buf) */
	} asks[MV_PART_STAGE];
	uint32_t nasks, nstaged;
};

/* The scanner thread relocks between batches; without this a caller could wait for the lock for as
 * long as the thread keeps finding work (mutexes are not fair). */
static inline void api_lock(struct mv_merge *m)
{
	atomic_fetch_add(&m->api_waiting, 1);
	pthread_mutex_lock(&m->lock);
	atomic_fetch_sub(&m->api_waiting, 1);
}

MV_HIDDEN void mvm_publish(struct mv_merge *m);
MV_HIDDEN ssize_t mvm_read_self(void *dst, uintptr_t src, size_t len);
/* Which pages of [a, a + n pages) something pins: pinned[i] set for page i. Costs a fork of the
 * address space, so it is for rare moments (unregistering written merged pages). */
MV_HIDDEN int mvm_pins_probe(struct mv_merge *m, uintptr_t a, size_t n, bool *pinned);
MV_HIDDEN bool mvm_page_is_zero(const uint8_t *p);
/* The engine's short-lived private anonymous mappings, in room of its own (merge_room.c): never in a
 * hole the application left. mvm_room_map answers as mmap does; a mapping moved away with mremap is told
 * with mvm_room_moved, one given back with mvm_room_unmap. */
MV_HIDDEN void *mvm_room_map(size_t len, int prot, int flags);
MV_HIDDEN void mvm_room_unmap(void *p, size_t len);
MV_HIDDEN void mvm_room_moved(void *p, size_t len);
/* Room for a mapping to be moved onto with mremap (MREMAP_FIXED replaces the reservation), or NULL;
 * after a failed mremap, give it back with mvm_room_moved. */
MV_HIDDEN void *mvm_room_take(size_t len);
MV_HIDDEN int mvm_uffd_wp(struct mv_merge *m, uintptr_t addr, size_t len, bool on);
MV_HIDDEN void mvm_uffd_wake(struct mv_merge *m, uintptr_t addr, size_t len);
MV_HIDDEN int mvm_uffd_register(struct mv_merge *m, uintptr_t addr, size_t len);
MV_HIDDEN int mvm_uffd_register_mode(struct mv_merge *m, uintptr_t addr, size_t len, uint64_t mode);
MV_HIDDEN void mvm_scratch_free(struct mv_merge *m);
MV_HIDDEN void mvm_unprotect(struct mv_merge *m, uintptr_t a, size_t len);
MV_HIDDEN int mvm_uffd_setup(struct mv_merge *m);
MV_HIDDEN int mvm_vma_at(struct mv_merge *m, uintptr_t addr, struct vma *v);
MV_HIDDEN int mvm_prot_of(const struct vma *v);
MV_HIDDEN bool mvm_vma_mergeable(const struct vma *v);
MV_HIDDEN uint64_t mvm_count_maps(void);
/* Reads the mappings' flags again if the snapshot is not of this full scan and at least VMFLAGS_MIN_NS
 * old (a small range makes a full scan of every call), if it was invalidated, or when forced; returns
 * the mapping count seen, 0 when nothing was read. */
#define VMFLAGS_MIN_NS 50000000ull
MV_HIDDEN uint64_t mvm_vmflags_refresh(struct mv_merge *m, bool force);
/* VMF_ bits of the mapping at addr; *end: where that answer stops holding. */
MV_HIDDEN unsigned mvm_vmflags_at(const struct mv_merge *m, uintptr_t addr, uintptr_t *end);
/* The VMF_ bits the merge of the page at addr carried over (recorded at the merge), or, for memory no
 * range of m records, the mapping's as /proc/self/smaps shows them now. */
MV_HIDDEN unsigned mvm_merged_vmflags(struct mv_merge *m, uintptr_t addr);
/* Gives the mapping [a, a + len) the VMF_ bits a merge or a restore must carry over. */
MV_HIDDEN void mvm_vmflags_apply(uintptr_t a, size_t len, unsigned bits);
MV_HIDDEN uint64_t mvm_read_max_map_count(void);
MV_HIDDEN int mvm_store_grow(struct mv_merge *m, uint32_t want);
/* A canonical page for data, which must stay valid until mvm_canon_write (mvm_flush calls it). */
MV_HIDDEN int mvm_canon_new(struct mv_merge *m, const uint8_t *data, uint64_t hash, uint32_t *out);
/* Writes the store pages mvm_canon_new made since the last call. */
MV_HIDDEN void mvm_canon_write(struct mv_merge *m);
MV_HIDDEN void mvm_canon_put(struct mv_merge *m, uint32_t id);
MV_HIDDEN void mvm_canon_get(struct mv_merge *m, uint32_t id);
/* Frees the lingering canonical pages nothing maps any more. */
MV_HIDDEN void mvm_canon_reap(struct mv_merge *m);
/* The broker counted n sites of partition page id in the ledger for us: they are ours to put. */
MV_HIDDEN void mvm_canon_adopt(struct mv_merge *m, uint32_t id, uint32_t n);
/* The engine's fork handlers, registered once (devksm registers its own after them). */
MV_HIDDEN void mvm_atfork_register(void);
/* The canonical page may stay mapped where the engine lost track of it: never free or reuse it. */
MV_HIDDEN void mvm_canon_keep(struct mv_merge *m, uint32_t id);
MV_HIDDEN void mvm_site_clear(struct mv_merge *m, struct range *rg, size_t p);
MV_HIDDEN bool mvm_site_intact(struct mv_merge *m, struct range *rg, size_t p, uint64_t pm, const struct vma *v);
MV_HIDDEN int mvm_pend_push(struct mv_merge *m, struct range *rg, uint32_t ri, size_t p, uint32_t target, bool held);
MV_HIDDEN void mvm_pend_drop(struct mv_merge *m, const struct pending *e);
MV_HIDDEN unsigned mvm_flush(struct mv_merge *m);
MV_HIDDEN void mvm_unstable_reset(struct mv_merge *m);
MV_HIDDEN void mvm_range_unstable_drop(struct mv_merge *m, struct range *rg, size_t p);
MV_HIDDEN void mvm_set_volatile(struct mv_merge *m, struct range *rg, size_t p, bool on);
MV_HIDDEN uint64_t mvm_total_pages(struct mv_merge *m);
MV_HIDDEN int mvm_scan_locked(struct mv_merge *m, unsigned pages_to_scan, unsigned max_merge, unsigned flags);

/* What merge_advise.c needs of merge.c. */
/* The live contexts of the process (first of the list, linked by next_ctx), with the list's lock held:
 * none is freed until mvm_contexts_unlock. Before any context's lock. */
MV_HIDDEN struct mv_merge *mvm_contexts_lock(void);
MV_HIDDEN void mvm_contexts_unlock(void);
/* Has any context of this process (or one it inherited) ever had a store? Without a lock. */
MV_HIDDEN bool mvm_any_store(void);
/* Is dev/ino a store a context of this process has or had (or inherited)? */
MV_HIDDEN bool mvm_store_known(uint64_t dev, uint64_t ino);
/* Puts private anonymous memory with the same bytes and protection prot over the private mapping of a
 * store at [a, a + len), write-protected meanwhile through m's userfaultfd when m is not NULL. The new
 * memory is not registered with the userfaultfd. False if it could not (the mapping is left). */
MV_HIDDEN bool mvm_restore_vma(struct mv_merge *m, uintptr_t a, size_t len, int prot, unsigned vmflags);
/* The first file-backed mapping that ends after addr and starts before end, through maps_fd (an open
 * /proc/self/maps of this process): 1 and *v (kind VMA_OTHER), 0 none, or -errno. */
MV_HIDDEN int mvm_file_vma_in(int maps_fd, uintptr_t addr, uintptr_t end, struct vma *v);
