/* SPDX-License-Identifier: MIT */
/* The engine's raw system calls, in one place. They bypass libc on purpose:
 *  - inside libmemvisor-preload.so's processes, close, read, lseek, fstat, fcntl, dup3, ioctl and
 *    madvise are the preload's interposers, which take its device table locks (madvise and mremap: the
 *    merge contexts' locks) and call into the engine; the engine's own descriptors and memory must not go
 *    through them (a scanner thread closing a descriptor under the merge lock deadlocked against a
 *    /dev/ksm ioctl that held the table lock);
 *  - mappings the merger puts over an application's pages change no byte it can see, and a
 *    sanitizer's mmap interceptor would otherwise take them for fresh memory.
 * Each returns what libc's wrapper would: -1 with errno set on failure. Internal. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static inline int mvu_sys_close(int fd)
{
	return (int)syscall(SYS_close, fd);
}

static inline int mvu_sys_fstat(int fd, struct stat *st)
{
	return (int)syscall(SYS_fstat, fd, st);
}

static inline ssize_t mvu_sys_read(int fd, void *buf, size_t n)
{
	return (ssize_t)syscall(SYS_read, fd, buf, n);
}

static inline off_t mvu_sys_lseek(int fd, off_t off, int whence)
{
	return (off_t)syscall(SYS_lseek, fd, off, whence);
}

static inline int mvu_sys_fcntl(int fd, int cmd, long arg)
{
	return (int)syscall(SYS_fcntl, fd, cmd, arg);
}

static inline int mvu_sys_dup3(int oldfd, int newfd, int flags)
{
	return (int)syscall(SYS_dup3, oldfd, newfd, flags);
}

static inline long mvu_sys_ioctl(int fd, unsigned long req, void *arg)
{
	return syscall(SYS_ioctl, fd, req, arg);
}

static inline int mvu_sys_userfaultfd(int flags)
{
	return (int)syscall(SYS_userfaultfd, flags);
}

static inline long mvu_sys_futex(void *uaddr, int op, uint32_t val, const struct timespec *timeout)
{
	return syscall(SYS_futex, uaddr, op, val, timeout, NULL, 0);
}

static inline void *mvu_sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	return r == -1 ? MAP_FAILED : (void *)r;
}

static inline int mvu_sys_mprotect(void *addr, size_t len, int prot)
{
	return (int)syscall(SYS_mprotect, addr, len, prot);
}

/* The engine's own madvise calls: inside libmemvisor-preload.so's processes madvise is an interposer
 * that takes the merge contexts' locks, which the engine may already hold. */
static inline int mvu_sys_madvise(void *addr, size_t len, int advice)
{
	return (int)syscall(SYS_madvise, addr, len, advice);
}

/* mremap for the engine's own mappings: inside libmemvisor-preload.so's processes mremap is an
 * interposer that takes the merge contexts' locks, which the engine may already hold. */
static inline void *mvu_sys_mremap(void *old, size_t old_len, size_t new_len, int flags, void *to)
{
	long r = syscall(SYS_mremap, old, old_len, new_len, flags, to);
	return r == -1 ? MAP_FAILED : (void *)r;
}

/* Moves a mapping of len bytes to exactly `to`. */
static inline void *mvu_sys_mremap_fixed(void *from, size_t len, void *to)
{
	long r = syscall(SYS_mremap, from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	return r == -1 ? MAP_FAILED : (void *)r;
}

/* Whether two of this process's descriptors are one open file (no libc wrapper): 0 yes, >0 no, -1
 * with errno when the kernel cannot say (no CONFIG_KCMP, or a seccomp filter). */
static inline int mvu_sys_kcmp_file(int fd1, int fd2)
{
	pid_t self = getpid();
	return (int)syscall(SYS_kcmp, self, self, 0 /* KCMP_FILE */, fd1, fd2);
}
