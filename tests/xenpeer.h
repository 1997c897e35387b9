/* SPDX-License-Identifier: MIT */
/* A forked peer domain for the Xen tests: it runs grant and event channel calls on command, over a pipe,
 * so a test can play granter and mapper in two (or three) processes and kill one at any point. */
#pragma once

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#include "lib/client.h"

enum peer_op {
	OP_DOMID = 1,
	OP_SHARE,        /* a: domid, b: count, c: writable -> first ref */
	OP_SHARE_NOTIFY, /* a: domid, b: writable, c: offset, d: port -> ref */
	OP_MAP,          /* a: domid, b: first ref, c: count, d: writable -> 0 */
	OP_MAP_NOTIFY,   /* a: domid, b: ref, c: writable|offset<<1, d: port -> 0 */
	OP_READ,         /* a: byte offset in the current area -> the byte */
	OP_WRITE,        /* a: offset, b: value */
	OP_UNMAP,        /* the current area (unmap or unshare) */
	OP_CLOSE,        /* both grant handles, without unmapping */
	OP_BIND_UNBOUND, /* a: domid -> port */
	OP_BIND,         /* a: domid, b: remote port -> port */
	OP_WAIT_EVENT,   /* a: ms -> the port that fired, -ETIMEDOUT */
	OP_MPROTECT_RW,  /* -> mprotect(PROT_READ|PROT_WRITE) on the area */
	OP_NOTIFY,       /* a: port -> 0 */
	OP_UNBIND,       /* a: port -> 0 */
	OP_EXIT,
};

struct peer_cmd {
	int32_t op, a, b, c, d;
};

struct peer {
	pid_t pid;
	int to, from;
};

static int peer_domid_now(void)
{
	struct mvw_msg rep;
	int r = mvc_request(MV_MSG_DOMAIN, NULL, 0, -1, &rep, NULL);
	return r < 0 ? r : (int)rep.u.domain_rep.domid;
}

static int peer_wait_event(xenevtchn_handle *e, int ms)
{
	struct pollfd p = { .fd = xenevtchn_fd(e), .events = POLLIN };
	if (poll(&p, 1, ms) != 1)
		return -ETIMEDOUT;
	int port = xenevtchn_pending(e);
	if (port > 0)
		xenevtchn_unmask(e, (evtchn_port_t)port);
	return port;
}

static void peer_loop(int in, int out)
{
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	xenevtchn_handle *ev = xenevtchn_open(NULL, 0);
	uint8_t *area = NULL;
	uint32_t count = 0;
	int shared = 0;
	struct peer_cmd c;

	if (!gt || !gs || !ev)
		_exit(100);
	/* a fault must kill the peer (the test runner's handlers are inherited) */
	signal(SIGSEGV, SIG_DFL);
	signal(SIGBUS, SIG_DFL);
	while (read(in, &c, sizeof(c)) == sizeof(c)) {
		int64_t r = 0;
		uint32_t ref;
		switch (c.op) {
		case OP_DOMID: r = peer_domid_now(); break;
		case OP_SHARE: {
			static uint32_t refs[2048];
			area = c.b <= 2048 ? xengntshr_share_pages(gs, (uint32_t)c.a, c.b, refs, c.c) : NULL;
			r = area ? (int64_t)refs[0] : -errno;
			count = (uint32_t)c.b;
			shared = 1;
			break;
		}
		case OP_SHARE_NOTIFY:
			area = xengntshr_share_page_notify(gs, (uint32_t)c.a, &ref, c.b, (uint32_t)c.c,
							   (evtchn_port_t)c.d);
			r = area ? (int64_t)ref : -errno;
			count = 1;
			shared = 1;
			break;
		case OP_MAP: {
			uint32_t refs[64];
			for (int i = 0; i < c.c && i < 64; i++)
				refs[i] = (uint32_t)c.b + (uint32_t)i;
			area = xengnttab_map_domain_grant_refs(gt, (uint32_t)c.c, (uint32_t)c.a, refs,
							       PROT_READ | (c.d ? PROT_WRITE : 0));
			r = area ? 0 : -errno;
			count = (uint32_t)c.c;
			shared = 0;
			break;
		}
		case OP_MAP_NOTIFY:
			area = xengnttab_map_grant_ref_notify(
				gt, (uint32_t)c.a, (uint32_t)c.b, PROT_READ | ((c.c & 1) ? PROT_WRITE : 0),
				c.c >> 1 == 0xffff ? (uint32_t)-1 : (uint32_t)(c.c >> 1), (evtchn_port_t)c.d);
			r = area ? 0 : -errno;
			count = 1;
			shared = 0;
			break;
		case OP_READ: r = area[c.a]; break;
		case OP_WRITE: area[c.a] = (uint8_t)c.b; break;
		case OP_UNMAP:
			r = shared ? xengntshr_unshare(gs, area, count) : xengnttab_unmap(gt, area, count);
			if (r < 0)
				r = -errno;
			area = NULL;
			break;
		case OP_CLOSE:
			xengnttab_close(gt);
			xengntshr_close(gs);
			gt = xengnttab_open(NULL, 0);
			gs = xengntshr_open(NULL, 0);
			break;
		case OP_BIND_UNBOUND:
			r = xenevtchn_bind_unbound_port(ev, (uint32_t)c.a);
			if (r < 0)
				r = -errno;
			break;
		case OP_BIND:
			r = xenevtchn_bind_interdomain(ev, (uint32_t)c.a, (evtchn_port_t)c.b);
			if (r < 0)
				r = -errno;
			break;
		case OP_WAIT_EVENT: r = peer_wait_event(ev, c.a); break;
		case OP_MPROTECT_RW:
			r = mprotect(area, (size_t)count * 4096, PROT_READ | PROT_WRITE) < 0 ? -errno : 0;
			break;
		case OP_NOTIFY: r = xenevtchn_notify(ev, (evtchn_port_t)c.a) < 0 ? -errno : 0; break;
		case OP_UNBIND: r = xenevtchn_unbind(ev, (evtchn_port_t)c.a) < 0 ? -errno : 0; break;
		case OP_EXIT: _exit(0);
		}
		if (write(out, &r, sizeof(r)) != sizeof(r))
			_exit(101);
	}
	_exit(0);
}

static inline int peer_start(struct peer *p)
{
	int to[2], from[2];
	*p = (struct peer){ .pid = -1, .to = -1, .from = -1 };
	if (pipe(to) < 0 || pipe(from) < 0)
		return -errno;
	p->pid = fork();
	if (p->pid < 0)
		return -errno;
	if (p->pid == 0) {
		close(to[1]);
		close(from[0]);
		peer_loop(to[0], from[1]);
	}
	close(to[0]);
	close(from[1]);
	p->to = to[1];
	p->from = from[0];
	return 0;
}

/* Runs one command; returns its result, or INT64_MIN if the peer died doing it. */
static inline int64_t peer_do(struct peer *p, int op, int a, int b, int c, int d)
{
	struct peer_cmd cmd = { op, a, b, c, d };
	int64_t r;
	if (write(p->to, &cmd, sizeof(cmd)) != sizeof(cmd) || read(p->from, &r, sizeof(r)) != sizeof(r))
		return INT64_MIN;
	return r;
}

/* Waits for the peer to end; returns its wait status. */
static inline int peer_end(struct peer *p, int sig)
{
	int st = -1;
	if (sig)
		kill(p->pid, sig);
	else
		peer_do(p, OP_EXIT, 0, 0, 0, 0);
	close(p->to);
	close(p->from);
	waitpid(p->pid, &st, 0);
	return st;
}
