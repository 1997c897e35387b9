/* SPDX-License-Identifier: MIT */
/* memvisor same-page merging: identical pages of a process's private anonymous memory are merged
 * copy-on-write, the way KSM does it, but synchronously on request or by a scanner thread of the
 * process's own, with no privileges. Pages are merged only after a byte-for-byte comparison made while
 * they are write-protected (userfaultfd), so a write racing a merge is never lost. A write to a merged
 * page gives the writer a private copy. Zero pages go back to the kernel's zero page.
 *
 * A context is a partition: pages merge only with pages registered in the same context. Thread-safe.
 * Functions return 0 (or a count) or a negative errno.
 */
#ifndef MEMVISOR_MERGE_H
#define MEMVISOR_MERGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mv_merge mv_merge;

/* partition NULL: this context is a partition of its own. A name (1-63 printable characters, no '/'):
 * join the broker's partition of that name, and merge with every process of the same user in it
 * (never across users); needs the broker (-ENOTCONN without one, unless it can be started). flags must
 * be 0. -ENOSYS/-EPERM when the kernel gives the process no userfaultfd write-protection. */
int mv_merge_new(const char *partition, unsigned flags, mv_merge **ret);
mv_merge *mv_merge_ref(mv_merge *m);
/* With the last reference: stops the scanner, unregisters every range (restoring private pages). */
mv_merge *mv_merge_unref(mv_merge *m);

/* addr and len page-aligned, len > 0, covered by private anonymous read-write mappings of the caller.
 * -EINVAL misaligned or empty, -ENOMEM a hole in the range, -EACCES shared, file-backed or not read-write
 * memory, -EEXIST overlaps a registered range, -EBUSY already under another userfaultfd. */
int mv_merge_register(mv_merge *m, void *addr, size_t len);
/* Exactly a registered range (-ENOENT otherwise). Merged pages become private anonymous pages again. */
int mv_merge_unregister(mv_merge *m, void *addr, size_t len);

/* madvise(2) on memory that may hold merged pages; 0 or -errno. A merged page is a private mapping of
 * the context's store, a file mapping where the application had anonymous memory, and the kernel treats
 * it as one: MADV_DONTNEED would read the merged bytes again instead of zeros, MADV_FREE and
 * MADV_WIPEONFORK would fail with EINVAL. This first turns the merged pages in the range, of every
 * context of the process, into private anonymous memory with the same protection: fresh zero pages for
 * MADV_DONTNEED, MADV_DONTNEED_LOCKED and MADV_FREE (mlocked memory is left to the kernel's refusal, as
 * for anonymous memory), a copy of their bytes for the advice that sets a mapping's flags or treats file
 * and anonymous memory differently (REMOVE, [DONT|DO]FORK, [UN]MERGEABLE, [NO]HUGEPAGE, [DONT|DO]DUMP,
 * WIPEONFORK, KEEPONFORK, HWPOISON, SOFT_OFFLINE, COLLAPSE, GUARD_*); then it applies the advice, so the
 * result is the kernel's for anonymous memory. The access hints (NORMAL, RANDOM, SEQUENTIAL, WILLNEED,
 * COLD, PAGEOUT, POPULATE_*) and values unknown here leave merged pages merged. The memory stays
 * registered.
 * libmemvisor-preload.so makes every madvise call of the program do this; without it, call this one. */
int mv_merge_advise(void *addr, size_t len, int advice);
/* mremap(2) for memory that may hold merged pages: growing reads zeros and moving works as on the
 * anonymous memory it was (merging split one mapping into several; they become one again). *out gets
 * the new address. Programs under libmemvisor-preload.so get this from their own mremap. */
int mv_merge_remap(void *old_addr, size_t old_len, size_t new_len, int flags, void *new_addr, void **out);
/* munmap(2) for registered memory while merges may run: a merge replaces a page by mapping over it, and
 * this keeps that from landing on memory mapped at the address after the unmap. With a plain munmap, a
 * thread that unmaps registered memory and maps new memory there at the moment a merge maps its page
 * loses the new memory. mv_merge_remap does the same for mremap; to map over registered memory with
 * MAP_FIXED, unmap it with this first. Programs under libmemvisor-preload.so get it from their own
 * munmap, mmap and mremap. */
int mv_merge_unmap(void *addr, size_t len);

/* Data is stable: merge on the first look instead of waiting for a page to be unchanged for two scans. */
#define MV_MERGE_STABLE 1u

/* Scans up to pages_to_scan pages (0: one full pass) from where the last scan stopped, stopping early
 * once max_pages_to_merge pages (0: no limit) were merged (one more when the last page completes a
 * pair). Returns the number of pages merged now (zero pages included). */
int mv_merge_scan(mv_merge *m, unsigned pages_to_scan, unsigned max_pages_to_merge, unsigned flags);

struct mv_merge_knobs {
	uint32_t sleep_usecs;        /* scanner thread: pause between batches (seed: microseconds) */
	uint32_t pages_to_scan;      /* scanner thread: pages per batch */
	uint32_t max_pages_to_merge; /* scanner thread: merges per batch, 0 = no limit */
	uint32_t run;                /* 1: the scanner thread runs, 0: it is stopped */
	uint32_t scan_flags;         /* MV_MERGE_STABLE for the scanner thread's scans */
	uint32_t max_page_sharing;   /* sharers per canonical page (kernel default 256), >= 2 */
	uint32_t map_reserve;        /* mappings (vm.max_map_count) always left to the application */
};
/* Defaults: sleep 20000 us, 100 pages, no merge limit, stopped, 256 sharers, reserve max_map_count/4. */
int mv_merge_set_knobs(mv_merge *m, const struct mv_merge_knobs *knobs);
int mv_merge_get_knobs(mv_merge *m, struct mv_merge_knobs *knobs);

/* Mirrors /sys/kernel/mm/ksm; exact at the time of the call (COW-broken merges are found through
 * /proc/self/pagemap before counting). */
struct mv_merge_stats {
	uint64_t pages_shared;   /* canonical pages in use */
	uint64_t pages_sharing;  /* further sites using them: the pages saved */
	uint64_t pages_unshared; /* unique pages waiting for a twin in this full scan */
	uint64_t pages_volatile; /* pages that changed since the previous look */
	uint64_t pages_scanned;
	uint64_t full_scans;
	uint64_t zero_pages;           /* pages given back to the kernel's zero page, still unwritten */
	int64_t general_profit;        /* bytes saved minus memvisor's own metadata */
	uint64_t pages_skipped_budget; /* merges not made to stay inside the mapping budget */
	uint64_t map_budget_reached;   /* 1 while merging is held back by the mapping budget */
	uint64_t map_count;            /* the process's mappings at the last count */
	uint64_t map_limit;            /* vm.max_map_count */
	uint64_t ranges;               /* registered ranges */
	uint64_t pages_registered;
	uint64_t kernel_faults_wait;   /* 1: kernel-mode writes wait out a merge like user writes */
	uint64_t partition_pages;      /* canonical pages the broker keeps for the whole partition (named ones) */
	uint64_t pages_skipped_pinned; /* merges not made because the kernel or a device holds the page */
	uint64_t pins_checked;         /* 1: the kernel lets the context see pins (UFFDIO_MOVE, Linux 6.8) */
};
int mv_merge_get_stats(mv_merge *m, struct mv_merge_stats *stats, size_t size);
/* The same for one registered range (addr = its start): shared counts the distinct canonical pages
 * its sites use, sharing the rest of its merged sites; full_scans and map fields are the context's. */
int mv_merge_range_stats(mv_merge *m, void *addr, struct mv_merge_stats *stats, size_t size);

#ifdef __cplusplus
}
#endif

#endif
