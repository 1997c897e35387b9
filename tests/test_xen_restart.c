/* SPDX-License-Identifier: MIT */
/* A broker restart without amnesia: two Xen client processes hold a domain each, an interdomain event
 * channel, a grant and xenstore nodes; the broker is killed with SIGKILL and a new one starts in the
 * same runtime directory. The domains keep their ids, the channel is the broker's again (both ends,
 * both ways, unbind works), the xenstore nodes of live domains are there, a dead domain's are gone, and
 * a ref issued by the dead broker is refused plainly. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <xenstore.h>

#include <cmocka.h>

#include "helpers.h"
#include "memvisor/broker.h"
#include "xenpeer.h"

static void point_at_broker(void)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/xenstored.sock", TB.dir);
	setenv("XENSTORED_PATH", path, 1);
}

static char *rd(struct xs_handle *h, const char *path)
{
	unsigned len;
	return xs_read(h, XBT_NULL, path, &len);
}

static void expect(struct xs_handle *h, const char *path, const char *want)
{
	char *v = rd(h, path);
	assert_non_null(v);
	assert_string_equal(v, want);
	free(v);
}

static uint64_t counter(const char *name)
{
	mv_broker_status *st;
	uint64_t v = UINT64_MAX;
	if (mv_broker_status_new(&st) < 0)
		return UINT64_MAX;
	mv_broker_status_get(st, name, &v);
	mv_broker_status_free(st);
	return v;
}

/* SIGKILL, then whoever is to die while no broker runs, then a new broker in the same directory. */
static void restart_broker(struct peer *dies)
{
	char dir[sizeof(TB.dir)];
	snprintf(dir, sizeof(dir), "%s", TB.dir);
	tb_kill(&TB, SIGKILL);
	if (dies)
		peer_end(dies, SIGKILL);
	assert_int_equal(tb_start_in(&TB, dir, NULL), 0);
}

static void test_restart_keeps_xen_state(void **state)
{
	(void)state;
	struct peer z, a, b, c;
	char path[128], val[32];

	point_at_broker();
	/* a domain that comes and goes first, so a renumbering broker could not hand the same ids out */
	assert_int_equal(peer_start(&z), 0);
	assert_true(peer_do(&z, OP_DOMID, 0, 0, 0, 0) > 0);
	peer_end(&z, 0);
	assert_int_equal(peer_start(&a), 0);
	assert_int_equal(peer_start(&b), 0);
	assert_int_equal(peer_start(&c), 0);
	int da = (int)peer_do(&a, OP_DOMID, 0, 0, 0, 0), db = (int)peer_do(&b, OP_DOMID, 0, 0, 0, 0);
	int dc = (int)peer_do(&c, OP_DOMID, 0, 0, 0, 0);
	assert_true(da > 1 && db > 1 && dc > 1);

	/* b waits for a; a binds to it */
	int pb = (int)peer_do(&b, OP_BIND_UNBOUND, da, 0, 0, 0);
	assert_true(pb > 0);
	int pa = (int)peer_do(&a, OP_BIND, db, pb, 0, 0);
	assert_true(pa > 0);
	assert_int_equal(peer_do(&a, OP_NOTIFY, pa, 0, 0, 0), 0);
	assert_int_equal(peer_do(&b, OP_WAIT_EVENT, 5000, 0, 0, 0), pb);

	/* a grants b a page, which b maps */
	int ref = (int)peer_do(&a, OP_SHARE, db, 1, 1, 0);
	assert_true(ref >= 8);
	assert_int_equal(peer_do(&a, OP_WRITE, 100, 42, 0, 0), 0);
	assert_int_equal(peer_do(&b, OP_MAP, da, ref, 1, 0), 0);
	assert_int_equal(peer_do(&b, OP_READ, 100, 0, 0, 0), 42);

	struct xs_handle *h = xs_open(0);
	assert_non_null(h);
	snprintf(path, sizeof(path), "/local/domain/%d/data/node", da);
	assert_true(xs_write(h, XBT_NULL, path, "of-a", 4));
	snprintf(path, sizeof(path), "/local/domain/%d/data/node", db);
	assert_true(xs_write(h, XBT_NULL, path, "of-b", 4));
	snprintf(path, sizeof(path), "/local/domain/%d/data/node", dc);
	assert_true(xs_write(h, XBT_NULL, path, "of-c", 4));
	assert_true(xs_write(h, XBT_NULL, "/tool/restart", "kept", 4));
	xs_close(h);

	/* c dies while no broker runs: its domain must not come back */
	restart_broker(&c);

	/* b asks first: a broker that renumbers would give it the first free id */
	assert_int_equal(peer_do(&b, OP_DOMID, 0, 0, 0, 0), db);
	assert_int_equal(peer_do(&a, OP_DOMID, 0, 0, 0, 0), da);
	assert_int_equal(counter("xen.domains"), 2);

	/* the old mapping still reads; the dead broker's ref is refused plainly, and a new share's refs are
	 * not ones it may have issued (these calls are also the Xen libraries' first requests of the new
	 * broker: the tests link a static engine beside theirs, whose requests above were the test's own) */
	assert_int_equal(peer_do(&b, OP_READ, 100, 0, 0, 0), 42);
	assert_int_equal(peer_do(&b, OP_MAP, da, ref, 1, 0), -ESTALE);
	int ref2 = (int)peer_do(&a, OP_SHARE, db, 1, 1, 0);
	assert_true(ref2 > ref);

	/* both ends came back to the broker's table, and the channel works both ways */
	assert_int_equal(counter("xen.event_channels"), 1);
	assert_int_equal(peer_do(&a, OP_NOTIFY, pa, 0, 0, 0), 0);
	assert_int_equal(peer_do(&b, OP_WAIT_EVENT, 5000, 0, 0, 0), pb);
	assert_int_equal(peer_do(&b, OP_NOTIFY, pb, 0, 0, 0), 0);
	assert_int_equal(peer_do(&a, OP_WAIT_EVENT, 5000, 0, 0, 0), pa);

	h = xs_open(0);
	assert_non_null(h);
	snprintf(path, sizeof(path), "/local/domain/%d/data/node", da);
	expect(h, path, "of-a");
	snprintf(path, sizeof(path), "/local/domain/%d/data/node", db);
	expect(h, path, "of-b");
	snprintf(path, sizeof(path), "/local/domain/%d/domid", da);
	snprintf(val, sizeof(val), "%d", da);
	expect(h, path, val);
	expect(h, "/tool/restart", "kept");
	snprintf(path, sizeof(path), "/local/domain/%d", dc);
	char *gone = rd(h, path);
	assert_null(gone);

	/* the restored channel is a real one: b unbinds, and a's end is back to waiting for b */
	assert_int_equal(peer_do(&b, OP_UNBIND, pb, 0, 0, 0), 0);
	assert_int_equal(peer_do(&a, OP_UNBIND, pa, 0, 0, 0), 0);
	assert_int_equal(counter("xen.event_channels"), 0);

	/* a restored domain ends with its process, as any other */
	peer_end(&a, SIGKILL);
	snprintf(path, sizeof(path), "/local/domain/%d", da);
	assert_true(WAIT_FOR(!(gone = rd(h, path)), 10));
	assert_true(WAIT_FOR(counter("xen.domains") == 1, 10));
	xs_close(h);
	peer_end(&b, 0);
}

/* A record the broker cannot use is no reason not to start: it starts empty. */
static void test_garbage_record_starts_clean(void **state)
{
	(void)state;
	char dir[sizeof(TB.dir)], path[300];
	snprintf(dir, sizeof(dir), "%s", TB.dir);
	tb_kill(&TB, SIGKILL);
	snprintf(path, sizeof(path), "%s/xen.state", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	for (int i = 0; i < 4096; i++)
		fputc((i * 7919) & 0xff, f);
	fclose(f);
	assert_int_equal(tb_start_in(&TB, dir, NULL), 0);
	assert_int_equal(counter("xen.domains"), 0);
	struct peer a;
	assert_int_equal(peer_start(&a), 0);
	assert_true(peer_do(&a, OP_DOMID, 0, 0, 0, 0) > 0);
	peer_end(&a, 0);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_restart_keeps_xen_state, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_garbage_record_starts_clean, tb_fixture_start, tb_fixture_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
