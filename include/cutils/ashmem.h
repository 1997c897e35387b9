/* SPDX-License-Identifier: MIT */
/* Android's libcutils ashmem API, provided by libmemvisor with real pinning and purging.
 * Source-compatible with the header of Debian's android-libcutils-dev. Functions return what libcutils
 * returns: a value, or -1 with errno set. */
#ifndef MEMVISOR_CUTILS_ASHMEM_H
#define MEMVISOR_CUTILS_ASHMEM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

int ashmem_valid(int fd);
int ashmem_create_region(const char *name, size_t size);
int ashmem_set_prot_region(int fd, int prot);
int ashmem_pin_region(int fd, size_t offset, size_t len);
int ashmem_unpin_region(int fd, size_t offset, size_t len);
int ashmem_get_size_region(int fd);

#ifdef __cplusplus
}
#endif

#endif
