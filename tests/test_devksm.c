/* SPDX-License-Identifier: MIT */
/* The seed's /dev/ksm through libmemvisor-preload.so, the way an unmodified program uses it: plain
 * open/ioctl/close with the seed's structs and numbers. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "memvisor/ksm.h" /* the seed's structs and ioctl numbers only */

#define PG 4096

static uint8_t *pages_of(size_t n, int distinct)
{
	uint8_t *p = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	for (size_t i = 0; i < n; i++)
		for (size_t b = 0; b < PG; b += 8) {
			uint64_t v = (uint64_t)(i % (size_t)distinct) * 0x9E3779B97F4A7C15ull + b;
			memcpy(p + i * PG + b, &v, 8);
		}
	return p;
}

static bool intact(const uint8_t *p, size_t n, int distinct)
{
	for (size_t i = 0; i < n; i++)
		for (size_t b = 0; b < PG; b += 8) {
			uint64_t v = (uint64_t)(i % (size_t)distinct) * 0x9E3779B97F4A7C15ull + b, got;
			memcpy(&got, p + i * PG + b, 8);
			if (got != v)
				return false;
		}
	return true;
}

/* Pages of [p, p + n) that are mapped from memvisor's store of merged pages. */
static size_t merged_pages(const uint8_t *p, size_t n)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	size_t count = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx", &s, &e) != 2 || !strstr(line, "memvisor-merge"))
			continue;
		uintptr_t lo = s > (uintptr_t)p ? s : (uintptr_t)p;
		uintptr_t hi = e < (uintptr_t)p + n * PG ? e : (uintptr_t)p + n * PG;
		if (hi > lo)
			count += (hi - lo) / PG;
	}
	fclose(f);
	return count;
}

static int open_ksm(void)
{
	int fd = open("/dev/ksm", O_RDWR | O_CLOEXEC);
	if (fd < 0 && (errno == ENOSYS || errno == EPERM))
		skip();
	assert_true(fd >= 0);
	return fd;
}

/* n pages of `distinct` contents, registered through a fresh /dev/ksm area and merged by three scans. */
struct merged_area {
	uint8_t *p;
	int fd, sma, scan;
};

static struct merged_area merge_through_ksm(size_t n, int distinct)
{
	struct merged_area a = { .p = pages_of(n, distinct) };
	a.fd = open_ksm();
	a.sma = ioctl(a.fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	a.scan = ioctl(a.fd, KSM_CREATE_SCAN, 0);
	struct ksm_memory_region reg = { .npages = n, .addr = (uintptr_t)a.p };
	assert_int_equal(ioctl(a.sma, KSM_REGISTER_MEMORY_REGION, &reg), 0);
	struct ksm_user_scan us = { .pages_to_scan = n, .max_pages_to_merge = n, .flags = ksm_control_flags_run };
	for (int i = 0; i < 3; i++)
		assert_int_equal(ioctl(a.scan, KSM_SCAN, &us), 0);
	assert_int_equal(merged_pages(a.p, n), n);
	return a;
}

static void test_device(void **state)
{
	struct stat st;
	assert_int_equal(stat("/dev/ksm", &st), 0);
	assert_true(S_ISCHR(st.st_mode));
	assert_int_equal(major(st.st_rdev), 10);
	assert_int_equal(minor(st.st_rdev), 233);
	assert_int_equal(access("/dev/ksm", R_OK | W_OK), 0);
	int fd = open_ksm();
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(S_ISCHR(st.st_mode));
	assert_int_equal(ioctl(fd, KSM_GET_API_VERSION, 0), KSM_API_VERSION);
	struct ksm_kthread_info info;
	memset(&info, 0xee, sizeof(info));
	assert_int_equal(ioctl(fd, KSM_GET_INFO_KTHREAD, &info), 0);
	assert_int_equal(info.sleep, 0); /* nothing set yet: the seed's zeroed statics */
	assert_int_equal(info.pages_to_scan, 0);
	assert_int_equal(info.flags, 0);
	assert_int_equal(close(fd), 0);
	/* closed: the number is no longer ours */
	assert_int_equal(ioctl(fd, KSM_GET_API_VERSION, 0), -1);
	assert_int_equal(errno, EBADF);
}

static void test_register_scan_remove(void **state)
{
	const size_t N = 128;
	uint8_t *p = pages_of(N, 8);
	int fd = open_ksm();
	int sma = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	int scan = ioctl(fd, KSM_CREATE_SCAN, 0);
	assert_true(sma >= 0 && scan >= 0 && sma != scan);
	struct ksm_memory_region reg = { .npages = N, .addr = (uintptr_t)p };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), 0);
	/* without the run flag a scan does nothing */
	struct ksm_user_scan us = { .pages_to_scan = N, .max_pages_to_merge = N, .flags = 0 };
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	assert_int_equal(merged_pages(p, N), 0);
	/* a zero merge limit scans nothing either (the seed's loop) */
	us = (struct ksm_user_scan){ .pages_to_scan = N, .max_pages_to_merge = 0, .flags = ksm_control_flags_run };
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	assert_int_equal(merged_pages(p, N), 0);
	/* a merge limit stops the scan early */
	us = (struct ksm_user_scan){ .pages_to_scan = N, .max_pages_to_merge = 10, .flags = ksm_control_flags_run };
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	size_t first = merged_pages(p, N);
	if (first < 10 || first > 11)
		fail_msg("merged %zu pages with a limit of 10", first);
	us.max_pages_to_merge = N;
	for (int i = 0; i < 3; i++)
		assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	assert_int_equal(merged_pages(p, N), N);
	assert_true(intact(p, N, 8));
	p[3 * PG] ^= 1; /* copy on write */
	assert_int_equal(p[(3 + 8) * PG], (uint8_t)((uint64_t)3 * 0x9E3779B97F4A7C15ull));
	p[3 * PG] ^= 1;
	assert_int_equal(ioctl(sma, KSM_REMOVE_MEMORY_REGION, 0), 0);
	assert_int_equal(merged_pages(p, N), 0);
	assert_true(intact(p, N, 8));
	/* nothing registered any more */
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), -1);
	assert_int_equal(errno, EAGAIN);
	close(sma);
	close(scan);
	close(fd);
	munmap(p, N * PG);
}

static void test_close_and_dup(void **state)
{
	const size_t N = 32;
	uint8_t *p = pages_of(N, 2);
	int fd = open_ksm();
	int sma = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	int scan = ioctl(fd, KSM_CREATE_SCAN, 0);
	struct ksm_memory_region reg = { .npages = N, .addr = (uintptr_t)p };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), 0);
	struct ksm_user_scan us = { .pages_to_scan = N, .max_pages_to_merge = N, .flags = ksm_control_flags_run };
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	assert_int_equal(merged_pages(p, N), N);
	int d = dup(sma);
	assert_true(d >= 0);
	close(sma); /* the dup keeps the area alive */
	assert_int_equal(merged_pages(p, N), N);
	assert_int_equal(ioctl(d, KSM_REGISTER_MEMORY_REGION, &reg), -1);
	assert_int_equal(errno, EEXIST);
	int d2 = fcntl(d, F_DUPFD_CLOEXEC, 100);
	assert_true(d2 >= 100);
	close(d);
	assert_int_equal(merged_pages(p, N), N);
	close(d2); /* the last one: its regions go, merged pages become private again */
	assert_int_equal(merged_pages(p, N), 0);
	assert_true(intact(p, N, 2));
	close(scan);
	close(fd);
	munmap(p, N * PG);
}

/* The program's own madvise on merged memory answers as on the anonymous memory it was. */
static void test_madvise_merged(void **state)
{
	const size_t N = 64;
	struct merged_area m = merge_through_ksm(N, 8);
	uint8_t *p = m.p;
	int fd = m.fd, sma = m.sma, scan = m.scan;
	assert_int_equal(madvise(p + 4 * PG, 8 * PG, MADV_DONTNEED), 0);
	for (size_t b = 4 * PG; b < 12 * PG; b++)
		if (p[b])
			fail_msg("byte %zu after MADV_DONTNEED: %u", b, p[b]);
	assert_int_equal(merged_pages(p, N), N - 8);
	assert_int_equal(madvise(p + 16 * PG, 4 * PG, MADV_FREE), 0);
	assert_int_equal(madvise(p + 24 * PG, 8 * PG, MADV_WIPEONFORK), 0);
	assert_int_equal(merged_pages(p, N), N - 20);
	assert_true(intact(p + 32 * PG, N - 32, 8));
	assert_true(intact(p + 24 * PG, 8, 8));
	assert_true(intact(p, 4, 8));
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (size_t b = 24 * PG; b < 32 * PG; b++)
			if (p[b])
				_exit(1);
		_exit(0);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_equal(ioctl(sma, KSM_REMOVE_MEMORY_REGION, 0), 0);
	assert_int_equal(merged_pages(p, N), 0);
	assert_true(intact(p + 24 * PG, 8, 8));
	close(sma);
	close(scan);
	close(fd);
	munmap(p, N * PG);
}

/* The program's own mremap and munmap reach the engine too: growing a merged run reads zeros and the
 * moved pages are the program's own, not the store's next pages. */
static void test_mremap_munmap_merged(void **state)
{
	const size_t N = 32;
	struct merged_area m = merge_through_ksm(N, 8);
	uint8_t *p = m.p;
	int fd = m.fd, sma = m.sma, scan = m.scan;
	/* the last 8 pages, one merged run, grown to 16 wherever they fit */
	uint8_t *q = mremap(p + (N - 8) * PG, 8 * PG, 16 * PG, MREMAP_MAYMOVE);
	assert_true(q != MAP_FAILED);
	assert_true(intact(q, 8, 8));
	for (size_t b = 8 * PG; b < 16 * PG; b++)
		if (q[b])
			fail_msg("byte %zu of the grown part: %u", b - 8 * PG, q[b]);
	assert_int_equal(merged_pages(q, 16), 0);
	assert_true(intact(p, N - 8, 8));
	assert_int_equal(munmap(p + 8 * PG, 8 * PG), 0);
	assert_int_equal(merged_pages(p, N - 8), N - 16);
	assert_true(intact(p, 8, 8));
	close(sma);
	close(scan);
	close(fd);
	munmap(q, 16 * PG);
	munmap(p, 8 * PG);
	munmap(p + 16 * PG, (N - 24) * PG);
}

/* The store of merged pages grows into the engine's reserved room under the preload, with regions
 * registered on both sides of it, and every page stays merged and intact. */
static void test_store_grows(void **state)
{
	const size_t A = 16, B = 4096;
	uint8_t *a = pages_of(A, 4);
	int fd = open_ksm();
	int sma = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	int scan = ioctl(fd, KSM_CREATE_SCAN, 0);
	struct ksm_memory_region reg = { .npages = A, .addr = (uintptr_t)a };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), 0);
	struct ksm_user_scan us = { .pages_to_scan = 4 * B,
				    .max_pages_to_merge = 4 * B,
				    .flags = ksm_control_flags_run };
	for (int i = 0; i < 3; i++)
		assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	/* mapped after the engine's first mappings, so the registered span covers them */
	uint8_t *b = pages_of(B, (int)(B / 2));
	reg = (struct ksm_memory_region){ .npages = B, .addr = (uintptr_t)b };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	assert_int_equal(merged_pages(a, A), A);
	assert_int_equal(merged_pages(b, B), B);
	assert_true(intact(a, A, 4));
	assert_true(intact(b, B, (int)(B / 2)));
	close(sma);
	close(scan);
	close(fd);
	munmap(a, A * PG);
	munmap(b, B * PG);
}

static void test_scanner_thread(void **state)
{
	const size_t N = 256;
	uint8_t *p = pages_of(N, 4);
	int fd = open_ksm();
	int sma = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	struct ksm_memory_region reg = { .npages = N, .addr = (uintptr_t)p };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), 0);
	struct ksm_kthread_info info = {
		.sleep = 1000, .pages_to_scan = 0, .max_pages_to_merge = 64, .flags = ksm_control_flags_run
	};
	assert_int_equal(ioctl(fd, KSM_START_STOP_KTHREAD, &info), -1);
	assert_int_equal(errno, EPERM);
	info.pages_to_scan = 64;
	info.max_pages_to_merge = 0;
	assert_int_equal(ioctl(fd, KSM_START_STOP_KTHREAD, &info), -1);
	assert_int_equal(errno, EPERM);
	info.max_pages_to_merge = 64;
	assert_int_equal(ioctl(fd, KSM_START_STOP_KTHREAD, &info), 0);
	struct ksm_kthread_info back;
	assert_int_equal(ioctl(fd, KSM_GET_INFO_KTHREAD, &back), 0);
	assert_memory_equal(&back, &info, sizeof(info));
	for (int i = 0; i < 1000 && merged_pages(p, N) < N; i++)
		usleep(2000);
	assert_int_equal(merged_pages(p, N), N);
	assert_true(intact(p, N, 4));
	info.flags = 0; /* stop; counts may be anything when stopping */
	info.pages_to_scan = 0;
	assert_int_equal(ioctl(fd, KSM_START_STOP_KTHREAD, &info), 0);
	assert_int_equal(ioctl(fd, KSM_GET_INFO_KTHREAD, &back), 0);
	assert_int_equal(back.flags, 0);
	close(sma);
	close(fd);
	munmap(p, N * PG);
}

static void test_bad_input(void **state)
{
	int fd = open_ksm();
	int sma = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	int scan = ioctl(fd, KSM_CREATE_SCAN, 0);
	uint8_t *p = pages_of(8, 1);
	struct ksm_memory_region reg;
	/* unreadable structs */
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, (void *)1), -1);
	assert_int_equal(errno, EFAULT);
	assert_int_equal(ioctl(scan, KSM_SCAN, NULL), -1);
	assert_int_equal(errno, EFAULT);
	assert_int_equal(ioctl(fd, KSM_START_STOP_KTHREAD, (void *)8), -1);
	assert_int_equal(errno, EFAULT);
	void *ro = mmap(NULL, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_int_equal(ioctl(fd, KSM_GET_INFO_KTHREAD, ro), -1); /* the reply cannot be written */
	assert_int_equal(errno, EFAULT);
	/* bad regions */
	reg = (struct ksm_memory_region){ .npages = 0, .addr = (uintptr_t)p };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), -1);
	assert_int_equal(errno, EINVAL);
	reg = (struct ksm_memory_region){ .npages = 1, .addr = (uintptr_t)p + 12 };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), -1);
	assert_int_equal(errno, EINVAL);
	reg = (struct ksm_memory_region){ .npages = 0xffffffffu, .addr = (uintptr_t)p };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), -1);
	/* past the mapping: a hole or someone else's memory */
	if (errno != ENOMEM && errno != EINVAL && errno != EACCES)
		fail_msg("huge region: %s", strerror(errno));
	munmap(p + 4 * PG, PG);
	reg = (struct ksm_memory_region){ .npages = 8, .addr = (uintptr_t)p };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), -1);
	assert_int_equal(errno, ENOMEM); /* a hole */
	reg = (struct ksm_memory_region){ .npages = 1, .addr = (uintptr_t)ro };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), -1);
	assert_int_equal(errno, EACCES);
	/* garbage */
	uint64_t junk[4];
	for (int i = 0; i < 200; i++) {
		for (int w = 0; w < 4; w++)
			junk[w] = ((uint64_t)rand() << 33) ^ ((uint64_t)rand() << 7) ^ (uint64_t)rand();
		int r = ioctl(sma, KSM_REGISTER_MEMORY_REGION, junk);
		assert_true(r == -1 || r == 0);
		if (r == 0) /* a lucky junk region that is real memory: take it back */
			assert_int_equal(ioctl(sma, KSM_REMOVE_MEMORY_REGION, 0), 0);
	}
	/* requests on the wrong kind of fd, and unknown requests */
	assert_int_equal(ioctl(sma, KSM_SCAN, &junk), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(ioctl(scan, KSM_REGISTER_MEMORY_REGION, &reg), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(ioctl(fd, KSM_SCAN, &junk), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(ioctl(fd, _IO(KSMIO, 0x7f), 0), -1);
	assert_int_equal(errno, EINVAL);
	/* nothing registered: a scan has nothing to do */
	struct ksm_user_scan us = { .pages_to_scan = 8, .max_pages_to_merge = 8, .flags = ksm_control_flags_run };
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), -1);
	assert_int_equal(errno, EAGAIN);
	/* other fds are left alone */
	int null = open("/dev/null", O_RDONLY);
	assert_int_equal(ioctl(null, KSM_GET_API_VERSION, 0), -1);
	assert_int_equal(errno, ENOTTY);
	close(null);
	close(sma);
	close(scan);
	close(fd);
	munmap(p, 4 * PG);
	munmap(p + 5 * PG, 3 * PG);
	munmap(ro, PG);
}

/* As the seed's device, it has no read or write, on any of its three kinds of fd. */
static void test_no_read_write(void **state)
{
	int fd = open_ksm();
	int sma = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	int scan = ioctl(fd, KSM_CREATE_SCAN, 0);
	int fds[] = { fd, sma, scan };
	char c = 'x';

	for (int i = 0; i < 3; i++) {
		assert_int_equal(write(fds[i], &c, 1), -1);
		assert_int_equal(errno, EINVAL);
		assert_int_equal(read(fds[i], &c, 1), -1);
		assert_int_equal(errno, EINVAL);
	}
	close(scan);
	close(sma);
	close(fd);
}

/* The seed counts KSM_SCAN's pages in ints: 0 and counts past INT_MAX scan nothing and succeed, with or
 * without regions; only a scan that would look at a page finds there is none (EAGAIN). */
static void test_scan_counts(void **state)
{
	const size_t N = 16;
	int fd = open_ksm();
	int sma = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	int scan = ioctl(fd, KSM_CREATE_SCAN, 0);
	struct ksm_user_scan us = { .pages_to_scan = 0, .max_pages_to_merge = 8, .flags = ksm_control_flags_run };

	assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0); /* nothing registered, nothing to look at */
	us.pages_to_scan = 0xffffffffu;
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	uint8_t *p = pages_of(N, 1);
	struct ksm_memory_region reg = { .npages = N, .addr = (uintptr_t)p };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), 0);
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0); /* -1 pages: nothing */
	us = (struct ksm_user_scan){ .pages_to_scan = N,
				     .max_pages_to_merge = 0x80000000u,
				     .flags = ksm_control_flags_run };
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	assert_int_equal(merged_pages(p, N), 0);
	us.max_pages_to_merge = N;
	assert_int_equal(ioctl(scan, KSM_SCAN, &us), 0);
	assert_int_equal(merged_pages(p, N), N);
	close(scan);
	close(sma);
	close(fd);
	munmap(p, N * PG);
}

/* A KSM fd closed behind libc's back (a raw close) does not make the next file with its number a KSM fd. */
static void test_raw_close(void **state)
{
	int fd = open_ksm();
	int sma = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	assert_true(sma >= 0);
	assert_int_equal(syscall(SYS_close, sma), 0);
	int other = open("/dev/null", O_RDWR | O_CLOEXEC);
	assert_int_equal(other, sma); /* the lowest free number */
	char c = 'x';
	assert_int_equal(write(other, &c, 1), 1); /* /dev/null's write, not the device's EINVAL */
	struct ksm_memory_region reg = { .npages = 1, .addr = 0 };
	assert_int_equal(ioctl(other, KSM_REGISTER_MEMORY_REGION, &reg), -1);
	assert_int_equal(errno, ENOTTY); /* /dev/null's answer */
	close(other);
	close(fd);
}

/* Boards in dir, or only those of process pid (their names start "<pid>-"). */
/* The scanner thread reads and maps while it holds its context's lock; registering and closing areas
 * take the device's lock and then the context's. The preload must not take the device's lock for the
 * scanner's reads, or the two deadlock (it did within a few iterations). */
static void test_scanner_and_areas_do_not_deadlock(void **state)
{
	const size_t N = 64;
	int fd = open_ksm();
	int sma = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	uint8_t *p = pages_of(N, 4);
	struct ksm_memory_region reg = { .npages = N, .addr = (uintptr_t)p };
	assert_int_equal(ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg), 0);
	struct ksm_kthread_info ki = {
		.sleep = 0, .pages_to_scan = 1000, .max_pages_to_merge = 1000, .flags = ksm_control_flags_run
	};
	assert_int_equal(ioctl(fd, KSM_START_STOP_KTHREAD, &ki), 0);
	uint8_t *b = pages_of(4, 1);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* the fork child owns no scanner; the parent keeps going below */
		_exit(0);
	}
	assert_int_equal(waitpid(pid, NULL, 0), pid);
	for (int i = 0; i < 3000; i++) {
		int s2 = ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
		struct ksm_memory_region r2 = { .npages = 4, .addr = (uintptr_t)b };
		assert_true(s2 >= 0);
		assert_int_equal(ioctl(s2, KSM_REGISTER_MEMORY_REGION, &r2), 0);
		close(s2); /* unregisters under the device's lock */
	}
	ki.flags = 0;
	assert_int_equal(ioctl(fd, KSM_START_STOP_KTHREAD, &ki), 0);
	assert_true(intact(p, N, 4));
	close(sma);
	close(fd);
	munmap(p, N * PG);
	munmap(b, 4 * PG);
}

static int count_boards(const char *dir, pid_t pid)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char prefix[32];
	int n = 0;
	snprintf(prefix, sizeof(prefix), "%d-", (int)pid);
	while (d && (e = readdir(d)))
		n += strstr(e->d_name, ".board") && (!pid || strncmp(e->d_name, prefix, strlen(prefix)) == 0);
	if (d)
		closedir(d);
	return n;
}

/* A merging process killed with SIGKILL leaves its statistics board; the next process that merges
 * removes it. */
static void test_dead_boards_removed(void **state)
{
	char dir[300], self[256];
	snprintf(dir, sizeof(dir), "%s/merge", getenv("MEMVISOR_RUNTIME_DIR"));
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	assert_true(n > 0);
	self[n] = '\0';
	int before = count_boards(dir, 0);
	int p[2];
	assert_int_equal(pipe(p), 0);
	pid_t victim = fork();
	assert_true(victim >= 0);
	if (victim == 0) {
		dup2(p[1], 1);
		execl(self, "test_devksm", "--merge-and-wait", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	char c;
	assert_int_equal(read(p[0], &c, 1), 1); /* it merged, so its board is up */
	close(p[0]);
	assert_int_equal(count_boards(dir, victim), 1);
	kill(victim, SIGKILL);
	assert_int_equal(waitpid(victim, NULL, 0), victim);
	assert_int_equal(count_boards(dir, victim), 1); /* nobody cleaned up after it */
	pid_t next = fork();
	assert_true(next >= 0);
	if (next == 0) {
		execl(self, "test_devksm", "--merge-and-exit", (char *)NULL);
		_exit(127);
	}
	int st;
	assert_int_equal(waitpid(next, &st, 0), next);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_equal(count_boards(dir, victim), 0); /* swept by the next one */
	assert_int_equal(count_boards(dir, next), 0);   /* which took its own board when it exited */
	assert_int_equal(count_boards(dir, 0), before);
}

/* The processes of test_dead_boards_removed: a context of their own, made through /dev/ksm. */
static int merge_child(bool wait)
{
	uint8_t *p = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 1;
	memset(p, 7, 4 * PG);
	int fd = open("/dev/ksm", O_RDWR | O_CLOEXEC);
	int sma = fd < 0 ? -1 : ioctl(fd, KSM_CREATE_SHARED_MEMORY_AREA, 0);
	int scan = fd < 0 ? -1 : ioctl(fd, KSM_CREATE_SCAN, 0);
	struct ksm_memory_region reg = { .npages = 4, .addr = (uintptr_t)p };
	struct ksm_user_scan us = { .pages_to_scan = 4, .max_pages_to_merge = 4, .flags = ksm_control_flags_run };
	if (sma < 0 || scan < 0 || ioctl(sma, KSM_REGISTER_MEMORY_REGION, &reg) < 0 || ioctl(scan, KSM_SCAN, &us) < 0)
		return 2;
	if (wait) {
		if (write(1, "m", 1) != 1)
			return 3;
		for (;;)
			pause();
	}
	close(scan);
	close(sma);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--merge-and-wait") == 0)
		return merge_child(true);
	if (argc == 2 && strcmp(argv[1], "--merge-and-exit") == 0)
		return merge_child(false);
	/* Hermetic: the merge contexts publish their boards in a runtime directory of this test's own. */
	char rt[] = "/tmp/mvtest-XXXXXX";
	if (!mkdtemp(rt))
		return 1;
	setenv("MEMVISOR_RUNTIME_DIR", rt, 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_device),
		cmocka_unit_test(test_register_scan_remove),
		cmocka_unit_test(test_close_and_dup),
		cmocka_unit_test(test_madvise_merged),
		cmocka_unit_test(test_mremap_munmap_merged),
		cmocka_unit_test(test_store_grows),
		cmocka_unit_test(test_scanner_thread),
		cmocka_unit_test(test_bad_input),
		cmocka_unit_test(test_no_read_write),
		cmocka_unit_test(test_scan_counts),
		cmocka_unit_test(test_raw_close),
		cmocka_unit_test(test_dead_boards_removed),
		cmocka_unit_test(test_scanner_and_areas_do_not_deadlock),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	char cmd[64];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", rt);
	if (system(cmd) != 0)
		return 1;
	return r;
}
