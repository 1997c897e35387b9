/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "ashmem.h"

#include "common/sys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../regions/region.h"
#include "memvisor/memvisor.h"
#include "uapi.h"

#define PROT_MASK_ALL (PROT_READ | PROT_WRITE | PROT_EXEC)
#define ASHMEM_PAGE_ALIGN(x) (((x) + MV_PAGE_SIZE - 1) & ~(size_t)(MV_PAGE_SIZE - 1))

/* Everything below talks to the kernel through raw syscalls (common/sys.h): inside the preload
 * library the libc names are our own interposers. */

/* The kernel's ashmem_area: shared by every fd (dup) of one open of /dev/ashmem. */
struct mva_state {
	int refs; /* table slots pointing here; under table_lock */
	pthread_mutex_t lock;
	char name[ASHMEM_NAME_LEN]; /* "" = unset */
	size_t size;
	unsigned long prot_mask;
	struct mv_region *region; /* NULL until the first mmap */
	uint64_t ino;             /* identity of the file our fds refer to */
};

#define CHUNK_BITS 10
#define NCHUNKS 4096 /* fds up to 4M */
static _Atomic(struct mva_state *) *_Atomic chunks[NCHUNKS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_child(void)
{
	pthread_mutex_init(&table_lock, NULL);
}

static void init_once(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

static _Atomic(struct mva_state *) *slot(int fd, bool create)
{
	if (fd < 0 || (unsigned)fd >= (unsigned)NCHUNKS << CHUNK_BITS)
		return NULL;
	_Atomic(struct mva_state *) *c = atomic_load_explicit(&chunks[fd >> CHUNK_BITS], memory_order_acquire);
	if (!c && create) {
		_Atomic(struct mva_state *) *n = calloc(1u << CHUNK_BITS, sizeof(*n));
		if (!n)
			return NULL;
		if (!atomic_compare_exchange_strong(&chunks[fd >> CHUNK_BITS], &c, n))
			free(n);
		else
			c = n;
	}
	return c ? &c[fd & ((1u << CHUNK_BITS) - 1)] : NULL;
}

bool mva_tracked(int fd)
{
	_Atomic(struct mva_state *) *s = slot(fd, false);
	return s && atomic_load_explicit(s, memory_order_relaxed) != NULL;
}

static void state_unref_locked(struct mva_state *st)
{
	if (--st->refs == 0) {
		mv_region_unref(st->region);
		pthread_mutex_destroy(&st->lock);
		free(st);
	}
}

/* Puts st at fd (taking a reference); drops whatever was there. Caller holds table_lock. */
static int install_locked(int fd, struct mva_state *st)
{
	_Atomic(struct mva_state *) *s = slot(fd, true);
	if (!s)
		return -ENOMEM;
	struct mva_state *old = atomic_exchange(s, st);
	if (st)
		st->refs++;
	if (old)
		state_unref_locked(old);
	return 0;
}

/* The preload library sees every close and dup, so its table is exact. The library alone (libcutils
 * API) does not: an entry may describe an fd number that was closed and reused since. */
static bool mva_table_exact;

void mva_set_table_exact(void)
{
	mva_table_exact = true;
}

/* Takes a reference on the state of fd, or NULL. */
static struct mva_state *get(int fd)
{
	struct mva_state *st = NULL;
	_Atomic(struct mva_state *) *s;
	struct stat sb;
	bool check = !mva_table_exact && mva_tracked(fd);

	/* Outside the lock: fstat is a syscall. A mismatch means the entry is stale. */
	if (check && mvu_sys_fstat(fd, &sb) < 0)
		sb.st_ino = 0;
	pthread_mutex_lock(&table_lock);
	s = slot(fd, false);
	if (s && (st = atomic_load(s))) {
		if (check && (uint64_t)sb.st_ino != st->ino) {
			install_locked(fd, NULL);
			st = NULL;
		} else {
			st->refs++;
		}
	}
	pthread_mutex_unlock(&table_lock);
	return st;
}

static void put(struct mva_state *st)
{
	pthread_mutex_lock(&table_lock);
	state_unref_locked(st);
	pthread_mutex_unlock(&table_lock);
}

static struct mva_state *state_new(void)
{
	struct mva_state *st = calloc(1, sizeof(*st));
	if (!st)
		return NULL;
	pthread_mutex_init(&st->lock, NULL);
	st->prot_mask = PROT_MASK_ALL;
	return st;
}

bool mva_path_is_ashmem(const char *path)
{
	/* "/dev/ashmem", and "/dev/ashmem<boot id>" as newer libcutils opens it. */
	return path && strncmp(path, "/dev/ashmem", 11) == 0 && !strchr(path + 11, '/');
}

int mva_open(int oflags)
{
	struct mva_state *st;
	struct stat sb;
	int fd, r;

	pthread_once(&atfork_once, init_once);
	fd = memfd_create("dev/ashmem", (oflags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
	if (fd < 0)
		return -errno;
	st = state_new();
	if (!st || mvu_sys_fstat(fd, &sb) < 0) {
		free(st);
		mvu_sys_close(fd);
		return -ENOMEM;
	}
	st->ino = (uint64_t)sb.st_ino;
	pthread_mutex_lock(&table_lock);
	r = install_locked(fd, st);
	pthread_mutex_unlock(&table_lock);
	if (r < 0) {
		pthread_mutex_destroy(&st->lock);
		free(st);
		mvu_sys_close(fd);
		return r;
	}
	return fd;
}

/* An fd we have no record of that is a memvisor region (inherited over exec, received over a socket):
 * adopt it, as the kernel would simply know it. */
static struct mva_state *adopt(int fd)
{
	struct mva_state *st;
	struct mv_region *r;
	struct stat sb;

	if (mv_region_from_fd(fd, &r) < 0)
		return NULL;
	st = state_new();
	if (!st || mvu_sys_fstat(fd, &sb) < 0) {
		free(st);
		mv_region_unref(r);
		return NULL;
	}
	st->region = r;
	st->size = mv_region_size(r);
	st->prot_mask = (unsigned long)mv_region_get_prot(r);
	st->ino = (uint64_t)sb.st_ino;
	if (strcmp(mv_region_name(r), ASHMEM_NAME_DEF) != 0)
		snprintf(st->name, sizeof(st->name), "%s", mv_region_name(r));
	pthread_mutex_lock(&table_lock);
	_Atomic(struct mva_state *) *s = slot(fd, true);
	struct mva_state *cur = s ? atomic_load(s) : NULL;
	if (cur) {
		/* Another thread adopted it first. */
		cur->refs++;
		pthread_mutex_unlock(&table_lock);
		mv_region_unref(st->region);
		pthread_mutex_destroy(&st->lock);
		free(st);
		return cur;
	}
	if (install_locked(fd, st) < 0) {
		pthread_mutex_unlock(&table_lock);
		mv_region_unref(st->region);
		free(st);
		return NULL;
	}
	st->refs++; /* the caller's reference */
	pthread_mutex_unlock(&table_lock);
	return st;
}

static struct mva_state *get_or_adopt(int fd)
{
	struct mva_state *st = get(fd);
	return st ? st : adopt(fd);
}

/* User memory the way copy_from_user/copy_to_user see it: -EFAULT instead of a crash. */
static int copy_in(void *dst, const void *src, size_t n)
{
	struct iovec l = { dst, n }, r = { (void *)src, n };
	return process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -EFAULT;
}

/* The pin ioctls are hot, and callers pass a struct on their own stack (libcutils does). Everything
 * between our stack pointer and the top of this thread's stack is mapped and readable, so such a
 * pointer needs no check; anything else gets the exact one. */
static __thread uintptr_t stack_top;

static int copy_in_fast(void *dst, const void *src, size_t n)
{
	uintptr_t a = (uintptr_t)src, sp = (uintptr_t)__builtin_frame_address(0);

	if (!stack_top) {
		pthread_attr_t attr;
		void *lo;
		size_t size;
		stack_top = 1; /* unknown: never take the fast path */
		if (pthread_getattr_np(pthread_self(), &attr) == 0) {
			if (pthread_attr_getstack(&attr, &lo, &size) == 0)
				stack_top = (uintptr_t)lo + size;
			pthread_attr_destroy(&attr);
		}
	}
	if (a >= sp && a + n >= a && a + n <= stack_top) {
		memcpy(dst, src, n);
		return 0;
	}
	return copy_in(dst, src, n);
}

static int copy_out(void *dst, const void *src, size_t n)
{
	struct iovec l = { (void *)src, n }, r = { dst, n };
	return process_vm_writev(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -EFAULT;
}

/* First mmap: create the region and make every fd of this state a handle to it. */
static int materialize(int fd, struct mva_state *st)
{
	struct mv_region *r;
	struct stat sb;
	int e;

	if (st->region)
		return 0;
	if (!st->size)
		return -EINVAL;
	e = mvr_region_create(st->name[0] ? st->name : ASHMEM_NAME_DEF, st->name[0] ? "dev/ashmem/" : "", st->size, &r);
	if (e < 0)
		return e == -EINVAL ? -ENOMEM : e;
	if ((st->prot_mask & PROT_MASK_ALL) != PROT_MASK_ALL &&
	    (e = mv_region_set_prot(r, (int)(st->prot_mask & PROT_MASK_ALL))) < 0) {
		mv_region_unref(r);
		return e;
	}
	if (mvu_sys_fstat(mv_region_fd(r), &sb) < 0) {
		mv_region_unref(r);
		return -errno;
	}
	pthread_mutex_lock(&table_lock);
	for (unsigned c = 0; c < NCHUNKS; c++) {
		_Atomic(struct mva_state *) *chunk = atomic_load(&chunks[c]);
		if (!chunk)
			continue;
		for (unsigned i = 0; i < (1u << CHUNK_BITS); i++) {
			if (atomic_load(&chunk[i]) != st)
				continue;
			int n = (int)((c << CHUNK_BITS) | i);
			int fl = mvu_sys_fcntl(n, F_GETFD, 0);
			mvu_sys_dup3(mv_region_fd(r), n, fl > 0 && (fl & FD_CLOEXEC) ? O_CLOEXEC : 0);
		}
	}
	pthread_mutex_unlock(&table_lock);
	st->region = r;
	st->ino = (uint64_t)sb.st_ino;
	(void)fd;
	return 0;
}

static long pin_ioctl(struct mva_state *st, unsigned long cmd, const void *arg)
{
	struct ashmem_pin pin;
	uint64_t pg0, pg1;

	if (!st->region)
		return -EINVAL;
	if (copy_in_fast(&pin, arg, sizeof(pin)) < 0)
		return -EFAULT;
	/* The driver's arithmetic, in its 32-bit types. */
	if (!pin.len)
		pin.len = (uint32_t)(ASHMEM_PAGE_ALIGN(st->size) - pin.offset);
	if ((pin.offset | pin.len) & (MV_PAGE_SIZE - 1))
		return -EINVAL;
	if ((uint32_t)-1 - pin.offset < pin.len)
		return -EINVAL;
	if (ASHMEM_PAGE_ALIGN(st->size) < (size_t)pin.offset + pin.len)
		return -EINVAL;
	if (!pin.len)
		return -EINVAL; /* nothing left after the offset: the driver would compute pgend < pgstart */
	pg0 = pin.offset / MV_PAGE_SIZE;
	pg1 = pg0 + pin.len / MV_PAGE_SIZE - 1;
	return mvr_pin_pages(st->region, pg0, pg1,
			     cmd == ASHMEM_PIN     ? MVR_PIN
			     : cmd == ASHMEM_UNPIN ? MVR_UNPIN
						   : MVR_PIN_STATUS);
}

long mva_ioctl(int fd, unsigned long cmd, unsigned long arg)
{
	struct mva_state *st;
	long ret = -ENOTTY;

	if (_IOC_TYPE(cmd) != __ASHMEMIOC)
		return mva_tracked(fd) ? -ENOTTY : MVA_PASS;
	st = get_or_adopt(fd);
	if (!st)
		return MVA_PASS;
	pthread_mutex_lock(&st->lock);
	switch (cmd) {
	case ASHMEM_SET_NAME: {
		char buf[ASHMEM_NAME_LEN];
		if (st->region) {
			ret = -EINVAL;
			break;
		}
		ret = copy_in(buf, (const void *)arg, sizeof(buf));
		if (ret == 0) {
			buf[sizeof(buf) - 1] = '\0';
			memcpy(st->name, buf, sizeof(buf));
		}
		break;
	}
	case ASHMEM_GET_NAME:
		if (st->name[0])
			ret = copy_out((void *)arg, st->name, strlen(st->name) + 1);
		else
			ret = copy_out((void *)arg, ASHMEM_NAME_DEF, sizeof(ASHMEM_NAME_DEF));
		break;
	case ASHMEM_SET_SIZE:
		ret = -EINVAL;
		if (!st->region) {
			st->size = (size_t)arg;
			ret = 0;
		}
		break;
	case ASHMEM_GET_SIZE: ret = (long)st->size; break;
	case ASHMEM_SET_PROT_MASK: {
		unsigned long prot = arg;
		ret = -EINVAL;
		if ((st->prot_mask & prot) != prot)
			break;
		if ((prot & PROT_READ) && (personality(0xffffffff) & READ_IMPLIES_EXEC))
			prot |= PROT_EXEC;
		if (st->region && (ret = mv_region_set_prot(st->region, (int)(prot & PROT_MASK_ALL))) < 0)
			break;
		st->prot_mask = prot;
		ret = 0;
		break;
	}
	case ASHMEM_GET_PROT_MASK: ret = (long)st->prot_mask; break;
	case ASHMEM_PIN:
	case ASHMEM_UNPIN:
	case ASHMEM_GET_PIN_STATUS: ret = pin_ioctl(st, cmd, (const void *)arg); break;
	case ASHMEM_PURGE_ALL_CACHES: {
		/* Privileged in the kernel; here whoever may ask the broker to purge: its owner. */
		uint64_t bytes = 0;
		int e = mv_purge(MV_PURGE_ALL, &bytes);
		ret = e == 0 ? (long)(bytes / MV_PAGE_SIZE) : -EPERM;
		break;
	}
	case ASHMEM_GET_FILE_ID: {
		unsigned long ino = (unsigned long)st->ino;
		ret = st->region ? copy_out((void *)arg, &ino, sizeof(ino)) : -EINVAL;
		break;
	}
	}
	pthread_mutex_unlock(&st->lock);
	put(st);
	return ret;
}

int mva_mmap_check(int fd, int prot, size_t len, off_t off)
{
	struct mva_state *st = get(fd);
	int r;

	if (!st)
		return MVA_PASS;
	pthread_mutex_lock(&st->lock);
	if (!st->size)
		r = -EINVAL; /* SET_SIZE first */
	else if (len > ASHMEM_PAGE_ALIGN(st->size))
		r = -EINVAL; /* as later Android kernels, before the mask */
	else if ((unsigned long)prot & ~st->prot_mask & PROT_MASK_ALL)
		r = -EPERM;
	else
		r = materialize(fd, st);
	pthread_mutex_unlock(&st->lock);
	put(st);
	return r;
}

ssize_t mva_read(int fd, void *buf, size_t n)
{
	struct mva_state *st = get(fd);
	ssize_t r;

	if (!st)
		return MVA_PASS;
	pthread_mutex_lock(&st->lock);
	if (st->size == 0)
		r = 0; /* size unset or zero: always EOF */
	else if (!st->region)
		r = -EBADF;
	else {
		/* The region's file, exactly size bytes long: the driver reads its shmem file. */
		r = mvu_sys_read(fd, buf, n);
		if (r < 0)
			r = -errno;
	}
	pthread_mutex_unlock(&st->lock);
	put(st);
	return r;
}

off_t mva_lseek(int fd, off_t off, int whence)
{
	struct mva_state *st = get(fd);
	off_t r;

	if (!st)
		return MVA_PASS;
	pthread_mutex_lock(&st->lock);
	if (st->size == 0)
		r = -EINVAL;
	else if (!st->region)
		r = -EBADF;
	else {
		/* Every whence goes to the region's file, which ends at the region's size, as the driver
		 * passes it to its shmem file. */
		r = mvu_sys_lseek(fd, off, whence);
		if (r < 0)
			r = -errno;
	}
	pthread_mutex_unlock(&st->lock);
	put(st);
	return r;
}

void mva_dev_stat(struct stat *sb)
{
	/* What stat("/dev/ashmem") shows on an Android kernel: a misc character device. */
	memset(sb, 0, sizeof(*sb));
	sb->st_dev = makedev(0, 5);
	sb->st_ino = 1;
	sb->st_mode = S_IFCHR | 0666;
	sb->st_nlink = 1;
	sb->st_rdev = makedev(10, 59);
	sb->st_blksize = MV_PAGE_SIZE;
}

int mva_fstat(int fd, struct stat *sb)
{
	if (!mva_tracked(fd))
		return MVA_PASS;
	mva_dev_stat(sb);
	return 0;
}

void mva_dup(int oldfd, int newfd)
{
	pthread_mutex_lock(&table_lock);
	_Atomic(struct mva_state *) *s = slot(oldfd, false);
	struct mva_state *st = s ? atomic_load(s) : NULL;
	if (st || mva_tracked(newfd))
		install_locked(newfd, st);
	pthread_mutex_unlock(&table_lock);
}

void mva_forget(int fd)
{
	if (!mva_tracked(fd))
		return;
	pthread_mutex_lock(&table_lock);
	install_locked(fd, NULL);
	pthread_mutex_unlock(&table_lock);
}

void mva_forget_range(unsigned lo, unsigned hi)
{
	pthread_mutex_lock(&table_lock);
	for (unsigned fd = lo; fd <= hi && fd < (unsigned)NCHUNKS << CHUNK_BITS; fd++) {
		if ((fd & ((1u << CHUNK_BITS) - 1)) == 0 && !atomic_load(&chunks[fd >> CHUNK_BITS])) {
			if (fd > UINT_MAX - (1u << CHUNK_BITS))
				break;
			fd += (1u << CHUNK_BITS) - 1;
			continue;
		}
		if (mva_tracked((int)fd))
			install_locked((int)fd, NULL);
	}
	pthread_mutex_unlock(&table_lock);
}

int mva_create_region(const char *name, size_t size)
{
	struct mva_state *st;
	char buf[ASHMEM_NAME_LEN] = "";
	int fd, e;

	if (name)
		snprintf(buf, sizeof(buf), "%s", name);
	if (size == 0) {
		/* The driver accepts it; mmap then fails. Keep a placeholder with the name. */
		fd = mva_open(O_RDWR | O_CLOEXEC);
		if (fd < 0)
			return fd;
		if (buf[0] && (e = (int)mva_ioctl(fd, ASHMEM_SET_NAME, (unsigned long)buf)) < 0) {
			mva_forget(fd);
			mvu_sys_close(fd);
			return e;
		}
		return fd;
	}
	fd = mva_open(O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fd;
	st = get(fd);
	if (!st) {
		mvu_sys_close(fd);
		return -EBADF;
	}
	pthread_mutex_lock(&st->lock);
	memcpy(st->name, buf, sizeof(buf));
	st->size = size;
	e = materialize(fd, st);
	pthread_mutex_unlock(&st->lock);
	put(st);
	if (e < 0) {
		mva_forget(fd);
		mvu_sys_close(fd);
		return e;
	}
	return fd;
}

static void vdev_dup(int oldfd, int newfd)
{
	if (mva_tracked(oldfd) || mva_tracked(newfd))
		mva_dup(oldfd, newfd);
}

const struct mvd_vdev mva_vdev = {
	.name = "ashmem",
	.path_is = mva_path_is_ashmem,
	.open = mva_open,
	.tracked = mva_tracked,
	.dev_stat = mva_dev_stat,
	.ioctl_type = __ASHMEMIOC, /* an fd made by the libcutils API is adopted on its first ashmem ioctl */
	.ioctl = mva_ioctl,
	.mmap_check = mva_mmap_check,
	.read = mva_read,
	.lseek = mva_lseek,
	.dup = vdev_dup,
	.forget = mva_forget,
	.forget_range = mva_forget_range,
};
