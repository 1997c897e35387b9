/* SPDX-License-Identifier: MIT */
/* memvisord: event channels. A channel has two ends, each a (domain, port) with a receive eventfd the
 * broker creates. Each end is handed its own receive eventfd and the other end's, so notifying is a
 * write(2) between the two processes and never passes through the broker. */
#define _GNU_SOURCE
#include "xen/evtchn_broker.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

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

static bool port_used(struct mve_state *s, uint16_t dom, uint32_t port)
{
	for (struct mve_chan *c = s->chans; c; c = c->next)
		for (int e = 0; e < 2; e++)
			if (c->state[e] == END_OPEN && c->dom[e] == dom && c->port[e] == port)
				return true;
	return false;
}

static int new_port(struct mve_state *s, uint16_t dom, uint32_t *port)
{
	for (uint32_t p = 1; p <= MV_EVTCHN_MAX_PORT; p++)
		if (!port_used(s, dom, p)) {
			*port = p;
			return 0;
		}
	return -ENOSPC;
}

static void chan_free(struct mve_state *s, struct mve_chan *c)
{
	for (struct mve_chan **pp = &s->chans; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	for (int e = 0; e < 2; e++)
		if (c->rx[e] >= 0)
			close(c->rx[e]);
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
		return r;
	}
	c->dom[0] = dom;
	c->state[0] = END_OPEN;
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
	for (struct mve_chan *c = s->chans; c; c = c->next) {
		if (c->state[0] != END_OPEN || c->dom[0] != remote || c->port[0] != remote_port)
			continue;
		/* only the domain it waits for, and only once */
		if (c->want != dom || c->state[1] != END_NONE)
			return -EINVAL;
		int r = new_port(s, dom, &c->port[1]);
		if (r < 0)
			return r;
		if (remote == dom && c->port[1] == c->port[0])
			return -EINVAL; /* cannot happen: the port is in use; kept as a guard */
		/* notifications sent before anyone was there are dropped, as Xen drops them */
		uint64_t junk;
		while (read(c->rx[1], &junk, sizeof(junk)) > 0)
			;
		c->dom[1] = dom;
		c->state[1] = END_OPEN;
		*port = c->port[1];
		fds[0] = c->rx[1];
		fds[1] = c->rx[0];
		return 0;
	}
	return -EINVAL;
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
}

int mve_unbind(struct mve_state *s, uint16_t dom, uint32_t port)
{
	for (struct mve_chan *c = s->chans; c; c = c->next)
		for (int e = 0; e < 2; e++)
			if (c->state[e] == END_OPEN && c->dom[e] == dom && c->port[e] == port) {
				close_end(s, c, e);
				return 0;
			}
	return -EINVAL;
}

void mve_notify(struct mve_state *s, uint16_t dom, uint32_t port)
{
	uint64_t one = 1;

	for (struct mve_chan *c = s->chans; c; c = c->next)
		for (int e = 0; e < 2; e++)
			if (c->state[e] == END_OPEN && c->dom[e] == dom && c->port[e] == port) {
				(void)!write(c->rx[!e], &one, sizeof(one));
				return;
			}
}

void mve_domain_gone(struct mve_state *s, uint16_t dom)
{
	for (struct mve_chan *c = s->chans, *next; c; c = next) {
		next = c->next;
		for (int e = 0; e < 2; e++)
			if (c->state[e] == END_OPEN && c->dom[e] == dom) {
				close_end(s, c, e);
				break; /* c may be gone; an end bound to itself closes through the next check */
			}
	}
	/* a channel a domain bound to itself had both ends in it */
	for (struct mve_chan *c = s->chans, *next; c; c = next) {
		next = c->next;
		for (int e = 0; e < 2; e++)
			if (c->state[e] == END_OPEN && c->dom[e] == dom) {
				close_end(s, c, e);
				break;
			}
	}
}
