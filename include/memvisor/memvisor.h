/* SPDX-License-Identifier: MIT */
/* memvisor: purgeable shared memory and friends for ordinary processes.
 *
 * Conventions: functions return 0 (or a value) on success and a negative errno on failure. Objects are
 * opaque and reference counted (_ref/_unref). Nothing here logs or aborts on bad input.
 */
#ifndef MEMVISOR_MEMVISOR_H
#define MEMVISOR_MEMVISOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MV_VERSION_MAJOR 0
#define MV_VERSION_MINOR 1

/* Return values of mv_region_pin(), as ashmem's ASHMEM_NOT_PURGED / ASHMEM_WAS_PURGED. */
#define MV_NOT_PURGED 0
#define MV_WAS_PURGED 1
/* Return values of mv_region_pin_status(), as ashmem's ASHMEM_IS_UNPINNED / ASHMEM_IS_PINNED. */
#define MV_IS_UNPINNED 0
#define MV_IS_PINNED 1

/* Longest region name, excluding the terminating NUL; longer names are truncated. */
#define MV_REGION_NAME_MAX 255

typedef struct mv_region mv_region;

/* Creates a region of size bytes (rounded up to pages for mapping; mv_region_size() reports size as
 * given). All pages start pinned and zero. name may be NULL (then "dev/ashmem"). */
int mv_region_new(const char *name, size_t size, mv_region **ret);

/* Adopts a region from an fd received from another process or inherited. The fd is duplicated;
 * the caller keeps its own. -EINVAL if fd is not a memvisor region, -EBADF if it is not open. */
int mv_region_from_fd(int fd, mv_region **ret);

/* 1 if fd refers to a memvisor region, 0 if not, -EBADF if it is not an open fd. */
int mv_region_fd_valid(int fd);

mv_region *mv_region_ref(mv_region *r);
mv_region *mv_region_unref(mv_region *r); /* always returns NULL */

/* The handle: pass it to other processes (SCM_RIGHTS, fork). Owned by r; dup it to keep it. */
int mv_region_fd(const mv_region *r);
size_t mv_region_size(const mv_region *r);
const char *mv_region_name(const mv_region *r);

/* Protection mask: PROT_READ|PROT_WRITE|PROT_EXEC bits that mappings may use. It can only lose
 * bits (-EINVAL otherwise). Dropping PROT_WRITE seals the memfd so that no process can create a
 * writable shared mapping any more (the kernel enforces it); such a region can no longer be purged. */
int mv_region_get_prot(const mv_region *r);
int mv_region_set_prot(mv_region *r, int prot);

/* Maps the whole region MAP_SHARED; prot must be within the mask (-EPERM otherwise). */
int mv_region_map(mv_region *r, int prot, void **addr);
int mv_region_unmap(mv_region *r, void *addr);

/* Page ranges follow ashmem: offset and len page aligned, len 0 means "to the end", the range must lie
 * within the page-rounded size (-EINVAL otherwise). The pin state belongs to the region and is shared
 * by every process that holds it. pin: MV_NOT_PURGED or MV_WAS_PURGED (some page of an overlapped
 * unpinned range was purged; purged pages read back as zeros). status: MV_IS_UNPINNED if any page in
 * the range is unpinned, else MV_IS_PINNED. */
int mv_region_pin(mv_region *r, size_t offset, size_t len);
int mv_region_unpin(mv_region *r, size_t offset, size_t len);
int mv_region_pin_status(mv_region *r, size_t offset, size_t len);

/* When it reclaims for memory pressure or its budget, the broker keeps unpinned pages of a region
 * compressed before it drops them, unless the region opts out (enabled = 0: unpinned pages are dropped at
 * once). Pinning compressed pages brings them back intact and reports MV_NOT_PURGED. mv_purge() drops. */
int mv_region_set_compression(mv_region *r, int enabled);

/* Broker requests. */
#define MV_PURGE_ALL UINT64_MAX
/* The page every offset, length and page count here is in, whatever the machine's own page size:
 * regions, pins and the broker's counters all use it. */
#define MV_PAGE_SIZE 4096u
/* Asks the broker to purge up to bytes of unpinned memory, least recently unpinned first
 * (MV_PURGE_ALL: everything, the compressed copies included). Purged pages are dropped, never kept in
 * the compressed tier: their next pin answers MV_WAS_PURGED. *purged (may be NULL) receives the bytes
 * purged. */
int mv_purge(uint64_t bytes, uint64_t *purged);

/* Makes the broker enforce its unpinned budget now and returns when it is done. */
int mv_sync(void);

/* 1 when connected to a broker (starting one if allowed), 0 when running without one. */
int mv_broker_connected(void);

#ifdef __cplusplus
}
#endif
#endif
