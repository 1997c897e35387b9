/* SPDX-License-Identifier: MIT */
/* Memory that the kernel or a device writes is never merged away from under the write: io_uring fixed
 * buffers (pinned for as long as they are registered) holding duplicate and zero pages, and O_DIRECT
 * reads racing a scanner that keeps merging the pages they read into. Checked byte for byte. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "memvisor/merge.h"

#define PG 4096
#define PM_PRESENT (1ull << 63)
#define PM_FILE (1ull << 61)

static uint64_t pagemap(const void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t v = 0;
	if (fd >= 0) {
		if (pread(fd, &v, 8, (off_t)((uintptr_t)addr / PG) * 8) != 8)
			v = 0;
		close(fd);
	}
	return v;
}

static uint8_t *map_anon(size_t pages)
{
	void *p = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	return p;
}

static void make_dir(char *dir, size_t len)
{
	const char *base = getenv("TMPDIR");
	snprintf(dir, len, "%s/mv-pins-XXXXXX", base && *base ? base : "/tmp");
	assert_non_null(mkdtemp(dir));
}

/* A file of `pages` pages in a fresh directory, page i filled with byte fill + i. */
static int data_file(char *dir, size_t dirlen, size_t pages, int fill, int extra_flags)
{
	make_dir(dir, dirlen);
	char path[512];
	snprintf(path, sizeof(path), "%s/data", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	uint8_t page[PG];
	for (size_t i = 0; i < pages; i++) {
		memset(page, fill + (int)i, PG);
		assert_int_equal(pwrite(fd, page, PG, (off_t)(i * PG)), PG);
	}
	assert_int_equal(fsync(fd), 0);
	close(fd);
	fd = open(path, O_RDONLY | O_CLOEXEC | extra_flags);
	assert_true(fd >= 0);
	unlink(path);
	return fd;
}

/* Pages of buf that the merger replaced by a canonical page (a file page) or by the zero page. */
static size_t merged_pages(const uint8_t *buf, size_t pages, bool zero)
{
	size_t n = 0;
	for (size_t i = 0; i < pages; i++) {
		if (!zero) /* a merged page is mapped on first access */
			(void)*(volatile const uint8_t *)(buf + i * PG);
		uint64_t pm = pagemap(buf + i * PG);
		if (zero ? !(pm & PM_PRESENT) : (pm & PM_PRESENT) && (pm & PM_FILE))
			n++;
	}
	return n;
}

/* io_uring pins fixed buffers when they are registered; a READ_FIXED writes the pinned pages. */
static void fixed_buffer_case(int fill)
{
	enum { BUF = 16, TWIN = 16 };
	char dir[256];
	int fd = data_file(dir, sizeof(dir), BUF, 0x40, 0);
	uint8_t *twin = map_anon(TWIN);
	uint8_t *buf = map_anon(BUF);
	memset(buf, fill, BUF * PG);
	memset(twin, fill, TWIN * PG);
	struct io_uring ring;
	assert_int_equal(io_uring_queue_init(4, &ring, 0), 0);
	struct iovec iov = { buf, BUF * PG };
	assert_int_equal(io_uring_register_buffers(&ring, &iov, 1), 0);

	mv_merge *m;
	assert_int_equal(mv_merge_new(NULL, 0, &m), 0);
	assert_int_equal(mv_merge_register(m, twin, TWIN * PG), 0);
	assert_int_equal(mv_merge_register(m, buf, BUF * PG), 0);
	for (int pass = 0; pass < 3; pass++)
		assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) >= 0);
	/* the unpinned twins merged as usual; the pinned buffer did not */
	assert_int_equal(merged_pages(twin, TWIN, fill == 0), TWIN);
	assert_int_equal(merged_pages(buf, BUF, fill == 0), 0);
	struct mv_merge_stats st;
	assert_int_equal(mv_merge_get_stats(m, &st, sizeof(st)), 0);
	assert_true(st.pages_skipped_pinned >= BUF);

	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_read_fixed(sqe, fd, buf, BUF * PG, 0, 0);
	assert_int_equal(io_uring_submit(&ring), 1);
	struct io_uring_cqe *cqe;
	assert_int_equal(io_uring_wait_cqe(&ring, &cqe), 0);
	assert_int_equal(cqe->res, BUF * PG);
	io_uring_cqe_seen(&ring, cqe);
	size_t wrong = 0;
	for (size_t i = 0; i < BUF; i++)
		for (size_t b = 0; b < PG; b++)
			if (buf[i * PG + b] != (uint8_t)(0x40 + i)) {
				wrong++;
				break;
			}
	assert_int_equal(wrong, 0);

	/* once the buffers are unregistered nothing pins the pages: they merge again */
	assert_int_equal(io_uring_unregister_buffers(&ring), 0);
	memset(buf, fill, BUF * PG);
	for (int pass = 0; pass < 3; pass++)
		assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) >= 0);
	assert_int_equal(merged_pages(buf, BUF, fill == 0), BUF);
	for (size_t i = 0; i < BUF * PG; i++)
		assert_int_equal(buf[i], (uint8_t)fill);

	io_uring_queue_exit(&ring);
	mv_merge_unref(m);
	close(fd);
	munmap(buf, BUF * PG);
	munmap(twin, TWIN * PG);
	rmdir(dir);
}

static void test_fixed_buffers_duplicate(void **state)
{
	(void)state;
	fixed_buffer_case(0x5a);
}

static void test_fixed_buffers_zero(void **state)
{
	(void)state;
	fixed_buffer_case(0);
}

/* Pages written after they merged are private copies inside the merged mapping; pinned there, they
 * must survive unregistering, which copies the rest back into plain anonymous memory. */
static void test_unregister_keeps_pinned_copies(void **state)
{
	(void)state;
	enum { BUF = 16 };
	char dir[256];
	int fd = data_file(dir, sizeof(dir), BUF, 0x60, 0);
	uint8_t *twin = map_anon(BUF), *buf = map_anon(BUF);
	memset(buf, 0x33, BUF * PG);
	memset(twin, 0x33, BUF * PG);
	mv_merge *m;
	assert_int_equal(mv_merge_new(NULL, 0, &m), 0);
	assert_int_equal(mv_merge_register(m, twin, BUF * PG), 0);
	assert_int_equal(mv_merge_register(m, buf, BUF * PG), 0);
	assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) >= 2 * BUF);
	assert_int_equal(merged_pages(buf, BUF, false), BUF);
	for (size_t i = 0; i < BUF; i++)
		buf[i * PG] = 0x34; /* private copies now */
	struct io_uring ring;
	assert_int_equal(io_uring_queue_init(4, &ring, 0), 0);
	struct iovec iov = { buf, BUF * PG };
	assert_int_equal(io_uring_register_buffers(&ring, &iov, 1), 0);
	assert_int_equal(mv_merge_unregister(m, buf, BUF * PG), 0);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_read_fixed(sqe, fd, buf, BUF * PG, 0, 0);
	assert_int_equal(io_uring_submit(&ring), 1);
	struct io_uring_cqe *cqe;
	assert_int_equal(io_uring_wait_cqe(&ring, &cqe), 0);
	assert_int_equal(cqe->res, BUF * PG);
	io_uring_cqe_seen(&ring, cqe);
	for (size_t i = 0; i < BUF; i++)
		for (size_t b = 0; b < PG; b++)
			if (buf[i * PG + b] != (uint8_t)(0x60 + i))
				fail_msg("page %zu byte %zu: %#x, the read wrote %#x", i, b, buf[i * PG + b],
					 0x60 + (int)i);
	/* the twins, never pinned, are plain anonymous memory again after their unregistering */
	assert_int_equal(mv_merge_unregister(m, twin, BUF * PG), 0);
	assert_int_equal(merged_pages(twin, BUF, false), 0);
	for (size_t i = 0; i < BUF * PG; i++)
		assert_int_equal(twin[i], 0x33);
	assert_int_equal(io_uring_unregister_buffers(&ring), 0);
	io_uring_queue_exit(&ring);
	mv_merge_unref(m);
	close(fd);
	munmap(buf, BUF * PG);
	munmap(twin, BUF * PG);
	rmdir(dir);
}

/* O_DIRECT reads into pages the scanner keeps merging: every read's bytes must be there afterwards. */
struct odirect {
	uint8_t *buf;
	size_t pages;
	int fd;
	int fill;
	atomic_bool stop;
	unsigned long reads, lost, efault;
};

static void *odirect_reader(void *arg)
{
	struct odirect *o = arg;
	for (size_t round = 0; !atomic_load(&o->stop); round++) {
		size_t i = round % o->pages;
		uint8_t *page = o->buf + i * PG;
		memset(page, o->fill, PG); /* a twin of the reference pages again: a merge candidate */
		ssize_t n = pread(o->fd, page, PG, (off_t)(i * PG));
		if (n < 0 && errno == EFAULT) {
			/* a user-mode-only userfaultfd makes a kernel write to a page being merged fail */
			o->efault++;
			continue;
		}
		if (n != PG) {
			o->lost++;
			continue;
		}
		o->reads++;
		for (size_t b = 0; b < PG; b++)
			if (page[b] != (uint8_t)(0x10 + i)) {
				o->lost++;
				break;
			}
	}
	return NULL;
}

static void test_odirect_races_scanner(void **state)
{
	(void)state;
	enum { PAGES = 8, REF = 8 };
	char dir[256];
	int fd = data_file(dir, sizeof(dir), PAGES, 0x10, O_DIRECT);
	uint8_t *ref = map_anon(REF);
	uint8_t *buf = aligned_alloc(PG, PAGES * PG);
	assert_non_null(buf);
	struct odirect o = { .buf = buf, .pages = PAGES, .fd = fd, .fill = 0x77 };
	memset(ref, o.fill, REF * PG);
	memset(buf, o.fill, PAGES * PG);
	mv_merge *m;
	assert_int_equal(mv_merge_new(NULL, 0, &m), 0);
	assert_int_equal(mv_merge_register(m, ref, REF * PG), 0);
	assert_int_equal(mv_merge_register(m, buf, PAGES * PG), 0);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, odirect_reader, &o), 0);
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	unsigned long scans = 0;
	do {
		assert_true(mv_merge_scan(m, 0, 0, MV_MERGE_STABLE) >= 0);
		scans++;
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - t0.tv_sec) * 1000000000L + (now.tv_nsec - t0.tv_nsec) < 2000000000L);
	atomic_store(&o.stop, true);
	pthread_join(t, NULL);
	print_message("O_DIRECT: %lu reads checked, %lu lost, %lu EFAULT, %lu scans\n", o.reads, o.lost, o.efault,
		      scans);
	assert_true(o.reads > 100);
	assert_int_equal(o.lost, 0);
	mv_merge_unref(m);
	close(fd);
	free(buf);
	munmap(ref, REF * PG);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixed_buffers_duplicate),
		cmocka_unit_test(test_fixed_buffers_zero),
		cmocka_unit_test(test_unregister_keeps_pinned_copies),
		cmocka_unit_test(test_odirect_races_scanner),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
