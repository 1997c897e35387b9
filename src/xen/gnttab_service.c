/* SPDX-License-Identifier: MIT */
/* Grant tables in the broker: pools, share, unshare, map and unmap over the grant table (gnttab_broker.c).
 * What a client granted or mapped ends with its connection, notifications fired. */
#define _GNU_SOURCE
#include "gnttab_broker.h"
#include "xen_services.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "broker/core.h"
#include "xen/xen_record.h"

static struct mvg_state G = { .notify = mvb_evtchn_notify };

/* Refs a dead broker may have issued: recorded ahead of the cursor in steps, so the record is written
 * once per RECORD_STEP refs and not per share. A restored domain's refs resume above them, and a map of
 * one of them fails with ESTALE: the grant died with that broker. */
#define RECORD_STEP 4096u
static uint32_t recorded[MV_DOMID_LAST + 1], stale_below[MV_DOMID_LAST + 1];

static void record_floor(uint16_t d)
{
	struct mvb_rec_grants r = { .domid = d, .floor = recorded[d] };
	mvb_record_append(MVB_REC_GRANTS, &r, sizeof(r));
}

static void note_cursor(uint16_t d)
{
	if (G.next_ref[d] >= recorded[d]) {
		recorded[d] = G.next_ref[d] > UINT32_MAX - RECORD_STEP ? UINT32_MAX : G.next_ref[d] + RECORD_STEP;
		record_floor(d);
	}
}

static void read_floor(const uint8_t *p, size_t len)
{
	struct mvb_rec_grants r;
	if (mvb_rec_grants_decode(p, len, &r) < 0)
		return;
	recorded[r.domid] = r.floor;
}

static void domain_restored(uint16_t d)
{
	if (recorded[d] > G.next_ref[d]) {
		G.next_ref[d] = recorded[d];
		stale_below[d] = recorded[d];
	}
}

static void domain_gone(uint16_t d)
{
	recorded[d] = stale_below[d] = 0;
	mvg_grantee_gone(&G, d);
}

static void dump(void)
{
	for (uint32_t d = MV_DOMID_FIRST; d <= MV_DOMID_LAST; d++)
		if (recorded[d])
			record_floor((uint16_t)d);
}

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

	if (e > 0) {
		uint16_t d = (uint16_t)e;
		e = mvg_share(&G, c, d, &m->u.gnt_share, &rep);
		if (e == 0)
			note_cursor(d);
	}
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
	/* a ref the broker before this one issued is gone with it, not merely wrong */
	const struct mvw_req_gnt_map *q = &m->u.gnt_map;
	if (e == -EINVAL && q->domid <= MV_DOMID_LAST && q->count >= 1 && q->count <= MV_GNT_MAP_MAX_REFS)
		for (uint32_t i = 0; i < q->count; i++)
			if (q->refs[i] >= MV_GNT_FIRST_REF && q->refs[i] < stale_below[q->domid]) {
				e = -ESTALE;
				break;
			}
	mvb_reply(c, m, e < 0 ? e : 0, &rep, sizeof(rep), fd);
}

static void on_table_pool(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_gnt_table rep = { 0 };
	int out[2] = { -1, -1 }, e = mvb_domain_assign(c);

	if (e > 0) {
		uint16_t d = (uint16_t)e;
		e = mvg_table_pool(&G, c, d, &m->u.gnt_table_pool, &rep, out);
		if (e == 0)
			note_cursor(d);
	}
	mvb_reply_fds(c, m, e < 0 ? e : 0, &rep, sizeof(rep), out, e < 0 ? 0 : 2);
}

static void on_table_open(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_gnt_table rep = { 0 };
	int out[2] = { -1, -1 }, e = mvb_domain_assign(c);
	const struct mvw_req_gnt_table_open *q = &m->u.gnt_table_open;

	if (e > 0)
		e = mvg_table_open(&G, (uint16_t)e, q, &rep, out);
	if ((e == -ENOENT || e == -EINVAL) && q->domid <= MV_DOMID_LAST && q->ref >= MV_GNT_FIRST_REF &&
	    q->ref < stale_below[q->domid])
		e = -ESTALE;
	mvb_reply_fds(c, m, e < 0 ? e : 0, &rep, sizeof(rep), out, e < 0 ? 0 : 2);
}

static void on_unmap(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	mvb_reply(c, m, mvg_unmap(&G, c, m->u.gnt_unmap.map_id), NULL, 0, -1);
}

static void client_gone(struct mvb_client *c)
{
	mvg_owner_gone(&G, c);
}

static void tick(void)
{
	mvg_sweep(&G);
}

static void stats(struct mvb_stats *st)
{
	uint64_t tshares, tmaps;
	uint32_t *live = calloc(MV_DOMID_LAST + 1, sizeof(*live));

	mvg_sweep(&G);
	mvg_table_counts(&G, &tshares, &tmaps, live);
	mvb_stats_add(st, "xen.grant_pools", G.npools);
	mvb_stats_add(st, "xen.grant_shares", G.nshares + tshares);
	mvb_stats_add(st, "xen.grant_mappings", G.nmaps + tmaps);
	/* Per domain, for memvisor top: the grants it gives and the granted pages it maps. */
	uint32_t *maps = G.nmaps || G.npools ? calloc(MV_DOMID_LAST + 1, sizeof(*maps)) : NULL;
	if (maps)
		mvg_mapped_pages(&G, maps);
	for (uint32_t d = MV_DOMID_FIRST; d <= MV_DOMID_LAST; d++) {
		char name[MV_STATS_NAME_LEN];
		uint64_t n = G.live[d] + (live ? live[d] : 0);
		if (n) {
			snprintf(name, sizeof(name), "xen.domain.%u.grants", (unsigned)d);
			mvb_stats_add(st, name, n);
		}
		if (maps && maps[d]) {
			snprintf(name, sizeof(name), "xen.domain.%u.grant_mappings", (unsigned)d);
			mvb_stats_add(st, name, maps[d]);
		}
	}
	free(maps);
	free(live);
}

static bool busy(void)
{
	return G.npools || G.nshares || G.nmaps;
}

static const struct mvb_service service = {
	.name = "gnttab",
	.client_gone = client_gone,
	.tick = tick,
	.stats = stats,
	.busy = busy,
};

static const struct mvb_domain_listener listener = { .gone = domain_gone, .restored = domain_restored };

int mvb_gnttab_service_init(void)
{
	mvb_service_register(&service);
	mvb_handler_register(MV_MSG_GNT_POOL, on_pool);
	mvb_handler_register(MV_MSG_GNT_SHARE, on_share);
	mvb_handler_register(MV_MSG_GNT_UNSHARE, on_unshare);
	mvb_handler_register(MV_MSG_GNT_MAP, on_map);
	mvb_handler_register(MV_MSG_GNT_UNMAP, on_unmap);
	mvb_handler_register(MV_MSG_GNT_TABLE_POOL, on_table_pool);
	mvb_handler_register(MV_MSG_GNT_TABLE_OPEN, on_table_open);
	mvb_domains_listen(&listener);
	mvb_record_on(MVB_REC_GRANTS, read_floor);
	mvb_record_dumper(dump);
	return 0;
}
