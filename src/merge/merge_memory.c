/* SPDX-License-Identifier: MIT */
/* The process's memory as the merger sees it: reading pages without faulting, userfaultfd write
 * protection, the mapping at an address (PROCMAP_QUERY, /proc/self/maps), the mapping budget. */
#define _GNU_SOURCE
#include "merge_internal.h"

#include <sys/wait.h>

/* ---- small helpers ---- */

ssize_t mvm_read_self(void *dst, uintptr_t src, size_t len)
{
	struct iovec l = { dst, len }, r = { (void *)src, len };
	ssize_t n = process_vm_readv(getpid(), &l, 1, &r, 1, 0);
	return n < 0 ? -errno : n;
}

/* A fork shares every anonymous page with the child except the pinned ones, which the kernel copies
 * for the child at once: while the child lives, a page still mapped only here is a pinned one. The
 * child is a bare clone (no exit signal, no fork handlers) that runs nothing but two system calls. */
int mvm_pins_probe(struct mv_merge *m, uintptr_t a, size_t n, bool *pinned)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	long pid = syscall(SYS_clone, 0L, NULL, NULL, NULL, 0L);
	if (pid == 0) {
		char c;
		(void)syscall(SYS_close, p[1]);
		(void)syscall(SYS_read, p[0], &c, 1);
		syscall(SYS_exit, 0);
	}
	int err = pid < 0 ? -errno : 0;
	for (size_t i = 0; i < n && !err;) {
		uint64_t pm[BATCH];
		size_t k = n - i < BATCH ? n - i : BATCH;
		if (pread(m->pagemap_fd, pm, k * 8, (off_t)((a / MV_PAGE_SIZE) + i) * 8) != (ssize_t)(k * 8)) {
			err = -EIO;
			break;
		}
		for (size_t j = 0; j < k; j++)
			pinned[i + j] = (pm[j] & MV_PM_PRESENT) && (pm[j] & MV_PM_EXCLUSIVE) && !(pm[j] & MV_PM_FILE);
		i += k;
	}
	(void)mvu_sys_close(p[1]);
	if (pid > 0)
		while (waitpid((pid_t)pid, NULL, __WCLONE) < 0 && errno == EINTR)
			;
	(void)mvu_sys_close(p[0]);
	return err;
}

bool mvm_page_is_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)p;
	for (size_t i = 0; i < MV_PAGE_SIZE / 8; i += 4)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3])
			return false;
	return true;
}

int mvm_uffd_wp(struct mv_merge *m, uintptr_t addr, size_t len, bool on)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = addr, .len = len },
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	return mvu_sys_ioctl(m->uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

void mvm_uffd_wake(struct mv_merge *m, uintptr_t addr, size_t len)
{
	struct uffdio_range r = { .start = addr, .len = len };
	(void)mvu_sys_ioctl(m->uffd, UFFDIO_WAKE, &r);
}

int mvm_uffd_register_mode(struct mv_merge *m, uintptr_t addr, size_t len, uint64_t mode)
{
	struct uffdio_register reg = { .range = { .start = addr, .len = len }, .mode = mode };
	return mvu_sys_ioctl(m->uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

int mvm_uffd_register(struct mv_merge *m, uintptr_t addr, size_t len)
{
	return mvm_uffd_register_mode(m, addr, len, UFFDIO_REGISTER_MODE_WP);
}

/* Lift write protection from every registered mapping in [a, a + len); a waiting writer must never be
 * left behind, so a failure over the whole range is retried mapping by mapping, then page by page. */
void mvm_unprotect(struct mv_merge *m, uintptr_t a, size_t len)
{
	if (mvm_uffd_wp(m, a, len, false) == 0)
		return;
	uintptr_t end = a + len;
	for (uintptr_t p = a; p < end;) {
		struct vma v;
		uintptr_t e;
		if (mvm_vma_at(m, p, &v) == 0 && v.end > p)
			e = v.end < end ? v.end : end;
		else
			e = p + MV_PAGE_SIZE;
		if (mvm_uffd_wp(m, p, e - p, false) < 0 && e - p > MV_PAGE_SIZE)
			for (uintptr_t q = p; q < e; q += MV_PAGE_SIZE)
				(void)mvm_uffd_wp(m, q, MV_PAGE_SIZE, false);
		p = e;
	}
}

static int uffd_open(bool *full)
{
	/* Full mode lets kernel-mode writes (read(2) into the page) wait like user writes; it needs
	 * vm.unprivileged_userfaultfd=1 or CAP_SYS_PTRACE, else user-mode-only is what we get. */
	int fd = mvu_sys_userfaultfd(O_CLOEXEC | O_NONBLOCK);
	*full = fd >= 0;
	if (fd < 0)
		fd = mvu_sys_userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	return fd < 0 ? -errno : fd;
}

int mvm_uffd_setup(struct mv_merge *m)
{
	bool full;
	int probe = uffd_open(&full);
	if (probe < 0)
		return probe;
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	if (mvu_sys_ioctl(probe, UFFDIO_API, &api) < 0) {
		int err = -errno;
		(void)mvu_sys_close(probe);
		return err;
	}
	(void)mvu_sys_close(probe);
	if (!(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP))
		return -ENOSYS;
	uint64_t want = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED |
			UFFD_FEATURE_MOVE;
	int fd = uffd_open(&full);
	if (fd < 0)
		return fd;
	struct uffdio_api api2 = { .api = UFFD_API, .features = api.features & want };
	if (mvu_sys_ioctl(fd, UFFDIO_API, &api2) < 0) {
		int err = -errno;
		(void)mvu_sys_close(fd);
		return err;
	}
	m->uffd = fd;
	m->uffd_full = full;
	m->have_move = api2.features & UFFD_FEATURE_MOVE;
	return 0;
}

static int parse_maps_for(struct mv_merge *m, uintptr_t addr, struct vma *v)
{
	/* Fallback for kernels without PROCMAP_QUERY: find the line of /proc/self/maps covering addr. */
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return -errno;
	char line[512];
	int found = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e, off, ino;
		unsigned maj, min;
		char perms[5];
		if (sscanf(line, "%lx-%lx %4s %lx %x:%x %lu", &s, &e, perms, &off, &maj, &min, &ino) != 7)
			continue;
		if (addr < s || addr >= e)
			continue;
		v->start = s;
		v->end = e;
		v->prot = (perms[0] == 'r' ? MV_VMA_READ : 0) | (perms[1] == 'w' ? MV_VMA_WRITE : 0) |
			  (perms[2] == 'x' ? MV_VMA_EXEC : 0) | (perms[3] == 's' ? MV_VMA_SHARED : 0);
		v->offset = off;
		v->dev = makedev(maj, min);
		v->ino = ino;
		if (ino == 0 && maj == 0 && min == 0)
			v->kind = VMA_ANON;
		else if (ino == m->store_ino && makedev(maj, min) == m->store_dev)
			v->kind = VMA_STORE;
		else
			v->kind = VMA_OTHER;
		found = 1;
		break;
	}
	fclose(f);
	if (!found) {
		v->start = addr;
		v->end = addr + MV_PAGE_SIZE;
		v->kind = VMA_NONE;
		v->prot = 0;
	}
	return 0;
}

/* The mapping covering addr; VMA_NONE (one page long) when nothing is mapped there. */
int mvm_vma_at(struct mv_merge *m, uintptr_t addr, struct vma *v)
{
	if (!m->have_procmap_query)
		return parse_maps_for(m, addr, v);
	struct mvm_procmap_query q = { .size = sizeof(q), .query_addr = addr };
	if (mvu_sys_ioctl(m->maps_fd, MV_PROCMAP_QUERY, &q) < 0) {
		if (errno == ENOENT) {
			v->start = addr;
			v->end = addr + MV_PAGE_SIZE;
			v->kind = VMA_NONE;
			v->prot = 0;
			return 0;
		}
		if (errno == ENOTTY || errno == EINVAL) {
			m->have_procmap_query = false;
			return parse_maps_for(m, addr, v);
		}
		return -errno;
	}
	v->start = q.vma_start;
	v->end = q.vma_end;
	v->prot = (unsigned)q.vma_flags & (MV_VMA_READ | MV_VMA_WRITE | MV_VMA_EXEC | MV_VMA_SHARED);
	v->offset = q.vma_offset;
	v->dev = makedev(q.dev_major, q.dev_minor);
	v->ino = q.inode;
	if (q.inode == 0 && q.dev_major == 0 && q.dev_minor == 0)
		v->kind = VMA_ANON;
	else if (q.inode == m->store_ino && makedev(q.dev_major, q.dev_minor) == m->store_dev)
		v->kind = VMA_STORE;
	else
		v->kind = VMA_OTHER;
	return 0;
}

int mvm_prot_of(const struct vma *v)
{
	return (v->prot & MV_VMA_READ ? PROT_READ : 0) | (v->prot & MV_VMA_WRITE ? PROT_WRITE : 0) |
	       (v->prot & MV_VMA_EXEC ? PROT_EXEC : 0);
}

bool mvm_vma_mergeable(const struct vma *v)
{
	return (v->kind == VMA_ANON || v->kind == VMA_STORE) && !(v->prot & MV_VMA_SHARED) && (v->prot & MV_VMA_READ) &&
	       (v->prot & MV_VMA_WRITE);
}

uint64_t mvm_count_maps(void)
{
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	char buf[65536];
	uint64_t n = 0;
	ssize_t r;
	while ((r = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < r; i++)
			n += buf[i] == '\n';
	(void)mvu_sys_close(fd);
	return n;
}

/* ---- mapping flags ---- */

static unsigned vmflags_parse(const char *s)
{
	unsigned bits = 0;
	for (; *s; s++) {
		if (s[0] == ' ' || s[0] == '\n' || !s[1])
			continue;
		uint16_t f = (uint16_t)(s[0] << 8 | s[1]);
		if (f == ('l' << 8 | 'o'))
			bits |= VMF_LOCKED;
		else if (f == ('d' << 8 | 'c'))
			bits |= VMF_DONTCOPY;
		else if (f == ('w' << 8 | 'f'))
			bits |= VMF_WIPEONFORK;
		else if (f == ('d' << 8 | 'd'))
			bits |= VMF_DONTDUMP;
		s++;
	}
	return bits;
}

uint64_t mvm_vmflags_refresh(struct mv_merge *m, bool force)
{
	uint64_t now = mvu_now_ns();
	/* an invalidated snapshot (0) merges nothing until it is read again, so that is done at once */
	if (!force && m->vmflags_pass && (m->vmflags_pass == m->full_scans + 1 || now - m->vmflags_ns < VMFLAGS_MIN_NS))
		return 0;
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return 0;
	/* procfs reports 1 KiB blocks: stdio would read a line or two at a time */
	(void)setvbuf(f, NULL, _IOFBF, 65536);
	m->vmflags_ns = now;
	char line[1024];
	uintptr_t start = 0, end = 0;
	uint64_t maps = 0;
	uint32_t n = 0;
	bool ok = true;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s0, e0;
		if (!strncmp(line, "VmFlags:", 8)) {
			unsigned bits = vmflags_parse(line + 8);
			if (!bits)
				continue;
			if (n == m->vmflags_cap) {
				uint32_t cap = m->vmflags_cap ? m->vmflags_cap * 2 : 64;
				struct vmflag_span *t = realloc(m->vmflags, cap * sizeof(*t));
				if (!t) {
					ok = false;
					break;
				}
				m->vmflags = t;
				m->vmflags_cap = cap;
			}
			m->vmflags[n++] = (struct vmflag_span){ start, end, bits };
		} else if (line[0] != ' ' && sscanf(line, "%lx-%lx ", &s0, &e0) == 2 && strchr(line, ' ')) {
			start = s0;
			end = e0;
			maps++;
		}
	}
	fclose(f);
	if (!ok) {
		/* without the flags nothing is known to be plain: merge nothing until they can be read */
		m->vmflags_pass = 0;
		m->nvmflags = 0;
		return 0;
	}
	m->nvmflags = n;
	m->vmflags_pass = m->full_scans + 1;
	return maps;
}

unsigned mvm_vmflags_at(const struct mv_merge *m, uintptr_t addr, uintptr_t *end)
{
	if (!m->vmflags_pass) {
		*end = UINTPTR_MAX; /* flags unknown: nothing is merged */
		return VMF_NEVER;
	}
	uint32_t lo = 0, hi = m->nvmflags;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (m->vmflags[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < m->nvmflags && m->vmflags[lo].start <= addr) {
		*end = m->vmflags[lo].end;
		return m->vmflags[lo].bits;
	}
	*end = lo < m->nvmflags ? m->vmflags[lo].start : UINTPTR_MAX;
	return 0;
}

unsigned mvm_merged_vmflags(struct mv_merge *m, uintptr_t addr)
{
	for (uint32_t i = 0; i < m->nranges; i++) {
		struct range *rg = m->ranges[i];
		if (rg && addr >= rg->start && addr < rg->start + rg->npages * MV_PAGE_SIZE) {
			uint8_t f = rg->flags[(addr - rg->start) / MV_PAGE_SIZE];
			return (f & F_DONTCOPY ? VMF_DONTCOPY : 0) | (f & F_DONTDUMP ? VMF_DONTDUMP : 0);
		}
	}
	uintptr_t end;
	(void)mvm_vmflags_refresh(m, true);
	return m->vmflags_pass ? mvm_vmflags_at(m, addr, &end) & (VMF_DONTCOPY | VMF_DONTDUMP | VMF_LOCKED) : 0;
}

void mvm_vmflags_apply(uintptr_t a, size_t len, unsigned bits)
{
	if (bits & VMF_DONTCOPY)
		(void)mvu_sys_madvise((void *)a, len, MADV_DONTFORK);
	if (bits & VMF_DONTDUMP)
		(void)mvu_sys_madvise((void *)a, len, MADV_DONTDUMP);
}

uint64_t mvm_read_max_map_count(void)
{
	char buf[32] = { 0 };
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 65530;
	ssize_t r = read(fd, buf, sizeof(buf) - 1);
	(void)mvu_sys_close(fd);
	unsigned long long v = r > 0 ? strtoull(buf, NULL, 10) : 0;
	return v ? v : 65530;
}

int mvm_file_vma_in(int maps_fd, uintptr_t addr, uintptr_t end, struct vma *v)
{
	struct mvm_procmap_query q = {
		.size = sizeof(q),
		.query_flags = MV_PROCMAP_QUERY_COVERING_OR_NEXT_VMA | MV_PROCMAP_QUERY_FILE_BACKED_VMA,
		.query_addr = addr,
	};
	if (mvu_sys_ioctl(maps_fd, MV_PROCMAP_QUERY, &q) == 0) {
		if (q.vma_start >= end)
			return 0;
		*v = (struct vma){
			.start = q.vma_start,
			.end = q.vma_end,
			.prot = (unsigned)q.vma_flags & (MV_VMA_READ | MV_VMA_WRITE | MV_VMA_EXEC | MV_VMA_SHARED),
			.kind = VMA_OTHER,
			.offset = q.vma_offset,
			.dev = makedev(q.dev_major, q.dev_minor),
			.ino = q.inode,
		};
		return 1;
	}
	if (errno == ENOENT)
		return 0;
	if (errno != ENOTTY && errno != EINVAL)
		return -errno;
	/* no PROCMAP_QUERY (before 6.11): the text */
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return -errno;
	char line[512];
	int found = 0;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long s, e, off, ino;
		unsigned maj, min;
		char perms[5];
		if (sscanf(line, "%lx-%lx %4s %lx %x:%x %lu", &s, &e, perms, &off, &maj, &min, &ino) != 7)
			continue;
		if (e <= addr || (maj == 0 && min == 0 && ino == 0))
			continue;
		if (s >= end)
			break;
		*v = (struct vma){
			.start = s,
			.end = e,
			.prot = (perms[0] == 'r' ? MV_VMA_READ : 0) | (perms[1] == 'w' ? MV_VMA_WRITE : 0) |
				(perms[2] == 'x' ? MV_VMA_EXEC : 0) | (perms[3] == 's' ? MV_VMA_SHARED : 0),
			.kind = VMA_OTHER,
			.offset = off,
			.dev = makedev(maj, min),
			.ino = ino,
		};
		found = 1;
	}
	fclose(f);
	return found;
}
