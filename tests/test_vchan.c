/* SPDX-License-Identifier: MIT */
/* Debian's unmodified libxenvchan.so.4.17 between two processes on memvisor (vchan_node, which links only
 * Debian's libraries; ours come first on LD_LIBRARY_PATH): data both ways, checked byte for byte, with
 * small and multi-page rings; a clean close; and each side noticing when the other is killed. The same
 * between a domain and its fork child (no exec), each its own domain, either one serving. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "helpers.h"

extern char **environ;

struct node {
	pid_t pid;
	int in, out;
	char buf[4096];
	size_t len;
};

static int setup(void **state)
{
	int r = tb_fixture_start(state);
	char path[400];
	snprintf(path, sizeof(path), "%s/xenstored.sock", TB.dir);
	setenv("XENSTORED_PATH", path, 1);
	setenv("MEMVISOR_RUNTIME_DIR", TB.dir, 1);
	setenv("LD_LIBRARY_PATH", getenv("MV_XEN_LIBDIR"), 1);
	return r;
}

static void spawn4(struct node *n, const char *mode, const char *port, const char *arg, const char *arg2)
{
	int in[2], out[2];
	assert_int_equal(pipe2(in, O_CLOEXEC), 0);
	assert_int_equal(pipe2(out, O_CLOEXEC), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	char *argv[] = { (char *)getenv("MV_VCHAN_NODE"), (char *)mode, (char *)port, (char *)arg, (char *)arg2, NULL };
	assert_int_equal(posix_spawn(&n->pid, argv[0], &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	n->in = in[1];
	n->out = out[0];
	n->len = 0;
}

static void spawn(struct node *n, const char *mode, const char *port, const char *arg)
{
	spawn4(n, mode, port, arg, NULL);
}

/* The next line from the node, within ms; "" on timeout or end. */
static const char *line(struct node *n, int ms)
{
	static char got[4096];
	for (;;) {
		char *nl = memchr(n->buf, '\n', n->len);
		if (nl) {
			size_t l = (size_t)(nl - n->buf);
			memcpy(got, n->buf, l);
			got[l] = '\0';
			memmove(n->buf, nl + 1, n->len - l - 1);
			n->len -= l + 1;
			return got;
		}
		struct pollfd p = { .fd = n->out, .events = POLLIN };
		if (poll(&p, 1, ms) != 1)
			return "";
		ssize_t r = read(n->out, n->buf + n->len, sizeof(n->buf) - n->len - 1);
		if (r <= 0)
			return "";
		n->len += (size_t)r;
	}
}

static void say(struct node *n, const char *fmt, ...)
{
	char b[64];
	va_list ap;
	va_start(ap, fmt);
	int l = vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	assert_int_equal(write(n->in, b, (size_t)l), l);
}

static int domid_of(struct node *n)
{
	const char *l = line(n, 10000);
	int d = -1;
	if (sscanf(l, "domid %d", &d) != 1)
		fail_msg("expected a domid, got '%s'", l);
	return d;
}

static int finish(struct node *n, int sig)
{
	int st = -1;
	if (sig)
		kill(n->pid, sig);
	close(n->in);
	close(n->out);
	waitpid(n->pid, &st, 0);
	return st;
}

/* Server and client connected; the client has sent and verified bytes. */
static void connect_pair(struct node *s, struct node *c, const char *port, const char *bufsize, const char *bytes)
{
	spawn(s, "server", port, bufsize);
	spawn(c, "client", port, bytes);
	int sd = domid_of(s), cd = domid_of(c);
	assert_true(sd > 0 && cd > 0 && sd != cd);
	say(s, "%d\n", cd);
	assert_string_equal(line(s, 10000), "ready");
	say(c, "%d\n", sd);
	char want[64];
	snprintf(want, sizeof(want), "verified %s", bytes);
	assert_string_equal(line(c, 60000), want);
}

static void test_echo_and_close(void **state)
{
	(void)state;
	/* rings inside the shared page (1 KiB), and on granted pages of their own (64 KiB) */
	const char *sizes[] = { "1024", "65536" };
	for (int i = 0; i < 2; i++) {
		struct node s, c;
		connect_pair(&s, &c, i ? "2" : "1", sizes[i], "3000000");
		say(&c, "close\n");
		assert_string_equal(line(&s, 10000), "closed 3000000");
		int st = finish(&c, 0);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		st = finish(&s, 0);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	/* the server removed its xenstore entries on close; the broker released both domains */
	struct mvw_rep_status st;
	assert_int_equal(tb_status(&st), 0);
}

static void test_client_killed(void **state)
{
	(void)state;
	struct node s, c;
	connect_pair(&s, &c, "7", "65536", "100000");
	finish(&c, SIGKILL);
	/* the broker clears cli_live and fires the event the dead client set up */
	assert_string_equal(line(&s, 10000), "closed 100000");
	int st = finish(&s, 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void test_server_killed(void **state)
{
	(void)state;
	struct node s, c;
	connect_pair(&s, &c, "9", "65536", "100000");
	say(&c, "wait\n");
	finish(&s, SIGKILL);
	assert_string_equal(line(&c, 10000), "server gone");
	int st = finish(&c, 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* vchan_node in fork mode: its lines tell the domids and pids of both processes. */
struct pair {
	struct node n;
	int pd, cd;
	pid_t ppid, cpid;
};

static void fork_pair(struct pair *p, const char *server_side, const char *port, const char *bytes)
{
	spawn4(&p->n, "fork", server_side, port, bytes);
	const char *l = line(&p->n, 10000);
	assert_int_equal(sscanf(l, "parent domid %d pid %d", &p->pd, &p->ppid), 2);
	int seen = 0;
	for (int i = 0; i < 4 && seen < 1; i++) {
		l = line(&p->n, 10000);
		if (sscanf(l, "child domid %d pid %d", &p->cd, &p->cpid) == 2)
			seen = 1;
		else if (strncmp(l, "domid ", 6) != 0)
			fail_msg("unexpected '%s'", l);
	}
	assert_true(seen);
	/* never the parent, never domain 0 */
	assert_true(p->pd > 0 && p->cd > 0 && p->pd != p->cd);
	assert_true(p->cpid != p->ppid);
}

/* Lines until one that starts with want (the other process's "domid"/"ready" lines are skipped). */
static void expect(struct node *n, const char *want, int ms)
{
	for (int i = 0; i < 8; i++) {
		const char *l = line(n, ms);
		if (strcmp(l, want) == 0)
			return;
		if (!*l || strncmp(l, "error", 5) == 0 || strncmp(l, "mismatch", 8) == 0)
			fail_msg("expected '%s', got '%s'", want, l);
	}
	fail_msg("expected '%s'", want);
}

static void test_fork(void **state)
{
	(void)state;
	const char *sides[] = { "parent", "child" };
	for (int i = 0; i < 2; i++) {
		struct pair p;
		fork_pair(&p, sides[i], i ? "12" : "11", "2000000");
		expect(&p.n, "verified 2000000", 60000);
		say(&p.n, "close\n");
		expect(&p.n, "closed 2000000", 10000);
		int st = finish(&p.n, 0);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
}

/* kill -9 of the parent or of the child, as server and as client: the other notices. */
static void test_fork_killed(void **state)
{
	(void)state;
	for (int i = 0; i < 4; i++) {
		bool parent_serves = i < 2, kill_server = i % 2 == 0;
		struct pair p;
		char port[8];
		snprintf(port, sizeof(port), "%d", 20 + i);
		fork_pair(&p, parent_serves ? "parent" : "child", port, "2000000");
		expect(&p.n, "verified 2000000", 60000);
		pid_t server = parent_serves ? p.ppid : p.cpid, client = parent_serves ? p.cpid : p.ppid;
		if (kill_server) {
			say(&p.n, "wait\n");
			kill(server, SIGKILL);
			expect(&p.n, "server gone", 10000);
		} else {
			kill(client, SIGKILL);
			expect(&p.n, "closed 2000000", 10000);
		}
		/* the survivor exits on its own; a child outliving its parent is reaped by init */
		int st = finish(&p.n, 0);
		assert_true(WIFEXITED(st) || (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL));
		if (WIFEXITED(st))
			assert_int_equal(WEXITSTATUS(st), 0);
	}
}

/* MEMVISOR_XEN_DOMID / MEMVISOR_XEN_NAME choose the domain of a program that loads the Xen libraries;
 * a taken id is refused (its Xen calls and its xenstore fail, it is never domain 0); a fork child of it
 * is a new domain with a fresh id. */
static void test_chosen_domid(void **state)
{
	(void)state;
	struct node s, c, dup;
	setenv("MEMVISOR_XEN_DOMID", "321", 1);
	setenv("MEMVISOR_XEN_NAME", "chosen", 1);
	spawn(&s, "server", "31", "65536");
	assert_int_equal(domid_of(&s), 321);
	spawn(&dup, "server", "32", "65536");
	const char *l = line(&dup, 10000);
	if (strncmp(l, "error own domid", 15) != 0)
		fail_msg("a second process as domain 321: '%s'", l);
	assert_true(WIFEXITED(finish(&dup, 0)));
	unsetenv("MEMVISOR_XEN_NAME");
	setenv("MEMVISOR_XEN_DOMID", "0", 1);
	spawn(&dup, "server", "33", "65536");
	l = line(&dup, 10000);
	if (strncmp(l, "error own domid", 15) != 0)
		fail_msg("domain 0 chosen: '%s'", l);
	finish(&dup, 0);
	unsetenv("MEMVISOR_XEN_DOMID");
	spawn(&c, "client", "31", "100000");
	int cd = domid_of(&c);
	assert_true(cd > 0 && cd != 321);
	say(&s, "%d\n", cd);
	assert_string_equal(line(&s, 10000), "ready");
	say(&c, "321\n");
	assert_string_equal(line(&c, 60000), "verified 100000");
	say(&c, "close\n");
	assert_string_equal(line(&s, 10000), "closed 100000");
	finish(&c, 0);
	finish(&s, 0);

	/* chosen parent, fresh child */
	setenv("MEMVISOR_XEN_DOMID", "400", 1);
	struct pair p;
	fork_pair(&p, "parent", "34", "100000");
	unsetenv("MEMVISOR_XEN_DOMID");
	assert_int_equal(p.pd, 400);
	assert_true(p.cd != 400);
	expect(&p.n, "verified 100000", 60000);
	say(&p.n, "close\n");
	expect(&p.n, "closed 100000", 10000);
	int st = finish(&p.n, 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (!getenv("MV_VCHAN_NODE") || !getenv("MV_XEN_LIBDIR")) {
		fprintf(stderr, "test_vchan: run through ctest (MV_VCHAN_NODE, MV_XEN_LIBDIR)\n");
		return 2;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_echo_and_close, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_client_killed, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_server_killed, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_fork, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_fork_killed, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_chosen_domid, setup, tb_fixture_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
