/* SPDX-License-Identifier: MIT */
/* libcutils' ashmem API, built against Debian's own cutils/ashmem.h (android-libcutils-dev) and linked
 * with libmemvisor.so: the source-compatibility contract. Purging is real. */
#define _GNU_SOURCE
#include <cutils/ashmem.h> /* Debian's header: /usr/include/android comes first on the include path */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "memvisor/memvisor.h"

#define PG 4096
#define NOT_PURGED 0
#define WAS_PURGED 1

static char broker_dir[] = "/tmp/mvtest-cutils-XXXXXX";
static pid_t broker;

/* A broker with a zero unpinned budget: whatever is unpinned gets purged at the next sync. */
static int start(void **state)
{
	int p[2];
	char fd[16], c;
	(void)state;
	if (!mkdtemp(broker_dir) || pipe(p) < 0)
		return -1;
	setenv("MEMVISOR_RUNTIME_DIR", broker_dir, 1);
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	snprintf(fd, sizeof(fd), "%d", p[1]);
	broker = fork();
	if (broker == 0) {
		close(p[0]);
		execl(getenv("MEMVISOR_BROKER"), "memvisord", "--foreground", "--no-psi", "--runtime-dir", broker_dir,
		      "--unpinned-budget", "0", "--no-compress", "--ready-fd", fd, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	return read(p[0], &c, 1) == 1 ? 0 : -1;
}

static int stop(void **state)
{
	(void)state;
	kill(broker, SIGTERM);
	waitpid(broker, NULL, 0);
	return 0;
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

static void test_create_size_name(void **state)
{
	int fd = ashmem_create_region("cutils-cache", 5 * PG + 3);
	assert_true(fd >= 0);
	assert_int_equal(ashmem_valid(fd), 1);
	assert_int_equal(ashmem_get_size_region(fd), 5 * PG + 3);
	/* A plain mmap of the fd works, no preload involved. */
	unsigned char *m = mmap(NULL, 6 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	memset(m, 3, 6 * PG);
	assert_true(in_maps("dev/ashmem/cutils-cache"));
	/* A plain region of the native API is ashmem to libcutils as well. */
	mv_region *r;
	assert_int_equal(mv_region_new("native", PG, &r), 0);
	assert_int_equal(ashmem_valid(mv_region_fd(r)), 1);
	assert_int_equal(ashmem_get_size_region(mv_region_fd(r)), PG);
	mv_region_unref(r);
	munmap(m, 6 * PG);
	close(fd);

	int z = ashmem_create_region(NULL, 0);
	assert_true(z >= 0);
	assert_int_equal(ashmem_get_size_region(z), 0);
	close(z);
}

/* No name: libcutils then sets none, so the region has the driver's default name, "dev/ashmem". */
static void test_null_name(void **state)
{
	int fd = ashmem_create_region(NULL, 2 * PG);
	assert_true(fd >= 0);
	assert_int_equal(ashmem_get_size_region(fd), 2 * PG);
	unsigned char *m = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	assert_true(in_maps(":dev/ashmem (deleted)"));
	mv_region *r;
	assert_int_equal(mv_region_from_fd(fd, &r), 0);
	assert_string_equal(mv_region_name(r), "dev/ashmem");
	mv_region_unref(r);
	munmap(m, 2 * PG);
	close(fd);
}

/* Bytes of this process's mappings whose name contains needle. */
static size_t mapped_bytes(const char *needle)
{
	char line[512];
	size_t total = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (strstr(line, needle) && sscanf(line, "%lx-%lx", &lo, &hi) == 2)
			total += hi - lo;
	}
	if (f)
		fclose(f);
	return total;
}

static int child_status(pid_t pid)
{
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
}

/* Without the preload the fd is a plain file: exactly the region's size in fstat, lseek (every whence),
 * read and the maps; past the page-rounded size a mapping faults. Nothing a holder does with the fd
 * reaches the pin state, so none of it breaks the region for another holder. */
static void test_fd_is_exactly_the_region(void **state)
{
	const size_t size = 4 * PG + 3;
	unsigned char buf[8 * PG];
	struct stat st;
	int fd = ashmem_create_region("exact-file", size);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, size);
	assert_int_equal(lseek(fd, 0, SEEK_END), size);
	assert_int_equal(pread(fd, buf, sizeof(buf), 0), size);
	assert_int_equal(pread(fd, buf, 16, (off_t)size), 0);
	unsigned char *m = mmap(NULL, 5 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	assert_int_equal(mapped_bytes("dev/ashmem/exact-file"), 5 * PG);
	m[PG] = 1;
	m[4 * PG] = 2;
	assert_int_equal(lseek(fd, 0, SEEK_DATA), PG);
	assert_int_equal(lseek(fd, PG, SEEK_HOLE), 2 * PG);
	assert_int_equal(lseek(fd, 4 * PG, SEEK_HOLE), size);
	errno = 0;
	assert_int_equal(lseek(fd, (off_t)size, SEEK_DATA), -1);
	assert_int_equal(errno, ENXIO);

	/* A careless holder: a stray write past the data, through write and through a long mapping. */
	pid_t pid = fork();
	if (pid == 0) {
		memset(buf, 0xee, 64);
		if (pwrite(fd, buf, 64, (off_t)size) != -1)
			_exit(2);
		unsigned char *big = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (big == MAP_FAILED)
			_exit(0);
		signal(SIGBUS, SIG_DFL);
		memset(big + 5 * PG, 0xee, 64);
		_exit(3);
	}
	int cs = child_status(pid);
	assert_true(cs == 0 || cs == -SIGBUS);
	/* Still a region, for this process and for one that adopts it now. */
	assert_int_equal(ashmem_valid(fd), 1);
	assert_int_equal(ashmem_get_size_region(fd), size);
	assert_int_equal(ashmem_pin_region(fd, 0, PG), NOT_PURGED);
	pid = fork();
	if (pid == 0) {
		mv_region *r;
		_exit(mv_region_from_fd(fd, &r) == 0 && mv_region_size(r) == size &&
				      mv_region_pin_status(r, 0, 0) == MV_IS_PINNED
			      ? 0
			      : 1);
	}
	assert_int_equal(child_status(pid), 0);
	assert_int_equal(m[4 * PG], 2);
	munmap(m, 5 * PG);
	close(fd);
}

static int pass_fd(int sock, int fd)
{
	char c = 'F', ctl[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec io = { &c, 1 };
	struct msghdr mh = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(fd));
	return sendmsg(sock, &mh, 0) == 1 ? 0 : -1;
}

static int take_fd(int sock)
{
	char c, ctl[CMSG_SPACE(sizeof(int))];
	struct iovec io = { &c, 1 };
	struct msghdr mh = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl) };
	int fd = -1;
	if (recvmsg(sock, &mh, MSG_CMSG_CLOEXEC) != 1 || !CMSG_FIRSTHDR(&mh))
		return -1;
	memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(fd));
	return fd;
}

/* Before anyone maps it, a region made through libcutils is one region for every holder: a fork child
 * that drops PROT_WRITE drops it for the parent too, and both see the same bytes. */
static void test_region_shared_before_mmap(void **state)
{
	int fd = ashmem_create_region("shared-early", 2 * PG);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "early", 5, PG), 5);
	pid_t pid = fork();
	if (pid == 0) {
		if (ashmem_set_prot_region(fd, PROT_READ) != 0)
			_exit(2);
		unsigned char *m = mmap(NULL, 2 * PG, PROT_READ, MAP_SHARED, fd, 0);
		_exit(m != MAP_FAILED && memcmp(m + PG, "early", 5) == 0 ? 0 : 3);
	}
	assert_int_equal(child_status(pid), 0);
	mv_region *r;
	assert_int_equal(mv_region_from_fd(fd, &r), 0);
	assert_int_equal(mv_region_get_prot(r), PROT_READ);
	mv_region_unref(r);
	assert_int_equal(ashmem_get_size_region(fd), 2 * PG);
	errno = 0;
	assert_true(mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EPERM);
	close(fd);
}

/* The creator hands its region over and exits before the receiver looks at it: the region, its pin
 * state included, lives with the file. */
static void test_region_outlives_its_creator(void **state)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = ashmem_create_region("orphaned", 4 * PG);
		unsigned char *m = fd < 0 ? MAP_FAILED : mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED)
			_exit(1);
		memset(m, 9, 4 * PG);
		_exit(ashmem_unpin_region(fd, PG, PG) == 0 && pass_fd(sv[0], fd) == 0 ? 0 : 2);
	}
	assert_int_equal(child_status(pid), 0);
	int got = take_fd(sv[1]);
	assert_true(got >= 0);
	assert_int_equal(ashmem_valid(got), 1);
	assert_int_equal(ashmem_get_size_region(got), 4 * PG);
	mv_region *r;
	assert_int_equal(mv_region_from_fd(got, &r), 0);
	assert_int_equal(mv_region_pin_status(r, 0, PG), MV_IS_PINNED);
	assert_int_equal(mv_region_pin_status(r, PG, PG), MV_IS_UNPINNED);
	mv_region_unref(r);
	unsigned char *m = mmap(NULL, 4 * PG, PROT_READ, MAP_SHARED, got, 0);
	assert_true(m != MAP_FAILED);
	assert_int_equal(m[0], 9);
	int p = ashmem_pin_region(got, PG, PG);
	assert_true(p == NOT_PURGED || p == WAS_PURGED);
	assert_int_equal(m[PG], p == NOT_PURGED ? 9 : 0);
	munmap(m, 4 * PG);
	close(got);
	close(sv[0]);
	close(sv[1]);
}

static void test_prot(void **state)
{
	int fd = ashmem_create_region("prot", PG);
	assert_true(fd >= 0);
	assert_int_equal(ashmem_set_prot_region(fd, PROT_READ | PROT_WRITE), 0);
	errno = 0;
	assert_int_equal(ashmem_set_prot_region(fd, PROT_READ | PROT_WRITE | PROT_EXEC), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(ashmem_set_prot_region(fd, PROT_READ), 0);
	/* The kernel itself refuses writable shared mappings now. */
	assert_true(mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
	assert_int_equal(errno, EPERM);
	void *ro = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(ro != MAP_FAILED);
	munmap(ro, PG);
	close(fd);
}

static void test_pin_unpin_purge_across_fork(void **state)
{
	int fd = ashmem_create_region("shared", 8 * PG);
	unsigned char *m = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	memset(m, 9, 8 * PG);
	assert_int_equal(ashmem_unpin_region(fd, 0, 4 * PG), 0);
	assert_int_equal(mv_sync(), 0); /* budget 0: the broker purges it now */
	pid_t pid = fork();
	if (pid == 0) {
		/* The child shares the region and its pin state. */
		int r1 = ashmem_pin_region(fd, 0, 4 * PG);
		int r2 = ashmem_pin_region(fd, 4 * PG, 0);
		_exit(r1 == WAS_PURGED && r2 == NOT_PURGED && m[0] == 0 && m[4 * PG] == 9 ? 0 : 1);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* Pinned by the child, for everyone. */
	assert_int_equal(ashmem_pin_region(fd, 0, 0), NOT_PURGED);
	/* Unpinned but not purged: pinning back reports nothing lost. */
	assert_int_equal(ashmem_unpin_region(fd, 4 * PG, 4 * PG), 0);
	assert_int_equal(ashmem_pin_region(fd, 4 * PG, 4 * PG), NOT_PURGED);
	munmap(m, 8 * PG);
	close(fd);
}

static void test_errors(void **state)
{
	int p[2];
	int fd = ashmem_create_region("errs", 2 * PG);

	errno = 0;
	assert_int_equal(ashmem_pin_region(fd, 1, PG), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(ashmem_unpin_region(fd, 0, 3 * PG), -1);
	assert_int_equal(errno, EINVAL);
	/* libcutils narrows to 32 bits like the driver's struct: this is offset 0, len 0, "everything". */
	assert_int_equal(ashmem_unpin_region(fd, (size_t)1 << 32, (size_t)1 << 32), 0);
	assert_int_equal(mv_sync(), 0); /* budget 0: all of it goes */
	assert_int_equal(ashmem_pin_region(fd, PG, PG), WAS_PURGED);
	close(fd);
	assert_int_equal(pipe(p), 0);
	assert_int_equal(ashmem_valid(p[0]), 0);
	assert_int_equal(ashmem_get_size_region(p[0]), -1);
	assert_int_equal(errno, ENOTTY);
	close(p[0]);
	close(p[1]);
	assert_int_equal(ashmem_valid(-1), 0);
	assert_int_equal(ashmem_get_size_region(p[0]), -1);
	assert_int_equal(errno, EBADF);
	assert_int_equal(ashmem_pin_region(p[0], 0, 0), -1);
	assert_int_equal(errno, EBADF);
	assert_int_equal(ashmem_create_region("huge", SIZE_MAX), -1);
	assert_true(errno == ENOMEM || errno == EINVAL);
}

static void *churn(void *arg)
{
	long bad = 0;
	for (int i = 0; i < 300; i++) {
		char name[32];
		snprintf(name, sizeof(name), "t%ld-%d", (long)(intptr_t)arg, i);
		int fd = ashmem_create_region(name, 4 * PG);
		if (fd < 0) {
			bad++;
			continue;
		}
		unsigned char *m = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		bad += m == MAP_FAILED;
		bad += ashmem_unpin_region(fd, PG, PG) != 0;
		bad += ashmem_pin_region(fd, 0, 0) < 0;
		bad += ashmem_get_size_region(fd) != 4 * PG;
		bad += ashmem_valid(fd) != 1;
		if (m != MAP_FAILED)
			munmap(m, 4 * PG);
		close(fd);
	}
	return (void *)bad;
}

/* Many threads creating, using and closing regions: fd numbers get reused all the time. */
static void test_threads(void **state)
{
	pthread_t t[4];
	for (intptr_t i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, churn, (void *)i), 0);
	for (int i = 0; i < 4; i++) {
		void *bad;
		pthread_join(t[i], &bad);
		assert_int_equal((intptr_t)bad, 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_size_name),
		cmocka_unit_test(test_null_name),
		cmocka_unit_test(test_fd_is_exactly_the_region),
		cmocka_unit_test(test_region_outlives_its_creator),
		cmocka_unit_test(test_prot),
		cmocka_unit_test(test_pin_unpin_purge_across_fork),
		cmocka_unit_test(test_region_shared_before_mmap),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_threads),
	};
	return cmocka_run_group_tests(tests, start, stop);
}
