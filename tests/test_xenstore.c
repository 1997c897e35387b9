/* SPDX-License-Identifier: MIT */
/* The broker's xenstore, driven by Debian's own libxenstore.so.4 (XENSTORED_PATH): the operations,
 * relative paths, the domain directories, Xen's permission model between three domains, watches
 * (special ones included, and across a domain's death), transactions and their conflicts, quotas, and
 * the raw protocol's misuse. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <xen/io/xs_wire.h>
#include <xenstore.h>

#include <cmocka.h>

#include "helpers.h"
#include "memvisor/broker.h"

static void point_at_broker(void)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/xenstored.sock", TB.dir);
	setenv("XENSTORED_PATH", path, 1);
}

static int setup(void **state)
{
	int r = tb_fixture_start(state);
	point_at_broker();
	return r;
}

static char *rd(struct xs_handle *h, xs_transaction_t t, const char *path)
{
	unsigned len;
	return xs_read(h, t, path, &len);
}

static bool wr(struct xs_handle *h, xs_transaction_t t, const char *path, const char *v)
{
	return xs_write(h, t, path, v, (unsigned)strlen(v));
}

static void expect(struct xs_handle *h, const char *path, const char *want)
{
	char *v = rd(h, XBT_NULL, path);
	assert_non_null(v);
	assert_string_equal(v, want);
	free(v);
}

/* The next watch event within ms: "path token", or NULL. */
static char *next_event(struct xs_handle *h, int ms)
{
	static char buf[512];
	for (;;) {
		char **v = xs_check_watch(h);
		if (v) {
			snprintf(buf, sizeof(buf), "%s %s", v[XS_WATCH_PATH], v[XS_WATCH_TOKEN]);
			free(v);
			return buf;
		}
		struct pollfd p = { .fd = xs_fileno(h), .events = POLLIN };
		if (poll(&p, 1, ms) != 1)
			return NULL;
	}
}

/* Waits for a specific event, skipping others. */
static bool saw_event(struct xs_handle *h, const char *want, int ms)
{
	char *e;
	while ((e = next_event(h, ms)))
		if (strcmp(e, want) == 0)
			return true;
	return false;
}

static void test_operations(void **state)
{
	(void)state;
	struct xs_handle *h = xs_open(0);
	assert_non_null(h);
	expect(h, "/local/domain/0/domid", "0");
	expect(h, "/local/domain/0/name", "Domain-0");
	expect(h, "domid", "0"); /* relative: under our own domain's path */
	assert_true(wr(h, XBT_NULL, "/a/b/c", "deep"));
	expect(h, "/a/b/c", "deep");
	expect(h, "/a/b", "");
	assert_true(xs_write(h, XBT_NULL, "/bin", "x\0y", 3)); /* values are bytes */
	unsigned len;
	char *v = xs_read(h, XBT_NULL, "/bin", &len);
	assert_int_equal(len, 3);
	assert_memory_equal(v, "x\0y", 3);
	free(v);
	assert_true(xs_mkdir(h, XBT_NULL, "/a/d"));
	assert_true(xs_mkdir(h, XBT_NULL, "/a/d")); /* again: fine */
	unsigned n;
	char **d = xs_directory(h, XBT_NULL, "/a", &n);
	assert_int_equal(n, 2);
	assert_string_equal(d[0], "b");
	assert_string_equal(d[1], "d");
	free(d);
	assert_true(xs_rm(h, XBT_NULL, "/a/b"));
	assert_null(rd(h, XBT_NULL, "/a/b/c"));
	assert_int_equal(errno, ENOENT);
	assert_true(xs_rm(h, XBT_NULL, "/a/b")); /* gone, but its parent is there: fine */
	assert_false(xs_rm(h, XBT_NULL, "/x/y"));
	assert_int_equal(errno, ENOENT);
	assert_false(xs_rm(h, XBT_NULL, "/"));
	assert_int_equal(errno, EINVAL);
	/* paths Xen refuses */
	const char *bad[] = { "/a//b", "/a/", "/a b", "/a/\xc3\xa9", "@foo" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_false(wr(h, XBT_NULL, bad[i], "1"));
		assert_int_equal(errno, EINVAL);
	}
	char *longp = malloc(3100);
	memset(longp, 'a', 3099);
	longp[0] = '/';
	longp[3099] = '\0';
	assert_false(wr(h, XBT_NULL, longp, "1"));
	assert_int_equal(errno, EINVAL);
	free(longp);
	/* a directory too big for one reply comes back in parts, complete */
	char path[64];
	for (int i = 0; i < 300; i++) {
		snprintf(path, sizeof(path), "/big/entry-with-a-long-name-%03d", i);
		assert_true(wr(h, XBT_NULL, path, "v"));
	}
	d = xs_directory(h, XBT_NULL, "/big", &n);
	assert_non_null(d);
	assert_int_equal(n, 300);
	assert_string_equal(d[299], "entry-with-a-long-name-299");
	free(d);
	v = xs_get_domain_path(h, 7);
	assert_string_equal(v, "/local/domain/7");
	free(v);
	assert_true(xs_is_domain_introduced(h, 0));
	assert_false(xs_is_domain_introduced(h, 4242));
	xs_close(h);
}

/* ---- a domain in a child process, driven by lines over a pipe ---- */

struct actor {
	pid_t pid;
	FILE *to, *from;
	int domid;
};

static int domain_now(void)
{
	struct mvw_msg rep;
	int r = mvc_request(MV_MSG_DOMAIN, NULL, 0, -1, &rep, NULL);
	return r < 0 ? r : (int)rep.u.domain_rep.domid;
}

/* An actor's domain is the broker's choice, or this one (MV_ACTOR_DOMID), claimed as memvisor run does. */
static int actor_domain(void)
{
	const char *want = getenv("MV_ACTOR_DOMID");
	if (want) {
		int r = mv_broker_domain_reserve((uint32_t)atoi(want), "actor");
		if (r < 0)
			return r;
	}
	return domain_now();
}

/* Commands: "r PATH", "w PATH VALUE", "d PATH", "p PATH PERM...", "W PATH TOKEN", "E" (next event).
 * Answers: "0 VALUE" or "-ERRNO". */
static void actor_loop(FILE *in, FILE *out)
{
	int dom = actor_domain();
	struct xs_handle *h = dom > 0 ? xs_open(0) : NULL;
	fprintf(out, "%d\n", h ? dom : -1);
	fflush(out);
	char line[1024];
	while (fgets(line, sizeof(line), in)) {
		line[strcspn(line, "\n")] = '\0';
		char *save, *op = strtok_r(line, " ", &save), *a = strtok_r(NULL, " ", &save);
		char *b = strtok_r(NULL, "", &save);
		char *v = NULL;
		bool ok = false;
		if (!op)
			break;
		switch (op[0]) {
		case 'r': ok = (v = rd(h, XBT_NULL, a)) != NULL; break;
		case 'w': ok = wr(h, XBT_NULL, a, b ? b : ""); break;
		case 'd': ok = xs_rm(h, XBT_NULL, a); break;
		case 'p': {
			struct xs_permissions perms[8];
			unsigned n = 0;
			for (char *s2, *t = strtok_r(b, " ", &s2); t && n < 8; t = strtok_r(NULL, " ", &s2), n++)
				if (!xs_strings_to_perms(&perms[n], 1, t))
					break;
			ok = xs_set_permissions(h, XBT_NULL, a, perms, n);
			break;
		}
		case 'W': ok = xs_watch(h, a, b); break;
		case 'T': ok = xs_transaction_start(h) != XBT_NULL; break; /* left open */
		case 'E': {
			char *e = next_event(h, 3000);
			ok = e != NULL;
			if (!e)
				errno = ETIMEDOUT;
			else
				v = strdup(e);
			break;
		}
		case 'q': _exit(0);
		}
		if (ok)
			fprintf(out, "0 %s\n", v ? v : "");
		else
			fprintf(out, "-%d\n", errno);
		fflush(out);
		free(v);
	}
	_exit(0);
}

/* The domain the next actor claims; 0: the broker chooses. */
static int spawn_domid;

/* Children are fresh executions of this program (fork then exec), so they never inherit the threads
 * libxenstore starts for watches. */
static pid_t spawn_self(const char *role, int in, int out)
{
	pid_t pid = fork();
	if (pid == 0) {
		if (spawn_domid > 0) {
			char v[16];
			snprintf(v, sizeof(v), "%d", spawn_domid);
			setenv("MV_ACTOR_DOMID", v, 1);
		}
		if (in >= 0)
			dup2(in, 0);
		if (out >= 0)
			dup2(out, 1);
		execl("/proc/self/exe", "test_xenstore", role, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static void actor_start_as(struct actor *a, int domid)
{
	int to[2], from[2];
	assert_int_equal(pipe2(to, O_CLOEXEC), 0);
	assert_int_equal(pipe2(from, O_CLOEXEC), 0);
	spawn_domid = domid;
	a->pid = spawn_self("--actor", to[0], from[1]);
	spawn_domid = 0;
	assert_true(a->pid >= 0);
	close(to[0]);
	close(from[1]);
	a->to = fdopen(to[1], "w");
	a->from = fdopen(from[0], "r");
	char line[32];
	assert_non_null(fgets(line, sizeof(line), a->from));
	a->domid = atoi(line);
	assert_true(a->domid > 0);
}

static void actor_start(struct actor *a)
{
	actor_start_as(a, 0);
}

/* Runs a command; returns 0 or -errno, and the value in out. */
static int act(struct actor *a, char *out, size_t outlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(a->to, fmt, ap);
	va_end(ap);
	fputc('\n', a->to);
	fflush(a->to);
	char line[1024];
	if (!fgets(line, sizeof(line), a->from))
		return -EPIPE;
	line[strcspn(line, "\n")] = '\0';
	int r = atoi(line);
	if (out) {
		const char *v = r == 0 && strlen(line) > 2 ? line + 2 : "";
		size_t n = strlen(v) < outlen ? strlen(v) : outlen - 1;
		memcpy(out, v, n);
		out[n] = '\0';
	}
	return r;
}

static void actor_end(struct actor *a)
{
	fprintf(a->to, "q\n");
	fflush(a->to);
	fclose(a->to);
	fclose(a->from);
	waitpid(a->pid, NULL, 0);
}

static void test_domains_and_permissions(void **state)
{
	(void)state;
	struct xs_handle *h = xs_open(0); /* the toolstack: domain 0 */
	assert_non_null(h);
	struct actor A, B, C;
	actor_start(&A);
	actor_start(&B);
	actor_start(&C);
	char path[128], out[256];

	/* each domain has its directory, readable by it */
	snprintf(path, sizeof(path), "/local/domain/%d/domid", A.domid);
	char want[16];
	snprintf(want, sizeof(want), "%d", A.domid);
	expect(h, path, want);
	snprintf(path, sizeof(path), "/local/domain/%d/name", A.domid);
	char *name = rd(h, XBT_NULL, path);
	char pid[24];
	snprintf(pid, sizeof(pid), "-%d", (int)A.pid);
	assert_non_null(strstr(name, pid));
	free(name);
	assert_true(xs_is_domain_introduced(h, (unsigned)A.domid));
	assert_int_equal(act(&A, out, sizeof(out), "r domid"), 0);
	assert_string_equal(out, want);
	assert_int_equal(act(&B, out, sizeof(out), "r /local/domain/%d/domid", A.domid), -EACCES);
	assert_int_equal(act(&A, out, sizeof(out), "r /local/domain/0/name"), -EACCES);

	/* a domain writes in its data directory, not elsewhere */
	assert_int_equal(act(&A, NULL, 0, "w data/x secret"), 0);
	assert_int_equal(act(&A, NULL, 0, "w /top 1"), -EACCES);
	assert_int_equal(act(&A, NULL, 0, "w domid 9"), -EACCES);
	assert_int_equal(act(&A, NULL, 0, "w /local/domain/%d/data/y 1", B.domid), -EACCES);
	snprintf(path, sizeof(path), "/local/domain/%d/data/x", A.domid);
	unsigned n;
	struct xs_permissions *p = xs_get_permissions(h, XBT_NULL, path, &n);
	assert_non_null(p);
	assert_int_equal(p[0].id, A.domid); /* it owns what it made */
	free(p);
	/* the owner lets B read, nobody else */
	assert_int_equal(act(&B, NULL, 0, "r /local/domain/%d/data/x", A.domid), -EACCES);
	assert_int_equal(act(&A, NULL, 0, "p data/x n%d r%d", A.domid, B.domid), 0);
	assert_int_equal(act(&B, out, sizeof(out), "r /local/domain/%d/data/x", A.domid), 0);
	assert_string_equal(out, "secret");
	assert_int_equal(act(&B, NULL, 0, "w /local/domain/%d/data/x hacked", A.domid), -EACCES);
	assert_int_equal(act(&C, NULL, 0, "r /local/domain/%d/data/x", A.domid), -EACCES);
	/* a domain cannot give its node away, nor change what it cannot write */
	assert_int_equal(act(&A, NULL, 0, "p data/x n%d", B.domid), -EPERM);
	assert_int_equal(act(&B, NULL, 0, "p /local/domain/%d/data/x b%d", A.domid, B.domid), -EACCES);
	/* domain 0 may do anything */
	expect(h, path, "secret");
	assert_true(wr(h, XBT_NULL, path, "by dom0"));

	/* a dead domain's directory goes, and what it owned elsewhere passes to domain 0 */
	assert_true(xs_watch(h, "@releaseDomain", "rel"));
	assert_true(saw_event(h, "@releaseDomain rel", 2000)); /* the first firing */
	actor_end(&A);
	assert_true(saw_event(h, "@releaseDomain rel", 5000));
	snprintf(path, sizeof(path), "/local/domain/%d", A.domid);
	assert_null(rd(h, XBT_NULL, path));
	assert_int_equal(errno, ENOENT);
	assert_false(xs_is_domain_introduced(h, (unsigned)A.domid));
	actor_end(&B);
	actor_end(&C);
	xs_close(h);
}

static void test_watches(void **state)
{
	(void)state;
	struct xs_handle *h = xs_open(0);
	assert_true(xs_watch(h, "/w", "tok"));
	assert_true(saw_event(h, "/w tok", 2000)); /* a watch fires once when set */
	assert_true(wr(h, XBT_NULL, "/w/a/b", "1"));
	assert_true(saw_event(h, "/w/a/b tok", 2000));
	assert_true(wr(h, XBT_NULL, "/wx", "1")); /* not below /w */
	assert_null(next_event(h, 100));
	assert_true(xs_rm(h, XBT_NULL, "/w"));
	assert_true(saw_event(h, "/w tok", 2000));
	assert_true(xs_unwatch(h, "/w", "tok"));
	assert_false(xs_unwatch(h, "/w", "tok"));
	assert_int_equal(errno, ENOENT);
	/* a watch on a node below a removed one hears of its own path */
	assert_true(wr(h, XBT_NULL, "/r/s/t", "1"));
	assert_true(xs_watch(h, "/r/s/t", "deep"));
	assert_true(saw_event(h, "/r/s/t deep", 2000));
	assert_true(xs_rm(h, XBT_NULL, "/r"));
	assert_true(saw_event(h, "/r/s/t deep", 2000));

	/* a new domain is announced, gets its directory; its relative watch hears relative paths */
	assert_true(xs_watch(h, "@introduceDomain", "intro"));
	assert_true(saw_event(h, "@introduceDomain intro", 2000));
	struct actor A;
	actor_start(&A);
	assert_true(saw_event(h, "@introduceDomain intro", 5000));
	char out[256];
	assert_int_equal(act(&A, NULL, 0, "W data mine"), 0);
	assert_int_equal(act(&A, out, sizeof(out), "E"), 0);
	assert_string_equal(out, "data mine");
	assert_int_equal(act(&A, NULL, 0, "w data/k 1"), 0);
	assert_int_equal(act(&A, out, sizeof(out), "E"), 0);
	assert_string_equal(out, "data/k mine");
	/* it is not told of what it may not read */
	assert_int_equal(act(&A, NULL, 0, "W /secret s"), 0);
	assert_int_equal(act(&A, out, sizeof(out), "E"), 0); /* the first firing */
	assert_true(wr(h, XBT_NULL, "/secret/x", "1"));
	assert_int_equal(act(&A, out, sizeof(out), "E"), -ETIMEDOUT);
	/* the domain dies with its watches: the broker carries on, others still hear */
	char path[64];
	snprintf(path, sizeof(path), "/local/domain/%d", A.domid);
	assert_true(xs_watch(h, path, "adir"));
	kill(A.pid, SIGKILL);
	actor_end(&A);
	char want[96];
	snprintf(want, sizeof(want), "%s adir", path);
	assert_true(saw_event(h, want, 5000)); /* its directory was removed */
	assert_true(wr(h, XBT_NULL, "/after", "1"));
	expect(h, "/after", "1");
	xs_close(h);
}

/* kill -9 a domain in the middle of things: the broker releases its connection, watches,
 * transactions and directory, and the store carries on. */
static void test_death_releases(void **state)
{
	(void)state;
	struct mvw_rep_status before = { 0 }, after = { 0 };
	struct xs_handle *h = xs_open(0);
	assert_int_equal(tb_status(&before), 0);
	struct actor A;
	actor_start(&A);
	assert_int_equal(act(&A, NULL, 0, "W data w1"), 0);
	assert_int_equal(act(&A, NULL, 0, "W /local w2"), 0);
	assert_int_equal(act(&A, NULL, 0, "T"), 0);
	assert_int_equal(act(&A, NULL, 0, "T"), 0);
	assert_int_equal(act(&A, NULL, 0, "w data/x 1"), 0);
	struct mvw_rep_status during = { 0 };
	assert_int_equal(tb_status(&during), 0);
	assert_int_equal(during.xs_watches, before.xs_watches + 2);
	assert_int_equal(during.xs_transactions, before.xs_transactions + 2);
	assert_int_equal(during.xs_connections, before.xs_connections + 1);
	assert_int_equal(during.domains, before.domains + 1);
	kill(A.pid, SIGKILL);
	actor_end(&A);
	assert_true(WAIT_FOR(
		tb_status(&after) == 0 && after.domains == before.domains &&
			after.xs_connections == before.xs_connections && after.xs_watches == before.xs_watches &&
			after.xs_transactions == before.xs_transactions && after.xs_nodes == before.xs_nodes,
		5));
	assert_true(wr(h, XBT_NULL, "/still/works", "1"));
	xs_close(h);
}

/* The permissions of a node, as "n5 r7" (Xen's strings). */
static const char *perms_of(struct xs_handle *h, const char *path)
{
	static char buf[256];
	unsigned n;
	struct xs_permissions *p = xs_get_permissions(h, XBT_NULL, path, &n);
	buf[0] = '\0';
	for (unsigned i = 0; p && i < n; i++) {
		unsigned rw = p[i].perms & (XS_PERM_READ | XS_PERM_WRITE);
		char c = rw == (XS_PERM_READ | XS_PERM_WRITE) ? 'b' : rw == XS_PERM_READ ? 'r' : rw ? 'w' : 'n';
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%s%c%u", i ? " " : "", c, p[i].id);
	}
	free(p);
	return buf;
}

/* XSA-322: when a domain dies, the permission entries naming it go, so a later domain with the same
 * id inherits nothing. Domain 4242 is let read a guest's node and one of domain 0, and owns a node of
 * its own outside its directory; once it is dead, a new process made domain 4242 can read none of them
 * nor write the one the dead domain owned, and the others still can. */
static void test_dead_domain_permissions_go(void **state)
{
	(void)state;
	struct xs_handle *h = xs_open(0);
	assert_non_null(h);
	struct actor A, B, again;
	char out[256], path[128], want[64];
	actor_start(&A);
	actor_start_as(&B, 4242);
	assert_int_equal(B.domid, 4242);
	snprintf(path, sizeof(path), "/local/domain/%d/data/secret", A.domid);
	assert_int_equal(act(&A, NULL, 0, "w data/secret s3cret"), 0);
	assert_int_equal(act(&A, NULL, 0, "p data/secret n%d r4242", A.domid), 0);
	assert_true(wr(h, XBT_NULL, "/tool/config", "c"));
	struct xs_permissions p[2] = { { .id = 0, .perms = XS_PERM_NONE }, { .id = 4242, .perms = XS_PERM_READ } };
	assert_true(xs_set_permissions(h, XBT_NULL, "/tool/config", p, 2));
	assert_true(wr(h, XBT_NULL, "/tool/owned", "o"));
	p[0] = (struct xs_permissions){ .id = 4242, .perms = XS_PERM_NONE };
	assert_true(xs_set_permissions(h, XBT_NULL, "/tool/owned", p, 1));
	assert_int_equal(act(&B, out, sizeof(out), "r %s", path), 0);
	assert_string_equal(out, "s3cret");
	assert_int_equal(act(&B, out, sizeof(out), "r /tool/config"), 0);
	assert_int_equal(act(&B, NULL, 0, "w /tool/owned mine"), 0);

	kill(B.pid, SIGKILL);
	actor_end(&B);
	assert_true(WAIT_FOR(!xs_is_domain_introduced(h, 4242), 5));
	snprintf(want, sizeof(want), "n%d", A.domid);
	assert_string_equal(perms_of(h, path), want);
	assert_string_equal(perms_of(h, "/tool/config"), "n0");
	assert_string_equal(perms_of(h, "/tool/owned"), "n0");

	actor_start_as(&again, 4242);
	assert_int_equal(again.domid, 4242);
	assert_int_equal(act(&again, NULL, 0, "r %s", path), -EACCES);
	assert_int_equal(act(&again, NULL, 0, "r /tool/config"), -EACCES);
	assert_int_equal(act(&again, NULL, 0, "r /tool/owned"), -EACCES);
	assert_int_equal(act(&again, NULL, 0, "w /tool/owned again"), -EACCES);
	expect(h, "/tool/owned", "mine");
	assert_int_equal(act(&A, out, sizeof(out), "r data/secret"), 0);
	assert_string_equal(out, "s3cret");
	actor_end(&again);
	actor_end(&A);
	xs_close(h);
}

static void test_transactions(void **state)
{
	(void)state;
	struct xs_handle *h = xs_open(0), *o = xs_open(0);
	assert_true(wr(h, XBT_NULL, "/tx/a", "1"));
	/* isolation: a transaction sees its own writes, not later ones from outside */
	xs_transaction_t t = xs_transaction_start(h);
	assert_true(t != XBT_NULL);
	expect(h, "/tx/a", "1");
	char *v = rd(h, t, "/tx/a");
	assert_string_equal(v, "1");
	free(v);
	assert_true(wr(h, t, "/tx/b", "2"));
	v = rd(h, t, "/tx/b");
	assert_string_equal(v, "2");
	free(v);
	assert_null(rd(o, XBT_NULL, "/tx/b"));
	/* an unrelated write does not make it fail */
	assert_true(wr(o, XBT_NULL, "/elsewhere", "x"));
	assert_true(xs_transaction_end(h, t, false));
	expect(o, "/tx/b", "2");
	/* a conflicting one does: EAGAIN, nothing applied */
	t = xs_transaction_start(h);
	v = rd(h, t, "/tx/a");
	free(v);
	assert_true(wr(h, t, "/tx/c", "3"));
	assert_true(wr(o, XBT_NULL, "/tx/a", "changed"));
	assert_false(xs_transaction_end(h, t, false));
	assert_int_equal(errno, EAGAIN);
	assert_null(rd(o, XBT_NULL, "/tx/c"));
	/* the usual retry loop then succeeds */
	for (int tries = 0;; tries++) {
		assert_true(tries < 3);
		t = xs_transaction_start(h);
		v = rd(h, t, "/tx/a");
		assert_string_equal(v, "changed");
		free(v);
		assert_true(wr(h, t, "/tx/c", "3"));
		if (xs_transaction_end(h, t, false))
			break;
	}
	expect(o, "/tx/c", "3");
	/* an abort changes nothing; a removal inside is seen inside only, until commit */
	t = xs_transaction_start(h);
	assert_true(xs_rm(h, t, "/tx/a"));
	assert_null(rd(h, t, "/tx/a"));
	expect(o, "/tx/a", "changed");
	assert_true(xs_transaction_end(h, t, true));
	expect(o, "/tx/a", "changed");
	/* two transactions creating the same node: the second to commit conflicts */
	xs_transaction_t t1 = xs_transaction_start(h), t2 = xs_transaction_start(o);
	assert_true(wr(h, t1, "/tx/new", "1"));
	assert_true(wr(o, t2, "/tx/new", "2"));
	assert_true(xs_transaction_end(h, t1, false));
	assert_false(xs_transaction_end(o, t2, false));
	assert_int_equal(errno, EAGAIN);
	expect(o, "/tx/new", "1");
	/* watches fire at commit */
	assert_true(xs_watch(o, "/tx", "t"));
	assert_true(saw_event(o, "/tx t", 2000));
	t = xs_transaction_start(h);
	assert_true(wr(h, t, "/tx/d", "4"));
	assert_null(next_event(o, 100));
	assert_true(xs_transaction_end(h, t, false));
	assert_true(saw_event(o, "/tx/d t", 2000));
	/* a transaction id that is not ours */
	assert_null(rd(o, (xs_transaction_t)999, "/tx/a"));
	assert_int_equal(errno, ENOENT);
	xs_close(h);
	xs_close(o);
}

/* The broker's resident memory, in KiB. */
static long broker_rss_kb(void)
{
	char path[64], line[256];
	long kb = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)TB.pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* A transaction costs memory for what it touches, not for the tree: 200 open ones on a tree of about
 * 3 MiB, each reading and writing a few nodes, cost the broker less than two copies of the tree (a copy
 * each would be 200). Each still sees its own writes and conflicts as before. */
static void test_transactions_cost_what_they_touch(void **state)
{
	(void)state;
	enum { DIRS = 30, PER = 50, VLEN = 2000, TXS = 200 };
	struct xs_handle *h = xs_open(0), *o = xs_open(0), *hs[4]; /* several connections, one quota */
	for (int i = 0; i < 4; i++)
		assert_non_null(hs[i] = xs_open(0));
	char path[64], *val = malloc(VLEN);
	assert_non_null(h);
	for (int d = 0; d < DIRS; d++)
		for (int i = 0; i < PER; i++) {
			snprintf(path, sizeof(path), "/bulk/d%d/n%d", d, i);
			memset(val, 'a' + (d + i) % 26, VLEN);
			assert_true(xs_write(h, XBT_NULL, path, val, VLEN));
		}
	long tree_kb = (long)DIRS * PER * VLEN / 1024, before = broker_rss_kb();
	assert_true(before > 0);
	xs_transaction_t t[TXS];
	for (int i = 0; i < TXS; i++) {
		t[i] = xs_transaction_start(hs[i % 4]);
		assert_true(t[i] != XBT_NULL);
		snprintf(path, sizeof(path), "/bulk/d%d/n%d", i % DIRS, i % PER);
		unsigned len;
		char *v = xs_read(hs[i % 4], t[i], path, &len);
		assert_non_null(v);
		assert_int_equal(len, VLEN);
		free(v);
		snprintf(path, sizeof(path), "/bulk/d%d/tx%d", i % DIRS, i);
		assert_true(wr(hs[i % 4], t[i], path, "mine"));
		v = rd(hs[i % 4], t[i], path);
		assert_string_equal(v, "mine");
		free(v);
		assert_null(rd(o, XBT_NULL, path));
	}
	long after = broker_rss_kb();
	print_message("%d open transactions on a %ld KiB tree: broker RSS %ld -> %ld KiB\n", TXS, tree_kb, before,
		      after);
	assert_true(after - before < 2 * tree_kb);
	/* a listing inside one sees the live children and its own */
	unsigned n;
	char **d = xs_directory(hs[0], t[0], "/bulk/d0", &n);
	assert_non_null(d);
	assert_int_equal(n, PER + 1);
	free(d);
	/* the first commits; one whose read node changed outside fails; one that removed a directory
	 * sees it gone inside only */
	assert_true(xs_transaction_end(hs[0], t[0], false));
	expect(o, "/bulk/d0/tx0", "mine");
	assert_true(wr(o, XBT_NULL, "/bulk/d1/n1", "changed"));
	assert_false(xs_transaction_end(hs[1], t[1], false));
	assert_int_equal(errno, EAGAIN);
	assert_null(rd(o, XBT_NULL, "/bulk/d1/tx1"));
	assert_true(xs_rm(hs[2], t[2], "/bulk/d2"));
	assert_null(rd(hs[2], t[2], "/bulk/d2"));
	assert_int_equal(errno, ENOENT);
	d = xs_directory(hs[2], t[2], "/bulk", &n);
	assert_non_null(d);
	assert_int_equal(n, DIRS - 1);
	free(d);
	char *still = rd(o, XBT_NULL, "/bulk/d2/n5");
	assert_non_null(still); /* outside, until the commit */
	free(still);
	assert_true(xs_transaction_end(hs[2], t[2], false));
	assert_null(rd(o, XBT_NULL, "/bulk/d2/n5"));
	for (int i = 3; i < TXS; i++)
		assert_true(xs_transaction_end(hs[i % 4], t[i], true));
	struct mvw_rep_status st;
	assert_int_equal(tb_status(&st), 0);
	assert_int_equal(st.xs_transactions, 0);
	free(val);
	for (int i = 0; i < 4; i++)
		xs_close(hs[i]);
	xs_close(h);
	xs_close(o);
}

/* Guests get Xen's quotas and errors (domain 0 its own: test_dom0_limits). Run in a domain child. */
static int quota_child(void)
{
	if (domain_now() <= 0)
		return 1;
	struct xs_handle *h = xs_open(0);
	if (!h)
		return 2;
	char big[2100];
	memset(big, 'v', sizeof(big));
	if (!xs_write(h, XBT_NULL, "data/ok", big, 2048))
		return 3;
	if (xs_write(h, XBT_NULL, "data/big", big, 2049) || errno != ENOSPC)
		return 4;
	char path[64];
	int made = 0;
	for (int i = 0; i < 1100; i++) {
		snprintf(path, sizeof(path), "data/n%d", i);
		if (!xs_write(h, XBT_NULL, path, "1", 1)) {
			if (errno != ENOSPC)
				return 5;
			break;
		}
		made++;
	}
	if (made < 990 || made >= 1000)
		return 6; /* 1000 nodes, counting the data directory and data/ok */
	if (!xs_rm(h, XBT_NULL, "data/n0") || !xs_write(h, XBT_NULL, "data/again", "1", 1))
		return 7; /* removing gives room back */
	for (int i = 0; i < 128; i++) {
		snprintf(path, sizeof(path), "t%d", i);
		if (!xs_watch(h, "data", path))
			return 8;
	}
	if (xs_watch(h, "data", "one-too-many") || errno != E2BIG)
		return 9;
	for (int i = 0; i < 10; i++)
		if (xs_transaction_start(h) == XBT_NULL)
			return 10;
	if (xs_transaction_start(h) != XBT_NULL || errno != ENOSPC)
		return 11;
	/* the quotas are the domain's, not the connection's: a second connection gets no fresh ones */
	struct xs_handle *h2 = xs_open(0);
	if (!h2)
		return 12;
	if (xs_watch(h2, "data", "second-connection") || errno != E2BIG)
		return 13;
	if (xs_transaction_start(h2) != XBT_NULL || errno != ENOSPC)
		return 14;
	xs_close(h);
	if (!WAIT_FOR(xs_watch(h2, "data", "second-connection"), 5))
		return 15; /* the first connection's watches left with it */
	xs_close(h2);
	return 0;
}

static void test_quotas(void **state)
{
	(void)state;
	pid_t pid = spawn_self("--quota", -1, -1);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* domain 0's limits are higher: a value of a whole payload is fine */
	struct xs_handle *h = xs_open(0);
	char big[4000];
	memset(big, 'v', sizeof(big));
	assert_true(xs_write(h, XBT_NULL, "/big", big, sizeof(big)));
	xs_close(h);
}

/* A watch and a transaction over the raw protocol, for a fork child: libxenstore would start a thread,
 * which a child of a threaded process must not. */
static bool raw_ok(int fd, uint32_t type, const void *p, uint32_t len)
{
	struct xsd_sockmsg h = { type, 7, 0, len }, r;
	char buf[256];
	if (send(fd, &h, sizeof(h), MSG_NOSIGNAL) != sizeof(h) || send(fd, p, len, MSG_NOSIGNAL) != (ssize_t)len)
		return false;
	/* a new watch fires once at once: skip events */
	do {
		if (recv(fd, &r, sizeof(r), MSG_WAITALL) != sizeof(r) || r.len > sizeof(buf) ||
		    (r.len && recv(fd, buf, r.len, MSG_WAITALL) != (ssize_t)r.len))
			return false;
	} while (r.type == XS_WATCH_EVENT);
	return r.type == type && r.req_id == 7;
}

static bool other_process_watches(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", getenv("XENSTORED_PATH"));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return false;
	return raw_ok(fd, XS_WATCH, "/q\0other-process", 17) && raw_ok(fd, XS_TRANSACTION_START, "", 1);
}

/* 200 transactions open at once: more than domain 0's default of 64 per process */
static int setup_many_transactions(void **state)
{
	(void)state;
	const char *extra[] = { "--xs-dom0-transactions", "256", NULL };
	int r = tb_start(&TB, extra);
	point_at_broker();
	return r;
}

/* Domain 0 is limited too, by the broker's options, with Xen's errors; so is one process's number of
 * connections. After each limit the store, other connections and other domains carry on. */
static int setup_small_dom0(void **state)
{
	(void)state;
	const char *extra[] = { "--xs-dom0-nodes",
				"300",
				"--xs-dom0-watches",
				"8",
				"--xs-dom0-transactions",
				"4",
				"--xs-dom0-tx-entries",
				"50",
				"--xs-conns-per-pid",
				"6",
				NULL };
	int r = tb_start(&TB, extra);
	point_at_broker();
	return r;
}

static void test_dom0_limits(void **state)
{
	(void)state;
	struct xs_handle *h = xs_open(0);
	char path[64];
	int made = 0;
	assert_non_null(h);
	for (int i = 0; i < 400; i++) {
		snprintf(path, sizeof(path), "/q/n%d", i);
		if (!wr(h, XBT_NULL, path, "1")) {
			assert_int_equal(errno, ENOSPC);
			break;
		}
		made++;
	}
	assert_true(made > 250 && made < 300); /* 300 nodes, counting the tree domain 0 starts with */
	assert_true(xs_rm(h, XBT_NULL, "/q/n0"));
	assert_true(wr(h, XBT_NULL, "/q/again", "1")); /* removing gives room back */
	for (int i = 0; i < 8; i++) {
		snprintf(path, sizeof(path), "t%d", i);
		assert_true(xs_watch(h, "/q", path));
	}
	assert_false(xs_watch(h, "/q", "one-too-many"));
	assert_int_equal(errno, E2BIG);
	xs_transaction_t t[4];
	for (int i = 0; i < 4; i++)
		assert_true((t[i] = xs_transaction_start(h)) != XBT_NULL);
	assert_true(xs_transaction_start(h) == XBT_NULL);
	assert_int_equal(errno, ENOSPC);
	/* a transaction touches at most 50 nodes: the write past that fails and changes nothing; the
	 * commit applies the writes that succeeded */
	int touched = 0;
	for (; touched < 100; touched++) {
		snprintf(path, sizeof(path), "/q/n%d", touched + 1);
		if (!wr(h, t[0], path, "2"))
			break;
	}
	assert_int_equal(errno, ENOSPC);
	assert_true(touched > 10 && touched < 50);
	assert_true(xs_transaction_end(h, t[0], false));
	snprintf(path, sizeof(path), "/q/n%d", touched);
	expect(h, path, "2");
	snprintf(path, sizeof(path), "/q/n%d", touched + 1);
	expect(h, path, "1");
	/* rewriting one node is a change each time: past the limit the transaction cannot commit */
	assert_true((t[0] = xs_transaction_start(h)) != XBT_NULL);
	for (touched = 0; touched < 100; touched++)
		if (!wr(h, t[0], "/q/n2", "4"))
			break;
	assert_int_equal(errno, ENOSPC);
	assert_true(touched > 10 && touched < 50);
	assert_false(xs_transaction_end(h, t[0], false));
	assert_int_equal(errno, ENOSPC);
	expect(h, "/q/n2", "2"); /* nothing of it applied */
	for (int i = 1; i < 4; i++)
		assert_true(xs_transaction_end(h, t[i], true));
	assert_true((t[0] = xs_transaction_start(h)) != XBT_NULL); /* room again */
	assert_true(wr(h, t[0], "/q/n1", "3"));
	assert_true(xs_transaction_end(h, t[0], false));
	expect(h, "/q/n1", "3");

	/* six connections per process: the seventh is told ENOSPC at its first request */
	struct xs_handle *more[5], *over;
	for (int i = 0; i < 5; i++) {
		assert_non_null(more[i] = xs_open(0));
		expect(more[i], "/q/n1", "3");
	}
	assert_non_null(over = xs_open(0));
	assert_null(rd(over, XBT_NULL, "/q/n1"));
	assert_int_equal(errno, ENOSPC);
	xs_close(over);
	/* domain 0's watches and transactions are counted per process, over all its connections */
	assert_false(xs_watch(more[0], "/q", "second-connection"));
	assert_int_equal(errno, E2BIG);
	for (int i = 0; i < 4; i++)
		assert_true((t[i] = xs_transaction_start(more[1])) != XBT_NULL);
	assert_true(xs_transaction_start(h) == XBT_NULL);
	assert_int_equal(errno, ENOSPC);
	for (int i = 0; i < 4; i++)
		assert_true(xs_transaction_end(more[1], t[i], true));
	/* another toolstack process has quotas of its own */
	pid_t other = fork();
	assert_true(other >= 0);
	if (other == 0)
		_exit(other_process_watches() ? 0 : 1);
	int ost;
	assert_int_equal(waitpid(other, &ost, 0), other);
	assert_true(WIFEXITED(ost));
	assert_int_equal(WEXITSTATUS(ost), 0);
	/* another process, here a guest domain, is served meanwhile */
	struct actor A;
	actor_start(&A);
	char out[64];
	assert_int_equal(act(&A, NULL, 0, "w data/x guest"), 0);
	assert_int_equal(act(&A, out, sizeof(out), "r data/x"), 0);
	assert_string_equal(out, "guest");
	actor_end(&A);
	/* and a freed place is taken again */
	xs_close(more[0]);
	assert_true(WAIT_FOR(({
				     struct xs_handle *n = xs_open(0);
				     char *v = n ? rd(n, XBT_NULL, "/q/n1") : NULL;
				     bool ok = v != NULL;
				     free(v);
				     if (n)
					     xs_close(n);
				     ok;
			     }),
			     5));
	struct mvw_rep_status st;
	assert_int_equal(tb_status(&st), 0);
	for (int i = 1; i < 5; i++)
		xs_close(more[i]);
	xs_close(h);
}

/* ---- the raw protocol ---- */

static int raw_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", getenv("XENSTORED_PATH"));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

static void raw_send(int fd, uint32_t type, uint32_t req, uint32_t tx, const void *p, uint32_t len)
{
	struct xsd_sockmsg h = { type, req, tx, len };
	assert_int_equal(send(fd, &h, sizeof(h), MSG_NOSIGNAL), sizeof(h));
	if (len)
		assert_int_equal(send(fd, p, len, MSG_NOSIGNAL), len);
}

static void raw_expect(int fd, uint32_t type, uint32_t req, const char *payload, uint32_t len)
{
	struct xsd_sockmsg h;
	char buf[4096];
	assert_int_equal(recv(fd, &h, sizeof(h), MSG_WAITALL), sizeof(h));
	assert_int_equal(h.req_id, req);
	assert_int_equal(h.type, type);
	assert_int_equal(h.len, len);
	assert_int_equal(recv(fd, buf, h.len, MSG_WAITALL), h.len);
	assert_memory_equal(buf, payload, len);
}

static void test_raw_protocol(void **state)
{
	(void)state;
	int fd = raw_connect();
	raw_send(fd, 999, 1, 0, NULL, 0);
	raw_expect(fd, XS_ERROR, 1, "EINVAL", 7);
	raw_send(fd, XS_WATCH_EVENT, 2, 0, "a\0b", 4);
	raw_expect(fd, XS_ERROR, 2, "EINVAL", 7);
	raw_send(fd, XS_READ, 3, 77, "/local", 7);
	raw_expect(fd, XS_ERROR, 3, "ENOENT", 7);
	raw_send(fd, XS_READ, 4, 0, NULL, 0);
	raw_expect(fd, XS_ERROR, 4, "EINVAL", 7);
	raw_send(fd, XS_INTRODUCE, 5, 0,
		 "1\0"
		 "2\0"
		 "3\0",
		 6);
	raw_expect(fd, XS_ERROR, 5, "ENOSYS", 7);
	/* a request in pieces, and one without its final NUL */
	struct xsd_sockmsg h = { XS_WRITE, 6, 0, 7 };
	assert_int_equal(send(fd, &h, 5, 0), 5);
	usleep(20000);
	assert_int_equal(send(fd, (char *)&h + 5, sizeof(h) - 5, 0), sizeof(h) - 5);
	assert_int_equal(send(fd, "/p\0val", 7, 0), 7);
	raw_expect(fd, XS_WRITE, 6, "OK", 3);
	raw_send(fd, XS_READ, 7, 0, "/p", 2);
	raw_expect(fd, XS_READ, 7, "val", 4);
	/* set perms with junk */
	raw_send(fd, XS_SET_PERMS, 8, 0, "/p\0x1\0", 6);
	raw_expect(fd, XS_ERROR, 8, "EINVAL", 7);
	raw_send(fd, XS_SET_PERMS, 9, 0, "/p\0r99999999\0", 13);
	raw_expect(fd, XS_ERROR, 9, "EINVAL", 7);
	raw_send(fd, XS_GET_PERMS, 10, 0, "/p", 3);
	raw_expect(fd, XS_GET_PERMS, 10, "n0", 3);
	raw_send(fd, XS_TRANSACTION_END, 11, 0, "T", 2);
	raw_expect(fd, XS_ERROR, 11, "EINVAL", 7);
	raw_send(fd, XS_DIRECTORY_PART, 12, 0, "/p\0zz", 6);
	raw_expect(fd, XS_ERROR, 12, "EINVAL", 7);
	/* reset_watches drops this connection's watches: a later change tells it nothing */
	raw_send(fd, XS_WATCH, 20, 0, "/rw\0tok", 8);
	raw_expect(fd, XS_WATCH, 20, "OK", 3);
	raw_expect(fd, XS_WATCH_EVENT, 0, "/rw\0tok", 8);
	raw_send(fd, XS_RESET_WATCHES, 21, 0, NULL, 0);
	raw_expect(fd, XS_RESET_WATCHES, 21, "OK", 3);
	raw_send(fd, XS_WRITE, 22, 0,
		 "/rw/x\0"
		 "1",
		 7);
	raw_expect(fd, XS_WRITE, 22, "OK", 3);
	raw_send(fd, XS_GET_DOMAIN_PATH, 23, 0, "3", 2);
	raw_expect(fd, XS_GET_DOMAIN_PATH, 23, "/local/domain/3", 16); /* and no event came first */
	/* a message longer than Xen allows ends the connection, and only it */
	int other = raw_connect();
	h = (struct xsd_sockmsg){ XS_READ, 13, 0, 5000 };
	assert_int_equal(send(fd, &h, sizeof(h), MSG_NOSIGNAL), sizeof(h));
	char c;
	assert_int_equal(recv(fd, &c, 1, 0), 0);
	close(fd);
	raw_send(other, XS_READ, 14, 0, "/p", 3);
	raw_expect(other, XS_READ, 14, "val", 4);
	close(other);
	struct mvw_rep_status s;
	assert_int_equal(tb_status(&s), 0);
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--actor") == 0)
		actor_loop(stdin, stdout);
	if (argc == 2 && strcmp(argv[1], "--quota") == 0)
		return quota_child();
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_operations, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_domains_and_permissions, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_watches, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_transactions, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_transactions_cost_what_they_touch, setup_many_transactions,
						tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_death_releases, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_dead_domain_permissions_go, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_quotas, setup, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_dom0_limits, setup_small_dom0, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_raw_protocol, setup, tb_fixture_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
