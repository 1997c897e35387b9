/* SPDX-License-Identifier: MIT */
/* Event channels in the broker: the bind and unbind messages over the channel table
 * (evtchn_broker.c); a domain's channels end with it. */
#define _GNU_SOURCE
#include "evtchn_broker.h"
#include "xen_services.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "broker/core.h"

static struct mve_state E;

void mvb_evtchn_notify(uint16_t domid, uint32_t port)
{
	mve_notify(&E, domid, port);
}

static void on_bind(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_evtchn_bind rep = { 0 };
	int efds[2] = { -1, -1 };
	int e = mvb_domain_assign(c);

	if (e > 0)
		e = m->hdr.type == MV_MSG_EVTCHN_BIND_UNBOUND
			    ? mve_bind_unbound(&E, (uint16_t)e, m->u.evtchn_bind.remote_domid, mvb_domain_alive,
					       &rep.port, efds)
			    : mve_bind_interdomain(&E, (uint16_t)e, m->u.evtchn_bind.remote_domid,
						   m->u.evtchn_bind.remote_port, &rep.port, efds);
	mvb_reply_fds(c, m, e < 0 ? e : 0, &rep, sizeof(rep), efds, 2);
}

static void on_unbind(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	uint16_t d = mvb_domain_of(c);

	mvb_reply(c, m, d ? mve_unbind(&E, d, m->u.evtchn_unbind.port) : -EINVAL, NULL, 0, -1);
}

/* Only a domain that came back from a dead broker's record hands ports back: any other would be
 * claiming ports this broker never knew it had. */
static void on_restore(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	int e = mvb_domain_assign(c);

	if (e > 0)
		e = mvb_domain_restored((uint32_t)e) ? mve_restore(&E, (uint16_t)e, m->u.evtchn_restore.port,
								   m->u.evtchn_restore.remote_domid, fds[0], fds[1])
						     : -ESRCH;
	mvb_reply(c, m, e < 0 ? e : 0, NULL, 0, -1);
}

static void domain_gone(uint16_t domid)
{
	mve_domain_gone(&E, domid);
}

static void stats(struct mvb_stats *st)
{
	mvb_stats_add(st, "xen.event_channels", E.nchans);
	/* Per domain, for memvisor top: the ports it has open. */
	for (uint32_t d = MV_DOMID_FIRST; d < E.ports_end; d++) {
		unsigned n = mve_open_ports(&E, (uint16_t)d);
		char name[MV_STATS_NAME_LEN];
		if (!n)
			continue;
		snprintf(name, sizeof(name), "xen.domain.%u.event_channels", (unsigned)d);
		mvb_stats_add(st, name, n);
	}
}

static const struct mvb_service service = {
	.name = "evtchn",
	.stats = stats,
};

static const struct mvb_domain_listener listener = { .gone = domain_gone };

int mvb_evtchn_service_init(void)
{
	mvb_service_register(&service);
	mvb_domains_listen(&listener);
	mvb_handler_register(MV_MSG_EVTCHN_BIND_UNBOUND, on_bind);
	mvb_handler_register(MV_MSG_EVTCHN_BIND_INTERDOMAIN, on_bind);
	mvb_handler_register(MV_MSG_EVTCHN_UNBIND, on_unbind);
	mvb_handler_register(MV_MSG_EVTCHN_RESTORE, on_restore);
	return 0;
}
