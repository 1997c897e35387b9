/* SPDX-License-Identifier: MIT */
/* Several processes, one broker: fd passing, fork, SIGKILL mid-operation, broker death and restart,
 * region lifetime, budget enforcement. */
#include "helpers.h"

#include <dirent.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "memvisor/broker.h"
#include "memvisor/memvisor.h"
#include "regions/ctl.h"
#include "regions/region.h"

#define PG MV_PAGE_SIZE

static void expect(int sock, char want)
{
	char c = 0;
	assert_int_equal(read(sock, &c, 1), 1);
	assert_int_equal(c, want);
}

static int regions(struct mvw_region_rec **recs, void **map, size_t *maplen)
{
	struct mvw_msg rep;
	struct stat st;
	int fd = -1, r = mvc_request(MV_MSG_REGIONS, NULL, 0, -1, &rep, &fd);
	if (r < 0)
		return r;
	if (fstat(fd, &st) < 0)
		return -errno;
	*maplen = (size_t)st.st_size;
	*map = mmap(NULL, *maplen, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (*map == MAP_FAILED)
		return -errno;
	*recs = (struct mvw_region_rec *)((char *)*map + sizeof(struct mvw_regions_head));
	return mvw_regions_check(*map, *maplen);
}

static int child_exit(pid_t pid)
{
	int st;
	if (waitpid(pid, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* One process unpins, every other holder sees it; the broker purges; a third process's pin reports it. */
static void test_fd_passing_and_fork(void **state)
{
	int sv[2];
	mv_region *r;
	unsigned char *p;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pid_t receiver = fork();
	if (receiver == 0) {
		/* Gets the region only over the socket, as an unrelated process would. */
		close(sv[0]);
		int fd = tb_recv_fd(sv[1]);
		mv_region *rr;
		if (fd < 0 || mv_region_from_fd(fd, &rr) < 0)
			_exit(10);
		close(fd);
		if (strcmp(mv_region_name(rr), "shared-cache") || mv_region_size(rr) != 16 * PG - 5)
			_exit(11);
		if (mv_region_unpin(rr, 0, 4 * PG) != 0)
			_exit(12);
		if (write(sv[1], "U", 1) != 1)
			_exit(13);
		char c;
		if (read(sv[1], &c, 1) != 1) /* wait for the purge */
			_exit(14);
		if (mv_region_pin(rr, 0, 4 * PG) != MV_WAS_PURGED)
			_exit(15);
		if (mv_region_pin(rr, 0, 4 * PG) != MV_NOT_PURGED)
			_exit(16);
		mv_region_unref(rr);
		_exit(0);
	}
	close(sv[1]);
	assert_int_equal(mv_region_new("shared-cache", 16 * PG - 5, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&p), 0);
	memset(p, 0x5a, 16 * PG);
	int ip[2];
	assert_int_equal(pipe2(ip, O_CLOEXEC), 0);
	pid_t inheritor = fork();
	if (inheritor == 0) {
		/* Inherited over fork: sees the unpin done by the other process. */
		char c;
		if (read(ip[0], &c, 1) != 1)
			_exit(20);
		_exit(mv_region_pin_status(r, 0, PG) == MV_IS_UNPINNED &&
				      mv_region_pin_status(r, 4 * PG, 0) == MV_IS_PINNED
			      ? 0
			      : 21);
	}
	assert_int_equal(tb_send_fd(sv[0], mv_region_fd(r)), 0);
	expect(sv[0], 'U');
	assert_int_equal(mv_region_pin_status(r, 3 * PG, PG), MV_IS_UNPINNED);
	assert_int_equal(mv_region_pin_status(r, 4 * PG, 12 * PG), MV_IS_PINNED);
	assert_int_equal(write(ip[1], "G", 1), 1);
	assert_int_equal(child_exit(inheritor), 0);
	close(ip[0]);
	close(ip[1]);

	/* The broker lists the region with both attached processes as holders. */
	struct mvw_region_rec *recs = NULL;
	void *map = NULL;
	size_t maplen = 0;
	int n = regions(&recs, &map, &maplen);
	assert_int_equal(n, 1);
	assert_string_equal(recs[0].name, "shared-cache");
	assert_int_equal(recs[0].unpinned, 4);
	assert_int_equal(recs[0].nholders, 2);
	assert_true((recs[0].holders[0] == getpid() && recs[0].holders[1] == receiver) ||
		    (recs[0].holders[1] == getpid() && recs[0].holders[0] == receiver));
	munmap(map, maplen);
	uint64_t purged = 0;
	assert_int_equal(mv_purge(MV_PURGE_ALL, &purged), 0);
	assert_int_equal(purged, 4 * PG);
	for (unsigned i = 0; i < 4 * PG; i++)
		if (p[i] != 0)
			fail_msg("purged byte %u is %#x", i, p[i]);
	for (unsigned i = 4 * PG; i < 16 * PG; i++)
		if (p[i] != 0x5a)
			fail_msg("pinned byte %u is %#x", i, p[i]);
	assert_int_equal(write(sv[0], "G", 1), 1);
	assert_int_equal(child_exit(receiver), 0);
	mv_region_unmap(r, p);
	mv_region_unref(r);
	close(sv[0]);
}

/* A holder is killed at arbitrary points inside pin/unpin: the others never deadlock and the state
 * stays well formed. */
static void test_holder_killed_mid_operation(void **state)
{
	mv_region *r;
	enum { NPG = 64 };

	assert_int_equal(mv_region_new("kill-me", NPG * PG, &r), 0);
	_Atomic uint64_t *progress = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_ptr_not_equal(progress, MAP_FAILED);
	for (int round = 0; round < 60; round++) {
		atomic_store(progress, 0);
		pid_t pid = fork();
		if (pid == 0) {
			srandom((unsigned)getpid());
			for (;;) {
				size_t a = (size_t)(random() % NPG), n = 1 + (size_t)(random() % (NPG - a));
				if (random() & 1)
					mv_region_pin(r, a * PG, n * PG);
				else
					mv_region_unpin(r, a * PG, n * PG);
				atomic_fetch_add(progress, 1);
			}
		}
		uint64_t target = 50 + (uint64_t)(round * 37 % 400);
		assert_true(WAIT_FOR(atomic_load(progress) >= target, 20));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		/* Must not hang, must work. */
		assert_in_range(mv_region_unpin(r, 0, 0), 0, 0);
		assert_int_equal(mv_region_pin_status(r, 0, 0), MV_IS_UNPINNED);
		assert_in_range(mv_region_pin(r, 0, 0), MV_NOT_PURGED, MV_WAS_PURGED);
		assert_int_equal(mv_region_pin_status(r, 0, 0), MV_IS_PINNED);
		struct mvr_ctl_counts c;
		mvr_ctl_count(&r->view, &c);
		assert_int_equal(c.pinned, NPG);
		assert_int_equal(c.other, 0);
	}
	munmap(progress, PG);
	mv_region_unref(r);
}

/* The broker dies and comes back: regions keep working without it (nothing purged), and the library
 * reconnects and re-attaches so purging works again. */
static void test_broker_killed_and_restarted(void **state)
{
	mv_region *r;
	unsigned char *p;
	uint64_t purged = 0;
	char dir[128];

	snprintf(dir, sizeof(dir), "%s", TB.dir);
	assert_int_equal(mv_region_new("survivor", 32 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&p), 0);
	memset(p, 0x77, 32 * PG);
	assert_int_equal(mv_region_unpin(r, 0, 16 * PG), 0);

	tb_kill(&TB, SIGKILL);
	/* No broker: everything still works and nothing is purged. */
	assert_int_equal(mv_region_unpin(r, 16 * PG, 8 * PG), 0);
	assert_int_equal(mv_region_pin(r, 0, 0), MV_NOT_PURGED);
	for (unsigned i = 0; i < 32 * PG; i++)
		if (p[i] != 0x77)
			fail_msg("byte %u changed while the broker was dead", i);
	assert_int_equal(mv_purge(MV_PURGE_ALL, NULL), -ENOTCONN);
	assert_int_equal(mv_region_unpin(r, 0, 16 * PG), 0);

	assert_int_equal(tb_start_in(&TB, dir, NULL), 0);
	/* Any request reconnects and re-attaches every live region, this one with pages unpinned. */
	assert_int_equal(mv_sync(), 0);
	assert_int_equal(mv_purge(MV_PURGE_ALL, &purged), 0);
	assert_int_equal(purged, 16 * PG);
	assert_int_equal(mv_region_pin(r, 0, 16 * PG), MV_WAS_PURGED);
	assert_int_equal(p[0], 0);
	assert_int_equal(p[16 * PG], 0x77);
	mv_region_unmap(r, p);
	mv_region_unref(r);
}

/* A broker that died between claiming pages and finishing leaves PURGING pages behind: a pin finishes
 * the job (zeros, WAS_PURGED) instead of waiting forever. */
static void test_orphaned_purge_is_finished_by_pin(void **state)
{
	mv_region *r;
	unsigned char *p;

	assert_int_equal(mv_region_new("orphan", 8 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&p), 0);
	memset(p, 0x11, 8 * PG);
	assert_int_equal(mv_region_unpin(r, 2 * PG, 2 * PG), 0);
	pid_t dead = fork();
	if (dead == 0)
		_exit(0);
	waitpid(dead, NULL, 0);
	uint64_t w = atomic_load(&r->view.pages[2]);
	assert_int_equal(MV_PG_STATE(w), MV_PG_UNPINNED);
	assert_int_equal(mvr_ctl_claim(&r->view, 2, 2, MV_PG_STAMP(w)), 2);
	atomic_store(&r->view.hdr->purger_pid, dead);
	assert_int_equal(mv_region_pin(r, 0, 0), MV_WAS_PURGED);
	assert_int_equal(p[2 * PG], 0);
	assert_int_equal(p[4 * PG - 1], 0);
	assert_int_equal(p[4 * PG], 0x11);
	mv_region_unmap(r, p);
	mv_region_unref(r);
}

/* Shared memory stays alive only while some descriptor or mapping holds it: the broker's or this
 * process's. Those are what is measured, not the machine's Shmem, which everyone else moves too. */
static uint64_t rss_shmem_bytes(pid_t pid)
{
	char path[64], line[256];
	uint64_t kb = UINT64_MAX;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return kb;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "RssShmem: %" SCNu64, &kb) == 1)
			break;
	fclose(f);
	return kb == UINT64_MAX ? kb : kb * 1024;
}

static unsigned own_fds(void)
{
	unsigned n = 0;
	DIR *d = opendir("/proc/self/fd");
	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* One of the broker's named counters, or UINT64_MAX. */
static uint64_t broker_value(const char *name)
{
	mv_broker_status *st;
	uint64_t v = UINT64_MAX;
	if (mv_broker_status_new(&st) == 0) {
		v = mv_broker_status_value(st, name, UINT64_MAX);
		mv_broker_status_free(st);
	}
	return v;
}

/* Regions die with their last holder; the broker keeps nothing of them. */
static void test_ten_thousand_regions_leave_nothing(void **state)
{
	struct mvw_rep_status s0 = { 0 }, s1 = { 0 };

	assert_int_equal(tb_status(&s0), 0);
	uint64_t bshm0 = rss_shmem_bytes(TB.pid), shm0 = rss_shmem_bytes(getpid()), bfds0 = broker_value("broker.fds");
	unsigned fds0 = own_fds();
	assert_true(bshm0 != UINT64_MAX && shm0 != UINT64_MAX && bfds0 != UINT64_MAX);
	for (int i = 0; i < 10000; i++) {
		mv_region *r;
		unsigned char *p;
		char name[32];
		snprintf(name, sizeof(name), "churn-%d", i);
		assert_int_equal(mv_region_new(name, 16 * PG, &r), 0);
		assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&p), 0);
		memset(p, i, 16 * PG);
		/* Every other one goes through the broker's hold path too. */
		if (i & 1)
			assert_int_equal(mv_region_unpin(r, 0, 8 * PG), 0);
		assert_int_equal(mv_region_unmap(r, p), 0);
		mv_region_unref(r);
	}
	assert_true(
		WAIT_FOR(tb_status(&s1) == 0 && s1.regions == s0.regions && s1.regions_held == s0.regions_held, 30));
	/* Heap back to where it was, within allocator slack. */
	assert_true(s1.broker_heap_bytes <= s0.broker_heap_bytes + 64 * 1024);
	/* 10k x 64 KiB would be 640 MiB if anything were kept alive: no descriptor and no mapping of it
	 * is left, in the broker or here. */
	assert_true(WAIT_FOR(broker_value("broker.fds") <= bfds0, 10));
	assert_int_equal(own_fds(), fds0);
	assert_true(rss_shmem_bytes(TB.pid) < bshm0 + (4ull << 20));
	assert_true(rss_shmem_bytes(getpid()) < shm0 + (4ull << 20));
}

/* Budget: the broker keeps unpinned memory under the cap, purging the least recently unpinned first. */
static uint64_t holds_total(void)
{
	return broker_value("regions.holds_total");
}

static int start_fast_sweep(void **state)
{
	static const char *const extra[] = { "--sweep-ms", "10", NULL };
	(void)state;
	return tb_start(&TB, extra);
}

/* A region unpinned now and then, idle in between, is not handed to the broker and let go again for
 * every unpin: the broker waits longer before letting go of a region that keeps coming back. */
static void test_returning_region_stays_held(void **state)
{
	(void)state;
	mv_region *r;
	uint8_t *m;
	assert_int_equal(mv_region_new("returning", 4 * MV_PAGE_SIZE, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&m), 0);
	uint64_t h0 = holds_total();
	assert_true(h0 != UINT64_MAX);
	for (int i = 0; i < 30; i++) {
		assert_int_equal(mv_region_unpin(r, 0, MV_PAGE_SIZE), 0);
		usleep(20000);
		assert_true(mv_region_pin(r, 0, MV_PAGE_SIZE) >= 0);
		usleep(80000); /* eight sweeps with nothing unpinned */
	}
	uint64_t holds = holds_total() - h0;
	print_message("30 unpins 100 ms apart: the broker took the region %llu times\n", (unsigned long long)holds);
	assert_true(holds >= 1);
	assert_true(holds <= 8);
	mv_region_unmap(r, m);
	mv_region_unref(r);
}

static int start_budget(void **state)
{
	static const char *const extra[] = { "--unpinned-budget", "65536", NULL };
	(void)state;
	return tb_start(&TB, extra);
}

static void test_budget_purges_oldest_first(void **state)
{
	mv_region *a, *b;
	unsigned char *pa, *pb;

	assert_int_equal(mv_region_new("old", 16 * PG, &a), 0);
	assert_int_equal(mv_region_new("new", 16 * PG, &b), 0);
	assert_int_equal(mv_region_map(a, PROT_READ | PROT_WRITE, (void **)&pa), 0);
	assert_int_equal(mv_region_map(b, PROT_READ | PROT_WRITE, (void **)&pb), 0);
	memset(pa, 1, 16 * PG);
	memset(pb, 2, 16 * PG);
	/* Unpin order: a[0..7], b[0..7], a[8..15]; budget 16 pages: a[0..7] must go first. */
	assert_int_equal(mv_region_unpin(a, 0, 8 * PG), 0);
	assert_int_equal(mv_region_unpin(b, 0, 8 * PG), 0);
	assert_int_equal(mv_sync(), 0);
	assert_int_equal(mv_region_pin_status(a, 0, 8 * PG), MV_IS_UNPINNED);
	assert_int_equal(pa[0], 1); /* 16 pages unpinned: at the budget, nothing purged yet */
	assert_int_equal(mv_region_unpin(a, 8 * PG, 8 * PG), 0);
	assert_int_equal(mv_sync(), 0);
	assert_int_equal(pa[0], 0);
	assert_int_equal(pb[0], 2);
	assert_int_equal(pa[8 * PG], 1);
	struct mvw_rep_status s;
	assert_int_equal(tb_status(&s), 0);
	assert_true(s.pages_unpinned <= 16);
	assert_int_equal(s.purges_budget, 1);
	assert_int_equal(mv_region_pin(b, 0, 0), MV_NOT_PURGED);
	assert_int_equal(mv_region_pin(a, 0, 0), MV_WAS_PURGED);
	mv_region_unmap(a, pa);
	mv_region_unmap(b, pb);
	mv_region_unref(a);
	mv_region_unref(b);
}

/* Memory pressure as the broker sees it: MemAvailable below the watermark (here set impossibly high)
 * makes every upkeep pass purge, oldest first, without anyone asking. */
static int start_watermark(void **state)
{
	static const char *const extra[] = { "--min-available", "1T", "--sweep-ms", "20", NULL };
	(void)state;
	return tb_start(&TB, extra);
}

static void test_watermark_pressure_purges_on_its_own(void **state)
{
	mv_region *r;
	unsigned char *p;
	struct mvw_rep_status s = { 0 };

	assert_int_equal(mv_region_new("pressured", 64 * PG, &r), 0);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, (void **)&p), 0);
	memset(p, 0x42, 64 * PG);
	assert_int_equal(mv_region_unpin(r, 0, 16 * PG), 0);
	assert_int_equal(mv_region_unpin(r, 16 * PG, 16 * PG), 0);
	assert_int_equal(mv_sync(), 0); /* the broker holds the region now; the rest is its own doing */
	assert_true(WAIT_FOR(tb_status(&s) == 0 && s.purges_pressure > 0 && s.pages_unpinned == 0, 20));
	assert_int_equal(s.purges_explicit, 0);
	assert_int_equal(mv_region_pin(r, 0, 16 * PG), MV_WAS_PURGED);
	assert_int_equal(mv_region_pin(r, 16 * PG, 16 * PG), MV_WAS_PURGED);
	assert_int_equal(p[0], 0);
	assert_int_equal(p[32 * PG], 0x42);
	mv_region_unmap(r, p);
	mv_region_unref(r);
}

/* Many processes start at once with no broker: exactly one broker comes up and all of them use it. */
static void test_autostart_race(void **state)
{
	char tmpl[] = "/tmp/mvtest-auto-XXXXXX";
	enum { N = 8 };
	pid_t kids[N];
	int go[2];

	assert_non_null(mkdtemp(tmpl));
	setenv("MEMVISOR_RUNTIME_DIR", tmpl, 1);
	assert_int_equal(pipe(go), 0);
	for (int i = 0; i < N; i++) {
		kids[i] = fork();
		if (kids[i] == 0) {
			char c;
			mv_region *r;
			setenv("MEMVISOR_AUTOSTART", "1", 1);
			close(go[1]);
			if (read(go[0], &c, 1) != 0) /* released together when the pipe closes */
				_exit(9);
			if (mv_region_new("racer", PG, &r) < 0)
				_exit(10);
			struct mvw_rep_status s = { 0 };
			if (tb_status(&s) < 0)
				_exit(11);
			_exit(s.broker_pid > 0 ? (s.broker_pid & 0x7f) : 12);
		}
	}
	close(go[0]);
	close(go[1]);
	int first = -1;
	for (int i = 0; i < N; i++) {
		int st;
		assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
		assert_true(WIFEXITED(st));
		if (first < 0)
			first = WEXITSTATUS(st);
		assert_int_equal(WEXITSTATUS(st), first); /* everyone talked to the same broker */
	}
	struct mvw_rep_status s = { 0 };
	assert_int_equal(tb_status(&s), 0);
	assert_int_equal(s.broker_pid & 0x7f, first);
	kill(s.broker_pid, SIGTERM);
	char path[128];
	snprintf(path, sizeof(path), "%s/memvisord.log", tmpl);
	unlink(path);
	snprintf(path, sizeof(path), "%s/broker.lock", tmpl);
	unlink(path);
	snprintf(path, sizeof(path), "%s/broker.sock", tmpl);
	assert_true(WAIT_FOR(access(path, F_OK) != 0, 10));
	rmdir(tmpl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fd_passing_and_fork, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_holder_killed_mid_operation, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_broker_killed_and_restarted, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_orphaned_purge_is_finished_by_pin, tb_fixture_start,
						tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_ten_thousand_regions_leave_nothing, tb_fixture_start,
						tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_budget_purges_oldest_first, start_budget, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_watermark_pressure_purges_on_its_own, start_watermark,
						tb_fixture_stop),
		cmocka_unit_test(test_autostart_race),
		cmocka_unit_test_setup_teardown(test_returning_region_stays_held, start_fast_sweep, tb_fixture_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
