/* SPDX-License-Identifier: MIT */
/* libxenevtchn.so.1 (ours, built against Debian's xenevtchn.h) between two processes: binding through
 * the broker, notify straight to the peer (it works with the broker stopped), pending/mask/unmask
 * coalescing, and the errors of every misuse. */
#define _GNU_SOURCE
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <xenevtchn.h>

#include <cmocka.h>

#include "helpers.h"

static int my_domid(void)
{
	struct mvw_msg rep;
	int r = mvc_request(MV_MSG_DOMAIN, NULL, 0, -1, &rep, NULL);
	return r < 0 ? r : (int)rep.u.domain_rep.domid;
}

static bool readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

struct msg {
	int32_t a, b;
};

static void put(int fd, int32_t a, int32_t b)
{
	struct msg m = { a, b };
	assert_int_equal(write(fd, &m, sizeof(m)), sizeof(m));
}

static struct msg get(int fd)
{
	struct msg m = { -1, -1 };
	assert_int_equal(read(fd, &m, sizeof(m)), sizeof(m));
	return m;
}

/* The child: binds to the parent's unbound port, then answers as told. Exit status 0 = all good. */
static int child(int in, int out)
{
	xenevtchn_handle *h = xenevtchn_open(NULL, 0);
	int me = my_domid();
	struct msg m;
	if (!h || me <= 0 || write(out, &(struct msg){ me, 0 }, sizeof(m)) != sizeof(m) ||
	    read(in, &m, sizeof(m)) != sizeof(m))
		return 1;
	int port = xenevtchn_bind_interdomain(h, (uint32_t)m.a, (uint32_t)m.b);
	if (port <= 0 || write(out, &(struct msg){ port, 0 }, sizeof(m)) != sizeof(m))
		return 2;
	int fd = xenevtchn_fd(h);
	/* 1: the parent notified once: the port fires, and stays masked */
	if (!readable(fd, 5000) || xenevtchn_pending(h) != port)
		return 3;
	if (write(out, &(struct msg){ 1, 0 }, sizeof(m)) != sizeof(m) || read(in, &m, sizeof(m)) != sizeof(m))
		return 4;
	/* 2: the parent notified three times more while masked: nothing until unmask, then once */
	if (readable(fd, 100))
		return 5;
	if (xenevtchn_unmask(h, (evtchn_port_t)port) != 0 || !readable(fd, 5000) || xenevtchn_pending(h) != port)
		return 6;
	if (xenevtchn_unmask(h, (evtchn_port_t)port) != 0 || readable(fd, 100))
		return 7; /* coalesced: one event for the three */
	/* 3: our turn to notify */
	if (xenevtchn_notify(h, (evtchn_port_t)port) != 0 || write(out, &(struct msg){ 2, 0 }, sizeof(m)) != sizeof(m))
		return 8;
	/* 4: with the broker stopped, notification still gets through */
	if (read(in, &m, sizeof(m)) != sizeof(m) || !readable(fd, 5000) || xenevtchn_pending(h) != port)
		return 9;
	xenevtchn_unmask(h, (evtchn_port_t)port);
	if (write(out, &(struct msg){ 3, 0 }, sizeof(m)) != sizeof(m) || read(in, &m, sizeof(m)) != sizeof(m))
		return 10;
	xenevtchn_close(h);
	return 0;
}

static void test_two_domains(void **state)
{
	int to[2], from[2];
	assert_int_equal(pipe(to), 0);
	assert_int_equal(pipe(from), 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(to[1]), close(from[0]);
		_exit(child(to[0], from[1]));
	}
	close(to[0]), close(from[1]);
	xenevtchn_handle *h = xenevtchn_open(NULL, 0);
	assert_non_null(h);
	int me = my_domid();
	int peer = get(from[0]).a;
	assert_true(peer > 0 && peer != me);
	int port = xenevtchn_bind_unbound_port(h, (uint32_t)peer);
	assert_true(port > 0);
	put(to[1], me, port);
	int peer_port = get(from[0]).a;
	assert_true(peer_port > 0);
	assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)port), 0);
	assert_int_equal(get(from[0]).a, 1);
	for (int i = 0; i < 3; i++)
		assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)port), 0);
	put(to[1], 0, 0);
	assert_int_equal(get(from[0]).a, 2);
	int fd = xenevtchn_fd(h);
	assert_true(readable(fd, 5000));
	assert_int_equal(xenevtchn_pending(h), port);
	assert_int_equal(xenevtchn_unmask(h, (evtchn_port_t)port), 0);
	/* the broker is not on the notify path */
	kill(TB.pid, SIGSTOP);
	assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)port), 0);
	put(to[1], 0, 0);
	assert_int_equal(get(from[0]).a, 3);
	kill(TB.pid, SIGCONT);
	put(to[1], 0, 0);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* the peer is gone: its port cannot be bound again, ours still takes notifications (dropped) */
	assert_int_equal(xenevtchn_bind_interdomain(h, (uint32_t)peer, (evtchn_port_t)peer_port), -1);
	assert_true(errno == EINVAL || errno == ESRCH);
	assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)port), 0);
	assert_int_equal(xenevtchn_unbind(h, (evtchn_port_t)port), 0);
	assert_int_equal(xenevtchn_close(h), 0);
	close(to[1]), close(from[0]);
}

static void test_loopback_and_fdopen(void **state)
{
	xenevtchn_handle *h = xenevtchn_open(NULL, XENEVTCHN_NO_CLOEXEC);
	assert_non_null(h);
	int me = my_domid();
	int a = xenevtchn_bind_unbound_port(h, 0x7ff0 /* DOMID_SELF */);
	assert_true(a > 0);
	int b = xenevtchn_bind_interdomain(h, (uint32_t)me, (evtchn_port_t)a);
	assert_true(b > 0 && b != a);
	assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)a), 0);
	assert_int_equal(xenevtchn_pending(h), b);
	assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)b), 0);
	assert_int_equal(xenevtchn_pending(h), a);
	/* when one end unbinds, the other waits again for the same domain, which may bind it anew */
	assert_int_equal(xenevtchn_unmask(h, (evtchn_port_t)a), 0);
	assert_int_equal(xenevtchn_unbind(h, (evtchn_port_t)b), 0);
	assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)a), 0); /* nobody there: dropped */
	int c = xenevtchn_bind_interdomain(h, (uint32_t)me, (evtchn_port_t)a);
	assert_true(c > 0);
	assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)a), 0);
	assert_int_equal(xenevtchn_pending(h), c);
	assert_int_equal(xenevtchn_unmask(h, (evtchn_port_t)c), 0);
	assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)c), 0);
	assert_int_equal(xenevtchn_pending(h), a);
	assert_int_equal(xenevtchn_unmask(h, (evtchn_port_t)a), 0);
	b = c;
	xenevtchn_handle *h2 = xenevtchn_fdopen(NULL, xenevtchn_fd(h), 0);
	assert_ptr_equal(h2, h);
	assert_null(xenevtchn_fdopen(NULL, 0, 0));
	assert_int_equal(errno, EBADF);
	assert_int_equal(xenevtchn_close(h2), 0);
	assert_int_equal(xenevtchn_unmask(h, (evtchn_port_t)a), 0); /* still open: h2 was a second reference */
	assert_int_equal(xenevtchn_close(h), 0);
}

/* A domain can hold every port there is, 1..4095, each once; the next bind is ENOSPC; unbound ports can be
 * had again. (Finding a free port searched every channel for every candidate: 4,095 binds took 30 s.) */
static void test_all_ports(void **state)
{
	struct rlimit rl;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_max < 2 * 4095 + 64) {
		skip(); /* each port is two descriptors here */
		return;
	}
	rlim_t old = rl.rlim_cur;
	rl.rlim_cur = rl.rlim_max;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	xenevtchn_handle *h = xenevtchn_open(NULL, 0);
	assert_non_null(h);
	int me = my_domid();
	assert_true(me > 0);
	static uint8_t seen[4096];
	memset(seen, 0, sizeof(seen));
	for (int i = 0; i < 4095; i++) {
		int p = xenevtchn_bind_unbound_port(h, (uint32_t)me);
		assert_true(p >= 1 && p <= 4095);
		assert_int_equal(seen[p], 0); /* never the same port twice */
		seen[p] = 1;
	}
	assert_int_equal(xenevtchn_bind_unbound_port(h, (uint32_t)me), -1);
	assert_int_equal(errno, ENOSPC);
	assert_int_equal(xenevtchn_unbind(h, 77), 0);
	assert_int_equal(xenevtchn_bind_unbound_port(h, (uint32_t)me), 77); /* the only free one */
	xenevtchn_close(h);                                                 /* unbinds every port */
	struct mvw_rep_status st;
	assert_true(WAIT_FOR(tb_status(&st) == 0 && st.evtchn_channels == 0, 10));
	rl.rlim_cur = old;
	setrlimit(RLIMIT_NOFILE, &rl);
}

static void test_misuse(void **state)
{
	xenevtchn_handle *h = xenevtchn_open(NULL, 0);
	assert_non_null(h);
	assert_null(xenevtchn_open(NULL, 0x80));
	assert_int_equal(errno, EINVAL);
	int me = my_domid();
	assert_int_equal(xenevtchn_notify(h, 5), -1); /* never bound */
	assert_int_equal(errno, EINVAL);
	assert_int_equal(xenevtchn_unbind(h, 5), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(xenevtchn_unmask(h, 5), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(xenevtchn_bind_interdomain(h, (uint32_t)me, 0), -1); /* port 0 is never a port */
	assert_int_equal(errno, EINVAL);
	assert_int_equal(xenevtchn_bind_interdomain(h, (uint32_t)me, 4000), -1); /* nothing waits there */
	assert_int_equal(errno, EINVAL);
	assert_int_equal(xenevtchn_bind_unbound_port(h, 0x7000), -1); /* no such domain */
	assert_int_equal(errno, ESRCH);
	assert_int_equal(xenevtchn_bind_unbound_port(h, 0), -1); /* the broker is not a peer */
	assert_int_equal(errno, ESRCH);
	assert_int_equal(xenevtchn_bind_virq(h, 1), -1);
	assert_int_equal(errno, EOPNOTSUPP);
	/* an unbound port waits for one domain only; a second binder is refused */
	int a = xenevtchn_bind_unbound_port(h, (uint32_t)me);
	assert_true(a > 0);
	int b = xenevtchn_bind_interdomain(h, (uint32_t)me, (evtchn_port_t)a);
	assert_true(b > 0);
	assert_int_equal(xenevtchn_bind_interdomain(h, (uint32_t)me, (evtchn_port_t)a), -1);
	assert_int_equal(errno, EINVAL);
	/* restrict: once, and then only that domain */
	assert_int_equal(xenevtchn_restrict(h, 0x7001), 0);
	assert_int_equal(xenevtchn_restrict(h, 0x7001), -1);
	assert_int_equal(errno, EPERM);
	assert_int_equal(xenevtchn_bind_unbound_port(h, (uint32_t)me), -1);
	assert_int_equal(errno, EACCES);
	assert_int_equal(xenevtchn_unbind(h, (evtchn_port_t)a), 0);
	assert_int_equal(xenevtchn_unbind(h, (evtchn_port_t)a), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(xenevtchn_notify(h, (evtchn_port_t)b), 0); /* the other end is gone: dropped */
	assert_int_equal(xenevtchn_close(h), 0);
	assert_int_equal(xenevtchn_close(NULL), 0);
}

int main(void)
{
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_two_domains),
		cmocka_unit_test(test_loopback_and_fdopen),
		cmocka_unit_test(test_misuse),
		cmocka_unit_test(test_all_ports),
	};
	return cmocka_run_group_tests(tests, tb_fixture_start, tb_fixture_stop);
}
