/* SPDX-License-Identifier: MIT */
/* The /dev/ashmem ioctl interface, exercised the way an unmodified program would: plain open, ioctl,
 * mmap, read, lseek on /dev/ashmem, with libmemvisor-preload.so in LD_PRELOAD. Nothing here calls the
 * memvisor API: a broker is started for the purging cases and that is all. */
#include "helpers.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "android/uapi.h"

#define PG 4096

static int ash(void)
{
	int fd = open("/dev/ashmem", O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	return fd;
}

/* open + SET_NAME + SET_SIZE + mmap, as libcutils and most programs do. */
static int ash_mapped(const char *name, size_t size, void **map)
{
	int fd = ash();
	char buf[ASHMEM_NAME_LEN] = "";
	if (name) {
		snprintf(buf, sizeof(buf), "%s", name);
		assert_int_equal(ioctl(fd, ASHMEM_SET_NAME, buf), 0);
	}
	assert_int_equal(ioctl(fd, ASHMEM_SET_SIZE, size), 0);
	*map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(*map != MAP_FAILED);
	return fd;
}

static int pin_op(int fd, unsigned long cmd, uint32_t off, uint32_t len)
{
	struct ashmem_pin p = { off, len };
	return ioctl(fd, cmd, &p);
}

#define EXPECT_ERR(call, e)                                                                                            \
	do {                                                                                                           \
		errno = 0;                                                                                             \
		assert_int_equal((call), -1);                                                                          \
		assert_int_equal(errno, (e));                                                                          \
	} while (0)

static void test_device_node(void **state)
{
	struct stat a, b;

	assert_int_equal(access("/dev/ashmem", R_OK | W_OK), 0);
	assert_int_equal(stat("/dev/ashmem", &a), 0);
	assert_true(S_ISCHR(a.st_mode));
	int fd = ash();
	assert_int_equal(fstat(fd, &b), 0);
	assert_true(S_ISCHR(b.st_mode));
	assert_int_equal(a.st_rdev, b.st_rdev); /* libcutils' own validity check */
	close(fd);
	/* Newer libcutils opens /dev/ashmem<boot_id>. */
	fd = open("/dev/ashmemf00dfeed-0000-4000-8000-000000000000", O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(ioctl(fd, ASHMEM_GET_SIZE, 0), 0);
	close(fd);
	EXPECT_ERR(open("/dev/ashmem/sub", O_RDWR), ENOENT);
}

static void test_defaults_before_mmap(void **state)
{
	char name[ASHMEM_NAME_LEN];
	char buf[8];
	int fd = ash();

	assert_int_equal(ioctl(fd, ASHMEM_GET_SIZE, 0), 0);
	assert_int_equal(ioctl(fd, ASHMEM_GET_NAME, name), 0);
	assert_string_equal(name, "dev/ashmem");
	assert_int_equal(ioctl(fd, ASHMEM_GET_PROT_MASK, 0), PROT_READ | PROT_WRITE | PROT_EXEC);
	/* No size: EOF on read, EINVAL on lseek and mmap; no file: pins are EINVAL. */
	assert_int_equal(read(fd, buf, sizeof(buf)), 0);
	EXPECT_ERR(lseek(fd, 0, SEEK_SET), EINVAL);
	assert_true(mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EINVAL);
	EXPECT_ERR(pin_op(fd, ASHMEM_PIN, 0, 0), EINVAL);
	EXPECT_ERR(pin_op(fd, ASHMEM_UNPIN, 0, 0), EINVAL);
	EXPECT_ERR(pin_op(fd, ASHMEM_GET_PIN_STATUS, 0, 0), EINVAL);
	EXPECT_ERR(ioctl(fd, ASHMEM_GET_FILE_ID, &(unsigned long){ 0 }), EINVAL);
	EXPECT_ERR(write(fd, "x", 1), EINVAL);
	/* Size set but not mapped: reads say EBADF (no backing file yet). */
	assert_int_equal(ioctl(fd, ASHMEM_SET_SIZE, 3 * PG), 0);
	EXPECT_ERR(read(fd, buf, sizeof(buf)), EBADF);
	EXPECT_ERR(lseek(fd, 0, SEEK_SET), EBADF);
	close(fd);
}

static void test_size_and_name_rules(void **state)
{
	char name[ASHMEM_NAME_LEN], longname[400];
	void *m;
	int fd = ash();

	memset(longname, 'x', sizeof(longname));
	assert_int_equal(ioctl(fd, ASHMEM_SET_NAME, longname), 0); /* reads exactly 256 bytes */
	assert_int_equal(ioctl(fd, ASHMEM_GET_NAME, name), 0);
	assert_int_equal(strlen(name), ASHMEM_NAME_LEN - 1);
	assert_int_equal(ioctl(fd, ASHMEM_SET_NAME, "tour-of-maps"), 0);
	assert_int_equal(ioctl(fd, ASHMEM_SET_SIZE, 2 * PG + 100), 0);
	assert_int_equal(ioctl(fd, ASHMEM_SET_SIZE, 3 * PG + 100), 0); /* settable until mapped */
	assert_int_equal(ioctl(fd, ASHMEM_GET_SIZE, 0), 3 * PG + 100);
	m = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0); /* rounds up to pages */
	assert_true(m != MAP_FAILED);
	memset(m, 0xa5, 4 * PG);
	EXPECT_ERR(ioctl(fd, ASHMEM_SET_NAME, "late"), EINVAL);
	EXPECT_ERR(ioctl(fd, ASHMEM_SET_SIZE, PG), EINVAL);
	assert_int_equal(ioctl(fd, ASHMEM_GET_SIZE, 0), 3 * PG + 100); /* unrounded */
	assert_int_equal(ioctl(fd, ASHMEM_GET_NAME, name), 0);
	assert_string_equal(name, "tour-of-maps");
	/* The name is visible in /proc/self/maps. */
	char line[512];
	bool found = false;
	FILE *f = fopen("/proc/self/maps", "r");
	while (f && fgets(line, sizeof(line), f))
		found |= strstr(line, "dev/ashmem/tour-of-maps") != NULL;
	if (f)
		fclose(f);
	assert_true(found);
	/* read/lseek now work on the contents, bounded by the size. */
	unsigned char buf[4 * PG];
	assert_int_equal(lseek(fd, 0, SEEK_END), 3 * PG + 100);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	assert_int_equal(read(fd, buf, sizeof(buf)), 3 * PG + 100);
	assert_int_equal(buf[0], 0xa5);
	assert_int_equal(buf[3 * PG + 99], 0xa5);
	assert_int_equal(read(fd, buf, sizeof(buf)), 0);
	assert_int_equal(lseek(fd, -100, SEEK_END), 3 * PG);
	assert_int_equal(read(fd, buf, 1000), 100);
	EXPECT_ERR(lseek(fd, -1, SEEK_SET), EINVAL);
	EXPECT_ERR(write(fd, buf, 1), EINVAL);
	munmap(m, 4 * PG);
	close(fd);
}

static bool in_maps(const char *needle)
{
	char line[512];
	bool found = false;
	FILE *f = fopen("/proc/self/maps", "r");
	while (f && fgets(line, sizeof(line), f))
		found |= strstr(line, needle) != NULL;
	if (f)
		fclose(f);
	return found;
}

/* libcutils with a NULL name sets none: the driver's default name, in GET_NAME and in the maps. */
static void test_no_name(void **state)
{
	char name[ASHMEM_NAME_LEN];
	void *m;
	int fd = ash_mapped(NULL, 3 * PG, &m);

	assert_int_equal(ioctl(fd, ASHMEM_GET_NAME, name), 0);
	assert_string_equal(name, ASHMEM_NAME_DEF);
	assert_true(in_maps(":dev/ashmem (deleted)"));
	munmap(m, 3 * PG);
	close(fd);
}

/* SEEK_DATA and SEEK_HOLE reach the region's file, which ends at the region's size. */
static void test_seek_data_hole(void **state)
{
	unsigned char *m;
	int fd = ash_mapped("holes", 3 * PG + 100, (void **)&m);

	m[PG] = 1;     /* page 1: data */
	m[3 * PG] = 2; /* the last, partial page: data up to the size */
	assert_int_equal(lseek(fd, 0, SEEK_DATA), PG);
	assert_int_equal(lseek(fd, 0, SEEK_CUR), PG);
	assert_int_equal(lseek(fd, 0, SEEK_HOLE), 0);
	assert_int_equal(lseek(fd, PG, SEEK_HOLE), 2 * PG);
	assert_int_equal(lseek(fd, 2 * PG, SEEK_DATA), 3 * PG);
	assert_int_equal(lseek(fd, 3 * PG, SEEK_HOLE), 3 * PG + 100);
	assert_int_equal(lseek(fd, 3 * PG + 99, SEEK_DATA), 3 * PG + 99);
	assert_int_equal(lseek(fd, 5, SEEK_SET), 5);
	EXPECT_ERR(lseek(fd, 3 * PG + 100, SEEK_DATA), ENXIO);
	EXPECT_ERR(lseek(fd, 3 * PG + 100, SEEK_HOLE), ENXIO);
	EXPECT_ERR(lseek(fd, -1, SEEK_DATA), ENXIO);
	assert_int_equal(lseek(fd, 0, SEEK_CUR), 5); /* failures leave the position alone */
	munmap(m, 3 * PG + 100);
	close(fd);
}

/* A mapping longer than the page-rounded size is EINVAL (before the mask's EPERM), and nothing past the
 * data can be mapped: nothing a holder maps can break the region for another. */
static void test_mmap_bounds(void **state)
{
	unsigned char *m;
	int fd = ash_mapped("bounded", 3 * PG + 1, (void **)&m);

	assert_true(mmap(NULL, 5 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(ioctl(fd, ASHMEM_SET_PROT_MASK, PROT_READ), 0);
	assert_true(mmap(NULL, 5 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EINVAL);
	void *p = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 4 * PG);
	if (p != MAP_FAILED) {
		/* Past the data, as the driver's file: a fault, never bytes of anything else. */
		pid_t pid = fork();
		if (pid == 0) {
			signal(SIGBUS, SIG_DFL); /* not the test framework's handler */
			_exit(((volatile unsigned char *)p)[0] == 0xee ? 0 : 3);
		}
		int st;
		assert_int_equal(waitpid(pid, &st, 0), pid);
		assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS);
		munmap(p, PG);
	}
	/* The region still works for everyone. */
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 0, 0), 0);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 0, 0), ASHMEM_NOT_PURGED);
	munmap(m, 4 * PG);
	close(fd);
}

static void test_prot_mask(void **state)
{
	int fd = ash();
	void *m;

	assert_int_equal(ioctl(fd, ASHMEM_SET_SIZE, PG), 0);
	EXPECT_ERR(ioctl(fd, ASHMEM_SET_PROT_MASK, 8), EINVAL);
	assert_int_equal(ioctl(fd, ASHMEM_SET_PROT_MASK, PROT_READ | PROT_WRITE), 0);
	EXPECT_ERR(ioctl(fd, ASHMEM_SET_PROT_MASK, PROT_READ | PROT_WRITE | PROT_EXEC), EINVAL);
	assert_int_equal(ioctl(fd, ASHMEM_GET_PROT_MASK, 0), PROT_READ | PROT_WRITE);
	assert_true(mmap(NULL, PG, PROT_READ | PROT_EXEC, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EPERM);
	m = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	/* Dropping write after mapping: no new writable shared mapping, by anyone. */
	assert_int_equal(ioctl(fd, ASHMEM_SET_PROT_MASK, PROT_READ), 0);
	assert_true(mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EPERM);
	void *r = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(r != MAP_FAILED);
	assert_int_equal(ioctl(fd, ASHMEM_SET_PROT_MASK, 0), 0);
	assert_true(mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EPERM);
	munmap(m, PG);
	munmap(r, PG);
	close(fd);

	/* A mask set before the first mapping applies to it. */
	fd = ash();
	assert_int_equal(ioctl(fd, ASHMEM_SET_SIZE, PG), 0);
	assert_int_equal(ioctl(fd, ASHMEM_SET_PROT_MASK, PROT_READ), 0);
	assert_true(mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EPERM);
	r = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(r != MAP_FAILED);
	munmap(r, PG);
	close(fd);
}

static void test_pin_range_rules(void **state)
{
	void *m;
	int fd = ash_mapped("ranges", 10 * PG - 1, &m); /* 10 pages after rounding */

	EXPECT_ERR(pin_op(fd, ASHMEM_PIN, 1, PG), EINVAL);
	EXPECT_ERR(pin_op(fd, ASHMEM_PIN, 0, PG - 1), EINVAL);
	EXPECT_ERR(pin_op(fd, ASHMEM_UNPIN, 0xfffff000u, 0x2000), EINVAL); /* overflows 32 bits */
	EXPECT_ERR(pin_op(fd, ASHMEM_UNPIN, 8 * PG, 3 * PG), EINVAL);      /* beyond the end */
	EXPECT_ERR(pin_op(fd, ASHMEM_GET_PIN_STATUS, 11 * PG, 0), EINVAL);
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 4 * PG, 0), 0); /* len 0: to the end */
	assert_int_equal(pin_op(fd, ASHMEM_GET_PIN_STATUS, 9 * PG, PG), ASHMEM_IS_UNPINNED);
	assert_int_equal(pin_op(fd, ASHMEM_GET_PIN_STATUS, 0, 4 * PG), ASHMEM_IS_PINNED);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 0, 0), ASHMEM_NOT_PURGED);
	assert_int_equal(pin_op(fd, ASHMEM_GET_PIN_STATUS, 0, 0), ASHMEM_IS_PINNED);
	munmap(m, 10 * PG);
	close(fd);
}

static void test_four_pin_cases_and_status_overlap(void **state)
{
	void *m;
	int fd = ash_mapped("cases", 16 * PG, &m);
	unsigned long S = ASHMEM_GET_PIN_STATUS;

	/* 1: pin subsumes the range */
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 4 * PG, 2 * PG), 0);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 3 * PG, 4 * PG), ASHMEM_NOT_PURGED);
	assert_int_equal(pin_op(fd, S, 0, 0), ASHMEM_IS_PINNED);
	/* 2: pin overlaps the start */
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 4 * PG, 4 * PG), 0);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 2 * PG, 4 * PG), ASHMEM_NOT_PURGED);
	assert_int_equal(pin_op(fd, S, 5 * PG, PG), ASHMEM_IS_PINNED);
	assert_int_equal(pin_op(fd, S, 6 * PG, 2 * PG), ASHMEM_IS_UNPINNED);
	/* 3: pin overlaps the end */
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 7 * PG, 4 * PG), ASHMEM_NOT_PURGED);
	assert_int_equal(pin_op(fd, S, 6 * PG, PG), ASHMEM_IS_UNPINNED);
	assert_int_equal(pin_op(fd, S, 7 * PG, PG), ASHMEM_IS_PINNED);
	/* 4: pin punches a hole */
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 8 * PG, 6 * PG), 0);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 10 * PG, 2 * PG), ASHMEM_NOT_PURGED);
	assert_int_equal(pin_op(fd, S, 9 * PG, PG), ASHMEM_IS_UNPINNED);
	assert_int_equal(pin_op(fd, S, 10 * PG, 2 * PG), ASHMEM_IS_PINNED);
	assert_int_equal(pin_op(fd, S, 12 * PG, PG), ASHMEM_IS_UNPINNED);
	/* status overlaps: any unpinned page in the range */
	assert_int_equal(pin_op(fd, S, 5 * PG, 2 * PG), ASHMEM_IS_UNPINNED);
	assert_int_equal(pin_op(fd, S, 0, 6 * PG), ASHMEM_IS_PINNED);
	/* unpin merging overlapping ranges, and unpinning what is already unpinned */
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 6 * PG, 8 * PG), 0);
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 7 * PG, PG), 0);
	assert_int_equal(pin_op(fd, S, 6 * PG, 8 * PG), ASHMEM_IS_UNPINNED);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 0, 0), ASHMEM_NOT_PURGED);
	munmap(m, 16 * PG);
	close(fd);
}

static void test_purge(void **state)
{
	unsigned char *m, *n;
	int fd = ash_mapped("purgeable", 8 * PG, (void **)&m);
	int other = ash_mapped("other", 4 * PG, (void **)&n);

	memset(m, 1, 8 * PG);
	memset(n, 2, 4 * PG);
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 0, 4 * PG), 0);
	assert_int_equal(pin_op(other, ASHMEM_UNPIN, 0, 0), 0);
	/* Returns the number of unpinned pages, purges them all. */
	assert_int_equal(ioctl(fd, ASHMEM_PURGE_ALL_CACHES, 0), 8);
	assert_int_equal(ioctl(fd, ASHMEM_PURGE_ALL_CACHES, 0), 0); /* twice: nothing left */
	assert_int_equal(m[0], 0);
	assert_int_equal(m[4 * PG - 1], 0);
	assert_int_equal(m[4 * PG], 1); /* pinned: intact */
	assert_int_equal(n[0], 0);
	/* overlapping: a new range merged with a purged one carries the mark */
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 2 * PG, 4 * PG), 0);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 5 * PG, PG), ASHMEM_WAS_PURGED);
	/* across fork: the child sees the region's state */
	pid_t pid = fork();
	if (pid == 0)
		_exit(pin_op(other, ASHMEM_PIN, 0, 0) == ASHMEM_WAS_PURGED && n[0] == 0 ? 0 : 1);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_equal(pin_op(other, ASHMEM_GET_PIN_STATUS, 0, 0), ASHMEM_IS_PINNED);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 0, 0), ASHMEM_WAS_PURGED);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 0, 0), ASHMEM_NOT_PURGED);
	munmap(m, 8 * PG);
	munmap(n, 4 * PG);
	close(fd);
	close(other);
}

/* The broker's default, the compressed tier on. */
static int start_tier(void **state)
{
	int r;
	setenv("MEMVISOR_TEST_COMPRESS", "1", 1);
	r = tb_fixture_start(state);
	unsetenv("MEMVISOR_TEST_COMPRESS");
	return r;
}

/* PURGE_ALL_CACHES frees the memory now, as the driver's: with the compressed tier on, the unpinned
 * pages are not kept compressed; the next pin says WAS_PURGED and they read as zeros. */
static void test_purge_all_bypasses_tier(void **state)
{
	unsigned char *m;
	int fd = ash_mapped("tiered", 8 * PG, (void **)&m);

	memset(m, 'a', 8 * PG); /* as compressible as it gets */
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 0, 4 * PG), 0);
	assert_int_equal(ioctl(fd, ASHMEM_PURGE_ALL_CACHES, 0), 4);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 0, 4 * PG), ASHMEM_WAS_PURGED);
	for (size_t i = 0; i < 4 * PG; i++)
		if (m[i])
			fail_msg("purged byte %zu is %u", i, m[i]);
	assert_int_equal(m[4 * PG], 'a');
	munmap(m, 8 * PG);
	close(fd);
}

static void test_purge_refused_without_broker(void **state)
{
	void *m;
	tb_stop(&TB);
	int fd = ash_mapped("lonely", PG, &m);
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 0, 0), 0);
	EXPECT_ERR(ioctl(fd, ASHMEM_PURGE_ALL_CACHES, 0), EPERM);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 0, 0), ASHMEM_NOT_PURGED);
	munmap(m, PG);
	close(fd);
}

static void test_file_ids(void **state)
{
	void *a, *b;
	unsigned long ia = 0, ib = 0, ia2 = 0;
	int fa = ash_mapped("a", PG, &a), fb = ash_mapped("b", PG, &b);

	assert_int_equal(ioctl(fa, ASHMEM_GET_FILE_ID, &ia), 0);
	assert_int_equal(ioctl(fb, ASHMEM_GET_FILE_ID, &ib), 0);
	assert_true(ia != 0 && ia != ib);
	int d = dup(fa);
	assert_int_equal(ioctl(d, ASHMEM_GET_FILE_ID, &ia2), 0);
	assert_int_equal(ia, ia2);
	close(d);
	munmap(a, PG);
	munmap(b, PG);
	close(fa);
	close(fb);
}

static void test_bad_input(void **state)
{
	void *m;
	int fd = ash_mapped("bad", 2 * PG, &m);
	int p[2];

	EXPECT_ERR(ioctl(fd, ASHMEM_GET_NAME, NULL), EFAULT);
	EXPECT_ERR(ioctl(fd, ASHMEM_GET_NAME, (void *)16), EFAULT);
	EXPECT_ERR(ioctl(fd, ASHMEM_PIN, NULL), EFAULT);
	EXPECT_ERR(ioctl(fd, ASHMEM_UNPIN, (void *)-4096L), EFAULT);
	EXPECT_ERR(ioctl(fd, ASHMEM_GET_PIN_STATUS, (void *)1), EFAULT);
	EXPECT_ERR(ioctl(fd, ASHMEM_GET_FILE_ID, NULL), EFAULT);
	EXPECT_ERR(ioctl(fd, _IO(0x77, 99), 0), ENOTTY);
	EXPECT_ERR(ioctl(fd, FIONREAD, &(int){ 0 }), ENOTTY);
	int fresh = ash();
	EXPECT_ERR(ioctl(fresh, ASHMEM_SET_NAME, NULL), EFAULT);
	/* A name whose 256 bytes run into an unmapped page faults, as copy_from_user does. */
	char *two = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(two + PG, PG);
	strcpy(two + PG - 4, "abc");
	EXPECT_ERR(ioctl(fresh, ASHMEM_SET_NAME, two + PG - 4), EFAULT);
	munmap(two, PG);
	close(fresh);
	/* Closed fds and other files: the kernel's answers pass through. */
	assert_int_equal(pipe(p), 0);
	EXPECT_ERR(ioctl(p[0], ASHMEM_GET_SIZE, 0), ENOTTY);
	close(p[0]);
	close(p[1]);
	EXPECT_ERR(ioctl(p[0], ASHMEM_GET_SIZE, 0), EBADF);
	/* A dup shares the area; closing one leaves the other working. */
	int d = dup(fd);
	close(fd);
	assert_int_equal(ioctl(d, ASHMEM_GET_SIZE, 0), 2 * PG);
	assert_int_equal(pin_op(d, ASHMEM_UNPIN, 0, PG), 0);
	int d2 = fcntl(d, F_DUPFD_CLOEXEC, 100);
	assert_true(d2 >= 100);
	assert_int_equal(pin_op(d2, ASHMEM_GET_PIN_STATUS, 0, PG), ASHMEM_IS_UNPINNED);
	assert_int_equal(dup2(d, 200), 200);
	assert_int_equal(ioctl(200, ASHMEM_GET_SIZE, 0), 2 * PG);
	close(200);
	close(d2);
	munmap(m, 2 * PG);
	close(d);
	EXPECT_ERR(ioctl(d, ASHMEM_GET_SIZE, 0), EBADF);
}

/* An fd passed over a socket to a process that never opened it is a region there too. */
static void test_fd_passing(void **state)
{
	unsigned char *m;
	int sv[2];
	int fd = ash_mapped("passed", 4 * PG, (void **)&m);

	memset(m, 7, 4 * PG);
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 0, PG), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* Exec'd programs start with an empty table; drop ours to be that process. */
		for (int i = 3; i < 1024; i++)
			if (i != sv[1])
				close(i);
		int got = tb_recv_fd(sv[1]);
		char name[ASHMEM_NAME_LEN];
		if (got < 0 || ioctl(got, ASHMEM_GET_SIZE, 0) != 4 * PG)
			_exit(2);
		if (ioctl(got, ASHMEM_GET_NAME, name) != 0 || strcmp(name, "passed"))
			_exit(3);
		if (pin_op(got, ASHMEM_GET_PIN_STATUS, 0, PG) != ASHMEM_IS_UNPINNED)
			_exit(4);
		unsigned char *cm = mmap(NULL, 4 * PG, PROT_READ, MAP_SHARED, got, 0);
		_exit(cm != MAP_FAILED && cm[PG] == 7 ? 0 : 5);
	}
	close(sv[1]);
	assert_int_equal(tb_send_fd(sv[0], fd), 0);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	close(sv[0]);
	munmap(m, 4 * PG);
	close(fd);
}

static bool maps_has(const char *needle)
{
	char line[512];
	bool found = false;
	FILE *f = fopen("/proc/self/maps", "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f))
		found |= strstr(line, needle) != NULL;
	fclose(f);
	return found;
}

static void wait_ok(pid_t pid)
{
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* How many areas the test's broker keeps regions for, asked as an administrator would. */
static long areas_kept(void)
{
	char cmd[4200], out[8192];
	const char *broker = getenv("MEMVISOR_BROKER");
	assert_non_null(broker);
	snprintf(cmd, sizeof(cmd), "\"$(dirname '%s')/memvisor\" status --json", broker);
	FILE *f = popen(cmd, "r");
	assert_non_null(f);
	size_t n = fread(out, 1, sizeof(out) - 1, f);
	assert_int_equal(pclose(f), 0);
	out[n] = '\0';
	const char *k = strstr(out, "\"regions.areas_kept\":");
	assert_non_null(k);
	return strtol(k + strlen("\"regions.areas_kept\":"), NULL, 10);
}

/* The broker lets go of an area's region once nobody holds the area file. */
static void wait_areas_kept(long want)
{
	for (int i = 0; i < 200 && areas_kept() != want; i++)
		usleep(10000);
	assert_int_equal(areas_kept(), want);
}

/* The area belongs to the open file description: a fork child before the first mmap shares its name,
 * size and mask both ways, and the first mmap, whoever makes it, is everyone's one region. */
static void test_area_shared_across_fork(void **state)
{
	char name[ASHMEM_NAME_LEN];
	int go[2], done[2];
	int fd = ash();

	assert_int_equal(ioctl(fd, ASHMEM_SET_NAME, "forked-area"), 0);
	assert_int_equal(pipe(go), 0);
	assert_int_equal(pipe(done), 0);
	pid_t pid = fork();
	if (pid == 0) {
		char c;
		/* What the parent set before the fork, and after it. */
		if (ioctl(fd, ASHMEM_GET_NAME, name) != 0 || strcmp(name, "forked-area"))
			_exit(2);
		if (read(go[0], &c, 1) != 1 || ioctl(fd, ASHMEM_GET_SIZE, 0) != 3 * PG)
			_exit(3);
		if (ioctl(fd, ASHMEM_SET_PROT_MASK, PROT_READ | PROT_WRITE) != 0)
			_exit(4);
		unsigned char *m = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED)
			_exit(5);
		memset(m, 0x5a, 3 * PG);
		if (write(done[1], "m", 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(6);
		/* The parent's writes, through its own mapping of the same region. */
		_exit(m[2 * PG] == 0xa5 && m[0] == 0x5a ? 0 : 7);
	}
	assert_int_equal(ioctl(fd, ASHMEM_SET_SIZE, 3 * PG), 0);
	assert_int_equal(write(go[1], "s", 1), 1);
	char c;
	assert_int_equal(read(done[0], &c, 1), 1);
	/* The child mapped: the area is fixed for us too, and carries its mask. */
	EXPECT_ERR(ioctl(fd, ASHMEM_SET_SIZE, 5 * PG), EINVAL);
	EXPECT_ERR(ioctl(fd, ASHMEM_SET_NAME, "too-late"), EINVAL);
	assert_int_equal(ioctl(fd, ASHMEM_GET_SIZE, 0), 3 * PG);
	assert_int_equal(ioctl(fd, ASHMEM_GET_PROT_MASK, 0), PROT_READ | PROT_WRITE);
	assert_true(mmap(NULL, 3 * PG, PROT_EXEC, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EPERM);
	unsigned char *m = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	assert_int_equal(m[PG + 17], 0x5a);
	assert_true(maps_has("dev/ashmem/forked-area"));
	m[2 * PG] = 0xa5;
	assert_int_equal(write(go[1], "r", 1), 1);
	wait_ok(pid);
	/* One region: its pins are shared as well, and the data outlives the child. */
	assert_int_equal(pin_op(fd, ASHMEM_UNPIN, 0, PG), 0);
	assert_int_equal(pin_op(fd, ASHMEM_GET_PIN_STATUS, 0, PG), ASHMEM_IS_UNPINNED);
	assert_int_equal(pin_op(fd, ASHMEM_PIN, 0, PG), ASHMEM_NOT_PURGED);
	assert_int_equal(m[0], 0x5a);
	munmap(m, 3 * PG);
	close(fd);
	wait_areas_kept(0);
	close(go[0]);
	close(go[1]);
	close(done[0]);
	close(done[1]);
}

/* Sent over a socket before anyone mapped it: the receiver names and sizes the area, the sender sees
 * that, and whichever maps first makes the one region both see. */
static void test_area_shared_over_socket(void **state)
{
	int sv[2], fd = ash();
	char name[ASHMEM_NAME_LEN];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* A process with nothing of ours: as a program that was handed the fd would be. */
		for (int i = 3; i < 1024; i++)
			if (i != sv[1])
				close(i);
		int got = tb_recv_fd(sv[1]);
		char c;
		if (got < 0 || ioctl(got, ASHMEM_GET_SIZE, 0) != 0)
			_exit(2);
		if (ioctl(got, ASHMEM_SET_NAME, "sent-area") != 0 || ioctl(got, ASHMEM_SET_SIZE, 2 * PG) != 0)
			_exit(3);
		if (write(sv[1], "n", 1) != 1 || read(sv[1], &c, 1) != 1)
			_exit(4);
		/* The sender mapped meanwhile: ours is its region. */
		if (ioctl(got, ASHMEM_SET_SIZE, PG) != -1 || errno != EINVAL)
			_exit(5);
		unsigned char *m = mmap(NULL, 2 * PG, PROT_READ, MAP_SHARED, got, 0);
		if (m == MAP_FAILED || m[PG + 1] != 0x33)
			_exit(6);
		unsigned long id = 0;
		if (ioctl(got, ASHMEM_GET_FILE_ID, &id) != 0 || write(sv[1], &id, sizeof(id)) != sizeof(id))
			_exit(7);
		_exit(0);
	}
	close(sv[1]);
	assert_int_equal(tb_send_fd(sv[0], fd), 0);
	char c;
	assert_int_equal(read(sv[0], &c, 1), 1);
	assert_int_equal(ioctl(fd, ASHMEM_GET_SIZE, 0), 2 * PG);
	assert_int_equal(ioctl(fd, ASHMEM_GET_NAME, name), 0);
	assert_string_equal(name, "sent-area");
	unsigned char *m = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	memset(m, 0x33, 2 * PG);
	assert_int_equal(write(sv[0], "m", 1), 1);
	unsigned long theirs = 0, ours = 0;
	assert_int_equal(read(sv[0], &theirs, sizeof(theirs)), (ssize_t)sizeof(theirs));
	assert_int_equal(ioctl(fd, ASHMEM_GET_FILE_ID, &ours), 0);
	assert_true(ours != 0);
	assert_int_equal(theirs, ours);
	wait_ok(pid);
	munmap(m, 2 * PG);
	close(fd);
	close(sv[0]);
}

/* The holder that made the region is killed before the other holder of the area ever looks: the
 * broker kept the region for it, data included. */
static void test_area_outlives_its_mapper(void **state)
{
	int done[2], fd = ash();

	assert_int_equal(ioctl(fd, ASHMEM_SET_SIZE, 2 * PG), 0);
	assert_int_equal(pipe(done), 0);
	pid_t pid = fork();
	if (pid == 0) {
		unsigned char *m = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED)
			_exit(2);
		memset(m, 0x77, 2 * PG);
		if (write(done[1], "m", 1) != 1)
			_exit(3);
		pause();
		_exit(4);
	}
	char c;
	assert_int_equal(read(done[0], &c, 1), 1);
	wait_areas_kept(1); /* for us, who have not looked yet */
	kill(pid, SIGKILL);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st));
	EXPECT_ERR(ioctl(fd, ASHMEM_SET_SIZE, PG), EINVAL);
	unsigned char *m = mmap(NULL, 2 * PG, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	assert_int_equal(m[0], 0x77);
	assert_int_equal(m[2 * PG - 1], 0x77);
	char buf[3];
	assert_int_equal(pread(fd, buf, sizeof(buf), 2 * PG - 1), 1);
	munmap(m, 2 * PG);
	close(fd);
	wait_areas_kept(0);
	close(done[0]);
	close(done[1]);
}

/* The creator hands its region over and exits before the receiver looks at it (a producer that
 * leaves after the hand-off): the area lives with the file, so the receiver still has all of it. */
static void test_fd_outlives_its_creator(void **state)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pid_t creator = fork();
	if (creator == 0) {
		unsigned char *m;
		int fd = ash_mapped("orphaned", 4 * PG, (void **)&m);
		memset(m, 9, 4 * PG);
		if (pin_op(fd, ASHMEM_UNPIN, PG, PG) != 0 || tb_send_fd(sv[0], fd) != 0)
			_exit(1);
		_exit(0);
	}
	int st;
	assert_int_equal(waitpid(creator, &st, 0), creator);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	int got = tb_recv_fd(sv[1]);
	assert_true(got >= 0);
	char name[ASHMEM_NAME_LEN];
	assert_int_equal(ioctl(got, ASHMEM_GET_SIZE, 0), 4 * PG);
	assert_int_equal(ioctl(got, ASHMEM_GET_NAME, name), 0);
	assert_string_equal(name, "orphaned");
	assert_int_equal(pin_op(got, ASHMEM_GET_PIN_STATUS, PG, PG), ASHMEM_IS_UNPINNED);
	assert_int_equal(pin_op(got, ASHMEM_GET_PIN_STATUS, 0, PG), ASHMEM_IS_PINNED);
	unsigned char *cm = mmap(NULL, 4 * PG, PROT_READ, MAP_SHARED, got, 0);
	assert_true(cm != MAP_FAILED);
	assert_int_equal(cm[0], 9);
	assert_int_equal(cm[4 * PG - 1], 9);
	int r = pin_op(got, ASHMEM_PIN, PG, PG);
	assert_true(r == ASHMEM_NOT_PURGED || r == ASHMEM_WAS_PURGED);
	if (r == ASHMEM_NOT_PURGED)
		assert_int_equal(cm[PG], 9);
	munmap(cm, 4 * PG);
	close(got);
	close(sv[0]);
	close(sv[1]);
}

static void *thread_main(void *arg)
{
	intptr_t bad = 0;
	for (int i = 0; i < 200; i++) {
		void *m;
		int fd = open("/dev/ashmem", O_RDWR);
		char name[32];
		snprintf(name, sizeof(name), "t%ld-%d", (long)(intptr_t)arg, i);
		bad += ioctl(fd, ASHMEM_SET_NAME, name) != 0;
		bad += ioctl(fd, ASHMEM_SET_SIZE, 4 * PG) != 0;
		m = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		bad += m == MAP_FAILED;
		if (m != MAP_FAILED) {
			memset(m, i, 4 * PG);
			bad += pin_op(fd, ASHMEM_UNPIN, PG, 2 * PG) != 0;
			bad += pin_op(fd, ASHMEM_PIN, PG, PG) < 0;
			bad += ((unsigned char *)m)[3 * PG] != (unsigned char)i;
			munmap(m, 4 * PG);
		}
		char got[ASHMEM_NAME_LEN];
		bad += ioctl(fd, ASHMEM_GET_NAME, got) != 0 || strcmp(got, name) != 0;
		close(fd);
	}
	return (void *)bad;
}

static void test_threads(void **state)
{
	pthread_t t[4];
	for (intptr_t i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, thread_main, (void *)i), 0);
	for (int i = 0; i < 4; i++) {
		void *bad;
		pthread_join(t[i], &bad);
		assert_int_equal((intptr_t)bad, 0);
	}
}

static void test_preload_is_active(void **state)
{
	/* Guard: without the preload library, open() fails and every case above would be meaningless. */
	int fd = open("/dev/ashmem", O_RDWR);
	if (fd < 0)
		fail_msg("/dev/ashmem cannot be opened: run with LD_PRELOAD=libmemvisor-preload.so");
	close(fd);
}

int main(void)
{
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_preload_is_active),
		cmocka_unit_test_setup_teardown(test_device_node, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_defaults_before_mmap, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_size_and_name_rules, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_no_name, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_seek_data_hole, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_mmap_bounds, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_prot_mask, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_pin_range_rules, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_four_pin_cases_and_status_overlap, tb_fixture_start,
						tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_purge, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_purge_all_bypasses_tier, start_tier, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_purge_refused_without_broker, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_file_ids, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_bad_input, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_fd_passing, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_fd_outlives_its_creator, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_area_shared_across_fork, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_area_shared_over_socket, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_area_outlives_its_mapper, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_threads, tb_fixture_start, tb_fixture_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
