/* SPDX-License-Identifier: MIT */
/* memvisord: event channels between domains. Internal to the broker. */
#ifndef MV_XEN_EVTCHN_BROKER_H
#define MV_XEN_EVTCHN_BROKER_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/wire.h"

struct mve_chan;
struct mve_ports;

struct mve_state {
	struct mve_chan *chans;
	unsigned nchans;
	/* Per domain, its ports' channels: every lookup and allocation is a table index, not a search of
	 * every channel (4,095 binds took 30 s that way). Allocated with a domain's first port. */
	struct mve_ports *ports[MV_DOMID_LAST + 1];
	uint32_t ports_end; /* above every domain that ever had a ports table: a status looks no further */
};

/* Ports dom has open. */
unsigned mve_open_ports(const struct mve_state *s, uint16_t dom);

/* dom exists? (the broker's domain table) */
typedef bool (*mve_domain_alive_fn)(uint32_t domid);

/* A new port of dom, unbound, waiting for remote. fds[0]: its receive eventfd, fds[1]: what it
 * notifies through (the other end's receive eventfd). The caller closes them after sending. */
int mve_bind_unbound(struct mve_state *s, uint16_t dom, uint32_t remote, mve_domain_alive_fn alive, uint32_t *port,
		     int fds[2]);
int mve_bind_interdomain(struct mve_state *s, uint16_t dom, uint32_t remote, uint32_t remote_port, uint32_t *port,
			 int fds[2]);
int mve_unbind(struct mve_state *s, uint16_t dom, uint32_t port);
/* Sends an event from dom's port to the other end, as the end's owner would (the broker does it for a
 * process that can no longer: unmap notifications of the dead). Nothing if the port is not bound. */
void mve_notify(struct mve_state *s, uint16_t dom, uint32_t port);
/* After a broker restart, dom's process hands back port (bound to, or waiting for, remote) with its
 * receive eventfd rx and the peer's tx, which the state takes. It joins the end remote handed back whose
 * peer eventfd is rx; otherwise it waits for remote, as an unbound port (the peer may come back). */
int mve_restore(struct mve_state *s, uint16_t dom, uint32_t port, uint32_t remote, int rx, int tx);
/* dom is gone: every end of it closes. */
void mve_domain_gone(struct mve_state *s, uint16_t dom);

#endif
