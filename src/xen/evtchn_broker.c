/* SPDX-License-Identifier: MIT */
/* memvisord: event channels. A channel has two ends, each a (domain, port) with a receive eventfd the
 * broker creates. Each end is handed its own receive eventfd and the other end's, so notifying is a
 * write(2) between the two processes and never passes through the broker. */
#define _GNU_SOURCE
#include "xen/evtchn_broker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/sys.h"
#include "proto/wire.h"

enum { END_NONE, END_OPEN, END_CLOSED };

struct mve_chan {
	uint16_t dom[2];
	uint32_t port[2];
	uint8_t state[2]; /* end 0 made the channel (unbound); end 1 bound to it */
	uint16_t want;    /* the domain end 0 waits for */
	int rx[2];        /* receive eventfd of each end */
	struct mve_chan *next;
};

/* A domain's ports: which channel, and which end of it, each open port is. */
struct mve_ports {
	struct mve_chan *chan[MV_EVTCHN_MAX_PORT + 1];
	uint8_t end[MV_EVTCHN_MAX_PORT + 1];
	uint32_t next; /* where the search for a free port starts: allocation is amortized O(1) */
	unsigned open;
};

unsigned mve_open_ports(const struct mve_state *s, uint16_t dom)
{
	return dom <= MV_DOMID_LAST && s->ports[dom] ? s->ports[dom]->open : 0;
}

static struct mve_ports *ports_of(struct mve_state *s, uint16_t dom, bool make)
{
	if (dom > MV_DOMID_LAST)
		return NULL;
	if (!s->ports[dom] && make) {
		s->ports[dom] = calloc(1, sizeof(struct mve_ports));
		if (s->ports[dom])
			s->ports[dom]->next = 1;
		if (s->ports[dom] && dom >= s->ports_end)
			s->ports_end = (uint32_t)dom + 1;
	}
	return s->ports[dom];
}

/* The open end (dom, port), or NULL. */
static struct mve_chan *end_at(struct mve_state *s, uint16_t dom, uint32_t port, int *end)
{
	struct mve_ports *p = ports_of(s, dom, false);
	if (!p || port == 0 || port > MV_EVTCHN_MAX_PORT || !p->chan[port])
		return NULL;
	*end = p->end[port];
	return p->chan[port];
}

static void port_set(struct mve_state *s, struct mve_chan *c, int e)
{
	struct mve_ports *p = ports_of(s, c->dom[e], false);
	p->chan[c->port[e]] = c;
	p->end[c->port[e]] = (uint8_t)e;
}

static void port_clear(struct mve_state *s, uint16_t dom, uint32_t port)
{
	struct mve_ports *p = ports_of(s, dom, false);
	if (!p || !port || port > MV_EVTCHN_MAX_PORT || !p->chan[port])
		return;
	p->chan[port] = NULL;
	if (--p->open == 0) {
		free(p); /* the domain holds no port any more */
		s->ports[dom] = NULL;
	}
}

/* A free port of dom, reserved (the caller sets its channel before anyone can look). */
static int new_port(struct mve_state *s, uint16_t dom, uint32_t *port)
{
	struct mve_ports *p = ports_of(s, dom, true);
	if (!p)
		return -ENOMEM;
	if (p->open >= MV_EVTCHN_MAX_PORT)
		return -ENOSPC;
	uint32_t q = p->next;
	while (p->chan[q])
		q = q % MV_EVTCHN_MAX_PORT + 1;
	p->next = q % MV_EVTCHN_MAX_PORT + 1;
	p->open++;
	*port = q;
	return 0;
}

/* A reserved port that was never set. */
static void port_unreserve(struct mve_state *s, uint16_t dom)
{
	struct mve_ports *p = ports_of(s, dom, false);
	if (p && --p->open == 0) {
		free(p);
		s->ports[dom] = NULL;
	}
}

static void chan_free(struct mve_state *s, struct mve_chan *c)
{
	for (struct mve_chan **pp = &s->chans; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	for (int e = 0; e < 2; e++) {
		if (c->state[e] == END_OPEN)
			port_clear(s, c->dom[e], c->port[e]);
		if (c->rx[e] >= 0)
			close(c->rx[e]);
	}
	free(c);
	s->nchans--;
}

int mve_bind_unbound(struct mve_state *s, uint16_t dom, uint32_t remote, mve_domain_alive_fn alive, uint32_t *port,
		     int fds[2])
{
	if (remote == MV_DOMID_SELF_XEN)
		remote = dom;
	if (remote < MV_DOMID_FIRST || remote > MV_DOMID_LAST || !alive(remote))
		return -ESRCH;
	struct mve_chan *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	int r = new_port(s, dom, &c->port[0]);
	if (r < 0) {
		free(c);
		return r;
	}
	c->rx[0] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->rx[1] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->rx[0] < 0 || c->rx[1] < 0) {
		r = -errno;
		if (c->rx[0] >= 0)
			close(c->rx[0]);
		if (c->rx[1] >= 0)
			close(c->rx[1]);
		free(c);
		port_unreserve(s, dom);
		return r;
	}
	c->dom[0] = dom;
	c->state[0] = END_OPEN;
	port_set(s, c, 0);
	c->want = (uint16_t)remote;
	c->next = s->chans;
	s->chans = c;
	s->nchans++;
	*port = c->port[0];
	fds[0] = c->rx[0];
	fds[1] = c->rx[1];
	return 0;
}

int mve_bind_interdomain(struct mve_state *s, uint16_t dom, uint32_t remote, uint32_t remote_port, uint32_t *port,
			 int fds[2])
{
	if (remote == MV_DOMID_SELF_XEN)
		remote = dom;
	int e;
	struct mve_chan *c = remote <= MV_DOMID_LAST ? end_at(s, (uint16_t)remote, remote_port, &e) : NULL;
	if (!c || e != 0)
		return -EINVAL; /* no port waiting there */
	/* only the domain it waits for, and only once */
	if (c->want != dom || c->state[1] != END_NONE)
		return -EINVAL;
	int r = new_port(s, dom, &c->port[1]);
	if (r < 0)
		return r;
	/* notifications sent before anyone was there are dropped, as Xen drops them */
	uint64_t junk;
	while (read(c->rx[1], &junk, sizeof(junk)) > 0)
		;
	c->dom[1] = dom;
	c->state[1] = END_OPEN;
	port_set(s, c, 1);
	*port = c->port[1];
	fds[0] = c->rx[1];
	fds[1] = c->rx[0];
	return 0;
}

/* As in Xen, when one end closes the other goes back to being unbound, waiting for the domain that
 * left, which may bind it again (a vchan server that persists relies on this). The waiting end keeps its
 * eventfds: the next binder gets the same pair, drained. */
static void close_end(struct mve_state *s, struct mve_chan *c, int e)
{
	if (c->state[!e] != END_OPEN) {
		chan_free(s, c);
		return;
	}
	uint16_t gone = c->dom[e];
	port_clear(s, c->dom[e], c->port[e]);
	c->state[e] = END_NONE;
	if (e == 0) {
		c->dom[0] = c->dom[1];
		c->port[0] = c->port[1];
		int rx = c->rx[0];
		c->rx[0] = c->rx[1];
		c->rx[1] = rx;
	}
	c->state[0] = END_OPEN;
	c->state[1] = END_NONE;
	c->dom[1] = 0;
	c->port[1] = 0;
	c->want = gone;
	port_set(s, c, 0); /* the surviving end is end 0 now */
}

int mve_unbind(struct mve_state *s, uint16_t dom, uint32_t port)
{
	int e;
	struct mve_chan *c = end_at(s, dom, port, &e);

	if (!c)
		return -EINVAL;
	close_end(s, c, e);
	return 0;
}

void mve_notify(struct mve_state *s, uint16_t dom, uint32_t port)
{
	uint64_t one = 1;
	int e;
	struct mve_chan *c = end_at(s, dom, port, &e);

	if (c)
		(void)!write(c->rx[!e], &one, sizeof(one));
}

/* What a client hands back must be a non-blocking eventfd: the broker writes to it (a blocking pipe
 * would stall it). */
static bool is_eventfd(int fd)
{
	char path[64], link[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return false;
	link[n] = '\0';
	int fl = fcntl(fd, F_GETFL);
	return strcmp(link, "anon_inode:[eventfd]") == 0 && fl >= 0 && (fl & O_NONBLOCK);
}

/* kcmp, or where the kernel does not offer it, the eventfd ids of fdinfo (Linux 5.16 and later). */
static bool same_file(int a, int b)
{
	int r = mvu_sys_kcmp_file(a, b);
	if (r >= 0)
		return r == 0;
	char id[2][128] = { "", "" };
	for (int i = 0; i < 2; i++) {
		char path[64], line[128];
		snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", i ? b : a);
		FILE *f = fopen(path, "re");
		if (!f)
			return false;
		while (fgets(line, sizeof(line), f))
			if (strncmp(line, "eventfd-id:", 11) == 0)
				snprintf(id[i], sizeof(id[i]), "%s", line + 11);
		fclose(f);
	}
	return id[0][0] && strcmp(id[0], id[1]) == 0;
}

int mve_restore(struct mve_state *s, uint16_t dom, uint32_t port, uint32_t remote, int rx, int tx)
{
	int e;
	if (remote == MV_DOMID_SELF_XEN)
		remote = dom;
	if (port == 0 || port > MV_EVTCHN_MAX_PORT || remote < MV_DOMID_FIRST || remote > MV_DOMID_LAST ||
	    dom > MV_DOMID_LAST)
		return -EINVAL;
	if (end_at(s, dom, port, &e))
		return -EEXIST;
	if (!is_eventfd(rx) || !is_eventfd(tx))
		return -EINVAL;
	for (struct mve_chan *c = s->chans; c; c = c->next)
		if (c->state[0] == END_OPEN && c->state[1] == END_NONE && c->want == dom && c->dom[0] == remote &&
		    same_file(c->rx[1], rx)) {
			struct mve_ports *p = ports_of(s, dom, true);
			if (!p)
				return -ENOMEM;
			p->open++;
			c->dom[1] = dom;
			c->port[1] = port;
			c->state[1] = END_OPEN;
			port_set(s, c, 1);
			return 0;
		}
	struct mve_chan *c = calloc(1, sizeof(*c));
	struct mve_ports *p = ports_of(s, dom, true);
	if (!c || !p) {
		free(c);
		return -ENOMEM;
	}
	c->rx[0] = fcntl(rx, F_DUPFD_CLOEXEC, 0);
	c->rx[1] = fcntl(tx, F_DUPFD_CLOEXEC, 0);
	if (c->rx[0] < 0 || c->rx[1] < 0) {
		int r = -errno;
		if (c->rx[0] >= 0)
			close(c->rx[0]);
		if (c->rx[1] >= 0)
			close(c->rx[1]);
		free(c);
		if (!p->open) {
			free(p);
			s->ports[dom] = NULL;
		}
		return r;
	}
	p->open++;
	c->dom[0] = dom;
	c->port[0] = port;
	c->state[0] = END_OPEN;
	c->want = (uint16_t)remote;
	port_set(s, c, 0);
	c->next = s->chans;
	s->chans = c;
	s->nchans++;
	return 0;
}

void mve_domain_gone(struct mve_state *s, uint16_t dom)
{
	/* its ports, one by one: closing the last frees the table, so look it up each time */
	for (uint32_t port = 1; port <= MV_EVTCHN_MAX_PORT && ports_of(s, dom, false); port++) {
		int e;
		struct mve_chan *c = end_at(s, dom, port, &e);
		if (c)
			close_end(s, c, e);
	}
}
