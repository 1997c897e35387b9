/* SPDX-License-Identifier: MIT */
/* /dev/ksm as the first KSM proposal defined it, on top of memvisor's merging.
 *
 * Three kinds of fd: the device, shared-memory areas (sets of registered regions) and scanners. Each is
 * a real fd (a small memfd) so it can be closed, dup'ed and inherited like the kernel's; what it stands
 * for lives in the table below. Regions merge within the calling process (one merge context per
 * process, created on first use). Departures from the seed: its ioctls that return a positive errno
 * (unknown requests, START_STOP_KTHREAD's EPERM) fail with that errno here, and REGISTER checks the
 * region instead of trusting it.
 */
#define _GNU_SOURCE
#include "merge/devksm.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/sys.h"
#include "memvisor/ksm.h"
#include "memvisor/merge.h"
#include "merge/merge_internal.h"

#define KSM_MINOR 233

enum kind { K_DEV, K_SMA, K_SCAN };

struct region_ent {
	uintptr_t addr;
	size_t len;
};

struct kobj {
	enum kind kind;
	int refs; /* fds naming it */
	struct region_ent *regs;
	size_t nregs;
};

struct kfd {
	int fd;
	dev_t dev; /* the file fd stood for when we made or dup'ed it: an fd closed behind libc's back */
	ino_t ino; /* (a raw close, close_range) and reused is somebody else's */
	struct kobj *obj;
};

/* Recursive: the merge engine called under it opens, closes and ioctls fds of its own, and in the
 * preload library those calls come back through our interposers. */
static pthread_mutex_t klock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static struct kfd *kfds;
static size_t nkfds, kfds_cap;
static atomic_int any_fd; /* the hot path of every ioctl/close in the process asks this first */

/* Which fd numbers are ours, readable without klock: the preload asks on every read, write, lseek and
 * mmap, and the engine makes those calls itself while it holds a context's lock, which klock's holders
 * take after klock (a scanner thread and a REGISTER would deadlock). The inode tells a number closed
 * behind libc's back and reused. Fds past the table are looked up under klock. */
#define FAST_FDS 65536
static _Atomic uint64_t fast_ino[FAST_FDS];

static mv_merge *proc_ctx;
static pid_t proc_pid;
static struct ksm_kthread_info kinfo; /* what KSM_GET_INFO_KTHREAD reports, zero until set */
static size_t registered;             /* regions registered through every area */

static int copy_in(void *dst, unsigned long src, size_t n)
{
	struct iovec l = { dst, n }, r = { (void *)src, n };
	return process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -EFAULT;
}

static int copy_out(unsigned long dst, const void *src, size_t n)
{
	struct iovec l = { (void *)src, n }, r = { (void *)dst, n };
	return process_vm_writev(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -EFAULT;
}

bool mvk_path_is_ksm(const char *path)
{
	return path && !strcmp(path, "/dev/ksm");
}

static void drop_fd_locked(size_t i);

static struct kfd *find(int fd)
{
	for (size_t i = 0; i < nkfds; i++)
		if (kfds[i].fd == fd) {
			struct stat st;
			if (mvu_sys_fstat(fd, &st) == 0 && st.st_dev == kfds[i].dev && st.st_ino == kfds[i].ino)
				return &kfds[i];
			drop_fd_locked(i); /* closed without our knowing: the number is not ours any more */
			return NULL;
		}
	return NULL;
}

bool mvk_tracked(int fd)
{
	if (!atomic_load_explicit(&any_fd, memory_order_relaxed) || fd < 0)
		return false;
	if (fd < FAST_FDS) {
		uint64_t ino = atomic_load_explicit(&fast_ino[fd], memory_order_acquire);
		struct stat st;
		return ino && mvu_sys_fstat(fd, &st) == 0 && (uint64_t)st.st_ino == ino;
	}
	pthread_mutex_lock(&klock);
	bool r = find(fd) != NULL;
	pthread_mutex_unlock(&klock);
	return r;
}

static int ctx_get(mv_merge **out)
{
	if (!proc_ctx || proc_pid != getpid()) {
		/* a fork child starts without the parent's registrations, as under the seed */
		proc_ctx = NULL;
		registered = 0;
		int r = mv_merge_new(NULL, 0, &proc_ctx);
		if (r < 0)
			return r;
		proc_pid = getpid();
	}
	*out = proc_ctx;
	return 0;
}

static int add_fd(int fd, struct kobj *o)
{
	if (nkfds == kfds_cap) {
		size_t cap = kfds_cap ? kfds_cap * 2 : 16;
		struct kfd *n = realloc(kfds, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		kfds = n;
		kfds_cap = cap;
	}
	struct stat st;
	if (mvu_sys_fstat(fd, &st) < 0)
		return -errno;
	kfds[nkfds++] = (struct kfd){ fd, st.st_dev, st.st_ino, o };
	if (fd < FAST_FDS)
		atomic_store_explicit(&fast_ino[fd], (uint64_t)st.st_ino, memory_order_release);
	o->refs++;
	atomic_store(&any_fd, 1);
	return 0;
}

static void remove_regions(struct kobj *o)
{
	for (size_t i = 0; i < o->nregs; i++)
		if (proc_ctx && proc_pid == getpid() &&
		    mv_merge_unregister(proc_ctx, (void *)o->regs[i].addr, o->regs[i].len) == 0)
			registered--;
	free(o->regs);
	o->regs = NULL;
	o->nregs = 0;
}

static void drop_fd_locked(size_t i)
{
	struct kobj *o = kfds[i].obj;
	if (kfds[i].fd >= 0 && kfds[i].fd < FAST_FDS)
		atomic_store_explicit(&fast_ino[kfds[i].fd], 0, memory_order_release);
	kfds[i] = kfds[--nkfds];
	if (--o->refs == 0) {
		remove_regions(o);
		free(o);
	}
	if (!nkfds)
		atomic_store(&any_fd, 0);
}

/* A new fd for a new object of this kind. */
static int new_obj_fd(enum kind kind, int flags)
{
	static const char *const names[] = { "ksm", "ksm-sma", "ksm-scan" };
	struct kobj *o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	o->kind = kind;
	int fd = memfd_create(names[kind], (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
	if (fd < 0) {
		free(o);
		return -errno;
	}
	int r = add_fd(fd, o);
	if (r < 0) {
		close(fd);
		free(o);
		return r;
	}
	return fd;
}

/* A fork must not leave the child a klock held by a thread that is not there. */
static void fork_prepare(void)
{
	pthread_mutex_lock(&klock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&klock);
}

static void fork_child(void)
{
	pthread_mutex_unlock(&klock);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* After the merge engine's: prepare handlers run last-registered first, and klock comes before a
 * context's lock (a ksm ioctl calls into the engine with klock held). */
static void atfork_init(void)
{
	mvm_atfork_register();
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int mvk_open(int flags)
{
	pthread_once(&atfork_once, atfork_init);
	pthread_mutex_lock(&klock);
	int r = new_obj_fd(K_DEV, flags);
	pthread_mutex_unlock(&klock);
	return r;
}

static long dev_ioctl(unsigned long req, unsigned long arg)
{
	switch (req) {
	case KSM_GET_API_VERSION: return KSM_API_VERSION;
	case KSM_CREATE_SHARED_MEMORY_AREA: return new_obj_fd(K_SMA, 0);
	case KSM_CREATE_SCAN: return new_obj_fd(K_SCAN, 0);
	case KSM_START_STOP_KTHREAD: {
		struct ksm_kthread_info info;
		if (copy_in(&info, arg, sizeof(info)) < 0)
			return -EFAULT;
		bool run = info.flags & ksm_control_flags_run;
		if (run && (!info.pages_to_scan || !info.max_pages_to_merge))
			return -EPERM;
		mv_merge *m;
		int r = ctx_get(&m);
		if (r < 0)
			return r;
		struct mv_merge_knobs k;
		mv_merge_get_knobs(m, &k);
		k.sleep_usecs = info.sleep;
		if (info.pages_to_scan)
			k.pages_to_scan = info.pages_to_scan;
		k.max_pages_to_merge = info.max_pages_to_merge;
		k.run = run;
		k.scan_flags = MV_MERGE_STABLE; /* the seed merged on the first look */
		r = mv_merge_set_knobs(m, &k);
		if (r < 0)
			return r;
		kinfo = info;
		return 0;
	}
	case KSM_GET_INFO_KTHREAD: return copy_out(arg, &kinfo, sizeof(kinfo));
	}
	return -EINVAL;
}

static long sma_ioctl(struct kobj *o, unsigned long req, unsigned long arg)
{
	switch (req) {
	case KSM_REGISTER_MEMORY_REGION: {
		struct ksm_memory_region reg;
		if (copy_in(&reg, arg, sizeof(reg)) < 0)
			return -EFAULT;
		if (!reg.npages)
			return -EINVAL;
		if (reg.addr > UINTPTR_MAX || reg.npages > (UINTPTR_MAX - reg.addr) / MV_PAGE_SIZE)
			return -EINVAL;
		mv_merge *m;
		int r = ctx_get(&m);
		if (r < 0)
			return r;
		struct region_ent *n = realloc(o->regs, (o->nregs + 1) * sizeof(*n));
		if (!n)
			return -ENOMEM;
		o->regs = n;
		size_t len = (size_t)reg.npages * MV_PAGE_SIZE;
		r = mv_merge_register(m, (void *)(uintptr_t)reg.addr, len);
		if (r < 0)
			return r;
		o->regs[o->nregs++] = (struct region_ent){ (uintptr_t)reg.addr, len };
		registered++;
		return 0;
	}
	case KSM_REMOVE_MEMORY_REGION: remove_regions(o); return 0;
	}
	return -EINVAL;
}

/* Called with klock held; a scan to run is handed back in *todo so it runs after the lock is dropped
 * (a long scan must not hold up every close() in the process). */
static long scan_ioctl(unsigned long req, unsigned long arg, struct ksm_user_scan *todo, mv_merge **ctx)
{
	if (req != KSM_SCAN)
		return -EINVAL;
	struct ksm_user_scan s;
	if (copy_in(&s, arg, sizeof(s)) < 0)
		return -EFAULT;
	if (!(s.flags & ksm_control_flags_run))
		return 0;
	/* The seed counts both down in ints: a count past INT_MAX is negative and, like 0, scans nothing,
	 * and only a scan that would look at a page can find that there is none. */
	if ((int32_t)s.pages_to_scan <= 0 || (int32_t)s.max_pages_to_merge <= 0)
		return 0;
	if (!registered || !proc_ctx || proc_pid != getpid())
		return -EAGAIN; /* no region to scan */
	*todo = s;
	*ctx = proc_ctx;
	return 1;
}

static long run_scan(long r, const struct ksm_user_scan *s, mv_merge *ctx)
{
	if (r != 1)
		return r;
	int n = mv_merge_scan(ctx, s->pages_to_scan, s->max_pages_to_merge, MV_MERGE_STABLE);
	return n < 0 ? n : 0;
}

long mvk_ioctl(int fd, unsigned long req, unsigned long arg)
{
	if (!atomic_load_explicit(&any_fd, memory_order_relaxed))
		return MVK_PASS;
	struct ksm_user_scan todo;
	mv_merge *ctx = NULL;
	pthread_mutex_lock(&klock);
	struct kfd *k = find(fd);
	long r = MVK_PASS;
	if (k) {
		struct kobj *o = k->obj;
		r = o->kind == K_DEV   ? dev_ioctl(req, arg)
		    : o->kind == K_SMA ? sma_ioctl(o, req, arg)
				       : scan_ioctl(req, arg, &todo, &ctx);
	}
	pthread_mutex_unlock(&klock);
	return ctx ? run_scan(r, &todo, ctx) : r;
}

static bool fast_untracked(int fd)
{
	return fd >= 0 && fd < FAST_FDS && !atomic_load_explicit(&fast_ino[fd], memory_order_acquire);
}

void mvk_dup(int oldfd, int newfd)
{
	if (!atomic_load(&any_fd) || (fast_untracked(oldfd) && fast_untracked(newfd)))
		return; /* no lock: the engine dups and closes its own fds with a context's lock held */
	pthread_mutex_lock(&klock);
	for (size_t i = 0; i < nkfds; i++)
		if (kfds[i].fd == newfd) { /* dup2 over one of ours closed it */
			drop_fd_locked(i);
			break;
		}
	struct kfd *k = find(oldfd);
	if (k)
		(void)add_fd(newfd, k->obj);
	pthread_mutex_unlock(&klock);
}

void mvk_forget(int fd)
{
	if (!atomic_load_explicit(&any_fd, memory_order_relaxed) || fast_untracked(fd))
		return;
	pthread_mutex_lock(&klock);
	for (size_t i = 0; i < nkfds; i++)
		if (kfds[i].fd == fd) {
			drop_fd_locked(i);
			break;
		}
	pthread_mutex_unlock(&klock);
}

void mvk_forget_range(unsigned lo, unsigned hi)
{
	if (!atomic_load(&any_fd))
		return;
	pthread_mutex_lock(&klock);
	for (size_t i = 0; i < nkfds;)
		if ((unsigned)kfds[i].fd >= lo && (unsigned)kfds[i].fd <= hi)
			drop_fd_locked(i);
		else
			i++;
	pthread_mutex_unlock(&klock);
}

void mvk_dev_stat(struct stat *sb)
{
	memset(sb, 0, sizeof(*sb));
	sb->st_dev = makedev(0, 5);
	sb->st_ino = 2;
	sb->st_mode = S_IFCHR | 0666;
	sb->st_nlink = 1;
	sb->st_rdev = makedev(10, KSM_MINOR);
	sb->st_blksize = MV_PAGE_SIZE;
}

/* ---- the same operations as functions ---- */

static int on_kind(int fd, enum kind kind, unsigned long req, unsigned long arg)
{
	struct ksm_user_scan todo;
	mv_merge *ctx = NULL;
	pthread_mutex_lock(&klock);
	struct kfd *k = find(fd);
	long r;
	if (!k)
		r = -EBADF;
	else if (k->obj->kind != kind)
		r = -EINVAL;
	else
		r = kind == K_DEV   ? dev_ioctl(req, arg)
		    : kind == K_SMA ? sma_ioctl(k->obj, req, arg)
				    : scan_ioctl(req, arg, &todo, &ctx);
	pthread_mutex_unlock(&klock);
	return (int)(ctx ? run_scan(r, &todo, ctx) : r);
}

MV_EXPORT int mv_ksm_open(int flags)
{
	return mvk_open(flags);
}

MV_EXPORT int mv_ksm_get_api_version(int fd)
{
	return on_kind(fd, K_DEV, KSM_GET_API_VERSION, 0);
}

MV_EXPORT int mv_ksm_create_shared_memory_area(int fd)
{
	return on_kind(fd, K_DEV, KSM_CREATE_SHARED_MEMORY_AREA, 0);
}

MV_EXPORT int mv_ksm_create_scan(int fd)
{
	return on_kind(fd, K_DEV, KSM_CREATE_SCAN, 0);
}

MV_EXPORT int mv_ksm_start_stop_kthread(int fd, const struct ksm_kthread_info *info)
{
	return info ? on_kind(fd, K_DEV, KSM_START_STOP_KTHREAD, (unsigned long)info) : -EFAULT;
}

MV_EXPORT int mv_ksm_get_info_kthread(int fd, struct ksm_kthread_info *info)
{
	return info ? on_kind(fd, K_DEV, KSM_GET_INFO_KTHREAD, (unsigned long)info) : -EFAULT;
}

MV_EXPORT int mv_ksm_register_memory_region(int fd, const struct ksm_memory_region *region)
{
	return region ? on_kind(fd, K_SMA, KSM_REGISTER_MEMORY_REGION, (unsigned long)region) : -EFAULT;
}

MV_EXPORT int mv_ksm_remove_memory_region(int fd)
{
	return on_kind(fd, K_SMA, KSM_REMOVE_MEMORY_REGION, 0);
}

MV_EXPORT int mv_ksm_scan(int fd, const struct ksm_user_scan *scan)
{
	return scan ? on_kind(fd, K_SCAN, KSM_SCAN, (unsigned long)scan) : -EFAULT;
}

MV_EXPORT int mv_ksm_close(int fd)
{
	if (!mvk_tracked(fd))
		return -EBADF;
	mvk_forget(fd);
	return close(fd) < 0 ? -errno : 0;
}

/* The seed's device has no read, write or mmap of its own: those fail as on it (read and write) or reach
 * the memfd behind a shared-memory-area fd (mmap). */
const struct mvd_vdev mvk_vdev = {
	.name = "ksm",
	.path_is = mvk_path_is_ksm,
	.open = mvk_open,
	.tracked = mvk_tracked,
	.dev_stat = mvk_dev_stat,
	.ioctl = mvk_ioctl,
	.dup = mvk_dup,
	.forget = mvk_forget,
	.forget_range = mvk_forget_range,
};
