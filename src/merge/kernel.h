/* SPDX-License-Identifier: MIT */
/* Kernel interfaces newer than Debian 12's linux-libc-dev (6.1); the values are the kernel's uapi. */
#ifndef MV_MERGE_KERNEL_H
#define MV_MERGE_KERNEL_H

#include <linux/userfaultfd.h>
#include <stdint.h>
#include <sys/ioctl.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

/* UFFDIO_MOVE (6.8): moves anonymous pages between mappings of one process, and refuses (EBUSY) to
 * move a page something has pinned. */
struct mvm_uffdio_move {
	uint64_t dst;
	uint64_t src;
	uint64_t len;
	uint64_t mode;
	int64_t move;
};
#define MV_UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct mvm_uffdio_move)
#define MV_UFFDIO_MOVE_MODE_DONTWAKE (1ull << 0)
#define MV_UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES (1ull << 1)

/* /proc/self/maps PROCMAP_QUERY (6.11): the VMA covering an address without parsing text. */
struct mvm_procmap_query {
	uint64_t size;
	uint64_t query_flags;
	uint64_t query_addr;
	uint64_t vma_start;
	uint64_t vma_end;
	uint64_t vma_flags;
	uint64_t vma_page_size;
	uint64_t vma_offset;
	uint64_t inode;
	uint32_t dev_major;
	uint32_t dev_minor;
	uint32_t vma_name_size;
	uint32_t build_id_size;
	uint64_t vma_name_addr;
	uint64_t build_id_addr;
};
#define MV_PROCMAP_QUERY _IOWR('f', 17, struct mvm_procmap_query)
#define MV_PROCMAP_QUERY_COVERING_OR_NEXT_VMA 0x10
#define MV_PROCMAP_QUERY_FILE_BACKED_VMA 0x20
#define MV_VMA_READ 0x01
#define MV_VMA_WRITE 0x02
#define MV_VMA_EXEC 0x04
#define MV_VMA_SHARED 0x08

/* madvise values newer than some libcs' headers */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif
#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE 101
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_GUARD_REMOVE
#define MADV_GUARD_REMOVE 103
#endif

/* /proc/self/pagemap bits */
#define MV_PM_PRESENT (1ull << 63)
#define MV_PM_SWAPPED (1ull << 62)
#define MV_PM_FILE (1ull << 61)
#define MV_PM_EXCLUSIVE (1ull << 56)

#endif
