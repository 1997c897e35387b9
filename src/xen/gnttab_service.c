/* SPDX-License-Identifier: MIT */
/* Grant tables in the broker: pools, share, unshare, map and unmap over the grant table (gnttab_broker.c).
 * What a client granted or mapped ends with its connection, notifications fired. */
#define _GNU_SOURCE
#include "gnttab_broker.h"
#include "xen_services.h"

#include <unistd.h>

#include "broker/core.h"

static struct mvg_state G = { .notify = mvb_evtchn_notify };

static void on_pool(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_gnt_pool rep = { 0 };
	int fd = -1, e = mvb_domain_assign(c);

	if (e > 0)
		e = mvg_pool(&G, c, (uint16_t)e, &m->u.gnt_pool, &rep, &fd);
	mvb_reply(c, m, e < 0 ? e : 0, &rep, sizeof(rep), fd);
}

static void on_share(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_gnt_share rep = { 0 };
	int e = mvb_domain_assign(c);

	if (e > 0)
		e = mvg_share(&G, c, (uint16_t)e, &m->u.gnt_share, &rep);
	mvb_reply(c, m, e < 0 ? e : 0, &rep, sizeof(rep), -1);
}

static void on_unshare(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	mvb_reply(c, m, mvg_unshare(&G, c, &m->u.gnt_unshare), NULL, 0, -1);
}

static void on_map(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_gnt_map rep = { 0 };
	int fd = -1, e = mvb_domain_assign(c);

	if (e > 0)
		e = mvg_map(&G, c, (uint16_t)e, &m->u.gnt_map, &rep, &fd);
	mvb_reply(c, m, e < 0 ? e : 0, &rep, sizeof(rep), fd);
}

static void on_unmap(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	mvb_reply(c, m, mvg_unmap(&G, c, m->u.gnt_unmap.map_id), NULL, 0, -1);
}

static void client_gone(struct mvb_client *c)
{
	mvg_owner_gone(&G, c);
}

static void stats(struct mvb_stats *st)
{
	mvb_stats_add(st, "xen.grant_pools", G.npools);
	mvb_stats_add(st, "xen.grant_shares", G.nshares);
	mvb_stats_add(st, "xen.grant_mappings", G.nmaps);
}

static bool busy(void)
{
	return G.npools || G.nshares || G.nmaps;
}

static const struct mvb_service service = {
	.name = "gnttab",
	.client_gone = client_gone,
	.stats = stats,
	.busy = busy,
};

int mvb_gnttab_service_init(void)
{
	mvb_service_register(&service);
	mvb_handler_register(MV_MSG_GNT_POOL, on_pool);
	mvb_handler_register(MV_MSG_GNT_SHARE, on_share);
	mvb_handler_register(MV_MSG_GNT_UNSHARE, on_unshare);
	mvb_handler_register(MV_MSG_GNT_MAP, on_map);
	mvb_handler_register(MV_MSG_GNT_UNMAP, on_unmap);
	return 0;
}
