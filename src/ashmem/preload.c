/* SPDX-License-Identifier: MIT */
/* libmemvisor-preload.so: a working /dev/ashmem for unmodified glibc programs (LD_PRELOAD).
 *
 * Opening /dev/ashmem (or /dev/ashmem<suffix>) yields an fd with the driver's semantics; its ioctls,
 * mmap, read, lseek, write and stat are answered here, dups and closes are tracked. Opening /dev/ksm
 * yields the first KSM proposal's device (src/merge/devksm.c). Every other fd and ioctl goes straight
 * to libc after one table lookup.
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
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "ashmem.h"
#include "merge/devksm.h"

#define EXPORT __attribute__((visibility("default")))

/* The next definition of a libc function, looked up once. */
#define REAL(name)                                                                                                     \
	({                                                                                                             \
		static __typeof__(name) *_fn;                                                                          \
		if (!_fn)                                                                                              \
			_fn = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);                                             \
		_fn;                                                                                                   \
	})

__attribute__((constructor)) static void preload_init(void)
{
	mva_set_table_exact();
}

static int fail(long e)
{
	errno = (int)-e;
	return -1;
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
		if (mva_path_is_ashmem(path) || mvk_path_is_ksm(path)) {                                              \
			int r = mva_path_is_ashmem(path) ? mva_open(flags) : mvk_open(flags);                         \
			return r < 0 ? fail(r) : r;                                                                    \
		}                                                                                                      \
		return realcall;                                                                                       \
	}

EXPORT int open(const char *path, int flags, ...) OPEN_BODY(REAL(open)(path, flags, mode))
EXPORT int open64(const char *path, int flags, ...) OPEN_BODY(REAL(open64)(path, flags, mode))
EXPORT int openat(int dirfd, const char *path, int flags, ...) OPEN_BODY(REAL(openat)(dirfd, path, flags, mode))
EXPORT int openat64(int dirfd, const char *path, int flags, ...) OPEN_BODY(REAL(openat64)(dirfd, path, flags, mode))

/* The _FORTIFY_SOURCE entry points. */
EXPORT int __open_2(const char *path, int flags)
{
	if (mva_path_is_ashmem(path) || mvk_path_is_ksm(path)) {
		int r = mva_path_is_ashmem(path) ? mva_open(flags) : mvk_open(flags);
		return r < 0 ? fail(r) : r;
	}
	return REAL(__open_2)(path, flags);
}

EXPORT int __open64_2(const char *path, int flags)
{
	if (mva_path_is_ashmem(path) || mvk_path_is_ksm(path)) {
		int r = mva_path_is_ashmem(path) ? mva_open(flags) : mvk_open(flags);
		return r < 0 ? fail(r) : r;
	}
	return REAL(__open64_2)(path, flags);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	if (mva_path_is_ashmem(path) || mvk_path_is_ksm(path)) {
		int r = mva_path_is_ashmem(path) ? mva_open(flags) : mvk_open(flags);
		return r < 0 ? fail(r) : r;
	}
	return REAL(__openat_2)(dirfd, path, flags);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	if (mva_path_is_ashmem(path) || mvk_path_is_ksm(path)) {
		int r = mva_path_is_ashmem(path) ? mva_open(flags) : mvk_open(flags);
		return r < 0 ? fail(r) : r;
	}
	return REAL(__openat64_2)(dirfd, path, flags);
}

EXPORT int access(const char *path, int mode)
{
	return (mva_path_is_ashmem(path) || mvk_path_is_ksm(path)) ? ((mode & X_OK) ? fail(-EACCES) : 0) : REAL(access)(path, mode);
}

EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
	return (mva_path_is_ashmem(path) || mvk_path_is_ksm(path)) ? ((mode & X_OK) ? fail(-EACCES) : 0) : REAL(faccessat)(dirfd, path, mode, flags);
}

EXPORT int euidaccess(const char *path, int mode)
{
	return (mva_path_is_ashmem(path) || mvk_path_is_ksm(path)) ? ((mode & X_OK) ? fail(-EACCES) : 0) : REAL(euidaccess)(path, mode);
}

/* stat and friends: x86_64's struct stat and struct stat64 are the same. */
#define PATH_STAT(realcall)                                                                                            \
	{                                                                                                              \
		if (mva_path_is_ashmem(path)) {                                                                        \
			mva_dev_stat((struct stat *)sb);                                                               \
			return 0;                                                                                      \
		}                                                                                                      \
		if (mvk_path_is_ksm(path)) {                                                                           \
			mvk_dev_stat((struct stat *)sb);                                                               \
			return 0;                                                                                      \
		}                                                                                                      \
		return realcall;                                                                                       \
	}
#define FD_STAT(realcall)                                                                                              \
	{                                                                                                              \
		if (mva_fstat(fd, (struct stat *)sb) == 0)                                                             \
			return 0;                                                                                      \
		if (mvk_tracked(fd)) {                                                                                 \
			mvk_dev_stat((struct stat *)sb);                                                               \
			return 0;                                                                                      \
		}                                                                                      \
		return realcall;                                                                                       \
	}

EXPORT int stat(const char *path, struct stat *sb) PATH_STAT(REAL(stat)(path, sb))
EXPORT int stat64(const char *path, struct stat64 *sb) PATH_STAT(REAL(stat64)(path, sb))
EXPORT int lstat(const char *path, struct stat *sb) PATH_STAT(REAL(lstat)(path, sb))
EXPORT int lstat64(const char *path, struct stat64 *sb) PATH_STAT(REAL(lstat64)(path, sb))
EXPORT int fstat(int fd, struct stat *sb) FD_STAT(REAL(fstat)(fd, sb))
EXPORT int fstat64(int fd, struct stat64 *sb) FD_STAT(REAL(fstat64)(fd, sb))

EXPORT int fstatat(int dirfd, const char *path, struct stat *sb, int flags)
{
	if ((flags & AT_EMPTY_PATH) && !*path) {
		int fd = dirfd;
		FD_STAT(REAL(fstatat)(dirfd, path, sb, flags))
	}
	PATH_STAT(REAL(fstatat)(dirfd, path, sb, flags))
}

EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *sb, int flags)
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
EXPORT int __xstat(int ver, const char *path, struct stat *sb) PATH_STAT(REAL(__xstat)(ver, path, sb))
EXPORT int __lxstat(int ver, const char *path, struct stat *sb) PATH_STAT(REAL(__lxstat)(ver, path, sb))
EXPORT int __fxstat(int ver, int fd, struct stat *sb) FD_STAT(REAL(__fxstat)(ver, fd, sb))

static void fill_statx(struct statx *sx)
{
	struct stat sb;

	mva_dev_stat(&sb);
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

EXPORT int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *sx)
{
	if (((flags & AT_EMPTY_PATH) && !*path && mva_tracked(dirfd)) || mva_path_is_ashmem(path)) {
		fill_statx(sx);
		return 0;
	}
	return REAL(statx)(dirfd, path, flags, mask, sx);
}

EXPORT int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	unsigned long arg;

	va_start(ap, req);
	arg = va_arg(ap, unsigned long);
	va_end(ap);
	long k = mvk_ioctl(fd, req, arg);
	if (k != MVK_PASS)
		return k < 0 ? fail(k) : (int)k;
	if (_IOC_TYPE(req) == 0x77 || mva_tracked(fd)) {
		long r = mva_ioctl(fd, req, arg);
		if (r != MVA_PASS)
			return r < 0 ? fail(r) : (int)r;
	}
	return REAL(ioctl)(fd, req, arg);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (fd >= 0 && !(flags & MAP_ANONYMOUS) && mva_tracked(fd)) {
		int r = mva_mmap_check(fd, prot);
		if (r != MVA_PASS && r < 0) {
			errno = -r;
			return MAP_FAILED;
		}
	}
	return REAL(mmap)(addr, len, prot, flags, fd, off);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

EXPORT ssize_t read(int fd, void *buf, size_t n)
{
	if (mva_tracked(fd)) {
		ssize_t r = mva_read(fd, buf, n);
		if (r != MVA_PASS)
			return r < 0 ? fail(r) : r;
	}
	return REAL(read)(fd, buf, n);
}

EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
	/* The driver has no write: the VFS answers EINVAL. */
	if (mva_tracked(fd))
		return fail(-EINVAL);
	return REAL(write)(fd, buf, n);
}

EXPORT off_t lseek(int fd, off_t off, int whence)
{
	if (mva_tracked(fd)) {
		off_t r = mva_lseek(fd, off, whence);
		if (r != MVA_PASS)
			return r < 0 ? fail(r) : r;
	}
	return REAL(lseek)(fd, off, whence);
}

EXPORT off64_t lseek64(int fd, off64_t off, int whence)
{
	return lseek(fd, off, whence);
}

EXPORT int dup(int fd)
{
	int r = REAL(dup)(fd);
	if (r >= 0 && mva_tracked(fd))
		mva_dup(fd, r);
	if (r >= 0)
		mvk_dup(fd, r);
	return r;
}

EXPORT int dup2(int oldfd, int newfd)
{
	int r = REAL(dup2)(oldfd, newfd);
	if (r >= 0 && oldfd != newfd && (mva_tracked(oldfd) || mva_tracked(newfd)))
		mva_dup(oldfd, newfd);
	if (r >= 0 && oldfd != newfd)
		mvk_dup(oldfd, newfd);
	return r;
}

EXPORT int dup3(int oldfd, int newfd, int flags)
{
	int r = REAL(dup3)(oldfd, newfd, flags);
	if (r >= 0 && (mva_tracked(oldfd) || mva_tracked(newfd)))
		mva_dup(oldfd, newfd);
	if (r >= 0)
		mvk_dup(oldfd, newfd);
	return r;
}

EXPORT int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	unsigned long arg;

	va_start(ap, cmd);
	arg = va_arg(ap, unsigned long);
	va_end(ap);
	int r = REAL(fcntl)(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && mva_tracked(fd))
		mva_dup(fd, r);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		mvk_dup(fd, r);
	return r;
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	unsigned long arg;

	va_start(ap, cmd);
	arg = va_arg(ap, unsigned long);
	va_end(ap);
	return fcntl(fd, cmd, arg);
}

EXPORT int close(int fd)
{
	mva_forget(fd);
	mvk_forget(fd);
	return REAL(close)(fd);
}

EXPORT int close_range(unsigned lo, unsigned hi, int flags)
{
	int r = REAL(close_range)(lo, hi, flags);
	if (r == 0 && !(flags & CLOSE_RANGE_CLOEXEC)) {
		mva_forget_range(lo, hi);
		mvk_forget_range(lo, hi);
	}
	return r;
}

EXPORT void closefrom(int lo)
{
	mva_forget_range((unsigned)lo, ~0u);
	mvk_forget_range((unsigned)lo, ~0u);
	REAL(closefrom)(lo);
}
