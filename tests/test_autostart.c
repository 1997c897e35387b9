/* SPDX-License-Identifier: MIT */
/* Which broker a process uses, and how an auto-started broker ends.
 *   - A program whose Xen library constructor met one broker and that then names another (by setting
 *     MEMVISOR_RUNTIME_DIR in main) is served by the one it named, and the first forgets it.
 *   - An auto-started broker, adopted by a child subreaper, leaves once idle: the subreaper's wait for
 *     all its children ends. It does not leave while a client still holds a region. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <xenevtchn.h>

#include <cmocka.h>

#include "helpers.h"
#include "memvisor/memvisor.h"

static int status_in(const char *dir, struct mvw_rep_status *s)
{
	setenv("MEMVISOR_RUNTIME_DIR", dir, 1);
	return tb_status(s);
}

static int domid_here(void)
{
	struct mvw_msg rep;
	int r = mvc_request(MV_MSG_DOMAIN, NULL, 0, -1, &rep, NULL);
	return r < 0 ? r : (int)rep.u.domain_rep.domid;
}

/* Exec'd with MEMVISOR_RUNTIME_DIR naming broker A: the constructors have already made us a domain
 * there. Told to, we name broker B and use the Xen library. */
static int late_child(const char *dir_b, int in, int out)
{
	char c;
	if (write(out, "1", 1) != 1 || read(in, &c, 1) != 1)
		return 1;
	setenv("MEMVISOR_RUNTIME_DIR", dir_b, 1);
	xenevtchn_handle *h = xenevtchn_open(NULL, 0);
	int me = domid_here();
	if (!h || me <= 0)
		return 2;
	int port = xenevtchn_bind_unbound_port(h, (uint32_t)me);
	if (port <= 0 || write(out, "2", 1) != 1 || read(in, &c, 1) != 1)
		return 3;
	xenevtchn_close(h);
	return 0;
}

static void test_program_names_its_broker_late(void **state)
{
	struct tbroker a, b;
	struct mvw_rep_status s;
	int to[2], from[2], st;
	char c, path[64], inbuf[16], outbuf[16];

	assert_int_equal(tb_start(&a, NULL), 0);
	assert_int_equal(tb_start(&b, NULL), 0);
	assert_int_equal(pipe(to), 0);
	assert_int_equal(pipe(from), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(to[1]);
		close(from[0]);
		snprintf(inbuf, sizeof(inbuf), "%d", to[0]);
		snprintf(outbuf, sizeof(outbuf), "%d", from[1]);
		setenv("MEMVISOR_RUNTIME_DIR", a.dir, 1);
		snprintf(path, sizeof(path), "/proc/self/exe");
		execl(path, "test_autostart", "--late-child", b.dir, inbuf, outbuf, (char *)NULL);
		_exit(127);
	}
	close(to[0]);
	close(from[1]);
	assert_int_equal(read(from[0], &c, 1), 1);
	/* The constructor found broker A: the child is a domain there, and nowhere else. */
	assert_int_equal(status_in(a.dir, &s), 0);
	assert_int_equal(s.domains, 1);
	assert_int_equal(status_in(b.dir, &s), 0);
	assert_int_equal(s.domains, 0);
	assert_int_equal(write(to[1], "g", 1), 1);
	assert_int_equal(read(from[0], &c, 1), 1);
	assert_int_equal(c, '2');
	/* Now it is served by B, the broker it named; A has let it go. */
	assert_int_equal(status_in(b.dir, &s), 0);
	assert_int_equal(s.domains, 1);
	assert_int_equal(s.evtchn_channels, 1);
	assert_true(WAIT_FOR(status_in(a.dir, &s) == 0 && s.domains == 0, 10));
	assert_int_equal(write(to[1], "e", 1), 1);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	close(to[1]);
	close(from[0]);
	tb_stop(&a);
	tb_stop(&b);
}

/* Every memvisor library in one process shares one engine, so the broker sees one connection. */
static void test_one_connection_per_process(void **state)
{
	const char *node = getenv("MV_ENGINE_NODE"), *preload = getenv("MV_PRELOAD");
	struct mvw_rep_status s = { 0 }, before = { 0 };
	int in[2], out[2], st;
	char c;

	/* Under TSan no library may be preloaded ahead of its runtime: the preload is left out there. */
	if (!node)
		skip();
	assert_int_equal(tb_start(&TB, NULL), 0);
	assert_int_equal(tb_status(&before), 0); /* our own connection */
	assert_int_equal(pipe(in), 0);
	assert_int_equal(pipe(out), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		if (preload && *preload) {
			setenv("LD_PRELOAD", preload, 1);
			setenv("ASAN_OPTIONS", "verify_asan_link_order=0:detect_leaks=0", 1);
		}
		execl(node, "engine_node", preload && *preload ? "--ashmem" : NULL, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	assert_int_equal(read(out[0], &c, 1), 1);
	assert_int_equal(tb_status(&s), 0);
	assert_int_equal(s.domains, 1);
	assert_int_equal(s.regions, preload && *preload ? 2 : 1);
	assert_int_equal(s.clients, before.clients + 1);
	close(in[1]);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	close(out[0]);
	tb_stop(&TB);
}

struct reaped {
	int32_t pid;
	int32_t ms; /* after the harness started */
};

/* A child subreaper, as a test harness or a container's init is: it runs one memvisor client, which
 * auto-starts the broker, then waits for every child it has or adopts. What it reaped, and when, goes
 * to out; the client's report (the broker's pid) is forwarded first. */
static int subreaper(const char *dir, int hold_ms, int out)
{
	int p[2];
	uint64_t t0 = mvu_now_ns();

	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0 || pipe(p) < 0)
		return 1;
	pid_t client = fork();
	if (client < 0)
		return 2;
	if (client == 0) {
		mv_region *r;
		struct mvw_rep_status s = { 0 };
		close(p[0]);
		setenv("MEMVISOR_RUNTIME_DIR", dir, 1);
		unsetenv("MEMVISOR_AUTOSTART");
		setenv("MEMVISOR_EXIT_IDLE", "1", 1);
		if (mv_region_new("held", 4 * MV_PAGE_SIZE, &r) < 0 || tb_status(&s) < 0)
			_exit(3);
		int32_t bpid = (int32_t)s.broker_pid;
		if (write(p[1], &bpid, sizeof(bpid)) != sizeof(bpid))
			_exit(4);
		usleep((useconds_t)hold_ms * 1000);
		mv_region_unref(r);
		_exit(0);
	}
	close(p[1]);
	int32_t bpid = 0;
	if (read(p[0], &bpid, sizeof(bpid)) != sizeof(bpid) || write(out, &bpid, sizeof(bpid)) != sizeof(bpid))
		return 5;
	for (;;) {
		int st;
		pid_t w = wait(&st);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			break;
		struct reaped rp = { w, (int32_t)((mvu_now_ns() - t0) / 1000000) };
		if (write(out, &rp, sizeof(rp)) != sizeof(rp))
			return 6;
	}
	return errno == ECHILD ? 0 : 7;
}

static void test_subreaper_finishes(void **state)
{
	char dir[] = "/tmp/mvtest-XXXXXX";
	int p[2], st;
	const int hold_ms = 3000;

	assert_non_null(mkdtemp(dir));
	assert_int_equal(pipe(p), 0);
	pid_t h = fork();
	assert_true(h >= 0);
	if (h == 0) {
		close(p[0]);
		_exit(subreaper(dir, hold_ms, p[1]));
	}
	close(p[1]);
	int32_t bpid = 0;
	assert_int_equal(read(p[0], &bpid, sizeof(bpid)), sizeof(bpid));
	assert_true(bpid > 0);
	/* The harness must finish: give it the hold, the grace and a generous margin. */
	uint64_t deadline = mvu_now_ns() + 30000000000ull;
	pid_t w;
	while ((w = waitpid(h, &st, WNOHANG)) == 0 && mvu_now_ns() < deadline)
		usleep(20000);
	if (w == 0) {
		kill(h, SIGKILL);
		kill(bpid, SIGKILL);
		waitpid(h, &st, 0);
		fail_msg("the subreaper still waits %d s after its client started: the broker never left", 30);
	}
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	struct reaped rp, client = { 0 }, broker = { 0 };
	int n = 0;
	while (read(p[0], &rp, sizeof(rp)) == sizeof(rp)) {
		n++;
		if (rp.pid == bpid)
			broker = rp;
		else
			client = rp;
	}
	close(p[0]);
	/* It adopted the broker (the broker's first process was reaped by the client that spawned it). */
	assert_int_equal(n, 2);
	assert_int_equal(broker.pid, bpid);
	assert_true(client.pid > 0);
	print_message("client reaped after %d ms, broker after %d ms\n", client.ms, broker.ms);
	/* The broker stayed while the client held its region (longer than the grace), left after. */
	assert_true(client.ms >= hold_ms);
	assert_true(broker.ms > client.ms);
	assert_true(broker.ms - client.ms < 10000);
	char path[200];
	snprintf(path, sizeof(path), "rm -rf '%s'", dir);
	assert_int_equal(system(path), 0);
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "--late-child") == 0)
		return late_child(argv[2], atoi(argv[3]), atoi(argv[4]));
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_program_names_its_broker_late),
		cmocka_unit_test(test_subreaper_finishes),
		cmocka_unit_test(test_one_connection_per_process),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
