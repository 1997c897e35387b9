/* SPDX-License-Identifier: MIT */
/* Domains: every client process that asks is a domain with a broker-assigned domid; it ends with the
 * process (noticed when its connection closes), ids are not reused at once, and the list is right. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "helpers.h"

static int my_domid(void)
{
	struct mvw_msg rep;
	int r = mvc_request(MV_MSG_DOMAIN, NULL, 0, -1, &rep, NULL);
	return r < 0 ? r : (int)rep.u.domain_rep.domid;
}

/* The broker's list: count of records, and whether (domid, pid) is in it. */
static int list_has(int domid, pid_t pid, int *count)
{
	struct mvw_msg rep;
	int fd = -1;
	assert_int_equal(mvc_request(MV_MSG_DOMAINS, NULL, 0, -1, &rep, &fd), 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	assert_true(m != MAP_FAILED);
	close(fd);
	int n = mvw_domains_check(m, (size_t)st.st_size);
	assert_true(n >= 0);
	const struct mvw_domain_rec *r = (const struct mvw_domain_rec *)((char *)m + sizeof(struct mvw_domains_head));
	int found = 0;
	for (int i = 0; i < n; i++)
		found |= (int)r[i].domid == domid && r[i].pid == pid && r[i].uid == getuid();
	munmap(m, (size_t)st.st_size);
	if (count)
		*count = n;
	return found;
}

/* A child that reports its domid and waits to be told to exit (or killed). */
static pid_t spawn(int *domid, int *ctl)
{
	int up[2], down[2];
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(up[0]);
		close(down[1]);
		int d = my_domid();
		if (write(up[1], &d, sizeof(d)) != sizeof(d))
			_exit(1);
		char c;
		_exit(read(down[0], &c, 1) == 1 ? 0 : 2);
	}
	close(up[1]);
	close(down[0]);
	assert_int_equal(read(up[0], domid, sizeof(*domid)), sizeof(*domid));
	close(up[0]);
	*ctl = down[1];
	return pid;
}

static void test_each_process_is_a_domain(void **state)
{
	int me = my_domid();
	assert_true(me >= MV_DOMID_FIRST && me <= MV_DOMID_LAST);
	assert_int_equal(my_domid(), me); /* the same process: the same domain */
	int d[3], ctl[3];
	pid_t pids[3];
	for (int i = 0; i < 3; i++)
		pids[i] = spawn(&d[i], &ctl[i]);
	for (int i = 0; i < 3; i++) {
		assert_true(d[i] >= MV_DOMID_FIRST && d[i] <= MV_DOMID_LAST);
		assert_int_not_equal(d[i], me); /* a fork child is a process of its own */
		for (int j = 0; j < i; j++)
			assert_int_not_equal(d[i], d[j]);
		assert_true(list_has(d[i], pids[i], NULL));
	}
	assert_true(list_has(me, getpid(), NULL));
	/* kill -9 one: its domain goes with its connection */
	kill(pids[1], SIGKILL);
	waitpid(pids[1], NULL, 0);
	WAIT_FOR(!list_has(d[1], pids[1], NULL), 5);
	assert_false(list_has(d[1], pids[1], NULL));
	/* a clean exit too */
	assert_int_equal(write(ctl[0], "x", 1), 1);
	int st;
	assert_int_equal(waitpid(pids[0], &st, 0), pids[0]);
	assert_int_equal(WEXITSTATUS(st), 0);
	WAIT_FOR(!list_has(d[0], pids[0], NULL), 5);
	assert_false(list_has(d[0], pids[0], NULL));
	/* freed ids are not handed out again at once */
	int nd, nctl;
	pid_t np = spawn(&nd, &nctl);
	assert_int_not_equal(nd, d[0]);
	assert_int_not_equal(nd, d[1]);
	assert_true(list_has(d[2], pids[2], NULL));
	for (int i = 2; i < 3; i++) {
		assert_int_equal(write(ctl[i], "x", 1), 1);
		waitpid(pids[i], NULL, 0);
	}
	assert_int_equal(write(nctl, "x", 1), 1);
	waitpid(np, NULL, 0);
	close(ctl[0]), close(ctl[1]), close(ctl[2]), close(nctl);
}

static void test_cli_lists_domains(void **state)
{
	const char *cli = getenv("MEMVISOR_CLI");
	if (!cli)
		skip();
	int me = my_domid();
	char cmd[512], out[8192], want[64];
	snprintf(cmd, sizeof(cmd), "%s domains --json", cli);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = 0;
	assert_int_equal(pclose(p), 0);
	snprintf(want, sizeof(want), "{\"domid\":%d,\"pid\":%d,", me, (int)getpid());
	assert_non_null(strstr(out, want));
	assert_non_null(strstr(out, "{\"domid\":0,"));
}

static void test_list_parser_refuses_garbage(void **state)
{
	unsigned char buf[sizeof(struct mvw_domains_head) + 2 * sizeof(struct mvw_domain_rec)] = { 0 };
	struct mvw_domains_head h = { .magic = MV_DOMAINS_MAGIC,
				      .count = 2,
				      .rec_size = sizeof(struct mvw_domain_rec) };
	struct mvw_domain_rec r = { .domid = 5, .pid = 1 };
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), &r, sizeof(r));
	memcpy(buf + sizeof(h) + sizeof(r), &r, sizeof(r));
	assert_int_equal(mvw_domains_check(buf, sizeof(buf)), 2);
	assert_int_equal(mvw_domains_check(buf, sizeof(buf) - 1), -EPROTO); /* count beyond the image */
	r.domid = 0;                                                        /* the broker's id */
	memcpy(buf + sizeof(h), &r, sizeof(r));
	assert_int_equal(mvw_domains_check(buf, sizeof(buf)), -EPROTO);
	r.domid = 0x7ff0; /* reserved */
	memcpy(buf + sizeof(h), &r, sizeof(r));
	assert_int_equal(mvw_domains_check(buf, sizeof(buf)), -EPROTO);
	h.magic ^= 1;
	memcpy(buf, &h, sizeof(h));
	assert_int_equal(mvw_domains_check(buf, sizeof(buf)), -EPROTO);
	assert_int_equal(mvw_domains_check(buf, 3), -EPROTO);
}

int main(void)
{
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_each_process_is_a_domain),
		cmocka_unit_test(test_cli_lists_domains),
		cmocka_unit_test(test_list_parser_refuses_garbage),
	};
	return cmocka_run_group_tests(tests, tb_fixture_start, tb_fixture_stop);
}
