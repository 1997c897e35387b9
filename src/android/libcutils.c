/* SPDX-License-Identifier: MIT */
/* libcutils' ashmem API (cutils/ashmem.h) on memvisor regions, with real pinning and purging. Like
 * libcutils, these return a value or -1 with errno set. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>

#include "ashmem.h"
#include "cutils/ashmem.h"
#include "uapi.h"

static int result(long r);

static int result_fd(int fd, long r)
{
	if (r == MVA_PASS) /* not an ashmem fd: what the ioctl would have said */
		r = fcntl(fd, F_GETFD) < 0 ? -EBADF : -ENOTTY;
	return result(r);
}

static int result(long r)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return (int)r;
}

MV_EXPORT int ashmem_valid(int fd)
{
	if (fd < 0)
		return 0;
	/* Validates (and adopts regions from elsewhere) the way an ioctl would. */
	return mva_ioctl(fd, ASHMEM_GET_SIZE, 0) >= 0;
}

MV_EXPORT int ashmem_create_region(const char *name, size_t size)
{
	return result(mva_create_region(name, size));
}

MV_EXPORT int ashmem_set_prot_region(int fd, int prot)
{
	return result_fd(fd, mva_ioctl(fd, ASHMEM_SET_PROT_MASK, (unsigned long)prot));
}

MV_EXPORT int ashmem_pin_region(int fd, size_t offset, size_t len)
{
	/* libcutils narrows to the driver's 32-bit struct, and so do we. */
	struct ashmem_pin pin = { (uint32_t)offset, (uint32_t)len };
	return result_fd(fd, mva_ioctl(fd, ASHMEM_PIN, (unsigned long)&pin));
}

MV_EXPORT int ashmem_unpin_region(int fd, size_t offset, size_t len)
{
	struct ashmem_pin pin = { (uint32_t)offset, (uint32_t)len };
	return result_fd(fd, mva_ioctl(fd, ASHMEM_UNPIN, (unsigned long)&pin));
}

MV_EXPORT int ashmem_get_size_region(int fd)
{
	return result_fd(fd, mva_ioctl(fd, ASHMEM_GET_SIZE, 0));
}
