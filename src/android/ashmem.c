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

#include "../regions/attach.h"
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
	/* Until region is set, our fds are an area file's, shared with whoever else holds it (fork, dup,
	 * SCM_RIGHTS); the fields above are then a copy of its record, read afresh under its lock. */
	bool area;
};

/* An area: an empty memfd sealed against growth (nothing in it to map, read or write), its record
 * in an extended attribute. A POSIX record lock on it orders its holders, process against process
 * (st->lock orders the threads of one). The first mmap by any holder makes the region, gives it to
 * the broker for the others (AREA_BIND) and marks the record; the others find the mark on their
 * next call and swap their fds to the region's file (AREA_GET). */
#define AREA_XATTR "user.memvisor.ashmem"
#define AREA_MAGIC 0x3141564du /* "MVA1" */
#define AREA_MAPPED 1u

struct area_rec {
	uint32_t magic, flags;
	uint64_t size, prot_mask, data_dev, data_ino;
	char name[ASHMEM_NAME_LEN];
};

enum area_step {
	AREA_NONE,   /* not an area (a region already, or a record of our own) */
	AREA_OPEN,   /* still unmapped: the record is locked and copied into st */
	AREA_ORPHAN, /* mapped by another holder whose region nobody can hand us (no broker) */
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

static int area_lock(int fd, short type)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET };

	while (mvu_sys_fcntl(fd, type == F_UNLCK ? F_SETLK : F_SETLKW, (long)&fl) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

/* The record, checked: any holder can write it, so it is read like anything shared. */
static int area_read(int fd, struct area_rec *rec)
{
	long n = syscall(SYS_fgetxattr, fd, AREA_XATTR, rec, sizeof(*rec));

	if (n != (long)sizeof(*rec) || rec->magic != AREA_MAGIC || (rec->flags & ~AREA_MAPPED) ||
	    (rec->prot_mask & ~(unsigned long)PROT_MASK_ALL))
		return -EINVAL;
	rec->name[sizeof(rec->name) - 1] = '\0';
	return 0;
}

static int area_write(int fd, const struct mva_state *st, uint32_t flags, const struct mv_region *r)
{
	struct area_rec rec = { .magic = AREA_MAGIC, .flags = flags, .size = st->size, .prot_mask = st->prot_mask };

	memcpy(rec.name, st->name, sizeof(rec.name));
	if (r) {
		rec.data_dev = r->dev;
		rec.data_ino = r->ino;
	}
	return syscall(SYS_fsetxattr, fd, AREA_XATTR, &rec, sizeof(rec), 0) < 0 ? -errno : 0;
}

/* A new area file, or -errno. The broker learns of its end from the inode (inotify), which needs no
 * reopen through /proc, unlike the close events that regions' files must send. */
static int area_new(int oflags)
{
	int fd = memfd_create("dev/ashmem", ((oflags & O_CLOEXEC) ? MFD_CLOEXEC : 0) | MFD_ALLOW_SEALING);

	if (fd < 0)
		return -errno;
	if (mvu_sys_fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
		int e = -errno;
		mvu_sys_close(fd);
		return e;
	}
	return fd;
}

int mva_open(int oflags)
{
	struct mva_state *st;
	struct stat sb;
	int fd, r;

	pthread_once(&atfork_once, init_once);
	fd = area_new(oflags);
	if (fd < 0)
		return fd;
	st = state_new();
	if (!st || mvu_sys_fstat(fd, &sb) < 0) {
		free(st);
		mvu_sys_close(fd);
		return -ENOMEM;
	}
	st->ino = (uint64_t)sb.st_ino;
	/* Without extended attributes the state stays this process's own, as it was before areas. */
	st->area = area_write(fd, st, 0, NULL) == 0;
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

	if (mv_region_from_fd(fd, &r) < 0) {
		/* Or an area another holder of it made. Its record is read under its lock later. */
		struct area_rec rec;
		if (mvu_sys_fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size != 0 || area_read(fd, &rec) < 0)
			return NULL;
		r = NULL;
	}
	st = state_new();
	if (!st || mvu_sys_fstat(fd, &sb) < 0) {
		free(st);
		mv_region_unref(r);
		return NULL;
	}
	st->ino = (uint64_t)sb.st_ino;
	if (r) {
		st->region = r;
		st->size = mv_region_size(r);
		st->prot_mask = (unsigned long)mv_region_get_prot(r);
		if (strcmp(mv_region_name(r), ASHMEM_NAME_DEF) != 0)
			snprintf(st->name, sizeof(st->name), "%s", mv_region_name(r));
	} else {
		st->area = true;
	}
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

/* Makes every fd of this state in this process a handle to the region's file. */
static void switch_fds(struct mva_state *st, struct mv_region *r)
{
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
	st->ino = r->ino;
	st->area = false;
}

/* The region the area's record names, from the broker. */
static int area_region(int fd, const struct area_rec *rec, struct mv_region **out)
{
	struct mv_region *r;
	int data, ctl, e = mvr_area_fetch(fd, &data, &ctl);

	if (e < 0)
		return e;
	e = mvr_region_from_files(data, ctl, &r);
	mvu_sys_close(data);
	if (e < 0)
		return e;
	if (r->ino != rec->data_ino || r->dev != rec->data_dev) {
		mv_region_unref(r);
		return -EINVAL;
	}
	*out = r;
	return 0;
}

/* Before any call on an area: lock its record and take its state (AREA_OPEN: call area_end after), or
 * take the region another holder made from it (AREA_NONE: st->region is set, nothing is locked). */
static int area_begin(int fd, struct mva_state *st)
{
	struct area_rec rec;
	struct mv_region *r = NULL;
	int e;

	if (!st->area || st->region)
		return AREA_NONE;
	e = area_lock(fd, F_WRLCK);
	if (e < 0)
		return e;
	e = area_read(fd, &rec);
	if (e < 0) {
		area_lock(fd, F_UNLCK);
		return e;
	}
	memcpy(st->name, rec.name, sizeof(st->name));
	st->size = (size_t)rec.size;
	st->prot_mask = (unsigned long)rec.prot_mask;
	if (!(rec.flags & AREA_MAPPED))
		return AREA_OPEN;
	e = area_region(fd, &rec, &r);
	/* Unlocked before the swap: closing an fd of the file drops the lock anyway. */
	area_lock(fd, F_UNLCK);
	if (e < 0)
		return AREA_ORPHAN;
	st->prot_mask = (unsigned long)mv_region_get_prot(r);
	switch_fds(st, r);
	return AREA_NONE;
}

static int area_end(int fd, struct mva_state *st, bool changed)
{
	int e = changed ? area_write(fd, st, 0, NULL) : 0;

	area_lock(fd, F_UNLCK);
	return e;
}

/* First mmap: create the region, and (step AREA_OPEN) hand it to the area's other holders. Unlocks
 * the area in every case. */
static int materialize(int fd, struct mva_state *st, int step)
{
	struct mv_region *r = NULL;
	int e;

	if (st->region)
		return 0;
	if (!st->size)
		e = -EINVAL;
	else if ((e = mvr_region_create(st->name[0] ? st->name : ASHMEM_NAME_DEF, st->name[0] ? "dev/ashmem/" : "",
					st->size, &r)) < 0)
		e = e == -EINVAL ? -ENOMEM : e;
	else if ((st->prot_mask & PROT_MASK_ALL) != PROT_MASK_ALL &&
		 (e = mv_region_set_prot(r, (int)(st->prot_mask & PROT_MASK_ALL))) < 0)
		mv_region_unref(r);
	if (e == 0 && step == AREA_OPEN) {
		/* Without a broker to keep it for them (none, or too many areas), the others cannot
		 * have it; they still see the area as mapped and refuse to resize it. */
		(void)mvr_area_bind(fd, r);
		e = area_write(fd, st, AREA_MAPPED, r);
		if (e < 0)
			mv_region_unref(r);
	}
	if (step == AREA_OPEN)
		area_lock(fd, F_UNLCK);
	if (e == 0)
		switch_fds(st, r);
	return e;
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
	int step = area_begin(fd, st);
	bool fixed = st->region || step == AREA_ORPHAN, changed = false;
	if (step < 0) {
		ret = step;
		goto out;
	}
	switch (cmd) {
	case ASHMEM_SET_NAME: {
		char buf[ASHMEM_NAME_LEN];
		if (fixed) {
			ret = -EINVAL;
			break;
		}
		ret = copy_in(buf, (const void *)arg, sizeof(buf));
		if (ret == 0) {
			buf[sizeof(buf) - 1] = '\0';
			memcpy(st->name, buf, sizeof(buf));
			changed = true;
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
		if (!fixed) {
			st->size = (size_t)arg;
			ret = 0;
			changed = true;
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
		if (step == AREA_ORPHAN) {
			ret = -ENODEV; /* the region is out of reach */
			break;
		}
		if (st->region && (ret = mv_region_set_prot(st->region, (int)(prot & PROT_MASK_ALL))) < 0)
			break;
		st->prot_mask = prot;
		changed = true;
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
	if (step == AREA_OPEN) {
		int e = area_end(fd, st, changed && ret == 0);
		if (ret == 0 && e < 0)
			ret = e;
	}
out:
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
	int step = area_begin(fd, st);
	if (step < 0)
		r = step;
	else if (!st->size)
		r = -EINVAL; /* SET_SIZE first */
	else if (len > ASHMEM_PAGE_ALIGN(st->size))
		r = -EINVAL; /* as later Android kernels, before the mask */
	else if ((unsigned long)prot & ~st->prot_mask & PROT_MASK_ALL)
		r = -EPERM;
	else if (step == AREA_ORPHAN)
		r = -ENODEV;
	else
		r = materialize(fd, st, step), step = AREA_NONE; /* it unlocks the area */
	if (step == AREA_OPEN)
		area_lock(fd, F_UNLCK);
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
	int step = area_begin(fd, st);
	if (step == AREA_OPEN)
		area_lock(fd, F_UNLCK);
	if (step < 0)
		r = step;
	else if (st->size == 0)
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
	int step = area_begin(fd, st);
	if (step == AREA_OPEN)
		area_lock(fd, F_UNLCK);
	if (step < 0)
		r = step;
	else if (st->size == 0)
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
	int fd = -1, e;

	if (name)
		snprintf(buf, sizeof(buf), "%s", name);
	if (size == 0) {
		/* The driver accepts it; mmap then fails. Keep an area with the name. */
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
	/* With a size the region is made at once: nobody else can hold the fd yet. */
	pthread_once(&atfork_once, init_once);
	st = state_new();
	if (!st)
		return -ENOMEM;
	memcpy(st->name, buf, sizeof(buf));
	st->size = size;
	e = materialize(-1, st, AREA_NONE);
	if (e == 0) {
		fd = mvu_sys_fcntl(mv_region_fd(st->region), F_DUPFD_CLOEXEC, 0);
		e = fd < 0 ? -errno : 0;
	}
	if (e == 0) {
		pthread_mutex_lock(&table_lock);
		e = install_locked(fd, st);
		pthread_mutex_unlock(&table_lock);
		if (e < 0)
			mvu_sys_close(fd);
	}
	if (e < 0) {
		mv_region_unref(st->region);
		pthread_mutex_destroy(&st->lock);
		free(st);
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
