/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attach.h"
#include "memvisor/memvisor.h"

#define PROT_ALL (PROT_READ | PROT_WRITE | PROT_EXEC)

static int map_ctl(struct mv_region *r, uint64_t npages, int ctl_fd)
{
	size_t len = mvr_ctl_length(npages);
	void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, ctl_fd, 0);

	if (m == MAP_FAILED)
		return -errno;
	r->ctl_map = m;
	r->ctl_len = len;
	mvr_ctl_view_init(&r->view, m, npages, r->fd);
	return 0;
}

static void region_free(struct mv_region *r)
{
	if (r->ctl_map)
		munmap(r->ctl_map, r->ctl_len);
	if (r->ctl_fd >= 0)
		close(r->ctl_fd);
	if (r->fd >= 0)
		close(r->fd);
	free(r);
}

static struct mv_region *region_alloc(void)
{
	struct mv_region *r = calloc(1, sizeof(*r));

	if (r) {
		atomic_init(&r->refs, 1);
		r->fd = r->ctl_fd = -1;
	}
	return r;
}

/* A sealed memfd of exactly size bytes, reopened: memfd_create's file sends no inotify events; a reopened
 * one does, and the broker relies on the data file's close events to learn when the last holder is
 * gone. Every holder shares this file. */
static int sized_memfd(const char *name, uint64_t size, int *fd)
{
	char path[64];
	int fd0 = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), e;

	if (fd0 < 0)
		return -errno;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd0);
	*fd = open(path, O_RDWR | O_CLOEXEC);
	e = -errno;
	close(fd0);
	if (*fd < 0)
		return e;
	if (ftruncate(*fd, (off_t)size) < 0 || fcntl(*fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
		return -errno;
	return 0;
}

MV_EXPORT int mv_region_new(const char *name, size_t size, mv_region **ret)
{
	return mvr_region_create(name, NULL, size, ret);
}

int mvr_region_create(const char *name, const char *memfd_name_prefix, size_t size, mv_region **ret)
{
	struct mv_region *r;
	char memfd_name[250];
	struct stat st;
	uint64_t npages;
	int e;

	if (!ret)
		return -EINVAL;
	*ret = NULL;
	if (mvr_npages_of_size(size, &npages) < 0)
		return -EINVAL;
	r = region_alloc();
	if (!r)
		return -ENOMEM;
	r->size = size;

	snprintf(memfd_name, sizeof(memfd_name), "%s%s", memfd_name_prefix ? memfd_name_prefix : "",
		 name ? name : "dev/ashmem");
	e = sized_memfd(memfd_name, size, &r->fd);
	if (e < 0)
		goto fail;
	e = sized_memfd("memvisor-ctl", mvr_ctl_length(npages), &r->ctl_fd);
	if (e < 0)
		goto fail;
	if (fstat(r->fd, &st) < 0) {
		e = -errno;
		goto fail;
	}
	r->dev = (uint64_t)st.st_dev;
	r->ino = (uint64_t)st.st_ino;
	e = map_ctl(r, npages, r->ctl_fd);
	if (e < 0)
		goto fail;
	e = mvr_ctl_format(r->ctl_map, size, name, r->dev, r->ino);
	if (e < 0)
		goto fail;
	memcpy(r->name, r->view.hdr->name, sizeof(r->name));
	mvr_attach_add(r);
	*ret = r;
	return 0;
fail:
	region_free(r);
	return e;
}

/* What a data file must be before anyone is asked for its control file. */
static int probe_fd(int fd, struct stat *st, uint64_t *npages)
{
	int seals;

	if (fd < 0 || fstat(fd, st) < 0)
		return -EBADF;
	if (!S_ISREG(st->st_mode) || mvr_npages_of_size((uint64_t)st->st_size, npages) < 0)
		return -EINVAL;
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
		return -EINVAL;
	return 0;
}

/* The control file of the data file fd: one this process has already (a region it holds), else the
 * broker's. -EINVAL if the broker does not know it as a region, -ENOTCONN without a broker. */
static int find_ctl(int fd, const struct stat *st, uint64_t npages, struct mvr_ctl_hdr *hdr)
{
	int ctl = mvr_attach_find_ctl((uint64_t)st->st_dev, (uint64_t)st->st_ino);
	uint64_t n;

	/* Ours or the broker's, it is checked like anything shared. Ours may be stale: the program may
	 * have closed our descriptor and reused its number (closefrom, say). */
	if (ctl >= 0 && (mvr_ctl_check_files(fd, ctl, &n, hdr) < 0 || n != npages)) {
		close(ctl);
		ctl = -ENOENT;
	}
	if (ctl >= 0)
		return ctl;
	ctl = mvr_attach_fetch_ctl(fd);
	if (ctl < 0)
		return ctl;
	if (mvr_ctl_check_files(fd, ctl, &n, hdr) < 0 || n != npages) {
		close(ctl);
		return -EINVAL;
	}
	return ctl;
}

MV_EXPORT int mv_region_fd_valid(int fd)
{
	struct mvr_ctl_hdr hdr;
	struct stat st;
	uint64_t npages;
	int r = probe_fd(fd, &st, &npages), ctl;

	if (r < 0)
		return r == -EBADF ? r : 0;
	ctl = find_ctl(fd, &st, npages, &hdr);
	if (ctl == -ENOTCONN)
		return 1; /* nobody to ask: a sealed file of a region's shape is taken for one */
	if (ctl < 0)
		return 0;
	close(ctl);
	return 1;
}

MV_EXPORT int mv_region_from_fd(int fd, mv_region **ret)
{
	return mvr_region_from_files(fd, -1, ret);
}

int mvr_region_from_files(int fd, int given_ctl, mv_region **ret)
{
	struct mvr_ctl_hdr hdr;
	struct mv_region *r;
	struct stat st;
	uint64_t npages, n;
	int e, ctl;

	if (!ret) {
		if (given_ctl >= 0)
			close(given_ctl);
		return -EINVAL;
	}
	*ret = NULL;
	e = probe_fd(fd, &st, &npages);
	if (e < 0) {
		if (given_ctl >= 0)
			close(given_ctl);
		return e;
	}
	if (given_ctl >= 0) {
		ctl = given_ctl;
		if (mvr_ctl_check_files(fd, ctl, &n, &hdr) < 0 || n != npages) {
			close(ctl);
			return -EINVAL;
		}
	} else {
		ctl = find_ctl(fd, &st, npages, &hdr);
	}
	if (ctl < 0 && ctl != -ENOTCONN)
		return ctl == -EBADF ? ctl : -EINVAL;
	r = region_alloc();
	if (!r) {
		if (ctl >= 0)
			close(ctl);
		return -ENOMEM;
	}
	r->dev = (uint64_t)st.st_dev;
	r->ino = (uint64_t)st.st_ino;
	r->size = (uint64_t)st.st_size;
	r->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (r->fd < 0) {
		e = -errno;
		if (ctl >= 0)
			close(ctl);
		goto fail;
	}
	if (ctl == -ENOTCONN) {
		/* No broker: nobody can purge the region either, so a control block of our own loses
		 * nothing that can be observed, except other processes' pins. It is never handed over. */
		e = sized_memfd("memvisor-ctl", mvr_ctl_length(npages), &ctl);
		if (e < 0)
			goto fail;
		r->ctl_private = true;
		e = map_ctl(r, npages, ctl);
		close(ctl);
		if (e == 0)
			e = mvr_ctl_format(r->ctl_map, r->size, "dev/ashmem", r->dev, r->ino);
		if (e < 0)
			goto fail;
		/* A write-sealed data file would have been made so through the mask. */
		int seals = fcntl(r->fd, F_GET_SEALS);
		if (seals >= 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)))
			atomic_store(&r->view.hdr->prot, PROT_READ | PROT_EXEC);
	} else {
		r->ctl_fd = ctl;
		e = map_ctl(r, npages, ctl);
		if (e < 0)
			goto fail;
		/* Re-check through the mapping: the header may have changed since pread. */
		if (mvr_ctl_validate(r->view.hdr, npages) < 0 || r->view.hdr->size != r->size) {
			e = -EINVAL;
			goto fail;
		}
	}
	memcpy(r->name, r->view.hdr->name, sizeof(r->name));
	r->name[sizeof(r->name) - 1] = '\0';
	if (!r->ctl_private)
		mvr_attach_add(r);
	*ret = r;
	return 0;
fail:
	region_free(r);
	return e;
}

MV_EXPORT mv_region *mv_region_ref(mv_region *r)
{
	if (r)
		atomic_fetch_add(&r->refs, 1);
	return r;
}

MV_EXPORT mv_region *mv_region_unref(mv_region *r)
{
	if (r && atomic_fetch_sub(&r->refs, 1) == 1) {
		if (!r->ctl_private)
			mvr_attach_remove(r);
		region_free(r);
	}
	return NULL;
}

MV_EXPORT int mv_region_fd(const mv_region *r)
{
	return r ? r->fd : -EINVAL;
}

MV_EXPORT size_t mv_region_size(const mv_region *r)
{
	return r ? r->size : 0;
}

MV_EXPORT const char *mv_region_name(const mv_region *r)
{
	return r ? r->name : NULL;
}

MV_EXPORT int mv_region_get_prot(const mv_region *r)
{
	if (!r)
		return -EINVAL;
	return (int)(atomic_load(&r->view.hdr->prot) & PROT_ALL);
}

MV_EXPORT int mv_region_set_prot(mv_region *r, int prot)
{
	uint32_t cur;

	if (!r || (prot & ~PROT_ALL))
		return -EINVAL;
	cur = atomic_load(&r->view.hdr->prot);
	do {
		if (((int)cur & prot) != prot)
			return -EINVAL; /* only removing bits is allowed */
		if ((prot & PROT_READ) && (personality(0xffffffff) & READ_IMPLIES_EXEC))
			prot |= PROT_EXEC & (int)cur;
		if ((cur & PROT_WRITE) && !(prot & PROT_WRITE)) {
			/* Let the kernel enforce it: no new writable shared mapping, from anyone. */
			if (fcntl(r->fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) < 0)
				return -errno;
			atomic_fetch_or(&r->view.hdr->flags, MV_CTL_F_UNPURGEABLE);
		}
	} while (!atomic_compare_exchange_weak(&r->view.hdr->prot, &cur, (uint32_t)prot));
	return 0;
}

MV_EXPORT int mv_region_map(mv_region *r, int prot, void **addr)
{
	void *m;

	if (!r || !addr || (prot & ~PROT_ALL))
		return -EINVAL;
	if (prot & ~mv_region_get_prot(r))
		return -EPERM;
	m = mmap(NULL, mvu_round_up(r->size, MV_PAGE_SIZE), prot, MAP_SHARED, r->fd, 0);
	if (m == MAP_FAILED)
		return -errno;
	*addr = m;
	return 0;
}

MV_EXPORT int mv_region_unmap(mv_region *r, void *addr)
{
	if (!r || !addr || ((uintptr_t)addr & (MV_PAGE_SIZE - 1)))
		return -EINVAL;
	if (munmap(addr, mvu_round_up(r->size, MV_PAGE_SIZE)) < 0)
		return -errno;
	return 0;
}

int mvr_pin_pages(struct mv_region *r, uint64_t pg0, uint64_t pg1, enum mvr_pin_op op)
{
	int64_t delta = 0;
	int ret;

	switch (op) {
	case MVR_PIN: ret = mvr_ctl_pin(&r->view, pg0, pg1, &delta, mvr_restore, r); break;
	case MVR_UNPIN: ret = mvr_ctl_unpin(&r->view, pg0, pg1, &delta); break;
	default: return mvr_ctl_status(&r->view, pg0, pg1);
	}
	/* The broker's budget hint, and handing it the region once something is unpinned. */
	if (delta)
		mvr_unpinned_changed(r, delta);
	return ret;
}

static int pin_op(mv_region *r, size_t off, size_t len, enum mvr_pin_op op)
{
	uint64_t pg0, pg1;
	int ret;

	if (!r)
		return -EINVAL;
	ret = mvr_ctl_range(r->size, off, len, &pg0, &pg1);
	return ret < 0 ? ret : mvr_pin_pages(r, pg0, pg1, op);
}

MV_EXPORT int mv_region_pin(mv_region *r, size_t offset, size_t len)
{
	return pin_op(r, offset, len, MVR_PIN);
}

MV_EXPORT int mv_region_unpin(mv_region *r, size_t offset, size_t len)
{
	return pin_op(r, offset, len, MVR_UNPIN);
}

MV_EXPORT int mv_region_pin_status(mv_region *r, size_t offset, size_t len)
{
	return pin_op(r, offset, len, MVR_PIN_STATUS);
}

MV_EXPORT int mv_region_set_compression(mv_region *r, int enabled)
{
	if (!r)
		return -EINVAL;
	if (enabled)
		atomic_fetch_and(&r->view.hdr->flags, ~MV_CTL_F_NO_COMPRESS);
	else
		atomic_fetch_or(&r->view.hdr->flags, MV_CTL_F_NO_COMPRESS);
	return 0;
}
