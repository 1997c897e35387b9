/* SPDX-License-Identifier: MIT */
#include "wire.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

struct shape {
	const char *name;
	size_t req_len;
	unsigned req_fds;
	size_t rep_len;
	unsigned rep_fds;
};

static const struct shape shapes[MV_MSG_TYPE_MAX] = {
	[MV_MSG_HELLO] = { "hello", sizeof(struct mvw_req_hello), 0, sizeof(struct mvw_rep_hello), 1 },
	[MV_MSG_ATTACH] = { "attach", sizeof(struct mvw_req_attach), 2, sizeof(struct mvw_rep_attach), 0 },
	[MV_MSG_DETACH] = { "detach", sizeof(struct mvw_req_detach), 0, 0, 0 },
	[MV_MSG_KICK] = { "kick", 0, 0, 0, 0 },
	[MV_MSG_PURGE] = { "purge", sizeof(struct mvw_req_purge), 0, sizeof(struct mvw_rep_purge), 0 },
	[MV_MSG_STATUS] = { "status", 0, 0, sizeof(struct mvw_rep_status), 0 },
	[MV_MSG_REGIONS] = { "regions", 0, 0, 0, 1 },
	[MV_MSG_CONFIG] = { "config", sizeof(struct mvw_req_config), 0, 0, 0 },
	[MV_MSG_RESTORE] = { "restore", sizeof(struct mvw_req_restore), 1, sizeof(struct mvw_rep_restore), 0 },
	[MV_MSG_MERGE_JOIN] = { "merge-join", sizeof(struct mvw_req_merge_join), 1, sizeof(struct mvw_rep_merge_join),
				2 },
	[MV_MSG_MERGE_PROMOTE] = { "merge-promote", sizeof(struct mvw_req_merge_promote), 0,
				   sizeof(struct mvw_rep_merge_promote), 0 },
	[MV_MSG_MERGE_LEAVE] = { "merge-leave", sizeof(struct mvw_req_merge_leave), 0, 0, 0 },
	[MV_MSG_DOMAIN] = { "domain", 0, 0, sizeof(struct mvw_rep_domain), 0 },
	[MV_MSG_DOMAINS] = { "domains", 0, 0, 0, 1 },
	[MV_MSG_DOMAIN_CLAIM] = { "domain-claim", sizeof(struct mvw_req_domain_claim), 0, sizeof(struct mvw_rep_domain),
				  0 },
	[MV_MSG_EVTCHN_BIND_UNBOUND] = { "evtchn-bind-unbound", sizeof(struct mvw_req_evtchn_bind), 0,
					 sizeof(struct mvw_rep_evtchn_bind), 2 },
	[MV_MSG_EVTCHN_BIND_INTERDOMAIN] = { "evtchn-bind-interdomain", sizeof(struct mvw_req_evtchn_bind), 0,
					     sizeof(struct mvw_rep_evtchn_bind), 2 },
	[MV_MSG_EVTCHN_UNBIND] = { "evtchn-unbind", sizeof(struct mvw_req_evtchn_unbind), 0, 0, 0 },
	[MV_MSG_EVTCHN_RESTORE] = { "evtchn-restore", sizeof(struct mvw_req_evtchn_restore), 2, 0, 0 },
	[MV_MSG_GNT_SHARE] = { "gnt-share", sizeof(struct mvw_req_gnt_share), 0, sizeof(struct mvw_rep_gnt_share), 0 },
	[MV_MSG_GNT_UNSHARE] = { "gnt-unshare", sizeof(struct mvw_req_gnt_unshare), 0, 0, 0 },
	[MV_MSG_GNT_MAP] = { "gnt-map", sizeof(struct mvw_req_gnt_map), 0, sizeof(struct mvw_rep_gnt_map), 1 },
	[MV_MSG_GNT_UNMAP] = { "gnt-unmap", sizeof(struct mvw_req_gnt_unmap), 0, 0, 0 },
	[MV_MSG_STATS] = { "stats", 0, 0, 0, 1 },
	[MV_MSG_GNT_POOL] = { "gnt-pool", sizeof(struct mvw_req_gnt_pool), 0, sizeof(struct mvw_rep_gnt_pool), 1 },
	[MV_MSG_REGION_CTL] = { "region-ctl", 0, 1, 0, 1 },
	[MV_MSG_AREA_BIND] = { "area-bind", 0, 3, 0, 0 }, /* one way */
	[MV_MSG_AREA_GET] = { "area-get", 0, 1, 0, 2 },
	[MV_MSG_GNT_TABLE_POOL] = { "gnt-table-pool", sizeof(struct mvw_req_gnt_table_pool), 0,
				    sizeof(struct mvw_rep_gnt_table), 2 },
	[MV_MSG_GNT_TABLE_OPEN] = { "gnt-table-open", sizeof(struct mvw_req_gnt_table_open), 0,
				    sizeof(struct mvw_rep_gnt_table), 2 },
};

/* The named counters that the fixed STATUS reply carries, and where. */
#define F(name, field)                                                                                                 \
	{                                                                                                              \
		name, offsetof(struct mvw_rep_status, field), sizeof(((struct mvw_rep_status *)0)->field)              \
	}
static const struct status_field {
	const char *name;
	size_t off, size;
} status_fields[] = {
	F("broker.pid", broker_pid),
	F("broker.uid", uid),
	F("broker.uptime_ns", uptime_ns),
	F("broker.clients", clients),
	F("broker.heap_bytes", broker_heap_bytes),
	F("regions.count", regions),
	F("regions.held", regions_held),
	F("regions.pages_total", pages_total),
	F("regions.pages_pinned", pages_pinned),
	F("regions.pages_unpinned", pages_unpinned),
	F("regions.pages_purged", pages_purged),
	F("regions.purged_pages_total", purged_pages_total),
	F("regions.purge_runs", purge_runs),
	F("regions.purges_pressure", purges_pressure),
	F("regions.purges_budget", purges_budget),
	F("regions.purges_explicit", purges_explicit),
	F("regions.unpinned_budget", unpinned_budget),
	F("regions.min_available", min_available),
	F("regions.psi_events", psi_events),
	F("regions.psi_enabled", psi_enabled),
	F("regions.inotify_overflows", inotify_overflows),
	F("tier.enabled", compress_enabled),
	F("tier.pages", pages_compressed),
	F("tier.bytes_compressed", compressed_bytes),
	F("tier.bytes_held", compressed_mem_used),
	F("tier.budget", compressed_budget),
	F("tier.compressions", compressions_total),
	F("tier.restores", restores_total),
	F("tier.evictions", evictions_total),
	F("tier.incompressible", incompressible_total),
	F("xen.domains", domains),
	F("xen.event_channels", evtchn_channels),
	F("xen.grant_shares", gnt_shares),
	F("xen.grant_mappings", gnt_maps),
	F("xenstore.connections", xs_connections),
	F("xenstore.watches", xs_watches),
	F("xenstore.transactions", xs_transactions),
	F("xenstore.nodes", xs_nodes),
};
#undef F

int mvw_status_set(struct mvw_rep_status *s, const char *name, uint64_t value)
{
	for (size_t i = 0; i < sizeof(status_fields) / sizeof(status_fields[0]); i++) {
		const struct status_field *f = &status_fields[i];
		if (strcmp(f->name, name) != 0)
			continue;
		if (f->size == sizeof(uint64_t)) {
			memcpy((char *)s + f->off, &value, sizeof(value));
		} else {
			uint32_t v32 = (uint32_t)value;
			memcpy((char *)s + f->off, &v32, sizeof(v32));
		}
		return 0;
	}
	return -ENOENT;
}

_Static_assert(sizeof(struct mvw_hdr) + sizeof(struct mvw_rep_status) <= MV_WIRE_MAX_PACKET, "fits");
_Static_assert(sizeof(struct mvw_hdr) + sizeof(struct mvw_req_gnt_map) <= MV_WIRE_MAX_PACKET, "fits");

int mvw_expect(uint8_t type, int reply, size_t *len, unsigned *nfds)
{
	if (type == 0 || type >= MV_MSG_TYPE_MAX || !shapes[type].name)
		return -1; /* numbers between two that are in use belong to nobody yet */
	*len = reply ? shapes[type].rep_len : shapes[type].req_len;
	*nfds = reply ? shapes[type].rep_fds : shapes[type].req_fds;
	return 0;
}

const char *mvw_type_name(uint8_t type)
{
	type &= (uint8_t)~MV_MSG_REPLY;
	if (type == 0 || type >= MV_MSG_TYPE_MAX)
		return "unknown";
	return shapes[type].name;
}

int mvw_decode(const void *buf, size_t len, unsigned nfds, int want_reply, struct mvw_msg *out)
{
	struct mvw_hdr h;
	size_t plen;
	unsigned pfds;
	int is_reply;

	memset(out, 0, sizeof(*out));
	if (len < sizeof(h))
		return -EPROTO;
	memcpy(&h, buf, sizeof(h));
	if (h.magic != MV_WIRE_MAGIC)
		return -EPROTO;
	if (h.version != MV_WIRE_VERSION)
		return -EPROTONOSUPPORT;
	is_reply = !!(h.type & MV_MSG_REPLY);
	if (is_reply != !!want_reply)
		return -EPROTO;
	if (h.len != len - sizeof(h))
		return -EPROTO;
	if (is_reply && h.status < 0) {
		/* A failed request carries no payload and no descriptors; it may answer a packet of an
		 * unknown type, whose type it echoes. */
		if (h.len != 0 || nfds != 0 || h.status < -4095)
			return -EPROTO;
	} else {
		if (mvw_expect(h.type & (uint8_t)~MV_MSG_REPLY, is_reply, &plen, &pfds) < 0)
			return -EPROTO;
		if (h.status != 0 || h.len != plen || nfds != pfds)
			return -EPROTO;
	}
	out->hdr = h;
	memcpy(out->u.raw, (const char *)buf + sizeof(h), h.len);
	out->nfds = nfds;
	return 0;
}

size_t mvw_encode(void *buf, uint8_t type, uint32_t seq, int32_t status, const void *payload, size_t len)
{
	struct mvw_hdr h = {
		.magic = MV_WIRE_MAGIC,
		.version = MV_WIRE_VERSION,
		.type = type,
		.seq = seq,
		.status = status,
		.len = (uint32_t)len,
	};

	memcpy(buf, &h, sizeof(h));
	if (len)
		memcpy((char *)buf + sizeof(h), payload, len);
	return sizeof(h) + len;
}

int mvw_regions_check(const void *buf, size_t len)
{
	struct mvw_regions_head head;

	if (len < sizeof(head))
		return -EPROTO;
	memcpy(&head, buf, sizeof(head));
	if (head.magic != MV_REGIONS_MAGIC || head.rec_size != sizeof(struct mvw_region_rec))
		return -EPROTO;
	if (head.count > (len - sizeof(head)) / sizeof(struct mvw_region_rec))
		return -EPROTO;
	for (uint32_t i = 0; i < head.count; i++) {
		struct mvw_region_rec rec;

		memcpy(&rec, (const char *)buf + sizeof(head) + (size_t)i * sizeof(rec), sizeof(rec));
		if (rec.nholders > MV_REC_MAX_HOLDERS || memchr(rec.name, '\0', sizeof(rec.name)) == NULL)
			return -EPROTO;
	}
	return (int)head.count;
}

int mvw_stats_check(const void *buf, size_t len, struct mvw_stats_head *head)
{
	if (len < sizeof(*head))
		return -EPROTO;
	memcpy(head, buf, sizeof(*head));
	/* records may have grown since this reader was built: it takes the part it knows */
	if (head->magic != MV_STATS_MAGIC || head->rec_size < sizeof(struct mvw_stats_rec) ||
	    head->count > (len - sizeof(*head)) / head->rec_size)
		return -EPROTO;
	return (int)head->count;
}

int mvw_domains_check(const void *buf, size_t len)
{
	struct mvw_domains_head head;

	if (len < sizeof(head))
		return -EPROTO;
	memcpy(&head, buf, sizeof(head));
	if (head.magic != MV_DOMAINS_MAGIC || head.rec_size != sizeof(struct mvw_domain_rec))
		return -EPROTO;
	if (head.count > (len - sizeof(head)) / sizeof(struct mvw_domain_rec))
		return -EPROTO;
	for (uint32_t i = 0; i < head.count; i++) {
		struct mvw_domain_rec rec;

		memcpy(&rec, (const char *)buf + sizeof(head) + (size_t)i * sizeof(rec), sizeof(rec));
		if (rec.domid < MV_DOMID_FIRST || rec.domid > MV_DOMID_LAST)
			return -EPROTO;
	}
	return (int)head.count;
}
