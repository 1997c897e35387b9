/* SPDX-License-Identifier: MIT */
/* libmemvisor-preload.so: working /dev/ashmem and /dev/ksm for unmodified glibc programs (LD_PRELOAD).
 *
 * One table lists the devices the engine emulates (common/vdev.h). Opening one of their paths yields
 * an fd with the device's semantics; its ioctls, mmap, read, write, lseek and stat are answered by the
 * device, dups and closes are tracked. Every other path, fd and ioctl goes straight to libc after one
 * look at the table. madvise and mremap go to the engine, which makes merged pages in the range
 * anonymous memory first where the advice needs it; munmap, mremap and mmap over existing memory pass
 * the engine's gate, so that no merge maps a page over what the program maps there next.
 */
#define _GNU_SOURCE
/* This file defines libc's own read, open and friends: fortify's inline wrappers of them (Debian's
 * hardening flags turn them on) must not wrap the definitions. */
#undef _FORTIFY_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/stat.h>
#include <stdarg.h>
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "android/ashmem.h"
#include "common/vdev.h"
#include "merge/merge_advise.h"
#include "merge/merge_gate.h"

/* The interposers below are laid out by hand: several are one line whose body is a macro, which
 * clang-format cannot read. */
/* clang-format off */

/* The next definition of a libc function, looked up once. */
#define REAL(name)                                                                                                     \
	({                                                                                                             \
		static __typeof__(name) *_fn;                                                                          \
		if (!_fn)                                                                                              \
			_fn = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);                                             \
		_fn;                                                                                                   \
	})

/* The emulated devices. */
static const struct mvd_vdev *const devices[] = { &mva_vdev, &mvk_vdev };
#define FOR_EACH_DEVICE(d) for (const struct mvd_vdev *const *d = devices; d < devices + MV_ARRAY_SIZE(devices); d++)

static const struct mvd_vdev *device_of_path(const char *path)
{
	if (!path)
		return NULL;
	FOR_EACH_DEVICE(d)
	if ((*d)->path_is(path))
		return *d;
	return NULL;
}

static const struct mvd_vdev *device_of_fd(int fd)
{
	if (fd < 0)
		return NULL;
	FOR_EACH_DEVICE(d)
	if ((*d)->tracked(fd))
		return *d;
	return NULL;
}

__attribute__((constructor)) static void preload_init(void)
{
	mva_set_table_exact();
}

static int fail(long e)
{
	errno = (int)-e;
	return -1;
}

static int device_open(const struct mvd_vdev *d, int flags)
{
	int r = d->open(flags);
	return r < 0 ? fail(r) : r;
}

static bool needs_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

#define OPEN_BODY(realcall)                                                                                            \
	{                                                                                                              \
		mode_t mode = 0;                                                                                       \
		if (needs_mode(flags)) {                                                                               \
			va_list ap;                                                                                    \
			va_start(ap, flags);                                                                           \
			mode = (mode_t)va_arg(ap, int);                                                                \
			va_end(ap);                                                                                    \
		}                                                                                                      \
		const struct mvd_vdev *d = device_of_path(path);                                                       \
		if (d)                                                                                                 \
			return device_open(d, flags);                                                                  \
		return realcall;                                                                                       \
	}

MV_EXPORT int open(const char *path, int flags, ...) OPEN_BODY(REAL(open)(path, flags, mode))
MV_EXPORT int open64(const char *path, int flags, ...) OPEN_BODY(REAL(open64)(path, flags, mode))
MV_EXPORT int openat(int dirfd, const char *path, int flags, ...) OPEN_BODY(REAL(openat)(dirfd, path, flags, mode))
MV_EXPORT int openat64(int dirfd, const char *path, int flags, ...) OPEN_BODY(REAL(openat64)(dirfd, path, flags, mode))

/* The _FORTIFY_SOURCE entry points. */
MV_EXPORT int __open_2(const char *path, int flags)
{
	const struct mvd_vdev *d = device_of_path(path);
	return d ? device_open(d, flags) : REAL(__open_2)(path, flags);
}

MV_EXPORT int __open64_2(const char *path, int flags)
{
	const struct mvd_vdev *d = device_of_path(path);
	return d ? device_open(d, flags) : REAL(__open64_2)(path, flags);
}

MV_EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	const struct mvd_vdev *d = device_of_path(path);
	return d ? device_open(d, flags) : REAL(__openat_2)(dirfd, path, flags);
}

MV_EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	const struct mvd_vdev *d = device_of_path(path);
	return d ? device_open(d, flags) : REAL(__openat64_2)(dirfd, path, flags);
}

MV_EXPORT int access(const char *path, int mode)
{
	return device_of_path(path) ? ((mode & X_OK) ? fail(-EACCES) : 0) : REAL(access)(path, mode);
}

MV_EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
	return device_of_path(path) ? ((mode & X_OK) ? fail(-EACCES) : 0) : REAL(faccessat)(dirfd, path, mode, flags);
}

MV_EXPORT int euidaccess(const char *path, int mode)
{
	return device_of_path(path) ? ((mode & X_OK) ? fail(-EACCES) : 0) : REAL(euidaccess)(path, mode);
}

/* stat and friends: x86_64's struct stat and struct stat64 are the same. */
#define STAT_AS(d, realcall)                                                                                           \
	{                                                                                                              \
		const struct mvd_vdev *_d = (d);                                                                        \
		if (_d) {                                                                                              \
			_d->dev_stat((struct stat *)sb);                                                               \
			return 0;                                                                                      \
		}                                                                                                      \
		return realcall;                                                                                       \
	}
#define PATH_STAT(realcall) STAT_AS(device_of_path(path), realcall)
#define FD_STAT(realcall) STAT_AS(device_of_fd(fd), realcall)

MV_EXPORT int stat(const char *path, struct stat *sb) PATH_STAT(REAL(stat)(path, sb))
MV_EXPORT int stat64(const char *path, struct stat64 *sb) PATH_STAT(REAL(stat64)(path, sb))
MV_EXPORT int lstat(const char *path, struct stat *sb) PATH_STAT(REAL(lstat)(path, sb))
MV_EXPORT int lstat64(const char *path, struct stat64 *sb) PATH_STAT(REAL(lstat64)(path, sb))
MV_EXPORT int fstat(int fd, struct stat *sb) FD_STAT(REAL(fstat)(fd, sb))
MV_EXPORT int fstat64(int fd, struct stat64 *sb) FD_STAT(REAL(fstat64)(fd, sb))

MV_EXPORT int fstatat(int dirfd, const char *path, struct stat *sb, int flags)
{
	if ((flags & AT_EMPTY_PATH) && !*path) {
		int fd = dirfd;
		FD_STAT(REAL(fstatat)(dirfd, path, sb, flags))
	}
	PATH_STAT(REAL(fstatat)(dirfd, path, sb, flags))
}

MV_EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *sb, int flags)
{
	if ((flags & AT_EMPTY_PATH) && !*path) {
		int fd = dirfd;
		FD_STAT(REAL(fstatat64)(dirfd, path, sb, flags))
	}
	PATH_STAT(REAL(fstatat64)(dirfd, path, sb, flags))
}

/* Binaries built against glibc before 2.33 call these. */
extern int __xstat(int, const char *, struct stat *);
extern int __lxstat(int, const char *, struct stat *);
extern int __fxstat(int, int, struct stat *);
MV_EXPORT int __xstat(int ver, const char *path, struct stat *sb) PATH_STAT(REAL(__xstat)(ver, path, sb))
MV_EXPORT int __lxstat(int ver, const char *path, struct stat *sb) PATH_STAT(REAL(__lxstat)(ver, path, sb))
MV_EXPORT int __fxstat(int ver, int fd, struct stat *sb) FD_STAT(REAL(__fxstat)(ver, fd, sb))

static void fill_statx(const struct mvd_vdev *d, struct statx *sx)
{
	struct stat sb;

	d->dev_stat(&sb);
	memset(sx, 0, sizeof(*sx));
	sx->stx_mask = STATX_BASIC_STATS;
	sx->stx_mode = (uint16_t)sb.st_mode;
	sx->stx_nlink = 1;
	sx->stx_ino = sb.st_ino;
	sx->stx_blksize = (uint32_t)sb.st_blksize;
	sx->stx_rdev_major = major(sb.st_rdev);
	sx->stx_rdev_minor = minor(sb.st_rdev);
	sx->stx_dev_major = major(sb.st_dev);
	sx->stx_dev_minor = minor(sb.st_dev);
}

MV_EXPORT int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *sx)
{
	const struct mvd_vdev *d = (flags & AT_EMPTY_PATH) && !*path ? device_of_fd(dirfd) : device_of_path(path);
	if (d) {
		fill_statx(d, sx);
		return 0;
	}
	return REAL(statx)(dirfd, path, flags, mask, sx);
}

MV_EXPORT int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	unsigned long arg;

	va_start(ap, req);
	arg = va_arg(ap, unsigned long);
	va_end(ap);
	FOR_EACH_DEVICE(d)
	{
		if (!((*d)->ioctl_type && _IOC_TYPE(req) == (*d)->ioctl_type) && !(*d)->tracked(fd))
			continue;
		long r = (*d)->ioctl(fd, req, arg);
		if (r != MV_VDEV_PASS)
			return r < 0 ? fail(r) : (int)r;
	}
	return REAL(ioctl)(fd, req, arg);
}

MV_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	const struct mvd_vdev *d = flags & MAP_ANONYMOUS ? NULL : device_of_fd(fd);
	if (d && d->mmap_check) {
		int r = d->mmap_check(fd, prot, len, off);
		if (r != MV_VDEV_PASS && r < 0) {
			errno = -r;
			return MAP_FAILED;
		}
	}
	/* a mapping over existing memory may land where a merge is about to map its page (merge_gate.h) */
	if (!(flags & MAP_FIXED))
		return REAL(mmap)(addr, len, prot, flags, fd, off);
	mvm_gate_pass_begin();
	void *r = REAL(mmap)(addr, len, prot, flags, fd, off);
	int err = errno;
	mvm_gate_pass_end();
	errno = err;
	return r;
}

MV_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

/* Merged memory answers madvise as the anonymous memory it was: the engine makes it anonymous first
 * where the advice needs it. posix_madvise needs nothing: glibc's passes only access hints on, and
 * makes POSIX_MADV_DONTNEED a no-op. */
MV_EXPORT int madvise(void *addr, size_t len, int advice)
{
	int r = mvm_madvise(addr, len, advice, REAL(madvise));
	return r < 0 ? fail(r) : r;
}

/* And mremap as on anonymous memory: merged pages in the range become the program's own again first,
 * in one mapping as the program made it. */
static void *real_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr)
{
	return REAL(mremap)(old, old_len, new_len, flags, new_addr);
}

MV_EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *new_addr = NULL;
	if (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	return mvm_mremap(old, old_len, new_len, flags, new_addr, real_mremap);
}

/* And munmap so that no merge maps its page over what the program maps there next. */
MV_EXPORT int munmap(void *addr, size_t len)
{
	mvm_gate_pass_begin();
	int r = REAL(munmap)(addr, len);
	int err = errno;
	mvm_gate_pass_end();
	errno = err;
	return r;
}

MV_EXPORT ssize_t read(int fd, void *buf, size_t n)
{
	const struct mvd_vdev *d = device_of_fd(fd);
	if (d) {
		ssize_t r = d->read ? d->read(fd, buf, n) : -EINVAL;
		if (r != MV_VDEV_PASS)
			return r < 0 ? fail(r) : r;
	}
	return REAL(read)(fd, buf, n);
}

MV_EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
	/* The devices have no write: the VFS answers EINVAL. */
	if (device_of_fd(fd))
		return fail(-EINVAL);
	return REAL(write)(fd, buf, n);
}

MV_EXPORT off_t lseek(int fd, off_t off, int whence)
{
	const struct mvd_vdev *d = device_of_fd(fd);
	if (d && d->lseek) {
		off_t r = d->lseek(fd, off, whence);
		if (r != MV_VDEV_PASS)
			return r < 0 ? fail(r) : r;
	}
	return REAL(lseek)(fd, off, whence);
}

MV_EXPORT off64_t lseek64(int fd, off64_t off, int whence)
{
	return lseek(fd, off, whence);
}

static void devices_dup(int oldfd, int newfd)
{
	FOR_EACH_DEVICE(d)
	(*d)->dup(oldfd, newfd);
}

MV_EXPORT int dup(int fd)
{
	int r = REAL(dup)(fd);
	if (r >= 0)
		devices_dup(fd, r);
	return r;
}

MV_EXPORT int dup2(int oldfd, int newfd)
{
	int r = REAL(dup2)(oldfd, newfd);
	if (r >= 0 && oldfd != newfd)
		devices_dup(oldfd, newfd);
	return r;
}

MV_EXPORT int dup3(int oldfd, int newfd, int flags)
{
	int r = REAL(dup3)(oldfd, newfd, flags);
	if (r >= 0)
		devices_dup(oldfd, newfd);
	return r;
}

MV_EXPORT int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	unsigned long arg;

	va_start(ap, cmd);
	arg = va_arg(ap, unsigned long);
	va_end(ap);
	int r = REAL(fcntl)(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		devices_dup(fd, r);
	return r;
}

MV_EXPORT int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	unsigned long arg;

	va_start(ap, cmd);
	arg = va_arg(ap, unsigned long);
	va_end(ap);
	return fcntl(fd, cmd, arg);
}

MV_EXPORT int close(int fd)
{
	FOR_EACH_DEVICE(d)
	(*d)->forget(fd);
	return REAL(close)(fd);
}

MV_EXPORT int close_range(unsigned lo, unsigned hi, int flags)
{
	int r = REAL(close_range)(lo, hi, flags);
	if (r == 0 && !(flags & CLOSE_RANGE_CLOEXEC)) {
		FOR_EACH_DEVICE(d)
		(*d)->forget_range(lo, hi);
	}
	return r;
}

MV_EXPORT void closefrom(int lo)
{
	FOR_EACH_DEVICE(d)
	(*d)->forget_range((unsigned)lo, ~0u);
	REAL(closefrom)(lo);
}
/* clang-format on */
